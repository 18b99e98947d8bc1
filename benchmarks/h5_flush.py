"""What one research-log flush costs: open, append, close (the writer) vs a file held open.

Usage::

    python benchmarks/h5_flush.py [--config cpu-tiny] [--flushes 200] [--flush-every 10]

The writer (:class:`backlm.logs.hdf5.Hdf5Logger`) opens ``{phase}.h5`` at every flush, switches
SWMR write mode on, appends the buffered rows and closes it, so that HDF5's own tools read the
file between flushes. This measures that against the older design (the file held open in SWMR
write mode for the whole run, rows appended and flushed), on the schema of the preset's model:
its parameters and layers, per-token slices and statistics at the default cadences. Each flush
carries ``--flush-every`` scalar rows; every fifth also carries one per-token row and one row
of gradient and activation statistics (``log.per_token_every = log.stats_every = 50``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def schema_of(preset: str):
    """The research-log schema of ``preset``'s model (built on the meta device: no memory)."""
    import torch

    from backlm.config import RunConfig, load_config
    from backlm.logs.hdf5 import BASE_SCALARS, Schema
    from backlm.model.gpt import GPT

    cfg = load_config(RunConfig, preset=preset)
    with torch.device("meta"):
        model = GPT(cfg.model)
    params = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    schema = Schema(scalars=BASE_SCALARS, params=params,
                    layers=tuple(f"blocks.{i}" for i in range(len(model.blocks))),
                    rows=min(cfg.log.per_token_rows, cfg.train.device_batch_size),
                    seq_len=cfg.model.seq_len)
    return cfg, schema


def fill(log, schema, first: int, n: int, research: bool) -> None:
    """Buffer ``n`` steps of records as the loop hands them in."""
    rng = np.random.default_rng(first)
    for step in range(first, first + n):
        log.log(step, {"loss": 3.0 + rng.random(), "lr_mult": 1.0, "grad_norm": rng.random(),
                       "tokens": 4096 * step, "tokens_per_sec": 2500.0, "mfu": 0.01,
                       "dt": 1.6})
    if research:
        t, rows = schema.seq_len, schema.rows
        log.add_per_token(first + n - 1, {
            "loss": rng.random((rows, t)).astype("f2"),
            "pred": rng.integers(0, 8192, (rows, t), dtype="i4"),
            "input": rng.integers(0, 8192, (rows, t), dtype="i4"),
            "target": rng.integers(0, 8192, (rows, t), dtype="i4"),
            "position_loss": rng.random(t).astype("f4")})
        stats = {"norm": 1.0, "mean": 0.0, "std": 1.0, "max_abs": 2.0}
        log.add_stats("gradients", first + n - 1, {p: stats for p in schema.params})
        log.add_stats("activations", first + n - 1,
                      {x: {"mean": 0.0, "std": 1.0, "rms": 1.0, "max_abs": 3.0}
                       for x in schema.layers})


class HeldOpen:
    """The older writer: one handle in SWMR write mode for the whole run."""

    def __init__(self, log) -> None:
        from backlm.logs.h5_file import LIBVER

        self.log = log
        self.f = h5py.File(log.path, "r+", libver=LIBVER)
        self.f.swmr_mode = True
        self.ds = {n: self.f[n] for n in log._order}

    def flush(self) -> None:
        from backlm.logs.h5_file import append_rows as _append

        for name in self.log._order:
            rows = self.log._buf[name]
            if rows:
                _append(self.ds[name], np.asarray(rows, dtype=self.ds[name].dtype))
                rows.clear()
        self.f.flush()


def measure(folder: Path, schema, flushes: int, every: int, held: bool) -> dict[str, list]:
    """Seconds per flush, split by whether the flush carried per-token and statistics rows."""
    from backlm.logs.hdf5 import Hdf5Logger

    log = Hdf5Logger(folder / f"{'held' if held else 'reopen'}.h5", schema, {},
                     flush_every=10 ** 9)
    writer = HeldOpen(log) if held else log
    out: dict[str, list] = {"scalars": [], "research": []}
    for i in range(flushes):
        research = i % 5 == 4
        fill(log, schema, 1 + i * every, every, research)
        t = time.perf_counter()
        writer.flush()
        out["research" if research else "scalars"].append(time.perf_counter() - t)
    if held:
        writer.f.close()
    log.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu-tiny")
    parser.add_argument("--flushes", type=int, default=200)
    parser.add_argument("--flush-every", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=1.6,
                        help="a step's time, for the share of it a flush costs")
    args = parser.parse_args()
    from backlm.hardware import cpu_model

    print(f"CPU: {cpu_model()}")
    cfg, schema = schema_of(args.config)
    print(f"{args.config}: {len(schema.datasets())} datasets ({len(schema.params)} parameters, "
          f"{len(schema.layers)} layers), {args.flushes} flushes of {args.flush_every} steps")
    with tempfile.TemporaryDirectory(prefix="backlm-h5flush-") as tmp:
        results = {held: measure(Path(tmp), schema, args.flushes, args.flush_every, held)
                   for held in (True, False, True, False)}  # second round: warm caches
    budget = args.flush_every * args.step_seconds
    print(f"{'writer':<34}{'flush kind':<12}{'median ms':>10}{'p95 ms':>9}{'% of steps':>11}")
    for held, label in ((True, "held open (old)"), (False, "open, append, close (new)")):
        for kind, times in results[held].items():
            ms = sorted(t * 1e3 for t in times)
            p95 = ms[int(0.95 * (len(ms) - 1))]
            share = statistics.mean(ms) / 1e3 / budget
            print(f"{label:<34}{kind:<12}{statistics.median(ms):>10.2f}{p95:>9.2f}"
                  f"{share:>10.3%}")


if __name__ == "__main__":
    main()
