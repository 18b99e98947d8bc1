"""``backlm data pairs``: records written, validated or previewed from the command line; bad
input reported as one line that leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, run_cli, write_jsonl

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello 😀"}]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"text": "doc3: alpha beta", "id": "a"},
                                               {"messages": CHAT}, {"text": "gamma"}])


def _pairs(*args: str):
    return run_cli(["data", "pairs", *args])


def test_writes_pairs_with_the_dataset_tokenizer(home, src, tmp_path):
    out = tmp_path / "out.jsonl"
    res = _pairs(str(src), str(out), "--source-label", "unit", "--dataset", "tiny")
    assert res.exit_code == 0, res.output
    assert "wrote 6 records" in res.output and "2 text, 1 chat" in res.output
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["direction"] for r in rows] == ["forward", "backward"] * 3
    for fwd, bwd in zip(rows[::2], rows[1::2], strict=True):
        assert bwd["tokens"] == fwd["tokens"][::-1] and fwd["text"] == bwd["text"]
    assert "mask" in rows[2] and "mask" not in rows[0] and rows[0]["meta"] == {"id": "a"}


def test_validate_prints_counts(home, src, tmp_path):
    out = tmp_path / "out.jsonl"
    res = _pairs(str(src), str(out), "--source-label", "u", "--dataset", "tiny", "--validate")
    assert res.exit_code == 0, res.output
    assert "round trips OK" in res.output
    ok_line = next(x for x in res.output.splitlines() if "round trips OK" in x)
    assert " 3 " in ok_line and out.exists()


def test_validate_failure_exits_1_and_writes_nothing(home, src, tmp_path, monkeypatch):
    from backlm.data import pairs

    real = pairs.check_pair
    monkeypatch.setattr(pairs, "check_pair",
                        lambda ex, *a: ex.index != 1 and real(ex, *a))
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    res = _pairs(str(src), str(out), "--source-label", "u", "--dataset", "tiny", "--validate")
    assert res.exit_code == 1, res.output
    assert "1 example(s) failed" in res.output and "0-based: 1)" in res.output
    failed_line = next(x for x in res.output.splitlines() if "round trips failed" in x)
    assert " 1 " in failed_line
    assert out.read_text() == "old\n"


def test_preview_shows_pairs_and_writes_nothing(home, src, tmp_path):
    out = tmp_path / "out.jsonl"
    res = _pairs(str(src), str(out), "--source-label", "u", "--dataset", "tiny", "--preview", "2")
    assert res.exit_code == 0, res.output
    assert "first 2 pair(s)" in res.output and "nothing written" in res.output
    assert "alpha" in res.output and "<|assistant_end|>" in res.output
    assert not out.exists()


def test_tokenizer_folder(home, src, tmp_path):
    out = tmp_path / "out.jsonl"
    tok = home / "home" / "data" / "tiny" / "tokenizer"
    res = _pairs(str(src), str(out), "--source-label", "u", "--tokenizer", str(tok))
    assert res.exit_code == 0, res.output
    assert out.exists()


def test_bad_line_is_one_error_and_nothing_written(home, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    line = assert_user_error(_pairs(str(bad), str(out), "--source-label", "u", "--dataset",
                                  "tiny"))
    assert f"{bad}:2" in line and "expected 'user'" in line
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "home", "out.jsonl"]


@pytest.mark.parametrize(("args", "expected"), [
    (["--source-label", ""], "--source-label"),
    (["--source-label", "u", "--dataset", "nope"], "backlm data prepare"),
])
def test_refusals_are_one_line(home, src, tmp_path, args, expected):
    out = tmp_path / "out.jsonl"
    assert_user_error(_pairs(str(src), str(out), *args), expected)
    assert not out.exists()


def test_input_as_output_is_refused(home, src):
    line = assert_user_error(_pairs(str(src), str(src), "--source-label", "u", "--dataset",
                                  "tiny"))
    assert "is the input file" in line
