"""``backlm log``: show an experiment's research log (``{phase}.h5``), or follow a live run."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from backlm.commands.options import EXPERIMENT, EXPERIMENTS_DIR, experiments_root
from backlm.ui import console, user_errors

FOLLOW_COLUMNS = ("loss", "lr_mult", "grad_norm", "tokens_per_sec", "val_loss", "val_bpb")


@user_errors
def log(
    experiment: str = EXPERIMENT,
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="Print new steps every second until the run ends."),
    top: int = typer.Option(12, "--top", min=0, help="Gradient/activation rows shown (0: all)."),
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Research log contents: groups, shapes and last values; --follow a live run."""
    from backlm.experiment import find
    from backlm.logs.reader import log_path, summarize

    exp = find(experiment, experiments_root(experiments))
    path = log_path(exp)
    summary = summarize(path, top)
    _render(summary)
    if follow:
        last = max((r["last"] for r in summary.groups if r["name"] == "/scalars"
                    and r["last"] is not None), default=-1)
        _follow(exp, path, last)


def _follow(exp, path: Path, last: int) -> None:
    import time

    from backlm.logs.reader import new_scalar_rows, run_is_live

    try:
        while True:
            live = run_is_live(exp)  # read before the rows, so the final flush is not missed
            for row in new_scalar_rows(path, last):
                last = row["step"]
                console.print(f"step {last:>7} · " + " · ".join(
                    f"{k} {_fmt(row[k])}" for k in FOLLOW_COLUMNS
                    if k in row and math.isfinite(row[k])), highlight=False)
            if not live:
                console.print(f"run {exp.id} is not running ({exp.metadata().get('status')})")
                return
            time.sleep(1.0)
    except KeyboardInterrupt:
        return  # Ctrl-C ends following; not an error


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1e3 else f"{value:,.0f}"


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _render(s) -> None:
    a = s.attrs
    console.print(f"[bold]{s.path}[/] · experiment {a.get('experiment_id', '?')} · phase "
                  f"{a.get('phase', '?')} · {a.get('direction', '?')} · schema "
                  f"{a.get('schema_version', '?')}" + (f" · resumed at {a['resumed_at']}"
                                                       if a.get("resumed_at") else ""))
    console.print(_table("groups", ["group", "datasets", "rows", "shapes", "last step"], [
        [g["name"], str(g["datasets"]), str(g["rows"]), g["shapes"],
         "-" if g["last"] is None else str(g["last"])] for g in s.groups]))
    if s.scalars:
        console.print(_table("scalars", ["name", "at last step", "last value", "its step"], [
            [r["name"], _fmt(r["value"]), _fmt(r["last"]),
             "-" if r["last_step"] is None else str(r["last_step"])] for r in s.scalars]))
    if s.per_token:
        p = s.per_token
        console.print(_table(f"per_token: {p['slices']} slices of {p['shape']}",
                             ["last step", "mean loss", "first ¼ positions", "last ¼ positions",
                              "argmax accuracy"],
                             [[str(p["last_step"]), _fmt(p["mean_loss"]),
                               _fmt(p["first_quarter"]), _fmt(p["last_quarter"]),
                               f"{p['accuracy']:.1%}" if math.isfinite(p["accuracy"]) else "-"]]))
    for title, data, cols in (("gradients (largest norm first)", s.gradients, GRAD_COLS),
                              ("activations (largest rms first)", s.activations, ACT_COLS)):
        if data:
            console.print(_table(f"{title}, step {data[0]['step']}", ["name", *cols],
                                 [[r["name"], *(_fmt(r.get(c, math.nan)) for c in cols)]
                                  for r in data]))
    if s.evals:
        console.print(_table("eval (latest of each)", ["kind", "name", "step", "value"], [
            [r["kind"], r["name"], str(r["step"]), _fmt(r["value"])] for r in s.evals]))


GRAD_COLS = ["norm", "mean", "std", "max_abs"]
ACT_COLS = ["mean", "std", "rms", "max_abs"]
