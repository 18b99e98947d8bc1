"""``backlm 5cat``: the five-check alignment test of one checkpoint (DESIGN.md §4)."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import DEVICE, EXPERIMENT, EXPERIMENTS_DIR, STEP, experiments_root
from backlm.ui import console, progress_bars, user_errors


@user_errors
def fivecat(
    exp: str = EXPERIMENT,
    step: int = STEP,
    max_samples: int = typer.Option(None, "--max-samples",
                                    help="Documents per held-out set (default from the spec)."),
    experiments: Path = EXPERIMENTS_DIR,
    direction: str = typer.Option(None, "--direction",
                                  help="Judge the model as this direction instead of the one "
                                       "its checkpoint declares (to test a suspected mislabel)."),
    spec: str = typer.Option(None, "--spec",
                             help="Thresholds YAML (default: the packaged fivecat.yaml)."),
    device: str = DEVICE,
) -> None:
    """Run 5CAT on VAL and OOD text; exit 0 only when all five gates pass (1 otherwise)."""
    from backlm.fivecat.runner import FivecatOptions, check

    options = FivecatOptions(step=step, max_samples=max_samples, direction=direction,
                             spec=spec, device=device or "auto")
    with progress_bars() as bars:
        report = check(exp, experiments_root(experiments), options, progress=bars)
    result = report.result
    if result.direction != report.checkpoint_direction:
        console.print(f"judged as {result.direction}; the checkpoint says "
                      f"{report.checkpoint_direction}", highlight=False)
    _render(result, report.exp.id, report.step)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"saved {report.path}", highlight=False)
    raise typer.Exit(0 if result.passed else 1)


def _render(result, exp_id: str, step: int) -> None:
    from rich.table import Table

    from backlm.fivecat import GATES, INVERTED

    bidi = any(r.marker for r in result.rows)
    table = Table(title=f"5CAT · {exp_id} · step {step} · {result.direction}")
    cols = ["gate", "set", *(["marker"] if bidi else []), "figure", "value", "threshold", "",
            "detail"]
    for col in cols:
        table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for r in result.rows:
        mark = "[green]✓[/]" if r.passed else "[red]✗[/]"
        cells = [f"{r.gate} {GATES[r.gate]}", r.split, *([r.marker or ""] if bidi else []),
                 r.figure, f"{r.value:+.3f}", f"{r.op} {r.threshold:+.3f}", mark, r.detail]
        table.add_row(*cells)
    console.print(table)
    verdicts = "  ".join(f"{g} {'[green]✓[/]' if result.gate_passed(g) else '[red]✗[/]'}"
                         for g in GATES)
    colour = "green" if result.passed else "red"
    console.print(f"[bold {colour}]5CAT {result.passed_count}/5[/]  {verdicts}  · score "
                  f"(0.8·B + 0.2·D) {result.score:+.3f} · {result.seconds:.1f} s")
    for w in result.warnings:
        style = "bold red" if w.startswith(INVERTED) else "yellow"
        console.print(f"[{style}]warning:[/] {w}", highlight=False)
