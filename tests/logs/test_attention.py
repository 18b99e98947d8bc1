"""Attention entropy and attended distance: closed forms, a brute-force reference, the probe's
hooks on a real model, and a research log from before the ``/attention`` group existed."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from backlm.config import ModelConfig
from backlm.logs.attention import AttentionProbe, head_stats, measure
from backlm.model.gpt import GPT


def _reference(q: torch.Tensor, k: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-query loops in float64: the definition, written out."""
    B, H, T, D = q.shape
    ent, dist = np.zeros(H), np.zeros(H)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                s = (q[b, h, i].double() @ k[b, h, :i + 1].double().T) / math.sqrt(D)
                p = torch.softmax(s, 0).numpy()
                ent[h] += -(p * np.log(np.maximum(p, 1e-300))).sum()
                dist[h] += (p * (i - np.arange(i + 1))).sum()
    return ent / (B * T), dist / (B * T)


def test_uniform_attention_has_the_closed_form():
    T = 40
    q, k = torch.zeros(2, 3, T, 8), torch.randn(2, 3, T, 8)
    ent, dist = head_stats(q, k, block=7)
    i = np.arange(T)
    np.testing.assert_allclose(ent.numpy(), np.log(i + 1).mean(), rtol=1e-6)
    np.testing.assert_allclose(dist.numpy(), (i / 2).mean(), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_brute_force_reference_for_any_block(seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 2, 19, 4, generator=g) * 3, torch.randn(2, 2, 19, 4, generator=g)
    ref_ent, ref_dist = _reference(q, k)
    for block in (1, 5, 19, 256):
        ent, dist = head_stats(q, k, block=block)
        np.testing.assert_allclose(ent.numpy(), ref_ent, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dist.numpy(), ref_dist, rtol=1e-5, atol=1e-6)


def test_sharp_attention_to_itself_or_to_the_first_token():
    T, D = 16, 4
    eye = torch.zeros(1, 1, T, D)
    eye[..., 0] = 100.0
    k_self = torch.zeros(1, 1, T, D)
    k_self[..., 0] = torch.arange(T, dtype=torch.float32)  # the newest key scores highest
    ent, dist = head_stats(eye, k_self)
    assert ent.item() < 1e-3 and dist.item() < 1e-3
    k_first = torch.zeros(1, 1, T, D)
    k_first[0, 0, 0, 0] = 1.0  # only the first key scores
    ent, dist = head_stats(eye, k_first)
    assert ent.item() < 1e-3 and dist.item() == pytest.approx(np.arange(T).mean(), rel=1e-4)


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(depth=2, width=64, head_dim=16, vocab_size=97, seq_len=24))


def test_probe_measures_the_models_own_q_and_k_and_removes_its_hooks():
    model = _model()
    x = torch.randint(0, 97, (2, 24))
    stats = measure(model, x, contextlib.nullcontext())
    assert stats["entropy"].shape == stats["distance"].shape == (2, 4)  # layers × heads
    assert stats["entropy"].dtype == np.float32
    assert all(not b.attn._forward_pre_hooks for b in model.blocks)
    # layer 1's input, by hand: the block stack run up to it
    with torch.no_grad():
        cos, sin = model._rotary(0, 24)
        from backlm.model.gpt import norm

        h = model.blocks[0](norm(model.wte(x)), cos, sin)
        q, k, _ = model.blocks[1].attn.project(norm(h), cos, sin)
    ent, dist = head_stats(q, k)
    np.testing.assert_allclose(stats["entropy"][1], ent.numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats["distance"][1], dist.numpy(), rtol=1e-5)


def test_probe_keeps_the_first_forward_and_ignores_decoding():
    model = _model()
    x = torch.randint(0, 97, (1, 24))
    first = measure(model, x, contextlib.nullcontext())
    probe = AttentionProbe([b.attn for b in model.blocks])
    probe.arm()
    probe.arm()  # a second arm registers nothing more
    assert len(model.blocks[0].attn._forward_pre_hooks) == 1
    with torch.no_grad():
        model.hidden(x)
        model.hidden(torch.randint(0, 97, (1, 24)))  # not measured: the slice's forward was
    again = probe.disarm()
    np.testing.assert_array_equal(again["entropy"], first["entropy"])
    probe.arm()
    from backlm.model.decode import KVCache

    with torch.no_grad():
        cfg = model.cfg
        model.hidden(x[:, :4], KVCache(cfg.depth, 1, cfg.n_heads, cfg.head_dim, 8))
    assert probe.disarm() is None  # a cached (decoding) forward is never measured
    assert not probe.armed


def test_bf16_autocast_gives_finite_statistics_close_to_fp32():
    model = _model()
    x = torch.randint(0, 97, (2, 24))
    fp32 = measure(model, x, contextlib.nullcontext())
    bf16 = measure(model, x, torch.autocast("cpu", dtype=torch.bfloat16))
    assert np.isfinite(bf16["entropy"]).all() and np.isfinite(bf16["distance"]).all()
    np.testing.assert_allclose(bf16["entropy"], fp32["entropy"], rtol=0.05, atol=0.05)


def test_resume_from_a_log_without_the_attention_group(tmp_path):
    """A run resumed from a file written before ``/attention`` existed: the old rows stay, the
    group appears empty, and new attention rows append."""
    from backlm.logs.hdf5 import Hdf5Logger, Schema
    from tests.helpers import read_h5

    path = tmp_path / "base.h5"
    old = Schema(scalars=("loss",), params=("w",), layers=("blocks.0",), rows=1, seq_len=4)
    log = Hdf5Logger(path, old, {"schema_version": 1}, warn=lambda m: None)
    for step in range(1, 5):
        log.log(step, {"loss": float(step)})
    log.close()
    with read_h5(path) as f:
        assert "attention/entropy" not in f
    new = Schema(scalars=("loss",), params=("w",), layers=("blocks.0",), rows=1, seq_len=4,
                 heads=3)
    log = Hdf5Logger(path, new, {"schema_version": 1}, resume_step=3, warn=lambda m: None)
    row = {"entropy": np.full((1, 3), 0.5, "float32"), "distance": np.ones((1, 3), "float32")}
    log.add_arrays("attention", 4, row)
    log.add_arrays("attention", 4, row)  # a repeated step is never duplicated
    log.log(4, {"loss": 4.5})
    log.close()
    with read_h5(path) as f:
        assert list(f["scalars/step"][:]) == [1, 2, 3, 4]
        assert f["scalars/loss"][-1] == 4.5
        assert list(f["attention/step"][:]) == [4]
        assert f["attention/entropy"].shape == (1, 1, 3)
        assert f["attention/distance"][0].tolist() == [[1.0, 1.0, 1.0]]
