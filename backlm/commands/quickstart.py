"""``backlm quickstart``: train forward, backward and bidirectional cpu-tiny models, check each
with 5CAT and compare them — one command, resumable (a preset ``backlm sweep``)."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import EXPERIMENTS_DIR, experiments_root
from backlm.ui import console, progress_bars, user_errors


@user_errors
def quickstart(
    prefix: str = typer.Option("quickstart", "--prefix",
                               help="The sweep's id; members are PREFIX-d4-<direction>-sSEED."),
    seed: int = typer.Option(0, "--seed", help="One seed for all three (the same data order)."),
    steps: int = typer.Option(None, "--steps", help="Training steps per model (default 80)."),
    overrides: list[str] = typer.Option(None, "--set",
                                        help="key=value for all three configs (repeatable)."),
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """The tour: the embedded corpus, three cpu-tiny models (forward, backward, bidirectional,
    one seed), 5CAT on each, and a comparison report. Run it again after Ctrl-C: it continues
    where it stopped (finished models and 5CAT results are kept)."""
    from rich.table import Table

    from backlm.commands.render import finish, render_comparison, render_summary
    from backlm.errors import UserError
    from backlm.experiment.provenance import command_line
    from backlm.quickstart import STEPS, run_quickstart
    from backlm.ui import TrainDisplay

    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    root = experiments_root(experiments)
    say = lambda text: console.print(text, highlight=False)  # noqa: E731
    with progress_bars() as bars:
        result = run_quickstart(root, prefix=prefix, seed=seed, steps=steps or STEPS,
                                overrides=overrides or [], observers=[TrainDisplay()], say=say,
                                progress=bars, command=command_line())
    if result.stopped is not None:
        render_summary(result.stopped)
        console.print("run `backlm quickstart` again (same options) to continue where it "
                      "stopped", highlight=False)
        finish(result.stopped)
    table = Table(title="quickstart")
    for col in ("experiment", "direction", "5CAT", "verdict"):
        table.add_column(col)
    for exp_id, five in result.fivecat.items():
        verdict = ("[red]DIRECTION INVERTED[/]" if five.get("inverted") else
                   "[green]learned its direction[/]" if five.get("passed") else
                   "[yellow]some gates failed[/]")
        table.add_row(exp_id, str(five.get("direction")),
                      f"{five.get('gates_passed')}/{five.get('gates_total')}", verdict)
    console.print(table)
    if result.comparison is not None:
        render_comparison(result.comparison.comparison)
    if result.summary_path is not None:
        console.print(f"comparison report: {result.summary_path}", highlight=False,
                      soft_wrap=True)
