"""The bf16 C kernels: each against the PyTorch bf16 ops it replaces (values and gradients, to
bf16 tolerance) on every instruction-set copy this CPU runs (the portable ``generic`` fallback
included), the fp32 → bf16 rounding against torch's, and a bf16 autocast training run with the
kernels on against the PyTorch ops."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from backlm.model import attention, kernels, native
from tests.helpers import both_ways
from tests.helpers import native as built

pytestmark = built
ISAS = ["avx512bf16", "avx512", "avx2", "generic"]


@pytest.fixture
def called(monkeypatch):
    """Names of the bf16 C kernels called (so a test fails if its path silently skips them)."""
    names: list[str] = []
    for name in dir(native.lib):
        if name.endswith("_bf16"):
            fn = getattr(native.lib, name)
            monkeypatch.setattr(native.lib, name,
                                lambda *a, _fn=fn, _name=name: names.append(_name) or _fn(*a))
    return names


@pytest.fixture(params=ISAS)
def isa(request, called):
    """Every copy of the kernels, in turn; skipped where this CPU lacks it."""
    if request.param not in native.supported_isas():
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    previous = native.set_isa(request.param)
    on = native.set_native(True)
    yield request.param
    native.set_native(on)
    native.set_isa(previous)


def close_bf16(results, tol=2e-2):
    """C kernels (first) against PyTorch ops (second): every output and gradient within bf16
    rounding, relative to the tensor's scale (a few bf16 roundings on either side)."""
    (outs_n, grads_n), (outs_t, grads_t) = results
    for a, b in zip(outs_n + grads_n, outs_t + grads_t, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        a, b = a.float(), b.float()
        scale = b.abs().max().clamp(min=1e-6)
        assert (a - b).abs().max() <= tol * scale, float((a - b).abs().max() / scale)


def bf16(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).bfloat16()


# --- the conversion -----------------------------------------------------------------------------


def to_bf16(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    native.lib.to_bf16(x.data_ptr(), out.data_ptr(), x.numel(), 1)
    return out


def test_rounding_matches_torch(isa):
    one = 1.0
    ulp = 2.0**-7  # bf16 spacing at 1
    special = [0.0, -0.0, one, -one, one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2**-20,
               one + ulp / 2 - 2**-20, -(one + ulp / 2), 3.3895314e38, 3.4028235e38, -3.4028235e38,
               float("inf"), float("-inf"), 1e-38, 65504.0, 1 / 3]
    x = torch.tensor(special + [0.0] * 15)  # past one 16-lane vector: the masked tail too
    bits = torch.randint(-(2**31), 2**31 - 1, (4099,), generator=torch.Generator().manual_seed(1),
                         dtype=torch.int64).to(torch.int32).view(torch.float32)
    x = torch.cat([x, bits])
    got, want = to_bf16(x), x.to(torch.bfloat16)
    nan = x.isnan()
    assert got[nan].isnan().all()  # NaN stays NaN (payloads differ: torch's own ops differ too)
    # the AVX512-BF16 instruction flushes fp32 denormals to zero; elsewhere bit for bit
    denormal = (x.abs() < torch.finfo(torch.float32).tiny) & (x != 0)
    keep = ~nan & ~denormal if isa == "avx512bf16" else ~nan
    assert torch.equal(got[keep].view(torch.int16), want[keep].view(torch.int16))
    # ties go to even: 1 + ulp/2 → 1, 1 + 3ulp/2 → 1 + 2ulp
    assert got[4].item() == 1.0 and got[5].item() == one + 2 * ulp


# --- the kernels against the PyTorch bf16 ops ---------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 7, 64), (5, 600)])
def test_rms_norm(isa, called, shape):
    close_bf16(both_ways(kernels.norm, bf16(*shape, scale=3)))
    assert {"rms_fwd_bf16", "rms_bwd_bf16"} <= set(called)


@pytest.mark.parametrize("shape", [(3, 5, 24), (2, 700)])  # 700: past one 512-float chunk
def test_rms_norm_fp32_to_bf16(isa, called, shape):
    """bf16 autocast's norm: fp32 residual in, bf16 out (and bf16 gradient in, fp32 out), against
    the fp32 norm followed by a cast."""
    x = bf16(*shape, scale=3).float() + torch.randn(*shape) * 1e-3  # not bf16-exact
    results = both_ways(lambda x: kernels.norm(x, torch.bfloat16), x)
    close_bf16(results)
    assert results[0][0][0].dtype == torch.bfloat16 and results[0][1][0].dtype == torch.float32
    assert {"rms_fwd_cast_bf16", "rms_bwd_cast_bf16"} <= set(called)


@pytest.mark.parametrize("B,T,H,D", [(2, 9, 2, 16), (1, 33, 3, 8)])
def test_qkv_rotary_norm(isa, called, B, T, H, D):
    C = 24
    x, w = bf16(B * T, C), bf16(3 * H * D, C, scale=0.3, seed=1)
    cos, sin = (t.bfloat16() for t in kernels.rotary_tables(T, D, 100.0))
    results = both_ways(lambda x, w: kernels.qkv_rotary_norm(x, w, cos, sin, B, H), x, w)
    close_bf16(results)
    assert all(t.is_contiguous() for t in results[0][0])
    assert {"qk_fwd_bf16", "qk_bwd_bf16"} <= set(called)


def test_mlp(isa, called):
    x, fc, proj = bf16(37, 16), bf16(64, 16, scale=0.3, seed=1), bf16(16, 64, scale=0.3, seed=2)
    close_bf16(both_ways(kernels.mlp, x, fc, proj))
    assert "relu_sq_bf16" in called


@pytest.mark.parametrize("T,block", [(5, 32), (70, 32), (70, 512)])  # ragged blocks; one block
def test_causal_attention(isa, called, monkeypatch, T, block):
    monkeypatch.setattr(attention, "BF16_ATTENTION_BLOCK", block)
    monkeypatch.setattr(attention, "BF16_BLOCKED", True)
    q, k, v = (bf16(2, 3, T, 16, scale=2, seed=i) for i in range(3))
    results = both_ways(attention.causal_attention, q, k, v)  # off: SDPA in bf16
    close_bf16(results, tol=3e-2)
    assert {"causal_softmax_bf16", "softmax_bwd_bf16", "rowdot_bf16"} <= set(called)


@pytest.mark.parametrize("chunked,slab", [(False, True), (True, True), (True, False)])
def test_softcapped_loss(isa, called, monkeypatch, chunked, slab):
    """Chunked or not; the head's gradients from the whole batch's bf16 logit gradients (slab)
    or chunk by chunk."""
    n, C, V = 37, 16, 300
    if chunked:
        monkeypatch.setitem(kernels.HEAD_CHUNK_ELEMENTS, "cpu", 10 * V)  # 4 chunks, a ragged one
    monkeypatch.setattr(kernels, "HEAD_GRAD_SLAB_ELEMENTS", 2**25 if slab else 0)
    x, w = bf16(n, C), bf16(V, C, scale=0.5, seed=1)
    y = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(2))
    y[3] = -1  # an ignored target
    close_bf16(both_ways(lambda x, w: kernels.softcap_loss(x, w, y, 15.0), x, w))
    assert "softcap_ce_bf16" in called


def test_softcapped_loss_takes_the_fp32_head(isa, called):
    """bf16 autocast hands the loss the fp32 head: its gradient comes back in fp32 and equals
    (to bf16 tolerance) the PyTorch ops on the head cast to bf16 outside the loss."""
    n, C, V = 37, 16, 300
    x, w = bf16(n, C), bf16(V, C, scale=0.5, seed=1).float() + 1e-3
    y = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(2))
    fp32_head = both_ways(lambda x, w: kernels.softcap_loss(x, w, y, 15.0), x, w)
    cast_outside = both_ways(lambda x, w: kernels.softcap_loss(x, w.bfloat16(), y, 15.0), x, w)
    close_bf16([fp32_head[0], cast_outside[1]])
    assert fp32_head[0][1][1].dtype == torch.float32
    assert "softcap_ce_bf16" in called


def test_copies_agree_within_rounding():
    """Every copy this CPU runs gives the same numbers to a bf16 rounding (the portable ones
    bit for bit: same maths, same rounding)."""
    x = bf16(6, 100, scale=3)
    outs = {}
    previous = native.set_isa(native.supported_isas()[0])
    try:
        for name in native.supported_isas():
            native.set_isa(name)
            outs[name] = kernels.norm(x)
    finally:
        native.set_isa(previous)
    for y in outs.values():
        torch.testing.assert_close(y.float(), outs["generic"].float(), rtol=2**-7, atol=0)


# --- picking a copy ------------------------------------------------------------------------------


def test_set_isa_refuses_what_the_cpu_lacks():
    with pytest.raises(ValueError, match="unknown"):
        native.set_isa("sse9")
    lacking = [name for name in ISAS if name not in native.supported_isas()]
    if lacking:
        with pytest.raises(ValueError, match="cannot run"):
            native.set_isa(lacking[0])
    previous = native.set_isa("generic")
    try:
        assert native.isa() == native.native_kernels() == "generic"
    finally:
        native.set_isa(previous)
    assert native.isa() == previous


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
def test_env_forces_the_fallback():
    code = "from backlm.model import native; print(native.native_kernels(), native.isa())"
    env = {**os.environ, "BACKLM_NATIVE_ISA": "generic"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["generic", "generic"]


# --- a bf16 training run ---------------------------------------------------------------------------


def test_bf16_training_matches_the_pytorch_ops(isa):
    from backlm.config import ModelConfig
    from backlm.model.gpt import GPT

    def run(on: bool) -> list[float]:
        torch.manual_seed(0)
        model = GPT(ModelConfig(depth=2, width=64, head_dim=16, vocab_size=97, seq_len=48))
        with torch.no_grad():  # the init zeroes the output projections; every kernel should count
            for p in model.parameters():
                p.normal_(0.0, 0.3)
        g = torch.Generator().manual_seed(1)
        idx, tgt = torch.randint(0, 97, (2, 48), generator=g), torch.randint(0, 97, (2, 48), generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses = []
        previous = native.set_native(on)
        try:
            for _ in range(3):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model(idx, tgt)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        finally:
            native.set_native(previous)
        return losses

    on, off = run(True), run(False)
    assert on[-1] < on[0]
    assert on == pytest.approx(off, rel=2e-2)
