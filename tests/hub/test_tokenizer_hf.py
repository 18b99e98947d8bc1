"""backlm.hub.tokenizer_hf: the Hugging Face ``tokenizers`` file built from backlm's ranks gives
backlm's ids on every kind of text, and its special tokens keep their ids."""

from __future__ import annotations

import pytest

from backlm.hub import tokenizer_hf
from tests.conftest import make_docs

# scripts, emoji (with joiners and modifiers), combining marks, whitespace runs, newlines,
# digit runs, contractions: every branch of the split pattern
CORPUS = [
    "hello world", "Hello, World!", "  leading spaces", "trailing spaces   ", "\n", " ", "",
    "two\n\nnewlines\r\nand CRLF\r\n\r\n", "tabs\t\tand   runs    of  spaces",
    "日本語のテキスト、中文字符 한국어", "emoji 😀😃🎉 👨‍👩‍👧 👍🏽 🇫🇷", "combining e\u0301\u0302 a\u0308o\u0308",
    "digits 1234567890 3.14159 1e10 007", "don't WON'T we'll I'M they're", "x" * 60,
    "mixed: naïve café — “quotes” ‘single’ … ½", "Привет, мир! Ελληνικά", "a\u00a0b\u2003c",
    "def f(x):\n    return x ** 2  # comment\n", "<|bos|> is spelled but <|not_special|>",
]


@pytest.fixture(scope="module")
def tok():
    from backlm.tokenizer import Tokenizer

    return Tokenizer.train(make_docs(300) + CORPUS * 3, vocab_size=420)


def test_byte_table_is_gpt2s():
    table = tokenizer_hf.byte_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_merges_are_recovered_from_ranks(tok):
    vocab, merges = tokenizer_hf.vocab_and_merges(tok.ranks)
    assert sorted(vocab.values()) == list(range(len(tok.ranks)))
    assert len(merges) == len(tok.ranks) - 256
    for left, right in merges:  # each merge joins two tokens into a third
        assert left in vocab and right in vocab and left + right in vocab


def test_ids_equal_backlms_on_plain_text(tok):
    hf = tokenizer_hf.build(tok, ["<|bos|>"])
    wrong = {t: (tok.encode(t), hf.encode(t, add_special_tokens=False).ids) for t in CORPUS
             if "<|bos|>" not in t and tok.encode(t) != hf.encode(t, add_special_tokens=False).ids}
    assert not wrong
    for text in CORPUS:
        assert hf.decode(tok.encode(text), skip_special_tokens=False) == text
        assert hf.encode(text).ids[:1] == [tok.bos_id]  # the head asked for


def test_special_tokens_keep_their_ids_and_are_recognised_in_text(tok):
    hf = tokenizer_hf.build(tok, ["<|bos|>", "<|forward|>"])
    for name, sid in tok.specials.items():
        assert hf.token_to_id(name) == sid
    text = "<|user_start|>what is 2+2?<|user_end|><|assistant_start|>4<|assistant_end|>"
    rendered, _, _ = tok.render_conversation([{"role": "user", "content": "what is 2+2?"},
                                              {"role": "assistant", "content": "4"}])
    assert hf.encode(text, add_special_tokens=False).ids == rendered
    assert hf.encode("hi").ids[:2] == [tok.bos_id, tok.specials["<|forward|>"]]


def test_a_repeated_rank_keeps_the_ids_in_line(tok):
    ranks = [*tok.ranks, tok.ranks[300]]  # a byte string twice: tiktoken keeps the first
    vocab, _ = tokenizer_hf.vocab_and_merges(ranks)
    assert sorted(vocab.values()) == list(range(len(ranks)))
