"""The ``backlm`` command line: one Typer app, one module per command in backlm/commands.

Nothing heavy (torch, h5py, wandb) is imported here or at the top of a command module, so
``backlm --help`` answers fast.
"""

from __future__ import annotations

import typer
from typer import rich_utils as typer_rich_utils

from backlm import __version__
from backlm.commands import branch as branch_cmd
from backlm.commands import chat as chat_cmd
from backlm.commands import compare as compare_cmd
from backlm.commands import config as config_cmd
from backlm.commands import data as data_cmd
from backlm.commands import eval as eval_cmd
from backlm.commands import export as export_cmd
from backlm.commands import fivecat as fivecat_cmd
from backlm.commands import log as log_cmd
from backlm.commands import ls as ls_cmd
from backlm.commands import note as note_cmd
from backlm.commands import probe as probe_cmd
from backlm.commands import quickstart as quickstart_cmd
from backlm.commands import report as report_cmd
from backlm.commands import score as score_cmd
from backlm.commands import serve as serve_cmd
from backlm.commands import sweep as sweep_cmd
from backlm.commands import train as train_cmd
from backlm.commands import upload as upload_cmd

app = typer.Typer(
    name="backlm",
    help="Train, evaluate and compare language models that read forward, backward or both ways.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def _one_line_usage_error(exc) -> None:
    """Typer's hook for a bad flag or value (click's UsageError): one ``error:`` line naming
    the problem and where help is, like every other user error, instead of a boxed panel."""
    from backlm.ui import fail

    where = getattr(getattr(exc, "ctx", None), "command_path", "backlm")
    fail(f"{exc.format_message()} (see `{where} --help`)")


# Typer formats usage errors through this module attribute at the moment it reports one.
typer_rich_utils.rich_format_error = _one_line_usage_error


def _version(value: bool) -> None:
    if value:
        typer.echo(f"backlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """backlm: forward, backward and bidirectional language models."""


app.add_typer(data_cmd.app, name="data")
app.add_typer(config_cmd.app, name="config")
app.add_typer(probe_cmd.app, name="probe")
app.command("train")(train_cmd.train)
app.command("branch")(branch_cmd.branch)
app.command("5cat")(fivecat_cmd.fivecat)
app.command("ls")(ls_cmd.ls)
app.command("eval")(eval_cmd.eval_)
app.command("note")(note_cmd.note)
app.command("log")(log_cmd.log)
app.command("score")(score_cmd.score)
app.command("chat")(chat_cmd.chat)
app.command("serve")(serve_cmd.serve)
app.command("quickstart")(quickstart_cmd.quickstart)
app.command("sweep")(sweep_cmd.sweep)
app.command("upload")(upload_cmd.upload)
app.command("export")(export_cmd.export)
app.command("compare")(compare_cmd.compare)
app.command("report")(report_cmd.report)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
