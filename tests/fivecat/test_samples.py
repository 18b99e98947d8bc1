"""5CAT probes: windows chosen from held-out documents, rendered in the declared order, the
opposite order, under the wrong marker and with the context of the last targets ablated."""

from __future__ import annotations

import pytest

from backlm.data.shards import write_shard
from backlm.direction import Direction, model_order, to_reading_order
from backlm.errors import UserError
from backlm.fivecat.samples import (
    build_probe,
    build_probes,
    choose_windows,
    read_documents,
    split_files,
)
from backlm.fivecat.spec import Samples

SAMPLES = Samples(max_samples=4, window=24, min_tokens=12, ablate_last=4, horizon=2)
ABC = "abcdefghijklmnopqrstuvwxyz"


def test_windows_take_the_longest_length_enough_documents_reach():
    docs = [[1] * n for n in (30, 5, 20, 18, 40, 16)]
    chosen, length = choose_windows(docs, SAMPLES, max_len=24, what="val")
    assert length == 18 and [len(d) for d in chosen] == [30, 20, 18, 40]  # in stream order
    chosen, length = choose_windows([[1] * 100] * 6, SAMPLES, max_len=24, what="val")
    assert length == 24 and len(chosen) == 4  # capped by the model's window
    chosen, length = choose_windows([[1] * 30, [1] * 13], SAMPLES, max_len=24, what="val")
    assert length == 13 and len(chosen) == 2  # few documents: a shorter window
    with pytest.raises(UserError, match="the val split of x has too little text for 5CAT"):
        choose_windows([[1] * 30, [1] * 11], SAMPLES, max_len=24, what="the val split of x")


def test_forward_probe_rows(byte_tok):
    ids = byte_tok.special_ids
    docs = [byte_tok.encode(ABC), byte_tok.encode("0123456789ABCDEFGHIJ")]
    probe = build_probe(docs, 16, "val", Direction.FORWARD, None, ids, SAMPLES)
    assert (probe.rows, probe.length, probe.prefix, probe.marker) == (2, 17, 1, None)
    first = probe.declared[0]
    assert first == [ids.bos, *byte_tok.encode(ABC[:16])]  # a forward crop keeps the start
    assert probe.opposite[0] == [ids.bos, *first[:0:-1]] and probe.wrong_marker is None
    cut = 17 - SAMPLES.ablate_last  # the context of the last K targets is ablated
    for row in (probe.shuffled[0], probe.reversed[0]):
        assert row[:1] == first[:1] and row[cut:] == first[cut:]
        assert sorted(row[1:cut]) == sorted(first[1:cut])
    assert probe.reversed[0][1:cut] == first[1:cut][::-1]
    assert probe.shuffled != probe.declared
    again = build_probe(docs, 16, "val", Direction.FORWARD, None, ids, SAMPLES)
    assert again.shuffled == probe.shuffled  # seeded


def test_backward_probe_keeps_the_documents_ending(byte_tok):
    ids = byte_tok.special_ids
    probe = build_probe([byte_tok.encode(ABC)] * 2, 16, "ood", Direction.BACKWARD, None, ids,
                        SAMPLES)
    assert to_reading_order(probe.declared[0], "backward", ids) == byte_tok.encode(ABC[-16:])
    assert probe.opposite[0] == [ids.bos, *byte_tok.encode(ABC[-16:])]  # the same text, forward


def test_bidirectional_probe_swaps_order_or_marker(byte_tok):
    ids = byte_tok.special_ids
    probe = build_probe([byte_tok.encode(ABC)] * 2, 16, "val", Direction.BIDIRECTIONAL,
                        Direction.BACKWARD, ids, SAMPLES)
    row = probe.declared[0]
    assert (probe.prefix, probe.marker, probe.length) == (2, "backward", 18)
    assert row[:2] == [ids.bos, ids.backward]
    assert probe.opposite[0] == [ids.bos, ids.backward, *row[:1:-1]]  # right marker, wrong order
    assert probe.wrong_marker[0] == [ids.bos, ids.forward, *row[2:]]  # right order, wrong marker


def test_probes_of_every_split_and_marker(tmp_path, byte_tok):
    docs = [f"document {i}: " + "word " * (i % 7 + 3) for i in range(40)]
    write_shard(tmp_path / "val_00000.parquet", docs[:20])
    write_shard(tmp_path / "ood_00000.parquet", docs[20:])
    assert [p.name for p in split_files(tmp_path, "val")] == ["val_00000.parquet"]
    assert split_files(tmp_path, "train") == []
    probes, info = build_probes(tmp_path, byte_tok, Direction.BIDIRECTIONAL, SAMPLES, seq_len=26,
                                splits=["val", "ood"])
    assert [(p.split, p.marker) for p in probes] == [
        ("val", "forward"), ("val", "backward"), ("ood", "forward"), ("ood", "backward")]
    assert info["val"] == {"documents": 4, "window": 24, "read": 20}  # seq_len 26 − BOS, marker
    assert all(p.rows == 4 and p.length == 26 for p in probes)
    with pytest.raises(UserError, match="5CAT needs windows of at least 14 tokens"):
        build_probes(tmp_path, byte_tok, Direction.FORWARD, SAMPLES, seq_len=15, splits=["val"])


def test_reading_stops_once_enough_documents_are_long(tmp_path, byte_tok):
    write_shard(tmp_path / "val_00000.parquet", ["   "] * 10 + ["a long enough document"] * 200)
    docs = read_documents(split_files(tmp_path, "val"), byte_tok, SAMPLES, max_len=16)
    assert len(docs) == 64  # the first encoded batch already holds max_samples long ones
    assert all(d == byte_tok.encode("a long enough document") for d in docs)  # blanks skipped


@pytest.mark.parametrize("direction,marker", [("forward", None), ("backward", None),
                                              ("bidirectional", "forward"),
                                              ("bidirectional", "backward")])
def test_every_comparison_within_a_probe_is_over_the_same_text(byte_tok, direction, marker):
    """Gate B compares the declared order with the opposite order (and the wrong marker): the
    rows it compares must hold the same reading-order tokens, or the margin measures text."""
    ids = byte_tok.special_ids
    docs = [byte_tok.encode(ABC), byte_tok.encode("0123456789" * 3)]
    probe = build_probe(docs, 16, "val", Direction.parse(direction),
                        Direction.parse(marker) if marker else None, ids, SAMPLES)
    other = "backward" if (marker or direction) == "forward" else "forward"
    for r in range(probe.rows):
        declared = to_reading_order(probe.declared[r], direction, ids)
        body = probe.opposite[r][probe.prefix:]
        assert model_order(body, other) == declared  # the opposite row: same text, reversed
        if probe.wrong_marker is not None:
            assert probe.wrong_marker[r][probe.prefix:] == probe.declared[r][probe.prefix:]
