"""``backlm eval``: language modelling and task accuracy in every direction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer

from backlm.ui import console, user_errors


@user_errors
def eval_(
    exp: str = typer.Argument(..., help="Experiment id, tag (e.g. d20_backward) or path."),
    step: int = typer.Option(None, "--step", help="Checkpoint step (default: best, else latest)."),
    directions: str = typer.Option(
        "forward,backward", "--directions",
        help="Orders to evaluate in; a bidirectional model gets the matching marker."),
    tasks: str = typer.Option(
        None, "--tasks",
        help="Comma list of lm, arc-easy, arc-challenge, mmlu, gsm8k (default: lm and every "
             "downloaded task)."),
    max_per_task: int = typer.Option(None, "--max-per-task",
                                     help="Evaluate only the first N examples of each task."),
    lm_tokens: int = typer.Option(None, "--lm-tokens",
                                  help="Tokens per split for lm (default: train.eval_tokens)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens",
                                       help="Tokens a generation task may write."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    experiments: Path = typer.Option(None, "--experiments-dir",
                                     help="Where experiments live (default ./experiments)."),
) -> None:
    """Evaluate a checkpoint: CE/bpb on val and OOD text and task scores, per direction."""
    from backlm.evaluation.runner import EvalOptions, log_to_research_log, run_eval
    from backlm.paths import experiments_root

    options = EvalOptions(
        directions=directions, tasks=tasks.split(",") if tasks is not None else None,
        step=step, max_per_task=max_per_task, lm_tokens=lm_tokens,
        max_new_tokens=max_new_tokens, device=device,
    )
    with _progress() as bars:
        report = run_eval(exp, experiments or experiments_root(), options, bars)
    logged = log_to_research_log(report)
    _render(report, logged)


@contextlib.contextmanager
def _progress() -> Iterator:
    """A transient rich display with one bar per task and direction."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    display = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       console=console, transient=True)
    ids: dict[str, int] = {}

    def report(label: str, done: int, total: int) -> None:
        if label not in ids:
            ids[label] = display.add_task(label, total=total)
        display.update(ids[label], completed=done, total=total)

    with display:
        yield report


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _render(report, logged: bool) -> None:
    from rich.table import Table

    from backlm.evaluation.runner import direction_rows, lm_matrix

    console.print(f"[bold]{report.exp_id}[/] · {report.model_direction} model · "
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
    folder = report.exp_path / "evaluations" / report.phase
    console.print(f"wrote {len(report.results)} result files under {folder}"
                  + (" · summaries appended to the research log" if logged else ""),
                  highlight=False, soft_wrap=True)
