"""``backlm ls``: list experiments."""

from __future__ import annotations

from pathlib import Path

from backlm.commands.options import EXPERIMENTS_DIR, experiments_root
from backlm.ui import console, user_errors


@user_errors
def ls(
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """List experiments: id, phase, direction, depth, step, val bpb, status."""
    from rich.table import Table

    from backlm.experiment import list_rows

    root = experiments_root(experiments)
    rows = list_rows(root)
    if not rows:
        console.print(f"no experiments in {root}")
        return
    table = Table(title=f"experiments in {root}")
    for col in ("id", "phase", "direction", "depth", "step", "val bpb", "status"):
        table.add_column(col, justify="right" if col in ("depth", "step", "val bpb") else "left")
    for r in rows:
        bpb = f"{r['val_bpb']:.4f}" if isinstance(r["val_bpb"], float) else "-"
        table.add_row(r["id"], r["phase"], r["direction"], str(r["depth"]), str(r["step"]), bpb,
                      r["status"])
    console.print(table)
