"""Causal attention: the blocked CPU kernel against SDPA, its fallbacks, and its softmax in the
fused C kernels against the PyTorch ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backlm.model import attention
from tests.helpers import assert_same, both_ways, native

# --- the blocked CPU attention (PyTorch ops, always there) ------------------------------------


@pytest.mark.parametrize("block", [5, 8, 64])
def test_blocked_cpu_attention_matches_sdpa(monkeypatch, block):
    # ragged (5), even (8) and single (64 > T) query blocks; q, k, v as _QKV hands them over:
    # transposed views of one (B, T, 3, H, D) buffer
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(2, 24, 3, 3, 16, generator=g)
    go = torch.randn(2, 3, 24, 16, generator=g)
    outs, leaf_grads = [], []
    for fn in (attention.causal_attention,
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
    attention.causal_attention(q, k, v)
    assert calls == []  # fp32 CPU training: the blocked kernel
    with torch.no_grad():
        attention.causal_attention(q, k, v)  # inference keeps no probabilities: SDPA
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    attention.causal_attention(q, k, v)  # inside torch.compile: SDPA, which inductor lowers
    monkeypatch.undo()
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    monkeypatch.setattr(attention, "ATTENTION_SAVED_BYTES", 100)
    attention.causal_attention(q, k, v)  # over the memory budget: SDPA
    attention.causal_attention(*(t.detach().double().requires_grad_() for t in (q, k, v)))
    assert calls == [1, 1, 1, 1]


@native
@pytest.mark.parametrize("T", [5, 64, 130])
def test_causal_attention(T):
    B, H, D = 2, 3, 16
    q, k, v = (torch.randn(B, H, T, D) * 2 for _ in range(3))
    assert_same(both_ways(attention.causal_attention, q, k, v))


@native
def test_causal_attention_takes_strided_inputs():
    # the PyTorch-ops path of _QKV hands attention transposed views
    B, T, H, D = 2, 70, 2, 16
    base = torch.randn(B, T, 3, H, D)
    q, k, v = (base[:, :, i].transpose(1, 2) for i in range(3))
    assert_same(both_ways(attention.causal_attention, q, k, v))
