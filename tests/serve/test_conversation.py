"""The conversation engine: prompts in the model's order, turns kept in reading order (backward
chats grow toward the beginning), whole-character streaming, sampling limits."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backlm.config import ModelConfig
from backlm.direction import Direction, Role, turn_prompt
from backlm.errors import UserError
from backlm.model.decode import Step
from backlm.model.gpt import GPT
from backlm.serve.conversation import Chat, Sampling, TextStream
from backlm.tokenizer import Tokenizer

TEXTS = ["What is 5 plus 7? The answer is 12.", "héllo wörld ✓ 日本語 🙂 done"] * 10


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=300)


class Scripted:
    """A stand-in model that records its prompt and writes a fixed token list."""

    def __init__(self, tokens):
        self.tokens, self.prompts = tokens, []

    def decode(self, prompt, max_new, rows=1, **options):
        self.prompts.append(list(prompt))
        for token in self.tokens[:max_new]:
            yield Step(torch.tensor([token] * rows))


def test_forward_chat_appends_and_stops_at_the_turn_end(tok):
    sid = tok.special_ids
    answer = tok.encode("The answer is 12.")
    model = Scripted([*answer, sid.assistant_end, *tok.encode("junk")])
    chat = Chat(model, tok, Direction.FORWARD)
    pieces = list(chat.send("What is 5 plus 7?", Sampling(temperature=0)))
    assert "".join(p.text for p in pieces) == "The answer is 12."
    assert {p.where for p in pieces} == {"end"}
    assert model.prompts[0] == [sid.bos, *tok.render_turn("user", "What is 5 plus 7?"),
                                sid.assistant_start]
    assert chat.messages == [{"role": "user", "content": "What is 5 plus 7?"},
                             {"role": "assistant", "content": "The answer is 12."}]
    assert chat.stats.tokens == len(answer)


def test_backward_chat_writes_the_earlier_turn_and_keeps_prepending(tok):
    sid = tok.special_ids
    question = tok.encode("What is 5 plus 7?")
    model = Scripted([*question[::-1], sid.user_start])
    chat = Chat(model, tok, Direction.BACKWARD)
    pieces = list(chat.send("The answer is 12."))
    assert {p.where for p in pieces} == {"start"}
    # pieces go in front of one another: joined right to left they read in order
    assert "".join(p.text for p in reversed(pieces)) == "What is 5 plus 7?"
    assert chat.messages == [{"role": "user", "content": "What is 5 plus 7?"},
                             {"role": "assistant", "content": "The answer is 12."}]
    expected, stop = turn_prompt(tok.render_turn("assistant", "The answer is 12."), Role.USER,
                                 "backward", sid)
    assert model.prompts[0] == expected and stop == sid.user_start
    list(chat.send("Hello."))  # the next ending goes before the whole conversation
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1]["content"] == "Hello."
    context = [*tok.render_turn("assistant", "Hello."),
               *tok.render_turn("user", "What is 5 plus 7?"),
               *tok.render_turn("assistant", "The answer is 12.")]
    assert model.prompts[1] == turn_prompt(context, Role.USER, "backward", sid)[0]


def test_bidirectional_switches_per_turn_and_only_it_can(tok):
    sid = tok.special_ids
    model = Scripted([*tok.encode("ok"), sid.assistant_end])
    chat = Chat(model, tok, Direction.BIDIRECTIONAL)
    list(chat.send("hi"))
    assert model.prompts[-1][:2] == [sid.bos, sid.forward]
    chat.switch(Direction.BACKWARD)
    model.tokens = [*tok.encode("ih")[::-1], sid.user_start]
    list(chat.send("first"))
    assert model.prompts[-1][:2] == [sid.bos, sid.backward]
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1]["content"] == "first"
    for direction in (Direction.FORWARD, Direction.BACKWARD):
        with pytest.raises(UserError, match="only a bidirectional model"):
            Chat(model, tok, direction).switch(Direction.BACKWARD if direction == "forward" else
                                               Direction.FORWARD)


def test_a_base_model_continues_text_toward_the_past(tok):
    words = tok.encode(" earlier words")
    model = Scripted([*words[::-1], tok.special_ids.bos])
    chat = Chat(model, tok, Direction.BACKWARD, phase="base")
    out = "".join(p.text for p in reversed(list(chat.send("the end."))))
    assert out == " earlier words" and chat.text == " earlier wordsthe end."
    assert model.prompts[0] == [tok.special_ids.bos, *tok.encode("the end.")[::-1]]


def test_an_abandoned_stream_keeps_the_conversation_as_it_was(tok):
    model = Scripted(tok.encode("a long answer"))
    chat = Chat(model, tok, Direction.FORWARD)
    stream = chat.send("question")
    next(stream)
    stream.close()
    assert chat.messages == []


@given(text=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
       cut=st.integers(0, 1000))
@settings(max_examples=80, deadline=None)
def test_streams_emit_whole_characters_in_both_orders(text, cut):
    if "\ufffd" in text:
        return  # the replacement character itself would look like a broken one
    data = text.encode("utf-8")
    rng = random.Random(cut)
    tokens, i = [], 0
    while i < len(data):  # random byte splits, as BPE tokens may split a character
        n = rng.randint(1, 4)
        tokens.append(data[i:i + n])
        i += n
    fwd = TextStream(Direction.FORWARD)
    out = [fwd.push(t) for t in tokens] + [fwd.flush()]
    assert "".join(out) == text
    bwd = TextStream(Direction.BACKWARD)
    out = [bwd.push(t) for t in reversed(tokens)] + [bwd.flush()]
    assert "".join(reversed(out)) == text
    for piece in out:  # never half a character: each piece is valid on its own
        assert "\ufffd" not in piece


@pytest.mark.parametrize("bad", [
    {"temperature": -1}, {"temperature": float("nan")}, {"temperature": 11},
    {"top_k": 0}, {"top_k": -3}, {"max_tokens": 0}, {"max_tokens": 10**6},
])
def test_sampling_limits(bad, tok):
    chat = Chat(Scripted([]), tok, Direction.FORWARD)
    with pytest.raises(UserError):
        list(chat.send("hi", Sampling(**bad)))
    with pytest.raises(UserError, match="say something"):
        list(chat.send("  "))
    assert chat.messages == []


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_a_real_model_writes_a_turn_in_every_direction(tok, direction):
    torch.manual_seed(0)
    cfg = ModelConfig(depth=1, width=32, head_dim=16, vocab_size=tok.vocab_size, seq_len=64)
    model = GPT(cfg).eval()
    chat = Chat(model, tok, Direction(direction))
    first = list(chat.send("hello", Sampling(temperature=1.0, max_tokens=8, seed=3)))
    again = Chat(model, tok, Direction(direction))
    assert list(again.send("hello", Sampling(temperature=1.0, max_tokens=8, seed=3))) == first
    assert len(chat.messages) == 2 and chat.stats.tokens <= 8
