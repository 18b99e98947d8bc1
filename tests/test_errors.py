"""The user-error boundary, end to end: whatever a user can cause leaves ``backlm`` with exit
code 2 and one ``error:`` line on stderr, never a traceback; a bug still surfaces as one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backlm import ui
from backlm.cli import app
from backlm.errors import UserError
from tests.helpers import assert_user_error, run_cli


def backlm_process(*args: str, cwd) -> subprocess.CompletedProcess:
    # a real process: the entry point, Typer's standalone mode and the console are all part of
    # what the user sees, and a CliRunner replaces some of them
    return subprocess.run([sys.executable, "-m", "backlm.cli", *args], cwd=cwd, timeout=120,
                          env={**os.environ, "COLUMNS": "60"}, capture_output=True, text=True)


def test_a_user_error_from_inside_a_command_is_one_line_on_stderr(tmp_path):
    res = backlm_process("note", "ghost", "hi", "--experiments-dir", str(tmp_path), cwd=tmp_path)
    # longer than COLUMNS: one line still, not wrapped
    assert_user_error(res, "no experiment 'ghost'", str(tmp_path))
    assert res.stdout == ""
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args,words", [
    (["note", "--bogus"], "no such option: --bogus"),
    (["train", "--max-steps", "soon"], "--max-steps"),
])
def test_a_bad_flag_or_value_is_one_line_naming_it(tmp_path, args, words):
    assert_user_error(backlm_process(*args, cwd=tmp_path), words, "--help")


def test_the_message_reaches_the_user_whole_and_literal(exps, monkeypatch):
    def refuse(*a, **k):
        raise UserError("bad [bold]ghost[/bold]\nsecond line")

    monkeypatch.setattr("backlm.experiment.find", refuse)
    # newlines fold into the one line; brackets are text, not console markup
    assert_user_error(run_cli(["note", "x", "hi"]), "bad [bold]ghost[/bold] second line")


def test_an_os_error_is_one_line_naming_the_path(exps, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", "/srv/exps/x")

    monkeypatch.setattr("backlm.experiment.find", denied)
    assert_user_error(run_cli(["note", "x", "hi"]), "permission denied: /srv/exps/x")


def test_a_bug_is_not_dressed_up_as_a_user_error(exps, monkeypatch):
    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("backlm.experiment.find", bug)
    res = run_cli(["note", "x", "hi"])
    assert res.exit_code == 1 and isinstance(res.exception, ZeroDivisionError), res.output


def _commands(typer_app, path=("backlm",)):
    for command in typer_app.registered_commands:
        yield " ".join((*path, command.name or command.callback.__name__)), command.callback
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance, (*path, group.name))


def test_every_command_runs_inside_the_boundary():
    # the behaviour above holds for a command only if ui.user_errors wraps it
    boundary = ui.user_errors(lambda: None).__code__
    commands = dict(_commands(app))
    assert len(commands) >= 19 and "backlm data import" in commands
    bare = [name for name, callback in commands.items() if callback.__code__ is not boundary]
    assert not bare, f"{bare} would print a traceback for a user error"
