"""The arrow-of-time probe: the log-probability of one text in each order a model knows.

The text is tokenized once, in reading order; each order scores the same tokens
(:func:`backlm.direction.encode_for`), so bits per byte are over the same bytes. Per-token
log-probabilities are returned in reading order whatever order predicted them; a bidirectional
model's marker is given, never scored.
"""

from __future__ import annotations

import math
from typing import Any

from backlm.direction import Direction, encode_for, model_order, prefix_length
from backlm.errors import UserError

MAX_CHARS = 100_000


def score_text(model: Any, tokenizer: Any, direction: Direction, text: str) -> dict[str, Any]:
    """``{order: {"logprob", "bits_per_byte", "tokens": [{"token", "logprob"}...]}}`` for each
    order of ``direction`` (natural-log probabilities; tokens in reading order)."""
    import torch

    if not isinstance(text, str) or not text:
        raise UserError("give a non-empty text to score")
    if len(text) > MAX_CHARS:
        raise UserError(f"the text has {len(text):,} characters; score at most {MAX_CHARS:,}")
    tokens = tokenizer.encode(text)
    head = prefix_length(direction)
    limit = model.cfg.seq_len + 1 - head
    if len(tokens) > limit:
        raise UserError(f"the text is {len(tokens)} tokens; this model reads {limit} after its "
                        "start tokens: score a shorter text")
    device = model.lm_head.weight.device
    nbytes = len(text.encode("utf-8"))
    out: dict[str, Any] = {}
    for order in direction.orders:
        seq, _ = encode_for(tokens, direction, order, tokenizer.special_ids)
        ids = torch.tensor([seq], dtype=torch.long, device=device)
        with torch.inference_mode():
            logp = torch.log_softmax(model.logits(model.hidden(ids[:, :-1])).float(), dim=-1)
        picked = logp[0].gather(1, ids[0, 1:, None])[:, 0].tolist()
        body = model_order(picked[head - 1:], order)  # the body's targets, in reading order
        total = float(sum(body))
        out[order.value] = {
            "logprob": total,
            "bits_per_byte": -total / (math.log(2) * nbytes),
            "tokens": [{"token": tokenizer.id_to_token_str(t), "logprob": lp}
                       for t, lp in zip(tokens, body, strict=True)],
        }
    return out
