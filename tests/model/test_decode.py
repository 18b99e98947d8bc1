"""The generation engine: the fused C step gives the model's own logits at every position, in
every shape (rows not a multiple of four, one head, past seq_len), and steps aside where it
cannot run (C kernels off, autocast); batched rows decode as batch-1 runs do; the sampler's
top-k and top-p cut what they should; seeds reproduce; rows end at their stop token."""

from __future__ import annotations

import pytest
import torch

from backlm.config import ModelConfig
from backlm.model import native
from backlm.model.decode import (
    GREEDY,
    Decoder,
    SamplingParams,
    Threads,
    decode,
    fused_usable,
    generate,
    sample,
    sample_steps,
    stream,
)
from tests.model.test_gpt import greedy_uncached, make_model

needs_native = pytest.mark.skipif(native.native_kernels() is None,
                                  reason="the C kernels are not built here")

SHAPES = [
    ModelConfig(depth=2, width=64, head_dim=16, vocab_size=300, seq_len=32),
    ModelConfig(depth=1, width=32, head_dim=32, vocab_size=301, seq_len=16),  # one head, odd V
    ModelConfig(depth=3, width=48, head_dim=16, vocab_size=257, seq_len=64, softcap=0.0),
]


@needs_native
@pytest.mark.parametrize("cfg", SHAPES, ids=["d2", "one-head", "no-softcap"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_equals_the_models_forward(cfg, threads):
    model = make_model(cfg).eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            fused, ref = Decoder(model, 2 * cfg.seq_len + 8), Decoder(model, 2 * cfg.seq_len + 8,
                                                                     fused=False)
            assert fused.fused and not ref.fused
            prompt = [3, 1, 4, 1, 5]
            torch.testing.assert_close(fused.prefill(prompt), ref.prefill(prompt))
            g = torch.Generator().manual_seed(0)
            # past seq_len: the rotary tables grow while decoding
            for _ in range(2 * cfg.seq_len):
                tok = int(torch.randint(cfg.vocab_size, (1,), generator=g))
                torch.testing.assert_close(fused.step(tok), ref.step(tok), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(fused.cache.k, ref.cache.k, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fused.cache.v, ref.cache.v, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(previous)


@needs_native
def test_generate_with_the_fused_step_equals_full_recompute():
    model = make_model().eval()
    prompt = [5, 17, 42, 7, 99]
    assert list(model.generate(prompt, 40, temperature=0)) == greedy_uncached(model, prompt, 40)


def test_generation_is_the_same_with_the_c_kernels_off():
    model = make_model().eval()
    on = list(model.generate([1, 2, 3], 30, temperature=1.0, top_k=8, seed=5))
    previous = native.set_native(False)
    try:
        assert not fused_usable(model)
        off = list(model.generate([1, 2, 3], 30, temperature=1.0, top_k=8, seed=5))
    finally:
        native.set_native(previous)
    assert on == off


def test_autocast_and_other_dtypes_take_the_models_forward():
    model = make_model().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_usable(model)
        assert not Decoder(model, 16).fused
    assert not fused_usable(make_model().double())


@needs_native
def test_a_full_cache_is_refused_not_overrun():
    model = make_model().eval()
    with torch.inference_mode():
        dec = Decoder(model, 4)
        dec.prefill([1, 2, 3])
        dec.step(4)
        with pytest.raises(ValueError, match="KV cache full"):
            dec.step(5)


@needs_native
def test_the_thread_count_never_changes_the_logits():
    model = make_model(SHAPES[1]).eval()  # odd vocabulary: a partial block of rows
    outs = {}
    with torch.inference_mode():
        for threads in (1, 2):
            dec = Decoder(model, 24)
            dec.threads = Threads(threads)
            dec.prefill([1, 2, 3])
            outs[threads] = torch.cat([dec.step(t).clone() for t in (4, 5, 6, 7, 300)])
    assert torch.equal(outs[1], outs[2])


def test_threads_settle_on_the_faster_count_and_probe_when_a_step_is_slow():
    t = Threads(2, probe_every=8)
    used = []
    for _ in range(8):
        n = t.next()
        used.append(n)
        t.took(n, 0.001 if n == 2 else 0.004)  # idle cores: two threads are faster
    assert used[2] == 1 and t.current == 2 and used.count(1) == 1
    n = t.next()
    t.took(n, 0.050)  # a core was taken: far slower than the best seen
    assert t.next() == 1  # tried at once
    t.took(1, 0.004)
    for _ in range(3):
        n = t.next()
        t.took(n, 0.050 if n == 2 else 0.004)
    assert t.current == 1  # one thread is now the faster
    assert Threads(1).next() == 1 and Threads(1).counts == [1]


# --- the engine: batched rows, one sampler, stop tokens -------------------------------------

def test_batched_greedy_rows_equal_batch_one_runs():
    model = make_model().eval()
    prompt = [5, 17, 42, 7, 99]
    single = greedy_uncached(model, prompt, 24)
    assert list(stream(model, prompt, 24)) == single
    rows = generate(model, prompt, 24, num_samples=3)
    assert rows == [single] * 3
    # a batch of different prompts of equal length (5CAT's rollouts): each row as if alone
    prompts = [[5, 17, 42, 7, 99], [1, 2, 3, 4, 5], [250, 9, 9, 31, 2]]
    with torch.inference_mode():
        dec = Decoder(model, 5 + 12, rows=3)
        logits = dec.prefill(torch.tensor(prompts))
        made = torch.stack(list(sample_steps(dec, logits, 12, GREEDY)), dim=1)
    assert made.tolist() == [greedy_uncached(model, p, 12) for p in prompts]


def test_one_prefill_copied_into_rows_equals_prefilling_every_row():
    model = make_model().eval()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    with torch.inference_mode():
        copied, per_row = Decoder(model, 16, rows=4), Decoder(model, 16, rows=4)
        a = copied.prefill(prompt)
        b = per_row.prefill(torch.tensor([prompt] * 4))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert copied.cache.pos == per_row.cache.pos == len(prompt)
        torch.testing.assert_close(copied.cache.k, per_row.cache.k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(copied.cache.v, per_row.cache.v, rtol=1e-5, atol=1e-5)
        step = torch.tensor([7, 8, 9, 10])  # the rows part ways after the prompt
        torch.testing.assert_close(copied.step(step), per_row.step(step), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="first prefill"):
            copied.prefill([1])


def _draws(logits: torch.Tensor, params: SamplingParams, n: int = 4000) -> set[int]:
    rows = logits.expand(n, -1)
    return set(sample(rows, params, torch.Generator().manual_seed(0)).tolist())


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert _draws(logits, SamplingParams(1.0)) == {0, 1, 2, 3}  # all four come up uncut
    assert _draws(logits, SamplingParams(1.0, top_p=0.75)) == {0, 1}
    assert _draws(logits, SamplingParams(1.0, top_p=0.9)) == {0, 1, 2}
    assert _draws(logits, SamplingParams(1.0, top_p=0.1)) == {0}  # the likeliest always stays
    assert _draws(logits, SamplingParams(1.0, top_k=3, top_p=0.99)) == {0, 1, 2}
    assert _draws(logits, SamplingParams(1.0, top_k=2)) == {0, 1}
    before = logits.clone()
    sample(logits, SamplingParams(0.7, top_k=2, top_p=0.5))
    assert torch.equal(logits, before)  # the sampler never writes into the logits it reads


def test_sampling_params_refuse_values_out_of_range():
    for bad in ({"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    logits = torch.tensor([[0.1, 2.0, 0.3]])
    assert sample(logits, SamplingParams(0.0, top_k=1)).tolist() == [1]  # 0: argmax


def test_seeded_sampling_reproduces_and_rows_differ():
    model = make_model().eval()
    params = SamplingParams(1.0, top_k=50, top_p=0.9)
    a = generate(model, [1, 2, 3], 12, num_samples=5, sampling=params, seed=4)
    assert a == generate(model, [1, 2, 3], 12, num_samples=5, sampling=params, seed=4)
    assert a != generate(model, [1, 2, 3], 12, num_samples=5, sampling=params, seed=5)
    assert len({tuple(r) for r in a}) > 1
    one = list(model.generate([1, 2, 3], 12, temperature=1.0, top_k=50, top_p=0.9, seed=4))
    assert one == list(stream(model, [1, 2, 3], 12, params, seed=4))


def test_rows_end_at_their_stop_token_and_decoding_ends_with_the_last_row(monkeypatch):
    model = make_model().eval()
    prompt = [5, 17, 42, 7, 99]
    greedy = greedy_uncached(model, prompt, 20)
    stop = greedy[3]
    (row,) = generate(model, prompt, 20, stop=stop)
    assert row == greedy[:greedy.index(stop) + 1]  # the stop token is kept, nothing after it
    rows = generate(model, prompt, 20, num_samples=6, sampling=SamplingParams(2.0), seed=1,
                    stop={11, 12, 13})
    for r in rows:
        ends = [i for i, t in enumerate(r) if t in {11, 12, 13}]
        assert ends in ([], [len(r) - 1])
        assert len(r) == 20 or ends
    steps = []
    real = Decoder.step
    monkeypatch.setattr(Decoder, "step", lambda self, t: steps.append(1) or real(self, t))
    generate(model, prompt, 20, num_samples=2, stop=greedy[1])
    assert len(steps) == 1  # both rows stopped at their second token: no step after


def test_generate_needs_a_prompt_and_a_row_count_that_fits():
    model = make_model().eval()
    with pytest.raises(ValueError, match="prompt token"):
        generate(model, [], 3)
    with torch.inference_mode(), pytest.raises(ValueError, match="rows"):
        Decoder(model, 8, rows=3).prefill(torch.ones(2, 4, dtype=torch.long))


# --- penalties, per-token log-probabilities, the prompt scored --------------------------------

def test_penalties_follow_openais_formula():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    counts = torch.tensor([[3.0, 0.0, 1.0]])
    # token 0: 2 - 3*0.1 - 0.5 = 1.2 < 1.9: the penalty moves the argmax
    pick = sample(logits, SamplingParams(0.0, presence_penalty=0.5, frequency_penalty=0.1),
                  counts=counts)
    assert pick.tolist() == [1]
    assert sample(logits, GREEDY, counts=counts).tolist() == [0]  # no penalty, no change
    with pytest.raises(ValueError, match="presence_penalty"):
        SamplingParams(presence_penalty=2.5)


def test_a_penalised_row_never_repeats_a_token_greedily():
    model = make_model(SHAPES[0]).eval()
    steps = decode(model, [1, 2, 3], 40, sampling=SamplingParams(0.0, presence_penalty=2.0,
                                                                   frequency_penalty=2.0))
    written = [int(s.tokens) for s in steps]
    plain = [int(s.tokens) for s in decode(model, [1, 2, 3], 40)]
    assert len(set(plain)) < len(plain)  # the unpenalised greedy run repeats itself
    assert len(set(written)) > len(set(plain))


@pytest.mark.parametrize("rows", [1, 3])
def test_decode_scores_the_prompt_and_each_token_like_the_plain_forward(rows):
    model = make_model(SHAPES[0]).eval()
    prompt = [5, 9, 2, 7, 11]
    steps = list(decode(model, prompt, 4, rows=rows, sampling=SamplingParams(1.0), seed=3,
                        top_logprobs=2, score_prompt=True))
    first, made = steps[0], steps[1:]
    full = torch.tensor([prompt])
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model.hidden(full[:, :-1])), -1)[0]
    want = logp.gather(1, full[0, 1:, None])[:, 0]
    assert first.tokens.tolist() == prompt[1:]
    assert torch.allclose(first.logprobs, want, atol=1e-5)
    assert first.top_ids.shape == (len(prompt) - 1, 2)
    assert torch.equal(first.top_logprobs[:, 0], logp.max(-1).values)
    row = [int(s.tokens[0]) for s in made]  # row 0 rescored by a plain forward pass
    seq = torch.tensor([prompt + row])
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model.hidden(seq[:, :-1])), -1)[0]
    again = logp[len(prompt) - 1:].gather(1, seq[0, len(prompt):, None])[:, 0]
    got = torch.stack([s.logprobs[0] for s in made])
    assert torch.allclose(got, again, atol=1e-4)
    # with the same seed, scoring the prompt does not change what is drawn
    plain = [s.tokens.tolist() for s in decode(model, prompt, 4, rows=rows,
                                               sampling=SamplingParams(1.0), seed=3)]
    assert plain == [s.tokens.tolist() for s in made]
