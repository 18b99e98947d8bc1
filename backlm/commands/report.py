"""``backlm report``: write an experiment's research report, or list every experiment."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import EXPERIMENTS_DIR, experiments_root
from backlm.ui import console, user_errors

INDENT = "   "


@user_errors
def report(
    experiment: str = typer.Argument(None, metavar="EXP", help="Experiment id, tag (e.g. "
                                     "d20_backward) or folder; without it, an overview of "
                                     "every experiment."),
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Write RESEARCH_REPORT.md and figures/ into an experiment (curves, research-log
    statistics, 5CAT, evaluations, cost, notes, samples); without EXP, list every experiment."""
    root = experiments_root(experiments)
    if experiment is None:
        _overview(root)
        return
    from backlm.report import write_report

    result = write_report(experiment, root)
    n = len(result.figures)
    console.print(f"wrote {result.path} with {n} figure{'' if n == 1 else 's'} in "
                  f"{result.exp.figures_dir}", highlight=False, soft_wrap=True)
    for line in result.missing:
        console.print(f"  missing: {line}", highlight=False, markup=False, soft_wrap=True)


def _overview(root: Path) -> None:
    from rich.table import Table
    from rich.text import Text

    from backlm.report import overview

    rows = overview(root)
    if not rows:
        console.print(f"no experiments in {root}", highlight=False)
        return
    table = Table(title=f"experiments in {root}")
    for col in ("id", "phase", "direction", "status", "step", "best", "5CAT", "report"):
        table.add_column(col, justify="right" if col in ("step", "5CAT") else "left")
    for r in rows:
        depth = r["depth_in_tree"]
        label = (INDENT * (depth - 1) + "└─ " if depth else "") + r["id"]
        table.add_row(Text(label), Text(str(r["phase"])), Text(str(r["direction"])),
                      Text(str(r["status"])), str(r["step"]), Text(r["best"] or "-"),
                      r["fivecat"] or "-", "yes" if r["report"] else "-")
    console.print(table)
    missing = sum(not r["report"] for r in rows)
    if missing:
        console.print(f"{missing} without a report: `backlm report EXP` writes one",
                      highlight=False, markup=False)
