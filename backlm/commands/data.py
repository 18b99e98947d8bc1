"""``backlm data``: prepare, download, import, pair and diagnose training data."""

from __future__ import annotations

import typer

from backlm.commands import (
    data_diagnose,
    data_download,
    data_import,
    data_pairs,
    data_prepare,
)

app = typer.Typer(
    help="Prepare, download, import and check training data.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("prepare")(data_prepare.prepare)
app.command("download")(data_download.download)
app.command("import")(data_import.import_)
app.command("pairs")(data_pairs.pairs)
app.command("diagnose")(data_diagnose.diagnose)
