"""The kernels: the blocked CPU attention against SDPA, and the fused C kernels
(backlm/_native.c) against the PyTorch ops they replace.

Every C kernel runs the same inputs both ways (``kernels.set_native``) and must give the same
outputs and gradients to float tolerance, on shapes that exercise ragged attention blocks,
odd row counts and ignored targets. tests/test_model.py checks the default path against a
plain autograd reference; together they cover both paths.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from backlm import kernels
from backlm.config import ModelConfig
from backlm.direction import IGNORE_INDEX
from backlm.model import GPT

native = pytest.mark.skipif(kernels._native is None, reason="fused C kernels not built")


# --- the blocked CPU attention (PyTorch ops, always there) ------------------------------------


@pytest.mark.parametrize("block", [5, 8, 64])
def test_blocked_cpu_attention_matches_sdpa(monkeypatch, block):
    # ragged (5), even (8) and single (64 > T) query blocks; q, k, v as _QKV hands them over:
    # transposed views of one (B, T, 3, H, D) buffer
    monkeypatch.setattr(kernels, "ATTENTION_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(2, 24, 3, 3, 16, generator=g)
    go = torch.randn(2, 3, 24, 16, generator=g)
    outs, leaf_grads = [], []
    for fn in (kernels.causal_attention,
               lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)):
        leaf = buf.clone().requires_grad_(True)
        out = fn(*(leaf[:, :, i].transpose(1, 2) for i in range(3)))
        out.backward(go)
        outs.append(out.detach())
        leaf_grads.append(leaf.grad)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(leaf_grads[0], leaf_grads[1], rtol=1e-4, atol=1e-6)


def test_attention_falls_back_to_sdpa(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
    kernels.causal_attention(q, k, v)
    assert calls == []  # fp32 CPU training: the blocked kernel
    with torch.no_grad():
        kernels.causal_attention(q, k, v)  # inference keeps no probabilities: SDPA
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    kernels.causal_attention(q, k, v)  # inside torch.compile: SDPA, which inductor lowers
    monkeypatch.undo()
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    monkeypatch.setattr(kernels, "ATTENTION_SAVED_BYTES", 100)
    kernels.causal_attention(q, k, v)  # over the memory budget: SDPA
    kernels.causal_attention(*(t.detach().double().requires_grad_() for t in (q, k, v)))
    assert calls == [1, 1, 1, 1]


# --- the fused C kernels ----------------------------------------------------------------------


def both_ways(fn, *inputs: torch.Tensor):
    """``fn(*inputs)`` and the gradients of a fixed random projection of its outputs, with the
    C kernels on and then off."""
    results = []
    for native in (True, False):
        previous = kernels.set_native(native)
        try:
            leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
            outs = fn(*leaves)
            outs = outs if isinstance(outs, tuple) else (outs,)
            g = torch.Generator().manual_seed(7)
            total = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
            total.backward()
            results.append(([o.detach() for o in outs], [t.grad for t in leaves if t.requires_grad]))
        finally:
            kernels.set_native(previous)
    return results


def assert_same(results, atol=2e-5, rtol=1e-4):
    (outs_n, grads_n), (outs_t, grads_t) = results
    for a, b in zip(outs_n + grads_n, outs_t + grads_t, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@native
def test_built_where_a_compiler_is():
    # CI and this project's machines have gcc: a silently skipped build would leave the fused
    # path (and the MFU figures) untested, so fail loudly there
    if platform.machine() in ("x86_64", "AMD64") and shutil.which("gcc"):
        assert kernels.native_kernels() in ("avx512", "avx2", "generic")


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
@pytest.mark.parametrize("T", [5, 64, 130])
def test_causal_attention(T):
    B, H, D = 2, 3, 16
    q, k, v = (torch.randn(B, H, T, D) * 2 for _ in range(3))
    assert_same(both_ways(kernels.causal_attention, q, k, v))


@native
def test_causal_attention_takes_strided_inputs():
    # the PyTorch-ops path of _QKV hands attention transposed views
    B, T, H, D = 2, 70, 2, 16
    base = torch.randn(B, T, 3, H, D)
    q, k, v = (base[:, :, i].transpose(1, 2) for i in range(3))
    assert_same(both_ways(kernels.causal_attention, q, k, v))


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
def test_head_loss_without_gradients_and_several_chunks(monkeypatch):
    monkeypatch.setitem(kernels.HEAD_CHUNK_ELEMENTS, "cpu", 8 * 300)  # 8 rows per chunk
    x, w = torch.randn(29, 16), torch.randn(300, 16)
    y = torch.randint(0, 300, (29,))
    y[3] = IGNORE_INDEX
    losses = []
    for native in (True, False):
        previous = kernels.set_native(native)
        losses.append(kernels.head_loss(x, w, y, 15.0, None)[0])
        kernels.set_native(previous)
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
    for native in (True, False):
        previous = kernels.set_native(native)
        torch.manual_seed(0)
        model = GPT(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
        loss = model(idx, tgt)
        loss.backward()
        found.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
        kernels.set_native(previous)
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
    for native in (True, False):
        previous = kernels.set_native(native)
        outs.append(list(model.generate(prompt, max_new_tokens=12, temperature=0.0)))
        kernels.set_native(previous)
    assert len(outs[0]) == 12 and outs[0] == outs[1]


@native
def test_env_switch_turns_them_off():
    code = "from backlm.kernels import native_kernels; print(native_kernels())"
    env = {**os.environ, "BACKLM_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


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
