"""Research-logging overhead: training step time with logging at default cadences vs none.

Usage::

    python benchmarks/logging_overhead.py [--steps 51] [--rounds 2] [--depth 4]
        [--head-dim 64] [--seq-len 256] [--batch 8]

One process trains the same experiment config through :func:`backlm.train.loop.run` several
times, alternating two callback sets so machine noise hits both alike:

- ``null``: no loggers at all (only the step timer below);
- ``logging``: what ``backlm train`` installs — metrics.jsonl, the ``{phase}.h5`` research log
  (scalars every step; per-token slices, gradient, activation and attention statistics every
  50 steps; flushes every 10 steps), generation samples every 500 steps — with wandb off
  (wandb runs in its own process and is not part of the research-log budget).

A timer callback records the wall time between successive ``on_step_start`` calls, so each
interval covers a whole step including every callback's work; evaluation and checkpointing
happen only after the last step and are excluded. Steps 50, 100, ... carry the per-token,
gradient, activation and attention records, so the mean (not the median) is the honest per-step cost. Every hook of
the logging callbacks is also timed directly: a noise-free measure of the time logging adds.
Generation samples (every 500 steps) are timed once and amortised; one attention record on a
forward of its own (steps where no per-token slice shares it) is timed apart. Target: ≤ 3 %.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from backlm.callbacks import Callback, LoopState

HOOKS = ("on_train_start", "on_step_start", "on_after_backward", "on_eval", "on_step_end",
         "on_before_checkpoint", "on_checkpoint", "on_message", "on_train_end")
PER_STEP = ("on_step_start", "on_after_backward", "on_step_end")
RESULTS: dict[str, Any] = {}


class StepTimer(Callback):
    """Wall time between successive step starts (one whole step each)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_step_start(self, state: LoopState, step: int) -> None:
        self.starts.append(time.perf_counter())

    def intervals(self, skip: int) -> list[float]:
        """Seconds per step, without the first ``skip`` (warm-up) steps."""
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)][skip:]


class Timed(Callback):
    """Wraps a callback and adds the time spent in its hooks to a shared counter."""

    def __init__(self, inner: Callback, totals: dict[str, float]) -> None:
        self.inner, self.totals = inner, totals

    def __getattribute__(self, name: str) -> Any:
        if name not in HOOKS:
            return object.__getattribute__(self, name)
        inner, totals = object.__getattribute__(self, "inner"), object.__getattribute__(
            self, "totals")

        def call(*args: Any) -> None:
            t = time.perf_counter()
            getattr(inner, name)(*args)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t

        return call


def null_callbacks(state: LoopState) -> list[Callback]:
    """The timer alone."""
    timer = StepTimer()
    RESULTS.setdefault("null", []).append({"timer": timer})
    return [timer]


def logging_callbacks(state: LoopState) -> list[Callback]:
    """The timer plus backlm's logging callbacks, each hook timed."""
    from backlm.logs import callbacks

    timer, totals = StepTimer(), {}
    RESULTS.setdefault("logging", []).append({"timer": timer, "totals": totals,
                                              "run": state.run})
    return [timer, *(Timed(cb, totals) for cb in callbacks(state))]


def make_experiment(root: Path, name: str, args: argparse.Namespace):
    """An experiment on the embedded pydocs corpus (prepared on first use)."""
    from backlm.config import RunConfig, load_config
    from backlm.train.launch import create_experiment

    sets = [f"model.depth={args.depth}", f"model.head_dim={args.head_dim}",
            f"model.seq_len={args.seq_len}", "model.vocab_size=8192",
            f"train.device_batch_size={args.batch}",
            f"train.total_batch_tokens={args.batch * args.seq_len}",
            f"train.max_steps={args.steps}", f"train.eval_every={10 * args.steps}",
            f"train.save_every={10 * args.steps}", "train.eval_tokens=4096",
            "train.device=cpu", "data.dataset=pydocs", f"id={name}"]
    # a flag, as --wandb off passes it (through --set, YAML would read `off` as false)
    cfg = load_config(RunConfig, overrides=sets, flags={"log": {"wandb": "off"}})
    return create_experiment(cfg, root), cfg


def run_all(args: argparse.Namespace, root: Path) -> None:
    """Alternate null and logging runs, ``args.rounds`` of each (ABBA order, against drift)."""
    from backlm.train.loop import run

    pair = [("null", null_callbacks), ("logging", logging_callbacks)]
    for i in range(args.rounds):
        for kind, factory in pair if i % 2 == 0 else pair[::-1]:
            exp, cfg = make_experiment(root, f"{kind}{i}", args)
            t = time.perf_counter()
            run(exp, cfg, callbacks=factory)
            print(f"round {i + 1}/{args.rounds} {kind:>7}: {time.perf_counter() - t:.0f} s",
                  flush=True)


def sample_cost(args: argparse.Namespace) -> float:
    """Seconds for one round of generation samples, on the last logging run's model."""
    from backlm.logs.samples import generate_samples

    run = RESULTS["logging"][-1]["run"]
    t = time.perf_counter()
    generate_samples(run, args.steps)
    return time.perf_counter() - t


def attention_cost() -> tuple[float, int]:
    """Seconds for one attention-statistics record on its own forward (the case where no
    per-token slice shares it), median of 5, on the last logging run's model; its cadence."""
    import torch

    from backlm.logs.attention import measure

    run = RESULTS["logging"][-1]["run"]
    cfg = run.cfg
    x = torch.randint(0, cfg.model.vocab_size, (cfg.log.per_token_rows, cfg.model.seq_len))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        measure(run.model, x, run.autocast())
        times.append(time.perf_counter() - t)
    return statistics.median(times), cfg.log.attention_every


def report(args: argparse.Namespace, sample_s: float) -> None:
    """Rich table: ms/step for both, overhead %, time inside logging hooks."""
    from rich.console import Console
    from rich.table import Table

    skip = 3
    null = [x for r in RESULTS["null"] for x in r["timer"].intervals(skip)]
    logged = [x for r in RESULTS["logging"] for x in r["timer"].intervals(skip)]
    runs = len(RESULTS["logging"])
    # Hooks that run every step, per step; the rest (final checkpoint flush, close) once a run.
    inside = sum(r["totals"].get(h, 0.0) for r in RESULTS["logging"] for h in PER_STEP)
    inside /= runs * args.steps
    once = sum(v for r in RESULTS["logging"] for h, v in r["totals"].items()
               if h not in PER_STEP) / runs
    sample_every = RESULTS["logging"][-1]["run"].cfg.log.sample_every
    amortised = sample_s / sample_every if sample_every else 0.0
    base = statistics.mean(null)
    table = Table(title=f"training step, depth {args.depth}, head_dim {args.head_dim}, "
                        f"seq {args.seq_len}, batch {args.batch}, pydocs, CPU "
                        f"({len(null)} + {len(logged)} timed steps)")
    for col in ("logging", "ms/step (mean)", "ms/step (median)", "overhead vs null (mean)"):
        table.add_column(col, justify="right" if col != "logging" else "left")
    table.add_row("null (no loggers)", f"{base * 1e3:.1f}", f"{statistics.median(null) * 1e3:.1f}",
                  "-")
    table.add_row("HDF5 + per-token + stats + JSONL", f"{statistics.mean(logged) * 1e3:.1f}",
                  f"{statistics.median(logged) * 1e3:.1f}",
                  f"{(statistics.mean(logged) / base - 1):+.2%}")
    table.add_row("time inside the per-step logging hooks", f"{inside * 1e3:.2f}", "",
                  f"{inside / base:+.2%}")
    att_s, att_every = attention_cost()
    table.add_row(f"  of which attention statistics, on a forward of their own ({att_s * 1e3:.0f}"
                  f" ms every {att_every} steps)", f"{att_s / att_every * 1e3:.2f}", "",
                  f"{att_s / att_every / base:+.2%}")
    table.add_row(f"+ generation samples ({sample_s * 1e3:.0f} ms every {sample_every} steps)",
                  f"{amortised * 1e3:.2f}", "", f"{amortised / base:+.2%}")
    Console().print(table)
    Console().print(f"once per run, after the last step (final flush, close): {once * 1e3:.0f} ms")
    total = (inside + amortised) / base
    Console().print(f"logging cost measured inside its hooks: {total:.2%} of a step "
                    f"(target ≤ 3 %: {'met' if total <= 0.03 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=51,
                        help="steps per run (51: step 50 carries per-token and statistics)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kind, alternated")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="backlm-logbench-") as tmp:
        run_all(args, Path(tmp))
        report(args, sample_cost(args))


if __name__ == "__main__":
    main()
