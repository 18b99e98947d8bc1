"""Stop strings found in reading order, in both directions: what is cut, and what streams
before the cut is never taken back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backlm.serve.replies import StopText


def feed(stops, where, pieces):
    """Push ``pieces`` (each placed at ``where``); the text streamed and the final text."""
    cut, shown = StopText(stops, where), ""
    cut.fed = ""
    for piece in pieces:
        cut.fed = cut.fed + piece if where == "end" else piece + cut.fed
        out = cut.add(piece)
        shown = shown + out if where == "end" else out + shown
        if cut.stopped:
            break
    if not cut.stopped:
        out = cut.flush()
        shown = shown + out if where == "end" else out + shown
    return shown, cut


def test_forward_keeps_what_comes_before_the_first_stop():
    shown, cut = feed(["END"], "end", ["one ", "two E", "N", "D three END"])
    assert cut.stopped and cut.text == shown == "one two "


def test_backward_keeps_what_follows_the_stop_nearest_the_end():
    # written toward the beginning: "three END two one" arrives as one, two, END, three
    shown, cut = feed(["END"], "start", [" one", " two", "ND", "E", "three "])
    assert cut.stopped and cut.text == shown == " two one"


def test_no_stop_releases_everything_at_the_end():
    shown, cut = feed(["xyz"], "start", ["x", "y", "abc"])
    assert not cut.stopped and shown == cut.text == "abcyx"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text("abc", max_size=3), max_size=12), st.sampled_from(["end", "start"]),
       st.lists(st.text("abc", min_size=1, max_size=3), min_size=1, max_size=2))
def test_streamed_text_equals_the_cut_and_matches_the_rule(pieces, where, stops):
    shown, cut = feed(stops, where, pieces)
    assert shown == cut.text  # nothing sent was taken back, nothing kept was left unsent
    assert not any(s in cut.text for s in stops)
    if cut.stopped:  # the reply is the model's side of the stop string it reached first
        if where == "end":
            assert any(cut.fed.startswith(cut.text + s) for s in stops)
        else:
            assert any(cut.fed.endswith(s + cut.text) for s in stops)
    else:
        assert cut.text == cut.fed


@pytest.mark.parametrize("where", ["end", "start"])
def test_a_stop_across_pieces_is_held_back_until_it_is_decided(where):
    cut = StopText(["STOP"], where)
    assert cut.add("ST" if where == "end" else "OP") == ""  # could begin (end) the stop
    assert cut.add("x") == ("STx" if where == "end" else "xOP")
