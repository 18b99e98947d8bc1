"""Batch-1 decoding: the fused C step gives the model's own logits at every position, in
every shape (rows not a multiple of four, one head, past seq_len), and steps aside where it
cannot run (C kernels off, autocast)."""

from __future__ import annotations

import pytest
import torch

from backlm.config import ModelConfig
from backlm.model import native
from backlm.model.decode import Decoder, Threads, fused_usable
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
