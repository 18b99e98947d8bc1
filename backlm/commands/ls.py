"""``backlm ls``: list experiments, or show them as a lineage tree (``--tree``)."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import EXPERIMENTS_DIR, experiments_root
from backlm.missing import shown
from backlm.ui import console, user_errors

INDENT = "   "  # under the parent's id, past its "└─ "


@user_errors
def ls(
    experiments: Path = EXPERIMENTS_DIR,
    tree: bool = typer.Option(False, "--tree", help="Show each experiment under its parent: "
                              "phase, direction, the parent's step it started from, best "
                              "metric, status."),
) -> None:
    """List experiments: id, phase, direction, depth, step, val bpb, status; a sweep's
    members grouped under it."""
    from rich.table import Table
    from rich.text import Text

    from backlm.experiment import list_rows
    from backlm.train.plan import FINISHED

    root = experiments_root(experiments)
    if tree:
        _render_tree(root)
        return
    rows = list_rows(root)
    if not rows:
        console.print(f"no experiments in {root}")
        return
    table = Table(title=f"experiments in {root}")
    for col in ("id", "phase", "direction", "depth", "step", "val bpb", "status"):
        table.add_column(col, justify="right" if col in ("depth", "step", "val bpb") else "left")
    group = None
    for r in rows:
        if r["sweep"] != group:  # a sweep's members under a line of their own
            group = r["sweep"]
            table.add_section()
            members = [x for x in rows if x["sweep"] == group]
            done = sum(x["status"] in FINISHED for x in members)
            table.add_row(Text(f"sweep {group}" if group else "not in a sweep", style="bold"),
                          "", "", "", "", "", f"{done}/{len(members)} finished" if group else "")
        label = (INDENT + "└─ " if group else "") + r["id"]
        table.add_row(Text(label), r["phase"], r["direction"], str(r["depth"]), str(r["step"]),
                      shown(r["val_bpb"]), r["status"])
    console.print(table)


def _render_tree(root: Path) -> None:
    from rich.table import Table
    from rich.text import Text

    from backlm.experiment import tree_rows

    rows = tree_rows(root)
    if not rows:
        console.print(f"no experiments in {root}")
        return
    table = Table(title=f"experiment lineage in {root}")
    for col in ("id", "phase", "direction", "from step", "best", "status"):
        table.add_column(col, justify="right" if col == "from step" else "left")
    for r in rows:
        depth = r["depth_in_tree"]
        label = (INDENT * (depth - 1) + "└─ " if depth else "") + r["id"]
        if r["note"]:
            label += f"\n{r['note']}"
        step = "-" if r["parent_step"] is None else str(r["parent_step"])
        table.add_row(Text(label), Text(str(r["phase"])), Text(str(r["direction"])), step,
                      Text(r["best"] or "-"), Text(str(r["status"])))
    console.print(table)
