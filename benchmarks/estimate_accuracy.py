"""How good is ``backlm train --estimate-only``? Predict, then train, then compare.

Usage::

    python benchmarks/estimate_accuracy.py [--config configs/cpu-tiny.yaml] [--direction backward]
                                           [--set key=value ...]

Prints the predicted wall time next to the measured training time (training_summary.json's
wall_seconds: the loop with its evaluations) and the whole command's time, with the relative
error. Target: within 30% on the cpu-tiny preset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu-tiny.yaml")
    parser.add_argument("--direction", default="backward")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from backlm.config import RunConfig, load_config
    from backlm.train.launch import estimate_only

    cfg = load_config(RunConfig, preset=args.config, overrides=args.overrides,
                      flags={"data": {"direction": args.direction}})
    t0 = time.perf_counter()
    est = estimate_only(cfg)
    est_seconds = time.perf_counter() - t0

    root = Path(tempfile.mkdtemp(prefix="backlm-estimate-"))
    cmd = [sys.executable, "-m", "backlm.cli", "train", "--config", args.config, "--direction",
           args.direction, "--id", "estimate-check", "--experiments-dir", str(root)]
    for o in args.overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
    command_seconds = time.perf_counter() - t0
    summary = json.loads((root / "estimate-check" / "training_summary.json").read_text())
    measured = summary["wall_seconds"]

    table = Table(title=f"--estimate-only vs a real run · {args.config} · {args.direction}")
    for col in ("figure", "seconds", "vs estimate"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    table.add_row("estimate (predicted wall time)", f"{est.wall_seconds:.1f}", "")
    table.add_row("measured training loop (steps + evaluations)", f"{measured:.1f}",
                  f"{(est.wall_seconds - measured) / measured:+.1%}")
    table.add_row("measured whole command (start-up included)", f"{command_seconds:.1f}",
                  f"{(est.wall_seconds - command_seconds) / command_seconds:+.1%}")
    table.add_row("time the estimate itself took", f"{est_seconds:.1f}", "")
    Console().print(table)
    print(f"throughput: estimated {est.tokens_per_sec:,.0f} tok/s, "
          f"measured {summary['tokens_per_sec']:,.0f} tok/s; experiment in {root}")


if __name__ == "__main__":
    main()
