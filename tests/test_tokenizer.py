"""The BPE tokenizer: training, exact round trips, storage, chat rendering and masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backlm import direction as D
from backlm.errors import UserError
from backlm.tokenizer import (
    LEGACY_TOKENIZER_FILE,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    Tokenizer,
    tokenizer_file,
)

CORPUS = [
    "Return the number of items in a container. Raises TypeError if the object has no length.",
    "The quick brown fox jumps over the lazy dog 1234567890 times; naïve café, Übergröße.",
    "def forward(self, x):\n    return self.linear(x) + 42\n\n# tabs\tand\r\nCRLF lines",
    "日本語のテキストと emoji 🙂🚀 mixed with ASCII words and punctuation!?",
] * 20
VOCAB = 400


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=VOCAB)


def test_vocab_size_and_special_ids(tok: Tokenizer) -> None:
    assert 256 + len(SPECIAL_TOKENS) < tok.vocab_size <= VOCAB
    ids = tok.special_ids
    values = [ids.bos, ids.forward, ids.backward, ids.user_start, ids.user_end,
              ids.assistant_start, ids.assistant_end]
    assert len(set(values)) == len(SPECIAL_TOKENS)
    ordinary = tok.vocab_size - len(SPECIAL_TOKENS)
    assert sorted(values) == list(range(ordinary, tok.vocab_size))
    assert tok.bos_id == ids.bos
    assert [tok.id_to_token_str(v) for v in values] == SPECIAL_TOKENS


def test_requested_vocab_is_reached_on_enough_text() -> None:
    texts = [f"word{i} token{i * 7} sample{i % 13} " * 3 for i in range(3000)]
    assert Tokenizer.train(texts, vocab_size=300).vocab_size == 300


def test_tiny_corpus_gives_smaller_vocab() -> None:
    small = Tokenizer.train(["ab ab"], vocab_size=512)
    assert 256 + len(SPECIAL_TOKENS) <= small.vocab_size < 512
    assert small.decode(small.encode("ab ab abc")) == "ab ab abc"


def test_vocab_size_too_small_is_user_error() -> None:
    with pytest.raises(UserError, match="at least"):
        Tokenizer.train(CORPUS, vocab_size=100)


# Any text without lone surrogates (not encodable as UTF-8), with special spellings mixed in.
_TEXT = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
        st.sampled_from(SPECIAL_TOKENS),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_round_trip_is_exact(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size - len(SPECIAL_TOKENS) for i in ids)


@pytest.mark.parametrize("text", ["<|bos|>", "a <|user_start|>hi<|user_end|> b", "<|forward|>"])
def test_special_spellings_are_plain_text(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    specials = set(tok.specials.values())
    assert not specials & set(ids)
    assert tok.decode(ids) == text


def test_decode_specials_to_names(tok: Tokenizer) -> None:
    ids = [tok.bos_id, *tok.encode("hi"), tok.special_ids.assistant_end]
    assert tok.decode(ids) == "<|bos|>hi<|assistant_end|>"


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    texts = CORPUS[:4] + ["", "x"]
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]


def test_token_byte_lengths(tok: Tokenizer) -> None:
    lengths = tok.token_byte_lengths()
    assert len(lengths) == tok.vocab_size
    assert all(lengths[v] == 0 for v in tok.specials.values())
    for text in CORPUS[:4]:
        assert sum(lengths[i] for i in tok.encode(text)) == len(text.encode("utf-8"))
    assert tok.id_to_token_str(ord("a")) == "a"


def test_save_load_equal(tok: Tokenizer, tmp_path: Path) -> None:
    path = tok.save(tmp_path / "tk")
    data = json.loads(path.read_text())  # plain JSON, nothing to unpickle
    assert data["format"] == "backlm-bpe" and data["vocab_size"] == tok.vocab_size
    loaded = Tokenizer.load(tmp_path / "tk")
    assert loaded == tok
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.special_ids == tok.special_ids
    assert loaded.encode(CORPUS[1]) == tok.encode(CORPUS[1])
    assert Tokenizer.load(path) == tok  # the file itself works too


def test_the_file_is_named_as_backlms_own(tok: Tokenizer, tmp_path: Path) -> None:
    assert TOKENIZER_FILE == "backlm_tokenizer.json"  # tokenizer.json is Hugging Face's
    assert tok.save(tmp_path).name == TOKENIZER_FILE
    assert not (tmp_path / LEGACY_TOKENIZER_FILE).exists()


def test_a_folder_saved_under_the_old_name_still_loads(tok: Tokenizer, tmp_path: Path) -> None:
    (tmp_path / LEGACY_TOKENIZER_FILE).write_text(json.dumps(tok.to_dict()))
    assert tokenizer_file(tmp_path) == tmp_path / LEGACY_TOKENIZER_FILE
    assert Tokenizer.load(tmp_path) == tok
    tok.save(tmp_path)  # both: backlm's own name wins
    assert tokenizer_file(tmp_path) == tmp_path / TOKENIZER_FILE


def test_a_hugging_face_file_under_the_old_name_is_named_in_the_error(
    tok: Tokenizer, tmp_path: Path
) -> None:
    from backlm.hub.tokenizer_hf import build

    build(tok, ["<|bos|>"]).save(str(tmp_path / LEGACY_TOKENIZER_FILE))
    with pytest.raises(UserError, match="Hugging Face tokenizers file, not backlm's"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"format": "other"}', '{"format": "backlm-bpe", "version": 1}', "[]"],
)
def test_corrupt_tokenizer_is_user_error(tok: Tokenizer, tmp_path: Path, content: str) -> None:
    (tmp_path / TOKENIZER_FILE).write_text(content)
    with pytest.raises(UserError, match="unreadable") as info:
        Tokenizer.load(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "key, value",
    [("ranks", "abc"), ("ranks", [1, 2]), ("special_tokens", [1]), ("pattern", 5),
     ("pattern", "("), ("version", 99)],
)
def test_bad_fields_are_user_errors(
    tok: Tokenizer, tmp_path: Path, key: str, value: object
) -> None:
    data = {**tok.to_dict(), key: value}
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps(data))
    with pytest.raises(UserError, match="unreadable"):
        Tokenizer.load(tmp_path)


def test_bad_base64_is_user_error(tok: Tokenizer, tmp_path: Path) -> None:
    data = tok.to_dict()
    data["ranks"][3] = "!!not base64!!"
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps(data))
    with pytest.raises(UserError, match="unreadable"):
        Tokenizer.load(tmp_path)


def test_missing_tokenizer_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")


# --- conversations ----------------------------------------------------------------------------

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6, naturally."},
]


def test_render_conversation_layout(tok: Tokenizer) -> None:
    ids, roles, parts = tok.render_conversation(CHAT)
    assert len(ids) == len(roles) == len(parts)
    s = tok.special_ids
    assert ids[0] == s.user_start and ids[-1] == s.assistant_end
    assert tok.bos_id not in ids
    assert tok.decode(ids) == (
        "<|user_start|>Be brief.\n\nWhat is 2+2?<|user_end|><|assistant_start|>4.<|assistant_end|>"
        "<|user_start|>And 3+3?<|user_end|><|assistant_start|>6, naturally.<|assistant_end|>"
    )
    for i, p in zip(ids, parts, strict=True):
        is_tag = i in (s.user_start, s.user_end, s.assistant_start, s.assistant_end)
        assert is_tag == (p != D.Part.CONTENT)
        if i in (s.user_start, s.assistant_start):
            assert p == D.Part.OPEN
        if i in (s.user_end, s.assistant_end):
            assert p == D.Part.CLOSE
    user_tags = (s.user_start, s.user_end)
    assert {r for r, i in zip(roles, ids, strict=True) if i in user_tags} == {D.Role.USER}


def _expected_mask(roles: list[int], parts: list[int], order: str) -> list[bool]:
    # forward: assistant text + its end tag; backward: user text + its start tag
    forward = order == "forward"
    role, tag = (D.Role.ASSISTANT, D.Part.CLOSE) if forward else (D.Role.USER, D.Part.OPEN)
    return [r == role and p in (D.Part.CONTENT, tag) for r, p in zip(roles, parts, strict=True)]


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_conversation_masks(tok: Tokenizer, order: str) -> None:
    ids, roles, parts = tok.render_conversation(CHAT)
    seq, mask = D.encode_conversation(ids, roles, parts, order, tok.special_ids)
    assert seq[0] == tok.bos_id and mask[0] is False
    assert D.to_reading_order(seq, order, tok.special_ids) == ids
    reading_mask = D.model_order(mask[1:], order)
    assert reading_mask == _expected_mask(roles, parts, order)
    s = tok.special_ids
    trained_tags = {i for i, m in zip(ids, reading_mask, strict=True) if m and i >= s.bos}
    assert trained_tags == ({s.assistant_end} if order == "forward" else {s.user_start})
    trained = [i for i, m in zip(ids, reading_mask, strict=True) if m and i < s.bos]
    trained_text = tok.decode(trained)
    assert trained_text == ("4.6, naturally." if order == "forward"
                            else "Be brief.\n\nWhat is 2+2?And 3+3?")


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "system", "content": "s"}],
        [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
        [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
        [{"role": "user", "content": 3}],
        [{"role": "user"}],
    ],
)
def test_bad_conversations_are_user_errors(tok: Tokenizer, messages: list) -> None:
    with pytest.raises(UserError):
        tok.render_conversation(messages)


def test_conversation_may_end_with_user(tok: Tokenizer) -> None:
    ids, _, _ = tok.render_conversation([{"role": "user", "content": "ping"}])
    assert tok.decode(ids) == "<|user_start|>ping<|user_end|>"
