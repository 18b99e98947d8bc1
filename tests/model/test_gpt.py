"""GPT: shapes, loss masking, parameter/FLOP accounting, causality, KV cache, autocast.

The hand-written kernels (fused qkv/rotary/QK-norm, ReLU² MLP, RMS norm, chunked softcapped
loss) are checked against a plain autograd reference of the same architecture.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from backlm.config import ModelConfig
from backlm.model import IGNORE_INDEX
from backlm.model import kernels as model_module
from backlm.model.gpt import GPT, KVCache

CFG = ModelConfig(depth=2, width=64, head_dim=16, vocab_size=300, seq_len=32)


def make_model(cfg: ModelConfig = CFG, seed: int = 0) -> GPT:
    """A model whose zero-initialised projections are randomised, so every path matters."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def batch(cfg: ModelConfig = CFG, rows: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (rows, cfg.seq_len), generator=g)
    tgt = torch.randint(0, cfg.vocab_size, (rows, cfg.seq_len), generator=g)
    return idx, tgt


def reference_loss(model: GPT, idx: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """The same network written with stock autograd ops (rotate, then QK norm)."""
    cfg, (B, T) = model.cfg, idx.shape
    cos, sin = model.cos[:T, None, :], model.sin[:T, None, :]

    def rot(x):
        x1, x2 = x.chunk(2, -1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), -1)

    def nrm(x):
        return F.rms_norm(x, (x.size(-1),))

    x = nrm(model.wte(idx))
    for blk in model.blocks:
        h = nrm(x)
        q, k, v = (F.linear(h, blk.attn.qkv[i]).view(B, T, cfg.n_heads, cfg.head_dim) for i in range(3))
        q, k = nrm(rot(q)), nrm(rot(k))
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + F.linear(a.transpose(1, 2).reshape(B, T, -1), blk.attn.proj)
        x = x + F.linear(F.relu(F.linear(nrm(x), blk.mlp.fc)).square(), blk.mlp.proj)
    logits = model.lm_head(nrm(x)).float()
    if cfg.softcap > 0:
        logits = cfg.softcap * torch.tanh(logits / cfg.softcap)
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=IGNORE_INDEX)


def grads(model: GPT, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_shapes():
    model = make_model()
    idx, tgt = batch()
    assert model(idx).shape == (3, CFG.seq_len, CFG.vocab_size)
    assert model(idx).dtype == torch.float32
    assert model(idx, tgt).shape == ()
    assert model(idx, tgt, loss_reduction="none").shape == (3, CFG.seq_len)


def test_logits_are_softcapped():
    model = make_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
        logits = model(batch()[0])
    assert logits.abs().max() <= CFG.softcap
    assert logits.abs().max() > 0.9 * CFG.softcap


def test_fused_loss_and_gradients_match_reference():
    model = make_model()
    idx, tgt = batch()
    tgt[0, :7] = IGNORE_INDEX
    loss = model(idx, tgt)
    ref = reference_loss(model, idx, tgt)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    got, want = grads(model, loss), grads(model, reference_loss(model, idx, tgt))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("softcap", [0.0, 15.0, 60.0])
def test_chunked_loss_matches_reference(monkeypatch, softcap):
    # several chunks with a ragged last one; softcap 0 and > 40 take the max-shift path
    monkeypatch.setitem(model_module.HEAD_CHUNK_ELEMENTS, "cpu", 7 * CFG.vocab_size)
    model = make_model(dataclasses.replace(CFG, softcap=softcap))
    idx, tgt = batch()
    tgt[2, 3:] = IGNORE_INDEX
    loss = model(idx, tgt)
    torch.testing.assert_close(loss, reference_loss(model, idx, tgt), rtol=1e-5, atol=1e-5)
    got, want = grads(model, loss), grads(model, reference_loss(model, idx, tgt))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        per_tok = model(idx, tgt, loss_reduction="none")
    torch.testing.assert_close(per_tok.sum() / (tgt != IGNORE_INDEX).sum(), loss.detach())


@pytest.mark.slow
def test_compiled_model_matches_eager():
    # train.compile on CPU: about a minute of compiling, so slow-marked
    model = make_model()
    idx, tgt = batch()
    want = grads(model, model(idx, tgt))
    got = grads(model, torch.compile(model)(idx, tgt))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_loss_ignores_masked_targets():
    model = make_model()
    idx, tgt = batch()
    tgt[:, ::3] = IGNORE_INDEX
    with torch.no_grad():
        logits = model(idx)
        want = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=IGNORE_INDEX)
        torch.testing.assert_close(model(idx, tgt), want, rtol=1e-5, atol=1e-5)
        other = tgt.clone()
        other[:, ::3] = IGNORE_INDEX  # ignored positions: the loss must not look at their ids
        torch.testing.assert_close(model(idx, other), want, rtol=1e-5, atol=1e-5)
    with_grad = model(idx, tgt)  # the fused training path
    torch.testing.assert_close(with_grad.detach(), want, rtol=1e-5, atol=1e-5)


def test_per_token_loss():
    model = make_model()
    idx, tgt = batch()
    tgt[1, 5:9] = IGNORE_INDEX
    with torch.no_grad():
        per_tok = model(idx, tgt, loss_reduction="none")
        mean = model(idx, tgt)
        total = model(idx, tgt, loss_reduction="sum")
    assert per_tok.shape == tgt.shape
    assert torch.all(per_tok[1, 5:9] == 0)
    assert torch.all(per_tok[tgt != IGNORE_INDEX] > 0)
    valid = (tgt != IGNORE_INDEX).sum()
    torch.testing.assert_close(per_tok.sum() / valid, mean)
    torch.testing.assert_close(total, per_tok.sum())
    # with autograd on, "none" takes the plain path and must agree
    torch.testing.assert_close(model(idx, tgt, loss_reduction="none").detach(), per_tok, rtol=1e-5, atol=1e-6)


def test_bad_reduction_raises():
    model = make_model()
    idx, tgt = batch()
    with pytest.raises(ValueError):
        model(idx, tgt, loss_reduction="max")


def test_param_count_and_flops_formula():
    cfg = ModelConfig(depth=3, width=48, head_dim=16, vocab_size=200, seq_len=24)
    model = GPT(cfg)
    C, V, L = cfg.model_dim, cfg.vocab_size, cfg.depth
    per_layer = 4 * C * C + 2 * 4 * C * C  # q, k, v, proj + fc, proj of the MLP
    assert model.num_params() == 2 * V * C + L * per_layer
    non_embedding = V * C + L * per_layer
    assert model.flops_per_token() == 6 * non_embedding + 12 * L * cfg.n_heads * cfg.head_dim * cfg.seq_len


def test_width_and_heads_follow_depth():
    model = GPT(ModelConfig(depth=2, head_dim=32, vocab_size=64, seq_len=8))
    assert model.blocks[0].attn.qkv.shape == (3, 128, 128)
    assert model.blocks[0].attn.n_heads == 4


def test_init_zeroes_output_projections():
    model = GPT(CFG)
    for blk in model.blocks:
        assert torch.all(blk.attn.proj == 0) and torch.all(blk.mlp.proj == 0)
    assert model.lm_head.weight.std() < 0.01


def test_causal():
    model = make_model()
    idx, _ = batch(rows=1)
    changed = idx.clone()
    changed[0, 20] = (idx[0, 20] + 1) % CFG.vocab_size
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def greedy_uncached(model: GPT, tokens: list[int], n: int) -> list[int]:
    ids = list(tokens)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(tokens):]


def test_kv_cache_greedy_matches_full_recompute():
    model = make_model()
    prompt = [5, 17, 42, 7, 99]
    cached = list(model.generate(prompt, 20, temperature=0))
    assert cached == greedy_uncached(model, prompt, 20)


def test_kv_cache_chunked_prefill_matches_full_forward():
    model = make_model()
    idx, _ = batch(rows=2)
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(CFG.depth, 2, CFG.n_heads, CFG.head_dim, CFG.seq_len)
        parts = [model.logits(model.hidden(idx[:, a:b], cache)) for a, b in ((0, 9), (9, 10), (10, 32))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)
    assert cache.pos == 32


def test_generate_beyond_seq_len_and_sampling():
    model = make_model()
    out = list(model.generate([1, 2, 3], CFG.seq_len + 10, temperature=0))
    assert len(out) == CFG.seq_len + 10  # rotary tables grow past seq_len
    a = list(model.generate([1], 15, temperature=1.0, top_k=5, seed=3))
    b = list(model.generate([1], 15, temperature=1.0, top_k=5, seed=3))
    assert a == b and all(0 <= t < CFG.vocab_size for t in a)
    # training still works after generation grew the tables in inference mode
    idx, tgt = batch()
    model(idx, tgt).backward()


def test_generate_needs_a_prompt():
    with pytest.raises(ValueError):
        next(make_model().generate([], 3))


def test_bf16_autocast_on_cpu(monkeypatch):
    monkeypatch.setitem(model_module.HEAD_CHUNK_ELEMENTS, "cpu", 7 * CFG.vocab_size)
    model = make_model()
    idx, tgt = batch()
    fp32_grads = grads(model, model(idx, tgt))
    with torch.no_grad():
        ref = model(idx, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
        loss = model(idx, tgt)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert abs(loss.item() - ref.item()) < 0.05 * ref.item()
    bf16_grads = grads(model, loss)
    for name, g in bf16_grads.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        cos = F.cosine_similarity(g.flatten(), fp32_grads[name].flatten(), dim=0)
        assert cos > 0.98, (name, cos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert len(list(model.generate([1, 2], 4, temperature=0))) == 4


def test_state_dict_has_weights_only():
    keys = set(make_model().state_dict())
    assert not any("cos" in k or "sin" in k for k in keys)
    assert {"wte.weight", "lm_head.weight", "blocks.0.attn.qkv"} <= keys
