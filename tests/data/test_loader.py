"""Packing, direction, identical order across directions, rank split and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backlm.data.loader import PackedLoader
from backlm.data.shards import list_shards
from backlm.direction import Direction, to_reading_order
from backlm.errors import UserError
from backlm.model import IGNORE_INDEX


def loader(ds, tok, direction, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("seq_len", 48)
    kw.setdefault("docs_per_batch", 16)
    kw.setdefault("buffer_docs", 8)
    return PackedLoader(list_shards(ds, kw.pop("split", "train")), tok, Direction.parse(direction),
                        **kw)


def row_tokens(batch, r):
    """Row ``r`` of a batch as the ``seq_len + 1`` tokens it was cut from."""
    return [int(t) for t in batch.inputs[r]] + [int(batch.targets[r, -1])]


def pieces_of(batch, provenance, direction, ids):
    """Per row: ``(key, start, end, reading-order tokens)`` of each piece, cut by provenance."""
    rows = []
    for r, prov in enumerate(provenance):
        row, at, out = row_tokens(batch, r), 0, []
        for key, start, end, n in prov:
            out.append((key, start, end, to_reading_order(row[at:at + n], direction, ids)))
            at += n
        rows.append(out)
    return rows


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_rows_are_bos_aligned_and_round_trip(tiny_dataset, byte_tok, direction):
    ld = loader(tiny_dataset, byte_tok, direction, track=True)
    ids = byte_tok.special_ids
    for _ in range(5):
        batch = ld.next_batch()
        assert batch.inputs.shape == (4, 48) and batch.targets.shape == (4, 48)
        assert (batch.inputs[:, 0] == ids.bos).all()
        for r, pieces in enumerate(pieces_of(batch, ld.provenance, direction, ids)):
            texts = ld.texts_for([key for key, *_ in pieces])
            at = 0
            for (_, start, end, back), text, (*_, n) in zip(pieces, texts, ld.provenance[r],
                                                            strict=True):
                assert row_tokens(batch, r)[at] == ids.bos  # every piece starts at its BOS
                at += n
                assert back == byte_tok.encode(text)[start:end]  # its reading-order span
            # after the pieces only padding: the unused marker slots (forward, backward) and
            # a gap too small for another piece
            head = 2 if direction == "bidirectional" else 1
            assert 49 - at <= (2 - head) * len(pieces) + 2
            assert (batch.targets[r, at - 1:] == IGNORE_INDEX).all()


def test_targets_are_shifted_inputs_with_marker_masked(tiny_dataset, byte_tok):
    ids = byte_tok.special_ids
    ld = loader(tiny_dataset, byte_tok, "bidirectional", track=True)
    batch = ld.next_batch()
    inp, tgt = batch.inputs, batch.targets
    # Every target follows its input; the marker after each BOS is ignored, and so is the
    # padding after the row's last piece; nothing else is.
    for r, prov in enumerate(ld.provenance):
        used = sum(n for *_, n in prov)
        for t in range(inp.shape[1] - 1):
            if t + 1 >= used:
                assert tgt[r, t] == IGNORE_INDEX
            elif tgt[r, t] == IGNORE_INDEX:
                assert inp[r, t + 1] in (ids.forward, ids.backward)
            else:
                assert tgt[r, t] == inp[r, t + 1]
            if inp[r, t] == ids.bos:
                assert tgt[r, t] == IGNORE_INDEX
    markers = np.isin(inp, [ids.forward, ids.backward]).sum()
    pieces = sum(len(p) for p in ld.provenance)
    assert pieces - 4 <= markers <= pieces  # a row may end on its last piece's marker


def test_every_direction_packs_the_same_reading_order_spans(tiny_dataset, byte_tok):
    streams = {}
    for d in ("forward", "backward", "bidirectional"):
        ld = loader(tiny_dataset, byte_tok, d, track=True)
        spans = []
        for _ in range(6):
            ld.next_batch()
            spans.append([[(k, a, b) for k, a, b, _ in row] for row in ld.provenance])
        streams[d] = spans
    assert streams["forward"] == streams["backward"] == streams["bidirectional"]


def test_backward_rows_reverse_forward_documents(tiny_dataset, byte_tok):
    ids = byte_tok.special_ids
    rows = {}
    for d in ("forward", "backward"):
        ld = loader(tiny_dataset, byte_tok, d, track=True)
        batch = ld.next_batch()
        rows[d] = [(row_tokens(batch, r), prov) for r, prov in enumerate(ld.provenance)]
    for (rf, pf), (rb, pb) in zip(rows["forward"], rows["backward"], strict=True):
        at = 0
        for (*_, n), (*_, m) in zip(pf, pb, strict=True):
            assert n == m and rb[at] == rf[at] == ids.bos
            assert rb[at + 1:at + n] == rf[at + 1:at + n][::-1]
            at += n


def test_bidirectional_mix_is_respected(tiny_dataset, byte_tok):
    ids = byte_tok.special_ids
    for mix, lo, hi in ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.3, 0.7)):
        ld = loader(tiny_dataset, byte_tok, "bidirectional", mix=mix, seq_len=64)
        inp = np.concatenate([ld.next_batch().inputs for _ in range(10)])
        back, fwd = (inp == ids.backward).sum(), (inp == ids.forward).sum()
        assert lo <= back / (back + fwd) <= hi


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_state_dict_resumes_at_the_exact_next_batch(tiny_dataset, byte_tok, direction):
    ref = loader(tiny_dataset, byte_tok, direction)
    expected = [ref.next_batch() for _ in range(30)]  # crosses row groups, shards and epochs
    run = loader(tiny_dataset, byte_tok, direction)
    for i in range(30):
        if i in (3, 11, 17):
            import json

            state = json.loads(json.dumps(run.state_dict()))  # must be JSON-able
            run = loader(tiny_dataset, byte_tok, direction)
            run.load_state_dict(state)
        got = run.next_batch()
        np.testing.assert_array_equal(got.inputs, expected[i].inputs)
        np.testing.assert_array_equal(got.targets, expected[i].targets)


def test_state_from_another_direction_is_refused(tiny_dataset, byte_tok):
    state = loader(tiny_dataset, byte_tok, "forward").state_dict()
    with pytest.raises(UserError, match="direction"):
        loader(tiny_dataset, byte_tok, "backward").load_state_dict(state)


def test_ranks_read_disjoint_documents(tiny_dataset, byte_tok):
    seen = []
    for rank in range(2):
        ld = loader(tiny_dataset, byte_tok, "forward", rank=rank, world_size=2, track=True,
                    loop=False)
        keys = set()
        texts = []
        for _ in ld:
            k = [key for row in ld.provenance for key, *_ in row]
            keys.update(k)
            texts += ld.texts_for(k)
        seen.append(set(texts))
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    assert len(seen[0] | seen[1]) == 500  # one finite pass covers every train document


def test_row_stride_when_fewer_row_groups_than_ranks(tmp_path, byte_tok):
    from backlm.data.shards import write_shard

    write_shard(tmp_path / "train_00000.parquet", [f"document number {i}" for i in range(40)])
    texts = []
    for rank in range(2):
        ld = PackedLoader(list_shards(tmp_path), byte_tok, Direction.FORWARD, batch_size=2,
                          seq_len=32, rank=rank, world_size=2, loop=False, track=True)
        for _ in ld:
            texts.append(set(ld.texts_for([k for row in ld.provenance for k, *_ in row])))
    assert len(set().union(*texts)) == 40


def test_finite_pass_ends(tiny_dataset, byte_tok):
    ld = loader(tiny_dataset, byte_tok, "forward", split="val", loop=False)
    batches = list(ld)
    assert batches and sum(b.num_targets for b in batches) > 0
    with pytest.raises(StopIteration):
        ld.next_batch()


def test_bad_arguments(tiny_dataset, byte_tok, tmp_path):
    with pytest.raises(UserError):
        loader(tiny_dataset, byte_tok, "sideways")
    with pytest.raises(UserError):
        PackedLoader([], byte_tok, Direction.FORWARD, batch_size=1, seq_len=8)
    with pytest.raises(UserError, match="backlm data prepare"):
        list_shards(tmp_path / "nope")
    with pytest.raises(UserError, match="no train shards"):
        list_shards(tmp_path)


def _epoch(folder, tok, direction, **kw):
    """One finite pass: per row, the pieces' (key, start, end) and reading-order tokens."""
    ld = PackedLoader(list_shards(folder), tok, Direction.parse(direction), loop=False,
                      track=True, **kw)
    spans, tokens = [], []
    for batch in ld:
        for row in pieces_of(batch, ld.provenance, direction, tok.special_ids):
            spans.append([(key, a, b) for key, a, b, _ in row])
            tokens.extend(t for *_, back in row for t in back)
    return ld, spans, tokens


def test_an_epoch_sees_every_token_once_in_every_direction(tiny_dataset, byte_tok):
    from collections import Counter

    from backlm.data.shards import iter_texts

    every = Counter(t for p in list_shards(tiny_dataset) for text in iter_texts(p)
                    for t in byte_tok.encode(text))
    seen = {}
    for d in ("forward", "backward", "bidirectional"):
        _, spans, tokens = _epoch(tiny_dataset, byte_tok, d, batch_size=4, seq_len=48,
                                  docs_per_batch=16, buffer_docs=8, seed=3)
        seen[d] = (spans, Counter(tokens))
    assert seen["forward"] == seen["backward"] == seen["bidirectional"]
    assert seen["forward"][1] == every  # nothing dropped, nothing twice


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(0, 90), min_size=1, max_size=30),
       seq_len=st.integers(2, 40), buffer=st.integers(1, 6), batch=st.integers(1, 3))
def test_pieces_partition_each_document_the_same_way_in_every_direction(
        byte_tok, lengths, seq_len, buffer, batch):
    import tempfile
    from pathlib import Path

    from backlm.data.shards import write_shard

    with tempfile.TemporaryDirectory() as tmp:
        docs = [("abcdefghij" * 10)[:n] for n in lengths]
        write_shard(Path(tmp) / "train_00000.parquet", docs, row_group_docs=7)
        runs = [_epoch(Path(tmp), byte_tok, d, batch_size=batch, seq_len=seq_len,
                       docs_per_batch=5, buffer_docs=buffer, shuffle=False)
                for d in ("forward", "backward", "bidirectional")]
        assert runs[0][1] == runs[1][1] == runs[2][1]  # the same spans in the same rows
        ld, rows, _ = runs[0]
        covered: dict = {}
        for row in rows:
            for key, a, b in row:
                assert 1 <= b - a <= seq_len - 1  # a piece and its head fit one row
                covered.setdefault(key, []).append((a, b))
        texts = ld.texts_for(sorted(covered))
        for (_key, spans), text in zip(sorted(covered.items()), texts, strict=True):
            spans.sort()
            assert spans[0][0] == 0 and spans[-1][1] == len(text)
            assert all(x[1] == y[0] for x, y in zip(spans, spans[1:], strict=False))
        assert len(covered) == sum(n > 0 for n in lengths)  # every non-empty document
