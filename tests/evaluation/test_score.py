"""The arrow-of-time probe: the same tokens and bytes in every order, per-token values in
reading order that add up to the total, the model's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from backlm.config import ModelConfig
from backlm.direction import Direction, encode_document
from backlm.errors import UserError
from backlm.evaluation.score import score_text
from backlm.model import IGNORE_INDEX
from backlm.model.gpt import GPT
from backlm.tokenizer import Tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. ✓"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT, "lazy dogs and quick foxes"] * 5, vocab_size=300)


def _model(tok, seq_len=64):
    torch.manual_seed(0)
    return GPT(ModelConfig(depth=1, width=32, head_dim=16, vocab_size=tok.vocab_size,
                           seq_len=seq_len)).eval()


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_each_order_scores_the_same_tokens_and_matches_the_models_loss(tok, direction):
    model = _model(tok)
    result = score_text(model, tok, Direction(direction), TEXT)
    expected_orders = ["forward", "backward"] if direction == "bidirectional" else [direction]
    assert list(result) == expected_orders
    tokens = tok.encode(TEXT)
    for order, r in result.items():
        assert [t["token"] for t in r["tokens"]] == [tok.id_to_token_str(t) for t in tokens]
        assert sum(t["logprob"] for t in r["tokens"]) == pytest.approx(r["logprob"])
        nbytes = len(TEXT.encode())
        assert r["bits_per_byte"] == pytest.approx(-r["logprob"] / (math.log(2) * nbytes))
        seq, mask = encode_document(tokens, direction, tok.special_ids,
                                    order if direction == "bidirectional" else None)
        x = torch.tensor([seq[:-1]])
        y = torch.tensor([[t if m else IGNORE_INDEX for t, m in zip(seq[1:], mask[1:],
                                                                       strict=True)]])
        with torch.no_grad():
            loss = float(model(x, y, loss_reduction="sum"))
        assert r["logprob"] == pytest.approx(-loss, rel=1e-4)


def test_per_token_values_come_back_in_reading_order(tok):
    """The first reading-order token is predicted first going forward and last going backward:
    its value must sit first in both lists."""
    model = _model(tok)
    r = score_text(model, tok, Direction.BIDIRECTIONAL, TEXT)
    seq, _ = encode_document(tok.encode(TEXT), "bidirectional", tok.special_ids, "backward")
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model.hidden(torch.tensor([seq[:-1]]))), -1)
    last_predicted = float(logp[0, -1, seq[-1]])  # backward predicts token 1 last
    assert r["backward"]["tokens"][0]["logprob"] == pytest.approx(last_predicted, rel=1e-5)


@pytest.mark.parametrize(("text", "words"), [
    ("", "non-empty"), ("x" * 100_001, "at most"), ("word " * 200, "shorter text"),
])
def test_bad_texts_are_user_errors(tok, text, words):
    with pytest.raises(UserError, match=words):
        score_text(_model(tok), tok, Direction.FORWARD, text)
