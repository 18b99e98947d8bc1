"""``backlm data import``: a dataset from the command line, and bad input reported as one line
that leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from backlm.cli import app
from backlm.data.shards import list_shards
from tests.helpers import all_texts as _all_texts
from tests.helpers import assert_user_error
from tests.helpers import write_jsonl as _jsonl


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _invoke(*args: str):
    return CliRunner().invoke(app, ["data", "import", *args])


def test_cli_import(tmp_path, home):
    src = _jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}"} for i in range(30)])
    result = _invoke(str(src), "--dataset", "mine")
    assert result.exit_code == 0, result.output
    out = home / "data" / "mine"
    assert len(_all_texts(out)) == 30 and list_shards(out, "val")
    assert "mine" in result.output
    again = _invoke(str(src), "--dataset", "mine")
    assert_user_error(again, "--append")
    assert _invoke(str(src), "--dataset", "mine", "--append").exit_code == 0
    assert len(_all_texts(out)) == 60


def test_cli_bad_json_is_one_line(tmp_path, home):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json at all\n')
    line = assert_user_error(_invoke(str(bad)))
    assert f"{bad}:2" in line
    assert not (home / "data" / "imported").exists()
    assert not (home / "data").exists() or list((home / "data").iterdir()) == []


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda p: p.write_bytes(os.urandom(200)), "as parquet"),
        (lambda p: pq.write_table(pa.table({"body": ["x"]}), p), "no 'text' column"),
        (lambda p: None, "no such file or folder"),
    ],
)
def test_cli_parquet_errors(tmp_path, home, setup, expected):
    path = tmp_path / "x.parquet"
    setup(path)
    assert_user_error(_invoke(str(path)), expected)
    assert not (home / "data" / "imported").exists()


def test_cli_rejects_bad_dataset_name(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert_user_error(_invoke(str(tmp_path / "a.txt"), "--dataset", "../escape"),
                      "invalid dataset name")


# --- --chat: messages JSONL -------------------------------------------------------------------


def _chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"answer {i}"}]}


def test_cli_import_chat(tmp_path, home):
    from backlm.data.chat import chat_shards, read_conversations

    src = _jsonl(tmp_path / "chats.jsonl", [_chat(i) for i in range(40)])
    result = _invoke("--chat", str(src), "--dataset", "talk")
    assert result.exit_code == 0, result.output
    assert "conversations" in result.output and "talk" in result.output
    out = home / "data" / "talk"
    counts = {s: sum(len(read_conversations(p)) for p in chat_shards(out, s))
              for s in ("train", "val")}
    assert counts["train"] + counts["val"] == 40 and counts["val"] >= 1
    assert_user_error(_invoke("--chat", str(src), "--dataset", "talk"), "already exists")


@pytest.mark.parametrize(("line", "expected"), [
    ("not json", ":2: not valid JSON"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', ":2: message 1 has role 'robot'"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
     ":2: turn 2 is user but should be assistant"),
])
def test_cli_import_chat_bad_line_is_one_line(tmp_path, home, line, expected):
    import json

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_chat(0)) + "\n" + line + "\n" + json.dumps(_chat(1)) + "\n")
    message = assert_user_error(_invoke("--chat", str(bad), "--dataset", "talk"))
    assert "bad.jsonl" in message and expected in message
    assert not (home / "data" / "talk").exists()


@pytest.mark.parametrize(("setup", "expected"), [
    (lambda p: None, "no such file"),
    (lambda p: pq.write_table(pa.table({"text": ["x"]}), p), "no `messages` column"),
])
def test_cli_import_chat_bad_files(tmp_path, home, setup, expected):
    path = tmp_path / "x.parquet"
    setup(path)
    assert_user_error(_invoke("--chat", str(path), "--dataset", "talk"), expected)
    assert not (home / "data" / "talk").exists()
