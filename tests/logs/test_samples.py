"""Generation samples in model and reading order, and the sample file on resume."""

from __future__ import annotations

import json

import pytest

from backlm.direction import Direction
from tests.conftest import make_docs
from tests.helpers import loop_state


@pytest.fixture(scope="module")
def tiny_run():
    """A run-like object: tiny GPT, real BPE tokenizer, config (enough for the samplers)."""
    import torch

    from backlm.config import RunConfig
    from backlm.model.gpt import GPT
    from backlm.tokenizer import Tokenizer

    tok = Tokenizer.train(make_docs(200), vocab_size=300)
    cfg = RunConfig()
    cfg.model.depth, cfg.model.width, cfg.model.head_dim = 2, 64, 32
    cfg.model.vocab_size, cfg.model.seq_len = tok.vocab_size, 32
    cfg.log.sample_tokens = 20
    torch.manual_seed(0)
    return loop_state(cfg=cfg, model=GPT(cfg.model), tokenizer=tok)


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_generation_samples_round_trip_between_orders(tiny_run, direction):
    from backlm.direction import model_order
    from backlm.logs.samples import generate_samples

    tiny_run.run.cfg.data.direction = Direction(direction)
    samples = generate_samples(tiny_run.run, 7)
    ids = tiny_run.run.tokenizer.special_ids
    orders = ["forward", "backward"] if direction == "bidirectional" else [direction]
    assert [s["order"] for s in samples] == orders
    for s in samples:
        prompt = s["prompt_ids"]
        assert prompt[0] == ids.bos and s["model_order_ids"][:len(prompt)] == prompt
        if direction == "bidirectional":
            assert prompt[1] == ids.marker(s["order"])
        body = s["model_order_ids"][len(prompt):]
        assert len(body) == 20 and model_order(s["reading_order_ids"], s["order"]) == body
        tok = tiny_run.run.tokenizer
        assert s["reading_order_text"] == tok.decode(s["reading_order_ids"])
        assert s["model_order_text"] == tok.decode(s["model_order_ids"])
        assert s["step"] == 7 and s["direction"] == direction
    assert generate_samples(tiny_run.run, 8)[0]["model_order_ids"] == samples[0]["model_order_ids"]


def test_sample_file_drops_samples_past_the_resumed_step(tiny_run, tmp_path):
    from backlm.logs.samples import SampleCallback

    cfg = tiny_run.run.cfg
    cfg.data.direction = Direction.BACKWARD
    cfg.log.sample_every = 2
    state = loop_state(tmp_path, cfg, tiny_run.run.model, tiny_run.run.tokenizer)
    cb = SampleCallback(state)
    for step in range(0, 7):
        cb.on_step_end(state, step, {})
    path = tmp_path / "notes" / "generation_samples.jsonl"
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4, 6]
    resumed = loop_state(tmp_path, cfg, step=4)  # a resume from the step-4 checkpoint
    SampleCallback(resumed)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4]
