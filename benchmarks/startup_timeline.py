"""Where `backlm train`'s start-up time goes, phase by phase.

Usage::

    python benchmarks/startup_timeline.py [--config configs/cpu-tiny.yaml] [--wandb auto|off]

Runs the README's main job in this process for two training steps, with the trainer's
start-up phases (experiment creation, the CPU peak measurement, optimizer construction,
loggers and callbacks, evaluation, training steps) wrapped in timers, and prints when each
began and how long it took, in seconds since the process started. It also measures the
matmul peak on 1024² products next to the sizes backlm uses, which is why MFU is reported
against the latter. `benchmarks/first_step.py` gives the end-to-end figure.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu-tiny.yaml")
    parser.add_argument("--wandb", default="auto")
    args = parser.parse_args()

    import torch  # noqa: F401  (timed with the other imports; train would import it next)

    from backlm import cli, hardware, logs
    from backlm.hardware import process_start
    from backlm.train import launch, loop, optim

    t0 = process_start()
    imported = time.time() - t0
    phases: list[tuple[str, float, float]] = []

    def timed(module, name: str) -> None:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            start = time.time()
            try:
                return fn(*a, **k)
            finally:
                phases.append((f"{module.__name__.split('.')[-1]}.{name}", start - t0, time.time() - start))

        setattr(module, name, wrapper)

    for module, name in [(launch, "create_experiment"), (launch, "cache_tokens"),
                         (hardware, "cpu_peak"), (optim, "build_optimizer"), (logs, "callbacks"),
                         (loop, "evaluate"), (loop, "_train_step")]:
        timed(module, name)
    with tempfile.TemporaryDirectory(prefix="backlm-startup-") as tmp:
        sys.argv = ["backlm", "train", "--direction", "backward", "--config", args.config,
                    "--experiments-dir", tmp, "--max-steps", "2", "--wandb", args.wandb]
        try:
            cli.main()
        except SystemExit as exc:
            if exc.code:
                raise

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"`backlm train` start-up ({args.config}, wandb {args.wandb}), "
                        "seconds since the process started")
    for col in ("phase", "starts at", "takes"):
        table.add_column(col, justify="right")
    table.add_row("python start-up, torch and backlm imports", "0.00", f"{imported:.2f}")
    for name, start, took in sorted(phases, key=lambda p: p[1]):
        table.add_row(name, f"{start:.2f}", f"{took:.2f}")
    Console().print(table)
    small = hardware.measure_matmul_peak("fp32", (1024,)) / 1e9
    large = hardware.measure_matmul_peak("fp32") / 1e9
    Console().print(f"fp32 matmul peak: {small:.0f} GFLOP/s on 1024² products, {large:.0f} GFLOP/s on "
                    f"{' and '.join(f'{n}²' for n in hardware.PEAK_SIZES['fp32'])} (what MFU uses); "
                    f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
