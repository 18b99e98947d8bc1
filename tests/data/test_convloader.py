"""Conversation rows: the same reading-order turns in every direction, the direction's mask,
whole-turn cuts, exact resume, and mid's seeded chat/text mix."""

from __future__ import annotations

import numpy as np
import pytest

from backlm.data.arith import problems
from backlm.data.convloader import ConversationLoader, MixedLoader, chat_windows, fit_turns
from backlm.direction import Direction, Role
from backlm.errors import UserError
from backlm.model import IGNORE_INDEX
from backlm.tokenizer import Tokenizer

CONVS = [p.messages() for p in problems(40, 3)] + [
    [{"role": "user", "content": "what is x?"}, {"role": "assistant", "content": "a letter"},
     {"role": "user", "content": "and y?"}, {"role": "assistant", "content": "another " * 40}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "hello"}],
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([m["content"] for c in CONVS for m in c] * 3, vocab_size=300)


def _loader(tok, direction, **kw):
    kw = {"batch_size": 2, "seq_len": 48, "seed": 5, **kw}
    return ConversationLoader(CONVS, tok, Direction.parse(direction), **kw)


def _reading(tok, row, direction):
    """Reading-order token multiset of a row's contents (specials dropped)."""
    return sorted(int(t) for t in row if t < tok.special_ids.bos)


@pytest.mark.parametrize("other", ["backward", "bidirectional"])
def test_every_direction_sees_the_same_reading_order_tokens(tok, other):
    fwd, oth = _loader(tok, "forward"), _loader(tok, other)
    for _ in range(5):
        a, b = fwd.next_batch(), oth.next_batch()
        for ra, rb in zip(a.inputs, b.inputs, strict=True):
            assert _reading(tok, ra, "forward") == _reading(tok, rb, other)
    assert fwd.state_dict() == oth.state_dict()


def test_the_mask_follows_the_role_the_direction_writes(tok):
    sid = tok.special_ids
    conv = CONVS[0]
    user = tok.encode(conv[0]["content"])
    answer = tok.encode(conv[1]["content"])
    for direction, written, train_on in (("forward", answer, None), ("backward", user, None),
                                         ("backward", answer, "assistant")):
        ld = ConversationLoader([conv], tok, Direction.parse(direction), batch_size=1, seq_len=64,
                                train_on=train_on)
        batch = ld.next_batch()
        targets = [int(t) for t in batch.targets[0] if t != IGNORE_INDEX]
        content = [t for t in targets if t < sid.bos]
        expected = written if direction == "forward" else written[::-1]
        assert content[:len(expected)] == expected
        # the turn's closing tag in the model's order is trained, nothing else special
        specials = [t for t in targets if t >= sid.bos]
        role = Role.ASSISTANT if written is answer else Role.USER
        end = {(Role.ASSISTANT, "forward"): sid.assistant_end,
               (Role.USER, "forward"): sid.user_end,
               (Role.ASSISTANT, "backward"): sid.assistant_start,
               (Role.USER, "backward"): sid.user_start}[(role, direction)]
        assert set(specials) == {end}


def test_a_long_conversation_is_cut_at_whole_pairs_in_reading_order(tok):
    ids, roles, parts = tok.render_conversation(CONVS[40])
    first_pair = len(tok.render_turn("user", "what is x?")) + len(
        tok.render_turn("assistant", "a letter"))
    kept = fit_turns(ids, roles, parts, first_pair + 3)
    assert kept is not None and kept[0] == ids[:first_pair]
    assert fit_turns(ids, roles, parts, first_pair - 1) is None
    assert fit_turns(ids, roles, parts, len(ids))[0] == ids


def test_resume_gives_the_exact_next_batches(tok):
    for direction in ("forward", "backward", "bidirectional"):
        ld = _loader(tok, direction)
        for _ in range(7):  # into the second epoch
            ld.next_batch()
        state = ld.state_dict()
        want = [ld.next_batch() for _ in range(4)]
        again = _loader(tok, direction)
        again.load_state_dict(state)
        for a, b in zip(want, [again.next_batch() for _ in range(4)], strict=True):
            assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)


def test_streams_split_the_conversations(tok):
    seen = []
    for rank in range(2):
        ld = _loader(tok, "forward", rank=rank, world_size=2)
        seen.append(set(ld._order))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == len(CONVS)


def test_unusable_data_is_one_user_error(tok):
    with pytest.raises(UserError, match="no conversations"):
        ConversationLoader([], tok, Direction.FORWARD, batch_size=1, seq_len=32)
    bad = [[{"role": "assistant", "content": "no user"}]]
    with pytest.raises(UserError, match="fits"):
        ConversationLoader(bad, tok, Direction.FORWARD, batch_size=1, seq_len=32).next_batch()


def test_mid_mixes_text_and_chat_by_seed(tok):
    class Text:
        def __init__(self):
            self.n = 0

        def next_batch(self):
            self.n += 1
            return "text"

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, s):
            self.n = s["n"]

    mix = MixedLoader(_loader(tok, "forward"), Text(), 0.5, seed=1, stream=0)
    kinds = ["text" if mix.next_batch() == "text" else "chat" for _ in range(40)]
    assert 8 < kinds.count("text") < 32
    state = mix.state_dict()
    nxt = ["text" if mix.next_batch() == "text" else "chat" for _ in range(5)]
    again = MixedLoader(_loader(tok, "forward"), Text(), 0.5, seed=1, stream=0)
    again.load_state_dict(state)
    assert ["text" if again.next_batch() == "text" else "chat" for _ in range(5)] == nxt


def test_held_out_windows_are_the_same_conversations_in_each_order(tok):
    fwd = chat_windows(CONVS, tok, Direction.BIDIRECTIONAL, Direction.FORWARD, None, 4, 48, 6)
    bwd = chat_windows(CONVS, tok, Direction.BIDIRECTIONAL, Direction.BACKWARD, None, 4, 48, 6)
    assert sum(len(b.inputs) for b in fwd) == sum(len(b.inputs) for b in bwd) == 6
    for a, b in zip(fwd, bwd, strict=True):
        for ra, rb in zip(a.inputs, b.inputs, strict=True):
            assert _reading(tok, ra, "forward") == _reading(tok, rb, "backward")
