"""Language-model evaluation: which splits it reads, and the same tokens and bytes scored in
every order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backlm.model import IGNORE_INDEX
from backlm.model.gpt import GPT


def test_missing_ood_split_is_a_note(tmp_path):
    from backlm.data.shards import write_shard
    from backlm.evaluation.lm import lm_shards

    write_shard(tmp_path / "val_00000.parquet", ["some text"])
    shards, notes = lm_shards(tmp_path)
    assert list(shards) == ["val"] and "OOD language modelling skipped" in notes[0]


@pytest.fixture(scope="module")
def held():
    import tempfile

    from backlm.data.shards import write_shard
    from backlm.evaluation.lm import held_out
    from backlm.tokenizer import Tokenizer
    from tests.conftest import make_docs

    docs = make_docs(60, seed=5) + ["x" * 300]  # one document longer than several windows
    tok = Tokenizer.train(docs, vocab_size=300)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "val_00000.parquet"
        write_shard(shard, docs, row_group_docs=16)
        return tok, held_out([shard], tok)


CASES = [("forward", "forward"), ("forward", "backward"), ("backward", "backward"),
         ("backward", "forward"), ("bidirectional", "forward"), ("bidirectional", "backward")]


def test_every_order_scores_each_token_once_at_the_same_places(held):
    from backlm.evaluation.lm import window_batches, windows

    tok, data = held
    spans = windows(data, seq_len=24)
    assert any(b - a < len(data.docs[d]) for d, a, b in spans)  # long documents were cut
    everything = {(d, p) for d, doc in enumerate(data.docs) for p in range(len(doc))}
    for model_direction, order in CASES:
        scored = []
        for batch in window_batches(data, spans, model_direction, order, tok.special_ids, 5):
            assert batch.inputs.shape[1] <= 24
            rows, cols = np.nonzero(batch.targets != IGNORE_INDEX)
            for r, c in zip(rows, cols, strict=True):
                d, p = int(batch.docs[r]), int(batch.positions[r, c])
                assert batch.targets[r, c] == data.docs[d][p]  # the token really is there
                scored.append((d, p))
        assert len(scored) == len(everything) and set(scored) == everything, model_direction


def test_every_order_is_measured_over_the_same_bytes(held):
    import torch

    from backlm.config import ModelConfig
    from backlm.evaluation.lm import score, window_batches, windows

    tok, data = held
    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, width=32, head_dim=16, vocab_size=tok.vocab_size,
                            seq_len=24)).eval()
    token_bytes = torch.tensor(tok.token_byte_lengths(), dtype=torch.float32)
    spans = windows(data, seq_len=24)
    results = []
    for model_direction, order in CASES:
        batches = window_batches(data, spans, model_direction, order, tok.special_ids, 7)
        results.append(score(model, batches, token_bytes, "cpu", n_docs=len(data.docs),
                             max_position=24))
    texts = sum(len(d) for d in data.docs)
    for sums in results:
        assert sums.tokens == texts and sums.bytes == results[0].bytes
        np.testing.assert_array_equal(sums.doc_tokens, [len(d) for d in data.docs])
        np.testing.assert_array_equal(sums.doc_bytes, results[0].doc_bytes)
        assert sums.nats == pytest.approx(sums.doc_nats.sum())
        assert sum(b["tokens"] for b in sums.by_position()) == texts
    assert results[0].nats != results[1].nats  # the same bytes, read two ways


def test_a_token_budget_takes_the_same_whole_documents(held, tmp_path):
    from backlm.data.shards import write_shard
    from backlm.evaluation.lm import held_out
    from tests.conftest import make_docs

    tok, _ = held
    shard = tmp_path / "val_00000.parquet"
    write_shard(shard, make_docs(80, seed=2))
    full, part = held_out([shard], tok), held_out([shard], tok, max_tokens=200)
    assert 200 <= part.tokens < 200 + max(len(d) for d in full.docs)
    assert part.hashes == full.hashes[:len(part.docs)]
    assert all((a == b).all() for a, b in zip(part.docs, full.docs, strict=False))


def test_batches_hold_a_token_budget_and_score_as_window_by_window(held):
    import torch

    from backlm.config import ModelConfig
    from backlm.evaluation.lm import score, window_batches, windows

    tok, data = held
    spans = windows(data, seq_len=24)
    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, width=32, head_dim=16, vocab_size=tok.vocab_size,
                            seq_len=24)).eval()
    token_bytes = torch.tensor(tok.token_byte_lengths(), dtype=torch.float32)
    for model_direction, order in CASES[:3] + CASES[4:5]:
        packed = list(window_batches(data, spans, model_direction, order, tok.special_ids, 4,
                                     cells=4 * 24))
        assert all(b.inputs.size <= 4 * 24 for b in packed)
        assert max(len(b.inputs) for b in packed) > 4  # short windows go more to a batch
        one = list(window_batches(data, spans, model_direction, order, tok.special_ids, 1,
                                  cells=1))  # one window a batch: each scored on its own
        assert len(one) == len(spans) > len(packed)
        sums = [score(model, iter(b), token_bytes, "cpu", n_docs=len(data.docs),
                      max_position=24) for b in (packed, one)]
        np.testing.assert_allclose(sums[0].doc_nats, sums[1].doc_nats, rtol=1e-5)
        assert sums[0].pos_tokens == sums[1].pos_tokens
        assert sums[0].nats == pytest.approx(sums[1].nats, rel=1e-6)
