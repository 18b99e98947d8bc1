"""Forward/backward pairs: token-level reversal, text round trips, chat masks, bad lines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backlm.data import pairs
from backlm.direction import Part, Role
from backlm.errors import UserError
from backlm.tokenizer import TOKENIZER_FILE, Tokenizer
from tests.helpers import write_jsonl

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello 😀"}, {"role": "user", "content": "bye"}]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    texts = ["the quick brown fox jumps over the lazy dog", "naïve café — 😀 emoji ünïcode",
             "def f(x):\n    return x + 1\n"] * 30
    d = tmp_path_factory.mktemp("tok")
    Tokenizer.train(texts, vocab_size=300).save(d)
    return d


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.load(tok_dir)


def _build(tmp_path: Path, tok: Tokenizer, lines: list) -> tuple[list, list]:
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    examples = pairs.read_examples(src, tok)
    return examples, pairs.build_records(examples, tok, "unit", "sha")


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_TEXT, min_size=1, max_size=4))
def test_backward_is_forward_reversed_and_text_round_trips(tmp_path, tok, texts):
    examples, records = _build(tmp_path, tok, [{"text": t} for t in texts])
    assert len(records) == 2 * len(texts)
    for i, text in enumerate(texts):
        forward, backward = records[2 * i], records[2 * i + 1]
        assert (forward["direction"], backward["direction"]) == ("forward", "backward")
        assert forward["example"] == backward["example"] == i
        assert forward["tokens"] == tok.encode(text)  # reading order, no BOS
        assert backward["tokens"] == forward["tokens"][::-1]
        assert tok.decode(forward["tokens"]) == text == forward["text"] == backward["text"]
        assert "mask" not in forward
    assert pairs.check_records(examples, records, tok) == []


def test_reversal_is_on_tokens_not_characters(tmp_path, tok):
    text = "naïve café 😀 quick"
    _, records = _build(tmp_path, tok, [{"text": text}])
    backward = records[1]["tokens"]
    assert backward != tok.encode(text[::-1])
    assert tok.decode(backward[::-1]) == text


def test_chat_masks_follow_each_order(tmp_path, tok):
    examples, records = _build(tmp_path, tok, [{"messages": CHAT, "id": "c1"}])
    ex = examples[0]
    ids, roles, parts = tok.render_conversation(CHAT)
    assert ex.ids == ids and ex.text == tok.decode(ids)
    forward, backward = records
    assert backward["tokens"] == forward["tokens"][::-1] == ids[::-1]
    assert forward["meta"] == backward["meta"] == {"id": "c1"}
    # forward trains the assistant turn (content and its closing tag) ...
    want_fwd = [r == Role.ASSISTANT and p != Part.OPEN for r, p in zip(roles, parts, strict=True)]
    assert forward["mask"] == want_fwd and any(want_fwd)
    # ... backward the user turns (content and the opening tag, which ends them in its order)
    want_bwd = [r == Role.USER and p != Part.CLOSE for r, p in zip(roles, parts, strict=True)]
    assert backward["mask"] == want_bwd[::-1]
    assert backward["mask"][0] is False  # <|user_end|> opens the last turn going backward
    assert pairs.check_records(examples, records, tok) == []


def test_check_catches_a_broken_pair(tmp_path, tok):
    examples, records = _build(tmp_path, tok, [{"text": "one two"}, {"messages": CHAT}])
    records[1]["tokens"] = records[1]["tokens"][:-1]
    records[3]["mask"] = [not m for m in records[3]["mask"]]
    assert pairs.check_records(examples, records, tok) == [0, 1]


def test_make_pairs_writes_atomically(tmp_path, tok_dir):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "alpha", "id": 7}, {"messages": CHAT}])
    out = tmp_path / "out.jsonl"
    result = pairs.make_pairs(src, out, "mine", tokenizer=tok_dir, validate=True)
    assert result.written == out and result.failed == []
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    sha = hashlib.sha256((tok_dir / TOKENIZER_FILE).read_bytes()).hexdigest()
    assert [(r["example"], r["direction"]) for r in rows] == [
        (0, "forward"), (0, "backward"), (1, "forward"), (1, "backward")]
    assert {r["tokenizer_sha256"] for r in rows} == {sha}
    assert {r["source"] for r in rows} == {"mine"}
    assert rows[0]["meta"] == {"id": 7} and "meta" not in rows[2]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_preview_writes_nothing(tmp_path, tok_dir):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "alpha"}])
    result = pairs.make_pairs(src, tmp_path / "out.jsonl", "x", tokenizer=tok_dir, preview=1)
    assert result.written is None and len(result.records) == 2
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("line", "expected"), [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"id": 3}', "neither 'text' nor 'messages'"),
    ('{"text": "a", "messages": []}', "both 'text' and 'messages'"),
    ('{"text": 5}', "'text' must be a string"),
    ('{"text": ""}', "'text' is empty"),
    ('{"text": "bad \\ud800 surrogate"}', "lone surrogate"),
    ('{"messages": "hi"}', "'messages' must be a non-empty list"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "expected 'user'"),
    ('{"messages": [{"role": "user", "content": 3}]}', "'content' must be a string"),
])
def test_bad_lines_name_file_and_line(tmp_path, tok, line, expected):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=expected) as info:
        pairs.read_examples(src, tok)
    assert f"{src}:3:" in str(info.value)


def test_refusals(tmp_path, tok_dir, monkeypatch):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    cases = [
        (tmp_path / "nope.jsonl", tmp_path / "o.jsonl", "x", {"tokenizer": tok_dir}, "does not exist"),
        (src, src, "x", {"tokenizer": tok_dir}, "is the input file"),
        (src, tmp_path / "no" / "o.jsonl", "x", {"tokenizer": tok_dir}, "does not exist"),
        (src, tmp_path / "o.jsonl", " ", {"tokenizer": tok_dir}, "--source-label"),
        (tmp_path / "empty.jsonl", tmp_path / "o.jsonl", "x", {"tokenizer": tok_dir},
         "no examples"),
        (src, tmp_path / "o.jsonl", "x", {}, "backlm data prepare"),
        (src, tmp_path / "o.jsonl", "x", {"tokenizer": tok_dir, "dataset": "d"}, "not both"),
    ]
    for in_path, out_path, label, kw, expected in cases:
        with pytest.raises(UserError, match=expected):
            pairs.make_pairs(in_path, out_path, label, **kw)
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "no").exists()
