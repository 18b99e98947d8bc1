"""``backlm eval``: language modelling and task accuracy in every direction."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import DEVICE, EXPERIMENT, EXPERIMENTS_DIR, STEP, experiments_root
from backlm.missing import is_missing
from backlm.ui import console, progress_bars, user_errors


@user_errors
def eval_(
    exp: str = EXPERIMENT,
    step: int = STEP,
    directions: str = typer.Option(
        None, "--directions", help="Orders to evaluate in (default: forward,backward); a "
        "bidirectional model gets the matching marker."),
    tasks: str = typer.Option(
        None, "--tasks",
        help="Comma list of lm, arc-easy, arc-challenge, mmlu, gsm8k (default: lm and every "
             "downloaded task)."),
    max_per_task: int = typer.Option(None, "--max-per-task",
                                     help="Evaluate only the first N examples of each task."),
    lm_tokens: int = typer.Option(
        None, "--lm-tokens", help="lm on a subset: whole documents in file order up to this "
        "many tokens per split, the same in every order (default: every document)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens",
                                       help="Tokens a generation task may write."),
    device: str = DEVICE,
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Evaluate a checkpoint: CE/bpb on val and OOD text and task scores, per direction."""
    from backlm.commands.options import refuse_unused
    from backlm.direction import ORDERS, parse_orders
    from backlm.evaluation import EvalOptions, run_eval

    listed = {t.strip().lower() for t in tasks.split(",")} if tasks is not None else None
    if listed is not None:  # an option none of the listed tasks reads is refused, not ignored
        why = f"with --tasks {tasks}"
        if "lm" not in listed:
            refuse_unused(f"{why}: only the lm task reads it", {"--lm-tokens": (lm_tokens, None)})
        if "gsm8k" not in listed:
            refuse_unused(f"{why}: only gsm8k generates",
                          {"--max-new-tokens": (max_new_tokens, 256)})
        if listed <= {"lm"}:
            refuse_unused(f"{why}: lm reads documents, not examples",
                          {"--max-per-task": (max_per_task, None)})
    options = EvalOptions(
        directions=ORDERS if directions is None else parse_orders(directions),
        tasks=tasks.split(",") if tasks is not None else None,
        step=step, max_per_task=max_per_task, lm_tokens=lm_tokens,
        max_new_tokens=max_new_tokens, device=device or "auto",
    )
    with progress_bars() as bars:
        report = run_eval(exp, experiments_root(experiments), options, bars)
    _render(report)


def _fmt(value, signed: bool = False) -> str:
    if is_missing(value):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _render(report) -> None:
    from rich.table import Table

    from backlm.evaluation.runner import direction_rows, lm_matrix

    console.print(f"[bold]{report.exp.id}[/] · {report.model_direction} model · "
                  f"step {report.step} · phase {report.phase}")
    matrix = lm_matrix(report)
    if matrix:
        table = Table(title="language modelling (* native order)")
        for col in ("split", "direction", "CE", "bpb"):
            table.add_column(col, justify="left" if col in ("split", "direction") else "right")
        for row in matrix:
            mark = " *" if row["native"] else ""
            table.add_row(row["split"], row["direction"] + mark, _fmt(row["loss"]),
                          _fmt(row["bpb"]))
        console.print(table)
    rows = direction_rows(report)
    if rows:
        table = Table(title="direction comparison (gap = native − cross)")
        table.add_column("task")
        table.add_column("metric")
        for d in report.directions:
            table.add_column(d, justify="right")
        for col in ("native", "cross", "gap"):
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(row["task"], row["metric"],
                          *(_fmt(row["scores"].get(d)) for d in report.directions),
                          _fmt(row["native"]), _fmt(row["cross"]), _fmt(row["gap"], True))
        console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    folder = report.exp.evaluations_dir(report.phase)
    console.print(f"wrote {len(report.results)} result files under {folder}"
                  + (" · summaries appended to the research log" if report.logged else ""),
                  highlight=False, soft_wrap=True)
