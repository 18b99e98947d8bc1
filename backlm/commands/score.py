"""``backlm score EXP TEXT``: the log-probability of a text in each order the model knows."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import DEVICE, EXPERIMENT, EXPERIMENTS_DIR, STEP, experiments_root
from backlm.ui import console, user_errors


@user_errors
def score(
    experiment: str = EXPERIMENT,
    text: str = typer.Argument(..., help="The text to score (quote it); - reads standard input."),
    step: int = STEP,
    device: str = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON, per token."),
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Score a text read in each order: total log-probability and bits per byte (the same
    tokens and bytes in every order), per-token log-probabilities in reading order."""
    import json
    import sys

    from rich.table import Table

    import backlm
    from backlm.errors import check_argument, check_text, text_from_bytes

    if text == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        text = (text_from_bytes(stdin.read(), "stdin") if stdin is not None
                else check_text(sys.stdin.read(), "stdin", os_bytes=True))
    else:
        check_argument(text, "TEXT")
    model = backlm.load(experiment, experiments=experiments_root(experiments), step=step,
                        device=device or "auto")
    result = model.score(text)
    if as_json:
        typer.echo(json.dumps({"model": model.name, "step": model.step,
                               "direction": model.direction, "orders": result}))
        return
    table = Table(title=f"{model.name} (step {model.step}, {model.direction})")
    for col in ("order", "tokens", "log-prob (nats)", "bits per byte"):
        table.add_column(col, justify="left" if col == "order" else "right")
    for order, r in result.items():
        table.add_row(order, str(len(r["tokens"])), f"{r['logprob']:.3f}",
                      f"{r['bits_per_byte']:.4f}")
    console.print(table)
