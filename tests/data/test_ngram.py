"""The n-gram direction signal: a reading-order bigram tells which way packed data reads."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from backlm.cli import app
from backlm.data.ngram import BigramModel, direction_signals


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real English prose: docstrings of two standard-library packages."""
    from backlm.data import corpus

    std = Path(sysconfig.get_paths()["stdlib"])
    return corpus.extract_docs(corpus.source_files([std / "json", std / "email"]), workers=1)


@pytest.fixture(scope="module")
def tokenizer(texts):
    from backlm.tokenizer import Tokenizer

    return Tokenizer.train(texts, vocab_size=300)


def test_bigram_is_normalised_and_smoothed():
    model = BigramModel.fit([[0, 1, 2, 1, 2, 3], [2, 1]], vocab_size=5)
    for a in range(5):
        probs = [np.exp(model.transition_logprobs([a, b])[0]) for b in range(5)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-9)
        assert min(probs) > 0  # unseen pairs (and unseen contexts) keep some mass
    assert model.tokens == 8
    assert model.transition_logprobs([4]).size == 0


def test_reading_order_text_reads_forward_and_reversed_text_backward(texts, tokenizer):
    docs = tokenizer.encode_batch(texts)
    model = BigramModel.fit(docs[::2], tokenizer.vocab_size)
    held_out = docs[1::2][:200]
    fwd, = direction_signals(model, [("forward", d) for d in held_out])
    bwd, = direction_signals(model, [("backward", d[::-1]) for d in held_out])
    assert fwd.delta > 0.5 and fwd.reads == "forward" and not fwd.contradicts
    assert bwd.delta < -0.5 and bwd.reads == "backward" and not bwd.contradicts
    assert fwd.agree / fwd.voters > 0.9 and bwd.agree / bwd.voters > 0.9
    # the pipeline bug the signal exists for: backward declared, reading-order data
    bug, = direction_signals(model, [("backward", d) for d in held_out])
    assert bug.contradicts and bug.reads == "forward"


def test_noise_is_inconclusive_not_a_failure():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, 200).tolist() for _ in range(40)]
    model = BigramModel.fit(docs[:20], 50)
    sig, = direction_signals(model, [("backward", d) for d in docs[20:]])
    assert sig.reads == "inconclusive" and not sig.contradicts


@pytest.fixture
def prepared(tmp_path, monkeypatch, texts, tokenizer):
    from backlm.data.shards import write_shard

    monkeypatch.setenv("BACKLM_HOME", str(tmp_path))
    d = tmp_path / "data" / "pydocs"
    write_shard(d / "train_00000.parquet", texts[:-60], row_group_docs=100)
    write_shard(d / "val_00000.parquet", texts[-60:], row_group_docs=30)
    tokenizer.save(d / "tokenizer")
    return d


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_diagnose_reports_the_signal(prepared, direction):
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", direction, "--seq-len", "64",
                                   "--show", "0"])
    assert res.exit_code == 0, res.output
    orders = ["forward", "backward"] if direction == "bidirectional" else [direction]
    for order in orders:
        assert f"n-gram: {order} documents read {order}" in res.output
        assert f"reads {order}" in res.output
    assert "FAIL" not in res.output


def test_diagnose_catches_a_reversal_bug_its_round_trip_cannot(prepared, monkeypatch):
    """``model_order`` broken for backward: the transform and its inverse agree (the round
    trip closes), so only the n-gram signal sees that "backward" data reads forward."""
    from backlm import direction

    monkeypatch.setattr(direction, "model_order", lambda tokens, order: list(tokens))
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", "backward", "--seq-len", "64",
                                   "--show", "0"])
    assert res.exit_code == 1, res.output
    round_trip = next(ln for ln in res.output.splitlines() if "reading-order span" in ln)
    assert "pass" in round_trip  # the old checks are fooled
    assert "FAIL: reads forward" in res.output and "FAILED" in res.output


def test_diagnose_without_the_signal(prepared):
    res = CliRunner().invoke(app, ["data", "diagnose", "-d", "backward", "--seq-len", "64",
                                   "--show", "0", "--ngram-chars", "0"])
    assert res.exit_code == 0, res.output
    assert "n-gram" not in res.output
