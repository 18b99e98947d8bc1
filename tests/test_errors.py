"""The user-error boundary, end to end: whatever a user can cause leaves ``backlm`` with exit
code 2 and one ``error:`` line on stderr, never a traceback; a bug still surfaces as one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

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


# --- the one text boundary: every entry point, the same hostile text ---------------------------
# A lone surrogate spelled as JSON's escape, bytes that are not UTF-8, and (for arguments) what
# Python makes of such bytes in argv (surrogateescape). Each entry point must answer with one
# line naming where the text came from, exit 2, no traceback, nothing written.

SURROGATE_JSON = '"bad \\ud800 text"'  # JSON source: the escape, not the character
BAD_BYTES = b"caf\xff\xfe"
ARGV_BYTES = "caf\udcff\udcfe"  # how Python hands the bytes above to a program in argv
CHAT_LINE = '{"messages": [{"role": "user", "content": %s}, {"role": "assistant", "content": "a"}]}'


def _file(tmp_path, name: str, data: bytes):
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def _import_case(tmp_path, name, data, *flags):
    return ["data", "import", *flags, str(_file(tmp_path, name, data)), "--dataset", "new"]


FILE_CASES = {
    "import jsonl surrogate": (lambda t: _import_case(
        t, "a.jsonl", b'{"text": "fine"}\n{"text": %s}\n' % SURROGATE_JSON.encode()),
        ["a.jsonl:2", "lone surrogate \\ud800", "'text'"]),
    "import jsonl bytes": (lambda t: _import_case(
        t, "a.jsonl", b'{"text": "fine"}\n{"text": "' + BAD_BYTES + b'"}\n'),
        ["a.jsonl:2", "not valid UTF-8 (byte 0xff"]),
    "import txt bytes": (lambda t: _import_case(t, "a.txt", b"ok\n" + BAD_BYTES),
                         ["a.txt", "not valid UTF-8 (byte 0xff at position 6)"]),
    "import chat surrogate": (lambda t: _import_case(
        t, "c.jsonl", (CHAT_LINE % '"q"' + "\n" + CHAT_LINE % SURROGATE_JSON).encode(), "--chat"),
        ["c.jsonl:2", "lone surrogate \\ud800"]),
    "import chat bytes": (lambda t: _import_case(
        t, "c.jsonl", (CHAT_LINE % '"q"').encode() + b"\n" + BAD_BYTES, "--chat"),
        ["c.jsonl:2", "not valid UTF-8 (byte 0xff"]),
    "pairs surrogate": (lambda t: ["data", "pairs", str(_file(
        t, "p.jsonl", b'{"text": %s}\n' % SURROGATE_JSON.encode())), str(t / "out.jsonl"),
        "--source-label", "x", "--dataset", "tiny"], ["p.jsonl:1", "lone surrogate \\ud800"]),
    "pairs bytes": (lambda t: ["data", "pairs", str(_file(t, "p.jsonl", BAD_BYTES)),
                               str(t / "out.jsonl"), "--source-label", "x", "--dataset", "tiny"],
                    ["p.jsonl:1", "not valid UTF-8 (byte 0xff at position 3)"]),
    "score argument": (lambda t: ["score", "ghost", ARGV_BYTES],
                       ["argument TEXT", "not valid UTF-8 (byte 0xff at position 3)"]),
    "chat prompt": (lambda t: ["chat", "-m", "ghost", "-p", ARGV_BYTES],
                    ["argument --prompt", "byte 0xff"]),
    "note text": (lambda t: ["note", "ghost", ARGV_BYTES], ["argument TEXT", "byte 0xff"]),
    "train description": (lambda t: ["train", "--max-steps", "1", "--description", ARGV_BYTES],
                          ["argument --description", "byte 0xff"]),
    "branch description": (lambda t: ["branch", "sft", "--parent", "ghost", "--description",
                                      ARGV_BYTES], ["argument --description", "byte 0xff"]),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_every_entry_point_refuses_text_that_is_not_unicode(home, case):
    make, fragments = FILE_CASES[case]
    args = make(home)
    before = sorted(p for p in home.rglob("*") if p.parent.name != "in")
    res = run_cli(args)
    assert_user_error(res, *fragments)
    assert sorted(p for p in home.rglob("*") if p.parent.name != "in") == before  # nothing written


def test_score_refuses_stdin_that_is_not_utf8(home):
    res = CliRunner().invoke(app, ["score", "ghost", "-"], input=b"ok " + BAD_BYTES)
    assert_user_error(res, "stdin", "not valid UTF-8 (byte 0xff at position 6)")


def test_a_terminal_chat_line_goes_through_the_boundary(monkeypatch):
    from backlm.commands import chat
    from backlm.direction import Direction

    lines = iter([ARGV_BYTES, UnicodeDecodeError("utf-8", BAD_BYTES, 3, 4, "invalid"), EOFError()])

    def typed(_prompt):
        line = next(lines)
        if isinstance(line, BaseException):
            raise line
        return line

    class Session:  # never sent anything: the boundary refuses the line first
        order = Direction.FORWARD

        def send(self, *a):
            raise AssertionError("hostile text reached the model")

    shown = []
    monkeypatch.setattr(chat.console, "input", typed)
    monkeypatch.setattr(chat.console, "print", lambda *a, **k: shown.append(str(a[0]) if a else ""))
    chat._loop(Session(), None)
    refusals = [s for s in shown if "the chat line" in s]
    assert len(refusals) == 2 and all("not valid UTF-8 (byte 0xff at position 3)" in s
                                      for s in refusals), shown


@pytest.mark.parametrize("raw, param, words", [
    (b'{"model": "m", "messages": [{"role": "user", "content": %s}]}' % SURROGATE_JSON.encode(),
     "messages[0].content", "lone surrogate \\ud800"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "' + BAD_BYTES + b'"}]}',
     None, "the request body: not valid UTF-8 (byte 0xff at position 60)"),
])
def test_a_request_body_goes_through_the_same_boundary(raw, param, words):
    from backlm.direction import Direction
    from backlm.serve.wire import ApiError, Limits, chat_request, parse_body

    with pytest.raises(ApiError) as err:
        chat_request(parse_body(raw), {"m": None}, Direction.FORWARD, Limits())
    assert (err.value.status, err.value.param) == (400, param)
    assert words in err.value.message and "\n" not in err.value.message
    assert err.value.body()["error"]["type"] == "invalid_request_error"  # the shape kept


def test_real_argv_bytes_reach_the_boundary(tmp_path):
    # the bytes as a shell passes them, through a real process's surrogateescape decoding
    res = subprocess.run([sys.executable, "-m", "backlm.cli", "note", "ghost", b"caf\xff\xfe"],
                         cwd=tmp_path, timeout=120, capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "60"})
    assert_user_error(res, "argument TEXT", "not valid UTF-8 (byte 0xff at position 3)")
    assert not any(tmp_path.iterdir())
