"""Time from the `backlm train` command to its first training step, as a user waits for it.

Usage::

    python benchmarks/first_step.py [--config configs/cpu-tiny.yaml] [--rounds 2]

Runs the README's main job (``backlm train --direction backward --config ...``) as a
subprocess with ``--max-steps 1`` in a fresh experiments folder, with wandb in its default
mode (offline without an API key) and with ``--wandb off``, alternating, and reads the
``startup`` block the trainer writes to metadata.json: seconds from the process start to the
start and to the end of the first training step. Interpreter start-up, imports, the CPU peak
measurement, experiment creation, loggers and the step-0 evaluation all count. The dataset
must already be prepared (the very first `backlm train` on a machine also prepares the
embedded corpus; `benchmarks/` reports that separately).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def run_once(config: str, wandb: str, root: Path, name: str) -> dict[str, float]:
    """One `backlm train --max-steps 1`; its startup figures and the whole command's time."""
    argv = [sys.executable, "-m", "backlm.cli", "train", "--direction", "backward",
            "--config", config, "--max-steps", "1", "--id", name,
            "--experiments-dir", str(root), "--wandb", wandb]
    t = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode != 0:
        raise SystemExit(f"backlm train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    meta = json.loads((root / name / "metadata.json").read_text())
    return {**meta["startup"], "command_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu-tiny.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    results: dict[str, list[dict[str, float]]] = {"auto": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="backlm-first-step-") as tmp:
        for r in range(args.rounds):
            for mode in results:
                results[mode].append(run_once(args.config, mode, Path(tmp), f"{mode}-{r}"))

    table = Table(title=f"`backlm train --direction backward --config {args.config} --max-steps 1`"
                        f", best of {args.rounds}")
    for col in ("wandb", "→ first step starts", "→ first step ends", "whole command (1 step)",
                "< 15 s"):
        table.add_column(col, justify="right")
    for mode, rows in results.items():
        start = min(r["first_step_start_s"] for r in rows)
        table.add_row("default (offline)" if mode == "auto" else "off", f"{start:.1f} s",
                      f"{min(r['first_step_end_s'] for r in rows):.1f} s",
                      f"{min(r['command_s'] for r in rows):.1f} s",
                      "[green]yes[/]" if start < 15 else "[red]no[/]")
    Console().print(table)


if __name__ == "__main__":
    main()
