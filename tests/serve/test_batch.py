"""Concurrent generations decoded together: a seeded request writes the same tokens alone and
batched with others (each with its own sampling, penalties, log-probabilities, length), the
rows are stepped together, rows leave when their request ends, and what cannot join is decoded
alone by the engine."""

from __future__ import annotations

import pytest
import torch

from backlm.model.decode import GREEDY, SamplingParams, decode
from backlm.serve.batch import Batch, Rows
from tests.model.test_gpt import make_model

PROMPT = [5, 17, 42, 7, 99]
HOT = SamplingParams(temperature=1.0, top_k=40)


@pytest.fixture(scope="module")
def model():
    return make_model().eval()


def tokens(steps) -> list[list[int]]:
    return [s.tokens.tolist() for s in steps]


def test_a_seeded_request_writes_the_same_alone_and_batched(model):
    want = tokens(Batch(model, 8).decode(PROMPT, 12, sampling=HOT, seed=7))
    batch = Batch(model, 8)
    others = [batch.decode([3, 4, 5], 20, rows=2, seed=1,
                           sampling=SamplingParams(0.8, presence_penalty=0.5)),
              batch.decode([9], 6, sampling=GREEDY, top_logprobs=3)]
    early = [next(o) for o in others]  # they are streaming when the seeded one comes
    mine = batch.decode(PROMPT, 12, sampling=HOT, seed=7)
    assert isinstance(mine, Rows) and batch.decoder.free == 8 - 4
    got, seen = [], {0: [early[0]], 1: [early[1]]}
    live = {0: others[0], 1: others[1], 2: mine}
    while live:
        for key, steps in list(live.items()):
            step = next(steps, None)
            if step is None:
                del live[key]
            elif key == 2:
                got.append(step.tokens.tolist())
            else:
                seen[key].append(step)
    assert got == want
    assert len(seen[0]) == 20 and len(seen[1]) == 6 and all(s.tokens.shape == (2,)
                                                            for s in seen[0])
    assert seen[1][0].top_ids.shape == (1, 3) and seen[0][0].logprobs is None
    assert batch.steps < 19 + 5 + 11  # stepped together, not one request after another
    assert batch.decoder.free == 8 and not batch.groups  # every row left at its end


def test_batched_rows_write_what_the_engine_writes(model):
    engine = list(decode(model, PROMPT, 10, top_logprobs=2))
    mine = list(Batch(model, 4).decode(PROMPT, 10, top_logprobs=2))
    assert tokens(mine) == tokens(engine)
    for a, b in zip(mine, engine, strict=True):
        torch.testing.assert_close(a.logprobs, b.logprobs, rtol=1e-4, atol=1e-4)
        assert a.top_ids.tolist() == b.top_ids.tolist()


def test_a_request_that_leaves_frees_its_rows_and_the_others_go_on(model):
    batch = Batch(model, 4)
    want = tokens(Batch(model, 4).decode([1, 2, 3], 8, sampling=HOT, seed=3))
    stays = batch.decode([1, 2, 3], 8, sampling=HOT, seed=3)
    leaves = batch.decode(PROMPT, 50, rows=3, sampling=HOT, seed=4)
    got = [next(stays).tokens.tolist()]
    next(leaves)
    assert batch.decoder.free == 0
    leaves.close()  # its client went away
    assert batch.decoder.free == 3 and list(leaves) == []
    got += tokens(stays)
    assert got == want and batch.decoder.free == 4


def test_what_cannot_join_is_decoded_alone(model):
    batch = Batch(model, 2, max_len=16)
    assert not isinstance(batch.decode(PROMPT, 4, score_prompt=True), Rows)  # prompt scored
    assert not isinstance(batch.decode(PROMPT, 12), Rows)  # past the batch's positions
    first = batch.decode(PROMPT, 4, rows=2)
    assert isinstance(first, Rows)
    alone = batch.decode(PROMPT, 4)  # no free row
    assert not isinstance(alone, Rows)
    assert tokens(alone) == [row[:1] for row in tokens(first)]  # greedy: rows alike


def test_a_lone_greedy_stream_runs_many_steps_per_call_and_others_join_it(model):
    want = tokens(decode(model, PROMPT, 40))
    batch = Batch(model, 4)
    lone = batch.decode(PROMPT, 40)
    got = [next(lone).tokens.tolist() for _ in range(20)]
    assert batch.steps < 19  # 1, 2, 4, ... tokens per C call
    joined = batch.decode([1, 2, 3], 10, sampling=HOT, seed=3)  # joins at the next step
    alone_too = tokens(Batch(model, 4).decode([1, 2, 3], 10, sampling=HOT, seed=3))
    other = []
    while (step := next(lone, None)) is not None:
        got.append(step.tokens.tolist())
        other += [s.tokens.tolist() for s in [next(joined, None)] if s is not None]
    other += tokens(joined)
    assert got == want and other == alone_too
    ends = tokens(Batch(model, 4).decode(PROMPT, 40, stop={want[5][0]}))
    assert ends == want[:6]  # a greedy row ends at a stop token
