"""Options several commands share, defined once so their names, defaults and help agree."""

from __future__ import annotations

from pathlib import Path

import typer

EXPERIMENTS_DIR = typer.Option(
    None, "--experiments-dir", help="Where experiments live (default ./experiments, or "
    "$BACKLM_EXPERIMENTS).")
DEVICE = typer.Option(None, "--device", help="auto, cpu or cuda (default: auto; for train, "
                      "the config's train.device).")
STEP = typer.Option(None, "--step", help="Checkpoint step (default: the best, else the latest).")
EXPERIMENT = typer.Argument(..., help="Experiment id, tag (e.g. d20_backward) or folder.")


def experiments_root(option: Path | None) -> Path:
    """The experiments folder: the option's value, else the default."""
    from backlm.paths import experiments_root as default

    return option or default()
