"""Property tests for every order transform in backlm.direction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backlm.direction import (
    Direction,
    Part,
    Role,
    SpecialIds,
    conversation_mask,
    document_order,
    encode_conversation,
    encode_document,
    encode_document_array,
    model_order,
    read_order_of,
    to_reading_order,
    trained_roles,
)
from backlm.errors import UserError

IDS = SpecialIds(bos=1000, forward=1001, backward=1002, user_start=1003, user_end=1004,
                 assistant_start=1005, assistant_end=1006)
docs = st.lists(st.integers(min_value=0, max_value=999), max_size=200)
orders = st.sampled_from([Direction.FORWARD, Direction.BACKWARD])


@given(docs, orders)
def test_model_order_is_an_involution(doc, order):
    assert model_order(model_order(doc, order), order) == doc


@given(docs)
def test_backward_is_reversed_forward(doc):
    fwd, _ = encode_document(doc, "forward", IDS)
    bwd, _ = encode_document(doc, "backward", IDS)
    assert fwd == [IDS.bos, *doc]
    assert bwd == [IDS.bos, *reversed(doc)]


@given(docs, st.sampled_from(["forward", "backward"]))
def test_document_round_trip_and_bos(doc, direction):
    seq, mask = encode_document(doc, direction, IDS)
    assert seq[0] == IDS.bos and seq.count(IDS.bos) == 1
    assert len(mask) == len(seq) and all(mask)
    assert to_reading_order(seq, direction, IDS) == doc


@given(docs, orders)
def test_bidirectional_marker_position_and_mask(doc, order):
    seq, mask = encode_document(doc, "bidirectional", IDS, order=order)
    assert seq[0] == IDS.bos
    assert seq[1] == (IDS.forward if order is Direction.FORWARD else IDS.backward)
    assert mask[1] is False  # the model is never trained to guess the direction
    assert mask[0] is True and all(mask[2:])
    assert read_order_of(seq, "bidirectional", IDS) is order
    assert to_reading_order(seq, "bidirectional", IDS) == doc
    assert seq[2:] == model_order(doc, order)


@given(docs, st.integers(min_value=0, max_value=200))
def test_cropped_backward_keeps_real_ending(doc, keep):
    seq, _ = encode_document(doc, "backward", IDS)
    cropped = seq[: 1 + keep]  # crop the tail in model order
    back = to_reading_order(cropped, "backward", IDS)
    assert back == doc[len(doc) - len(back):]


def test_bidirectional_needs_an_order():
    with pytest.raises(ValueError):
        encode_document([1, 2], "bidirectional", IDS)
    with pytest.raises(ValueError):
        encode_document([1, 2], "forward", IDS, order="backward")


@settings(max_examples=30)
@given(st.integers(min_value=0, max_value=2**40), st.floats(min_value=0.0, max_value=1.0))
def test_document_order_is_deterministic(seed, mix):
    a = [document_order("bidirectional", i, seed, mix) for i in range(50)]
    b = [document_order("bidirectional", i, seed, mix) for i in range(50)]
    assert a == b


def test_document_order_mix_ratio():
    n = 20000
    for mix in (0.0, 0.25, 0.5, 1.0):
        back = sum(document_order("bidirectional", i, 7, mix) is Direction.BACKWARD
                   for i in range(n))
        assert abs(back / n - mix) < 0.02
    assert document_order("backward", 3) is Direction.BACKWARD
    with pytest.raises(UserError):
        document_order("bidirectional", 0, mix=1.5)


def test_unknown_direction_is_a_user_error():
    with pytest.raises(UserError, match="unknown direction 'sideways'"):
        Direction.parse("sideways")
    assert Direction.parse(" Backward ") is Direction.BACKWARD


# --- conversations ----------------------------------------------------------------------

@st.composite
def conversations(draw):
    """A rendered conversation: (tokens, roles, parts), user first, alternating."""
    turns = draw(st.integers(min_value=1, max_value=6))
    tokens, roles, parts = [], [], []
    for t in range(turns):
        role = Role.USER if t % 2 == 0 else Role.ASSISTANT
        start = IDS.user_start if role is Role.USER else IDS.assistant_start
        end = IDS.user_end if role is Role.USER else IDS.assistant_end
        body = draw(st.lists(st.integers(min_value=0, max_value=999), max_size=20))
        tokens += [start, *body, end]
        roles += [role] * (len(body) + 2)
        parts += [Part.OPEN] + [Part.CONTENT] * len(body) + [Part.CLOSE]
    return tokens, roles, parts


@given(conversations(), st.sampled_from(["forward", "backward"]))
def test_conversation_round_trip(conv, direction):
    tokens, roles, parts = conv
    seq, mask = encode_conversation(tokens, roles, parts, direction, IDS)
    assert seq[0] == IDS.bos and mask[0] is False
    assert to_reading_order(seq, direction, IDS) == tokens
    assert len(mask) == len(seq)


@given(conversations())
def test_backward_conversation_starts_with_last_turn_closing_tag(conv):
    tokens, roles, parts = conv
    seq, _ = encode_conversation(tokens, roles, parts, "backward", IDS)
    assert seq[1] == tokens[-1] and parts[-1] == Part.CLOSE


@given(conversations())
def test_conversation_masks_follow_the_written_role(conv):
    tokens, roles, parts = conv
    fwd = conversation_mask(roles, parts, "forward")
    bwd = conversation_mask(roles, parts, "backward")
    for r, p, f, b in zip(roles, parts, fwd, bwd, strict=True):
        assert f == (r == Role.ASSISTANT and p in (Part.CONTENT, Part.CLOSE))
        assert b == (r == Role.USER and p in (Part.CONTENT, Part.OPEN))
    # In model order, the backward mask is the reading-order mask reversed.
    seq, mask = encode_conversation(tokens, roles, parts, "backward", IDS)
    assert mask[1:] == list(reversed(bwd))


@given(conversations(), orders)
def test_bidirectional_conversation_has_masked_marker(conv, order):
    tokens, roles, parts = conv
    seq, mask = encode_conversation(tokens, roles, parts, "bidirectional", IDS, order=order)
    assert seq[1] == IDS.marker(order) and mask[:2] == [False, False]
    assert to_reading_order(seq, "bidirectional", IDS) == tokens


def test_train_on_overrides():
    assert trained_roles("backward", "assistant") == {Role.ASSISTANT}
    assert trained_roles("forward", "all") == {Role.USER, Role.ASSISTANT}
    with pytest.raises(UserError):
        trained_roles("forward", "everyone")


# --- 5CAT probes (kept_window, relabel) -------------------------------------------------------


@given(docs, orders, st.integers(min_value=0, max_value=250))
def test_kept_window_is_what_a_model_order_crop_keeps(doc, order, length):
    from backlm.direction import kept_window

    seq, _ = encode_document(doc, order, IDS)
    assert kept_window(doc, order, length) == to_reading_order(seq[: 1 + length], order, IDS)
    assert len(kept_window(doc, order, length)) == min(length, len(doc))


@given(docs, orders)
def test_relabel_swaps_only_the_marker_and_round_trips(doc, order):
    from backlm.direction import relabel

    seq, _ = encode_document(doc, "bidirectional", IDS, order=order)
    wrong = relabel(seq, IDS, order.opposite)
    assert wrong[0] == IDS.bos and read_order_of(wrong, "bidirectional", IDS) is order.opposite
    assert wrong[2:] == seq[2:]  # the body keeps the order it was encoded in
    assert relabel(wrong, IDS, order) == seq
    with pytest.raises(ValueError):
        relabel([IDS.bos, *doc[:1]] if doc[:1] else [IDS.bos], IDS, order)


@given(docs, st.sampled_from(["forward", "backward", "bidirectional"]), orders)
def test_array_encoding_matches_list_encoding(doc, direction, order):
    import numpy as np

    o = order if direction == "bidirectional" else None
    seq, mask = encode_document(doc, direction, IDS, order=o)
    aseq, amask = encode_document_array(np.asarray(doc, dtype=np.int64), direction, IDS, order=o)
    assert aseq.tolist() == seq and amask.tolist() == mask


# --- any model in any order; pieces ----------------------------------------------------------


def test_encode_for_gives_a_marker_to_bidirectional_models_only():
    from backlm.direction import encode_for

    assert encode_for([1, 2, 3], "forward", "backward", IDS)[0] == [IDS.bos, 3, 2, 1]
    assert encode_for([1, 2, 3], "backward", "forward", IDS)[0] == [IDS.bos, 1, 2, 3]
    seq, mask = encode_for([1, 2, 3], "bidirectional", "backward", IDS)
    assert seq == [IDS.bos, IDS.backward, 3, 2, 1] and mask[1] is False  # never scored
    arr, amask = encode_for(np.array([1, 2, 3]), "bidirectional", "backward", IDS)
    assert arr.tolist() == seq and amask.tolist() == mask  # arrays give the same, as arrays
    with pytest.raises(ValueError):
        encode_for([1], "forward", "bidirectional", IDS)  # an order must be concrete


@given(length=st.integers(0, 500), capacity=st.integers(1, 64))
def test_piece_spans_cut_documents_front_to_back(length, capacity):
    from backlm.direction import piece_spans

    spans = piece_spans(length, capacity)
    assert [t for a, b in spans for t in range(a, b)] == list(range(length))  # each once
    assert all(1 <= b - a <= capacity for a, b in spans)
    assert all(b - a == capacity for a, b in spans[:-1])  # only the last piece is short


def test_pieces_leave_room_for_the_longest_head():
    from backlm.direction import HEAD_SLOTS, body_capacity, piece_spans, prefix_length

    assert HEAD_SLOTS == max(prefix_length(d) for d in Direction)
    assert body_capacity(256) + HEAD_SLOTS == 257  # a row holds seq_len + 1 tokens
    with pytest.raises(ValueError):
        piece_spans(5, 0)


def test_eval_orders_name_each_concrete_order():
    from backlm.direction import eval_orders

    assert eval_orders("backward") == [("", Direction.BACKWARD)]
    assert eval_orders("bidirectional") == [("forward", Direction.FORWARD),
                                            ("backward", Direction.BACKWARD)]


@given(conv=conversations())
@settings(max_examples=60, deadline=None)
def test_a_turn_prompt_plus_the_written_turn_is_the_conversation(conv):
    """Forward: the turns before + the written turn read as the conversation; backward: the
    prompt is the turns after, reversed, and the model writes the turn before them."""
    from backlm.direction import Role, turn_prompt, written_to_reading_order

    tokens, roles, parts = conv
    opens = [i for i, p in enumerate(parts) if p == Part.OPEN] + [len(tokens)]
    for k in range(len(opens) - 1):
        start, end = opens[k], opens[k + 1]
        role = Role(roles[start])
        content = tokens[start + 1:end - 1]
        prompt, stop = turn_prompt(tokens[:start], role, "forward", IDS)
        assert prompt + content + [stop] == [IDS.bos] + tokens[:end]
        prompt, stop = turn_prompt(tokens[end:], role, "backward", IDS)
        written = content[::-1]
        assert written_to_reading_order(written, "backward") == content
        full, _ = encode_conversation(tokens[start:], roles[start:], parts[start:], "backward",
                                      IDS)
        assert prompt + written + [stop] == full


def test_turn_roles_and_placement_follow_the_order():
    from backlm.direction import Role, turn_roles

    assert turn_roles(Direction.FORWARD) == (Role.USER, Role.ASSISTANT)
    assert turn_roles(Direction.BACKWARD) == (Role.ASSISTANT, Role.USER)
    assert trained_roles(Direction.BACKWARD) == {turn_roles(Direction.BACKWARD)[1]}
    assert (Direction.FORWARD.writes_at, Direction.BACKWARD.writes_at) == ("end", "start")
    with pytest.raises(ValueError):
        turn_roles(Direction.BIDIRECTIONAL)
    with pytest.raises(ValueError):
        Direction.BIDIRECTIONAL.writes_at  # noqa: B018
