"""``backlm note``: append a timestamped note (or issue) to an experiment."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import EXPERIMENT, EXPERIMENTS_DIR, experiments_root
from backlm.ui import console, user_errors


@user_errors
def note(
    experiment: str = EXPERIMENT,
    text: str = typer.Argument(..., help="The note, one line (quote it)."),
    issue: bool = typer.Option(False, "--issue", help="Record it as an issue rather than a note."),
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Append a line with the time and the experiment's latest step to notes/notes.txt."""
    from backlm.errors import check_argument
    from backlm.experiment import add_note, find

    check_argument(text, "TEXT")
    exp = find(experiment, experiments_root(experiments))
    exp.metadata()  # a note goes only into an experiment whose metadata is sound
    path, line = add_note(exp, text, issue)
    console.print(f"{'issue' if issue else 'note'} added to {path}:\n  {line}", highlight=False,
                  markup=False, soft_wrap=True)
