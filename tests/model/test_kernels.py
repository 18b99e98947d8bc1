"""The hand-written kernels: each fused C kernel (backlm/model/_native.c) against the PyTorch ops it
replaces.

Every C kernel runs the same inputs both ways (``backlm.model.native.set_native``) and must give the same
outputs and gradients to float tolerance, on shapes that exercise ragged attention blocks,
odd row counts and ignored targets. tests/model/test_gpt.py checks the default path against a
plain autograd reference; together they cover both paths.
"""

from __future__ import annotations

import pytest
import torch

from backlm.config import ModelConfig
from backlm.model import IGNORE_INDEX, kernels
from backlm.model.gpt import GPT
from backlm.model.native import set_native
from tests.helpers import assert_same, both_ways, native

# --- the fused C kernels ----------------------------------------------------------------------


@native
@pytest.mark.parametrize("shape", [(3, 7, 64), (5, 48), (1, 1, 256)])
def test_rms_norm(shape):
    x = torch.randn(shape) * 3
    assert_same(both_ways(kernels.norm, x))


@native
@pytest.mark.parametrize("B,T,H,D", [(2, 9, 2, 16), (1, 33, 3, 8), (2, 4, 1, 64)])
def test_qkv_rotary_norm(B, T, H, D):
    C = 24
    x, w = torch.randn(B * T, C), torch.randn(3 * H * D, C) * 0.3
    cos, sin = kernels.rotary_tables(T, D, 100.0)
    results = both_ways(lambda x, w: kernels.qkv_rotary_norm(x, w, cos, sin, B, H), x, w)
    assert_same(results)
    q, k, v = results[0][0]
    assert all(t.is_contiguous() for t in (q, k, v))  # what attention wants without a copy


@native
def test_mlp():
    x, fc, proj = torch.randn(37, 24), torch.randn(96, 24) * 0.3, torch.randn(24, 96) * 0.3
    assert_same(both_ways(kernels.mlp, x, fc, proj))


@native
@pytest.mark.parametrize("cap", [15.0, 30.0, 50.0, 0.0])
@pytest.mark.parametrize("mean", [True, False])
def test_softcap_loss(cap, mean):
    n, C, vocab = 45, 32, 301
    x, w = torch.randn(n, C), torch.randn(vocab, C) * 0.5
    y = torch.randint(0, vocab, (n,))
    y[::4] = IGNORE_INDEX
    results = both_ways(lambda x, w: kernels.softcap_loss(x, w, y, cap, mean), x, w)
    assert_same(results, atol=1e-5, rtol=1e-5)


@native
@pytest.mark.parametrize("mean", [True, False])
def test_bf16_softcap_loss_takes_the_fused_kernel(monkeypatch, mean):
    """bf16 runs' head matmuls are bf16: the bf16 C kernel takes each chunk's bf16 logits
    (fp32 inside), and gives what the PyTorch ops give to bf16 tolerance."""
    from backlm.model import native as native_mod

    calls = []
    real = native_mod.lib.softcap_ce_bf16
    monkeypatch.setattr(native_mod.lib, "softcap_ce_bf16", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setitem(kernels.HEAD_CHUNK_ELEMENTS, "cpu", 16 * 301)  # 3 chunks
    n, C, vocab = 45, 32, 301
    x, w = torch.randn(n, C).bfloat16(), (torch.randn(vocab, C) * 0.5).bfloat16()
    y = torch.randint(0, vocab, (n,))
    y[::4] = IGNORE_INDEX
    results = both_ways(lambda x, w: kernels.softcap_loss(x, w, y, 15.0, mean), x, w)
    assert len(calls) == 3  # only the native run calls it, once per chunk
    (out_n, grads_n), (out_t, grads_t) = results
    assert all(g.dtype == torch.bfloat16 for g in grads_n)
    torch.testing.assert_close(out_n[0], out_t[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(grads_n, grads_t, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=2e-2)


@native
def test_head_loss_without_gradients_and_several_chunks(monkeypatch):
    monkeypatch.setitem(kernels.HEAD_CHUNK_ELEMENTS, "cpu", 8 * 300)  # 8 rows per chunk
    x, w = torch.randn(29, 16), torch.randn(300, 16)
    y = torch.randint(0, 300, (29,))
    y[3] = IGNORE_INDEX
    losses = []
    for on in (True, False):
        previous = set_native(on)
        losses.append(kernels.head_loss(x, w, y, 15.0, None)[0])
        set_native(previous)
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    assert losses[0][3] == 0


@native
def test_saturated_softcap_logits_stay_finite():
    # logits far beyond the cap: tanh saturates to ±1 and exp(±cap) stays finite
    x, w = torch.full((4, 8), 50.0), torch.randn(64, 8) * 10
    y = torch.tensor([0, 1, 2, 3])
    (outs, grads), (outs_t, _) = both_ways(lambda x, w: kernels.softcap_loss(x, w, y, 15.0), x, w)
    assert torch.isfinite(outs[0]).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(outs[0], outs_t[0], atol=1e-4, rtol=1e-5)


@native
def test_whole_model_loss_and_gradients_match():
    cfg = ModelConfig(depth=2, width=64, head_dim=16, vocab_size=257, seq_len=80)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    tgt = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    tgt[0, :5] = IGNORE_INDEX
    found = []
    for on in (True, False):
        previous = set_native(on)
        torch.manual_seed(0)
        model = GPT(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
        loss = model(idx, tgt)
        loss.backward()
        found.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
        set_native(previous)
    torch.testing.assert_close(found[0][0], found[1][0], atol=1e-5, rtol=1e-5)
    for name, g in found[0][1].items():
        torch.testing.assert_close(g, found[1][1][name], atol=1e-4, rtol=1e-3, msg=name)


@native
def test_generation_matches_with_the_kv_cache():
    cfg = ModelConfig(depth=2, width=64, head_dim=16, vocab_size=200, seq_len=40)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    prompt = torch.randint(0, 200, (6,)).tolist()
    outs = []
    for on in (True, False):
        previous = set_native(on)
        outs.append(list(model.generate(prompt, max_new_tokens=12, temperature=0.0)))
        set_native(previous)
    assert len(outs[0]) == 12 and outs[0] == outs[1]


@native
def test_nan_propagates():
    # divergence detection needs a NaN weight to give a NaN loss, through every fused kernel
    cfg = ModelConfig(depth=1, width=64, head_dim=16, vocab_size=100, seq_len=16)
    model = GPT(cfg)
    idx = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        model.blocks[0].attn.qkv.view(-1)[5] = float("nan")
    assert torch.isnan(model(idx, idx))
    x, w = torch.randn(3, 8), torch.randn(50, 8)
    x[1, 0] = float("nan")
    losses = kernels.head_loss(x, w, torch.tensor([1, 2, 3]), 15.0, None)[0]
    assert torch.isnan(losses[1]) and torch.isfinite(losses[[0, 2]]).all()


@native
def test_out_of_range_targets_raise_instead_of_reading_past_the_logits():
    x, w = torch.randn(4, 8), torch.randn(50, 8)
    with pytest.raises((IndexError, RuntimeError)):  # RuntimeError: PyTorch's gather
        kernels.head_loss(x, w, torch.tensor([1, 2, 50, 3]), 15.0, None)


def test_compile_traces_qkv_and_rotary_without_a_break_per_layer():
    """Dynamo refuses ``out=`` into strided views; under torch.compile the rotary must not
    use it, or every layer's q/k/v Function falls out of the graph (and runs eagerly)."""
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, width=64, head_dim=32, vocab_size=97, seq_len=16))
    x = torch.randint(0, 97, (2, 16))
    reasons = [str(b.reason) for b in dynamo.explain(model)(x, x).break_reasons]
    assert not [r for r in reasons if "out=" in r], reasons
    compiled = torch.compile(model, backend="eager")(x, x)
    torch.testing.assert_close(compiled, model(x, x))
