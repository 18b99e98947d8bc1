"""Evaluation speed against training speed on the same cpu-tiny model, side by side.

Usage::

    python benchmarks/eval_speed.py [--experiment PATH] [--home DIR] [--tokens 4096]
        [--rounds 3] [--dtype fp32|bf16|both] [--no-profile]

Without ``--experiment`` it trains a cpu-tiny model for one step (``backlm train --config
configs/cpu-tiny.yaml``) in a temporary folder (``--home`` reuses prepared data). Then, in
alternated rounds (A, B, C, A, B, C, ...; the machine may be shared), each variant handles
about ``--tokens`` tokens:

- ``train``: the training loop's own step (``backlm.train.loop._train_step``: loader, forward,
  backward, clipping, Muon/AdamW) on the experiment's config, in fp32 and, on a CPU with
  native bf16, bf16 autocast (what ``train.dtype: auto`` picks there);
- ``eval``: what ``backlm eval --tasks lm`` runs per split and order
  (:func:`backlm.evaluation.lm.evaluate_text`) on that many held-out tokens, fp32 as ``eval``
  computes, plus bf16 autocast for reference and, where the engine has it, the old batching
  (``device_batch_size`` windows a batch, whatever their length);
- ``compare``: compare's language modelling of an experiment with nothing stored
  (:func:`backlm.evaluation.runner.lm_results`: model load, tokenizing, val and ood in both
  orders, ``--tokens / 4`` tokens each), start to end.

Tokens/s counts the tokens a step trains on and the text tokens an evaluation scores. The
ratio column divides by training tok/s in the same precision and by the run's own (``auto``).
Then one fp32 evaluation is split by where its wall time goes (embedding, norms, q/k/v +
rotary, attention core, attention output projection, MLP, loss head, the rest of the model,
the scoring loop, data) and by op type (GEMMs, attention, other ops, Python and dispatch).
Runs with the worktree's ``backlm`` or any other on ``PYTHONPATH`` (e.g. main, for before).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def cpu_line() -> str:
    from backlm.hardware import cpu_model

    try:
        flags = next(line.split(":", 1)[1].split() for line in
                     Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    shown = " ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)
    return f"{cpu_model()} · {len(os.sched_getaffinity(0))} cores · flags: {shown}"


def train_experiment(home: Path) -> Path:
    """A cpu-tiny experiment trained for one step under ``home``; its folder."""
    exps = home / "exps"
    env = dict(os.environ, BACKLM_HOME=str(home), BACKLM_EXPERIMENTS=str(exps),
               WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "backlm.cli", "train", "--config",
           str(ROOT / "configs" / "cpu-tiny.yaml"), "--max-steps", "1", "--id", "bench",
           "--set", "train.eval_tokens=512", "--set", "log.hdf5=false", "--device", "cpu"]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"training failed:\n{done.stdout}\n{done.stderr}")
    print(f"trained a cpu-tiny model for one step in {time.perf_counter() - t:.0f} s "
          f"(data preparation included): {exps / 'bench'}")
    return exps / "bench"


class Timer:
    """Wall time per part of a forward pass, by wrapping what ``backlm.model.gpt`` calls."""

    PARTS = {"norm": "norms", "qkv_rotary_norm": "q/k/v projection + rotary + QK norm",
             "causal_attention": "attention core (softmax(QKᵀ)V)", "mlp": "MLP (matmuls + ReLU²)",
             "head_loss": "loss head (matmul + softcapped CE, no logits kept)"}

    def __init__(self, model) -> None:
        from backlm.model import gpt

        self.gpt, self.model, self.seconds = gpt, model, defaultdict(float)
        self.saved = {name: getattr(gpt, name) for name in self.PARTS}
        self.hooks = []

    def _wrap(self, name):
        fn, label = self.saved[name], self.PARTS[name]

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t
        return timed

    def _module(self, module, label: str) -> None:
        starts = []
        self.hooks.append(module.register_forward_pre_hook(
            lambda *_: starts.append(time.perf_counter())))
        self.hooks.append(module.register_forward_hook(
            lambda *_: self.seconds.__setitem__(label, self.seconds[label]
                                                + time.perf_counter() - starts.pop())))

    def __enter__(self):
        for name in self.PARTS:
            setattr(self.gpt, name, self._wrap(name))
        self._module(self.model, "model forward")
        self._module(self.model.wte, "embedding")
        for block in self.model.blocks:
            self._module(block.attn, "attention module")
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self.saved.items():
            setattr(self.gpt, name, fn)
        for h in self.hooks:
            h.remove()


def profile(loaded, data, order, batch_size: int, tokens_scored: float, tokenize_s: float):
    """Where one fp32 evaluation's time goes: by part of the model, then by op type."""
    import torch
    from rich.console import Console
    from rich.table import Table
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from backlm.evaluation import lm

    seq_len = loaded.model.cfg.seq_len
    t = time.perf_counter()
    spans = lm.windows(data, seq_len)
    batches = list(lm.window_batches(data, spans, loaded.direction, order,
                                     loaded.tokenizer.special_ids, batch_size,
                                     **batch_args(batch_size, seq_len)))
    build = time.perf_counter() - t
    token_bytes = torch.tensor(loaded.tokenizer.token_byte_lengths(), dtype=torch.float32)
    with Timer(loaded.model) as timer:
        t = time.perf_counter()
        lm.score(loaded.model, iter(batches), token_bytes, loaded.device,
                 n_docs=len(data.docs), max_position=seq_len)
        total = time.perf_counter() - t
    s = timer.seconds
    attn_proj = s["attention module"] - s[Timer.PARTS["qkv_rotary_norm"]] \
        - s[Timer.PARTS["causal_attention"]]
    named = sum(s[label] for label in Timer.PARTS.values()) + s["embedding"] + attn_proj
    rows = [("data: tokenizing the held-out text (once per split)", tokenize_s),
            ("data: windows and batches (per order)", build),
            ("embedding", s["embedding"]),
            *((label, s[label]) for label in Timer.PARTS.values()),
            ("attention output projection", attn_proj),
            ("rest of the model (residual adds, casts)", s["model forward"] - named),
            ("scoring loop outside the model (sums, bytes, buckets)", total - s["model forward"])]
    whole = total + build + tokenize_s
    table = Table(title=f"one fp32 evaluation, {tokens_scored:,.0f} tokens, "
                        f"{len(batches)} forward passes: where the wall time goes")
    for col in ("part", "seconds", "share"):
        table.add_column(col, justify="right" if col != "part" else "left")
    for label, sec in rows:
        table.add_row(label, f"{sec:.3f}", f"{sec / whole:.0%}")
    table.add_row("whole (tok/s)", f"{whole:.3f}", f"{tokens_scored / whole:,.0f} tok/s")
    Console(width=150).print(table)

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        lm.score(loaded.model, iter(batches), token_bytes, loaded.device,
                 n_docs=len(data.docs), max_position=seq_len)
        wall = time.perf_counter() - t
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    gemm = sum(e.self_cpu_time_total for e in events
               if e.key in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")) / 1e6
    attention = sum(e.self_cpu_time_total for e in events if "attention" in e.key) / 1e6
    ops = sum(e.self_cpu_time_total for e in events) / 1e6
    table = Table(title="the same evaluation by op type (profiled again: profiler overhead "
                        "included)")
    for col in ("op type", "seconds", "share"):
        table.add_column(col, justify="right" if col != "op type" else "left")
    for label, sec in (("GEMMs (q/k/v, projections, MLP, loss head)", gemm),
                       ("attention kernels (SDPA)", attention),
                       ("other ATen ops (norms, elementwise, copies, indexing)",
                        ops - gemm - attention),
                       ("Python, dispatch and C kernels outside ATen (wall − ATen)",
                        max(0.0, wall - ops)),
                       ("whole", wall)):
        table.add_row(label, f"{sec:.3f}", f"{sec / wall:.0%}")
    Console(width=150).print(table)


def batch_args(batch_size: int, seq_len: int) -> dict:
    """The batching ``evaluate_text`` uses, where this backlm has it (older: rows only)."""
    import inspect

    from backlm.evaluation.lm import window_batches

    has_cells = "cells" in inspect.signature(window_batches).parameters
    return {"cells": batch_size * seq_len} if has_cells else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, help="an experiment folder to reuse")
    parser.add_argument("--home", type=Path, help="BACKLM_HOME to train in (data reused)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per variant a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()

    import dataclasses

    import torch
    from rich.console import Console
    from rich.table import Table

    from backlm.callbacks import CallbackList, LoopState
    from backlm.direction import ORDERS, Direction
    from backlm.distributed import DistInfo
    from backlm.evaluation import lm
    from backlm.evaluation.runner import EvalOptions, _held_out, lm_results
    from backlm.experiment import Experiment, load_model
    from backlm.hardware import cpu_has_native_bf16
    from backlm.train import loop

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"CPU: {cpu_line()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; machine may be shared: "
          "rounds alternate variants, medians and ranges are shown")
    tmp = None
    if args.experiment is None:
        tmp = tempfile.TemporaryDirectory(prefix="eval_speed_")
        home = args.home or Path(tmp.name) / "home"
        args.experiment = train_experiment(home)
        os.environ["BACKLM_HOME"] = str(home)
    exp = Experiment(args.experiment.resolve())
    cfg = exp.config()
    dtypes = [d for d in ("fp32", "bf16") if args.dtype in (d, "both")]
    if "bf16" in dtypes and not cpu_has_native_bf16():
        dtypes.remove("bf16")
        print("bf16 skipped: this CPU has no native bf16 (AVX512-BF16 or AMX)")
    step_tokens = cfg.train.total_batch_tokens
    steps = max(1, round(args.tokens / step_tokens))
    batch = cfg.train.device_batch_size
    seq_len = cfg.model.seq_len

    trainers = {}
    for dtype in dtypes:
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dtype=dtype,
                                                                     device="cpu"))
        tr = loop.TrainingRun(exp, run_cfg, DistInfo())
        trainers[dtype] = (tr, LoopState(tr.info), CallbackList([]))

    t = time.perf_counter()
    held = _held_out(exp, args.tokens, [])
    tokenize_s = time.perf_counter() - t
    loaded = load_model(exp, device="cpu")
    # the model's own order (a bidirectional model: forward)
    model_dir = Direction.parse(loaded.direction)
    order = Direction.FORWARD if model_dir is Direction.BIDIRECTIONAL else model_dir
    val = held["val"]

    def train(dtype: str):
        def go() -> float:
            tr, state, cbs = trainers[dtype]
            for _ in range(steps):
                loop._train_step(tr, state, cbs)
            return steps * step_tokens
        return go

    def evaluate(dtype: str, old: bool = False):
        def go() -> float:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" \
                else contextlib.nullcontext()
            with ctx:
                if old:
                    tb = torch.tensor(loaded.tokenizer.token_byte_lengths(), dtype=torch.float32)
                    batches = lm.window_batches(val, lm.windows(val, seq_len), loaded.direction,
                                                order, loaded.tokenizer.special_ids, batch)
                    sums = lm.score(loaded.model, batches, tb, loaded.device,
                                    n_docs=len(val.docs), max_position=seq_len)
                else:
                    sums = lm.evaluate_text(loaded, val, order, batch_size=batch)
            return sums.tokens
        return go

    def compare() -> float:
        results = lm_results(exp, EvalOptions(directions=ORDERS, tasks=["lm"],
                                              lm_tokens=max(1, args.tokens // 4), device="cpu"))
        return sum(v for data in results.values() for k, v in data["summary"].items()
                   if k.endswith("_tokens"))

    variants = {f"train {d}": train(d) for d in dtypes}
    variants["eval fp32 (backlm eval)"] = evaluate("fp32")
    if batch_args(batch, seq_len):
        variants["eval fp32, old batching (rows of windows)"] = evaluate("fp32", old=True)
    if "bf16" in dtypes:
        variants["eval bf16 autocast (reference)"] = evaluate("bf16")
    variants["compare's LM scoring (load + tokenize + 2 splits × 2 orders)"] = compare
    for go in variants.values():  # warm-up: first-call costs are not throughput
        go()
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, go in variants.items():
            t = time.perf_counter()
            tokens = go()
            rates[name].append(tokens / (time.perf_counter() - t))

    # what `train.dtype: auto` (cpu-tiny's) trains in on this CPU
    auto_bf16 = cfg.train.dtype in ("auto", "bf16") and cpu_has_native_bf16()
    run_dtype = "bf16" if auto_bf16 else "fp32"
    med = {name: statistics.median(r) for name, r in rates.items()}
    table = Table(title=f"{exp.id}: depth {cfg.model.depth}, width {cfg.model.model_dim}, "
                        f"seq_len {seq_len}, vocab {cfg.model.vocab_size}, device batch {batch}"
                        f" · {args.rounds} alternated rounds of ~{args.tokens} tokens each")
    for col in ("variant", "tok/s median", "range", "× train (same dtype)",
                f"× train {run_dtype} (auto)", "model GFLOP/s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    # training counts forward + backward (flops_per_token); an evaluation the forward third
    fpt = loaded.model.flops_per_token()
    for name, r in rates.items():
        dtype = "bf16" if "bf16" in name else "fp32"
        same = med.get(f"train {dtype}")
        auto = med.get(f"train {run_dtype}")
        trains = name.startswith("train")
        table.add_row(name, f"{med[name]:,.0f}", f"{min(r):,.0f}–{max(r):,.0f}",
                      "—" if trains or not same else f"{med[name] / same:.2f}×",
                      "—" if trains or not auto else f"{med[name] / auto:.2f}×",
                      f"{med[name] * fpt / (1 if trains else 3) / 1e9:.1f}")
    Console(width=150).print(table)
    if not args.no_profile:
        profile(loaded, val, order, batch, float(sum(len(d) for d in val.docs)), tokenize_s)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
