"""``backlm data``: prepare, download, import, pair and diagnose training data."""

from __future__ import annotations

import typer

from backlm.commands.data import diagnose, download, importer, pairs, prepare

__all__ = ["app"]

app = typer.Typer(
    help="Prepare, download, import and check training data.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("prepare")(prepare.prepare)
app.command("download")(download.download)
app.command("import")(importer.import_)
app.command("pairs")(pairs.pairs)
app.command("diagnose")(diagnose.diagnose)
