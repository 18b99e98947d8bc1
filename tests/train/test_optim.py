"""Muon + AdamW: parameter split, lr scaling, schedule, overfitting, exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backlm.config import ModelConfig, OptimConfig
from backlm.model.gpt import GPT
from backlm.train.optim import (
    _newton_schulz,
    _newton_schulz_gram,
    apply_schedule,
    build_optimizer,
    lr_multiplier,
    muon_momentum,
    orthogonalize,
    set_lr,
)

CFG = ModelConfig(depth=2, width=64, head_dim=16, vocab_size=256, seq_len=32)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CFG)


def fixed_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CFG.vocab_size, (4, CFG.seq_len + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def train(model, opt, batch, steps: int, ocfg: OptimConfig | None = None, start: int = 0, total: int = 0):
    losses = []
    for step in range(start, start + steps):
        if ocfg is not None:
            apply_schedule(opt, step, total, ocfg)
        loss = model(*batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_param_split():
    model = tiny()
    opt = build_optimizer(model, OptimConfig())
    muon_params = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    assert id(model.wte.weight) not in muon_params
    assert id(model.lm_head.weight) not in muon_params
    for blk in model.blocks:
        for p in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc, blk.mlp.proj):
            assert id(p) in muon_params
    kinds = {g["kind"]: g for g in opt.adamw.param_groups}
    assert kinds["embedding"]["params"] == [model.wte.weight]
    assert kinds["unembedding"]["params"] == [model.lm_head.weight]
    total = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert total == model.num_params()


def test_adamw_lrs_scale_with_width():
    ocfg = OptimConfig()
    opt = build_optimizer(tiny(), ocfg)
    scale = (CFG.model_dim / 768) ** -0.5
    kinds = {g["kind"]: g for g in opt.param_groups}
    assert kinds["embedding"]["initial_lr"] == pytest.approx(ocfg.embedding_lr * scale)
    assert kinds["unembedding"]["initial_lr"] == pytest.approx(ocfg.unembedding_lr * scale)
    assert kinds["matrix"]["initial_lr"] == ocfg.matrix_lr


class WithScalar(nn.Module):
    """A model shape the optimizer must also handle: a learnable scalar, behind a wrapper."""

    def __init__(self):
        super().__init__()
        self.inner = tiny()
        self.gain = nn.Parameter(torch.ones(2))
        self.cfg = self.inner.cfg

    def param_groups(self):
        groups = self.inner.param_groups()
        groups["scalar"] = [self.gain]
        return groups


def test_scalars_go_to_adamw_and_wrappers_are_unwrapped():
    model = WithScalar()
    wrapper = nn.Module()
    wrapper.module = model  # what DDP looks like to the optimizer
    opt = build_optimizer(wrapper, OptimConfig(scalar_lr=0.5))
    kinds = {g["kind"]: g for g in opt.param_groups}
    assert kinds["scalar"]["params"] == [model.gain]
    assert kinds["scalar"]["initial_lr"] == pytest.approx(0.5 * (CFG.model_dim / 768) ** -0.5)


def test_orthogonalize_gives_near_unit_singular_values():
    torch.manual_seed(0)
    for shape in ((64, 64), (32, 96), (96, 32), (3, 40, 40)):
        # singular values spread over [0.05, 1] (a random square matrix has some near 0,
        # which five iterations cannot lift, by design)
        u, _, vh = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
        spread = torch.linspace(0.05, 1.0, u.size(-1))
        o = orthogonalize(u @ torch.diag_embed(spread.expand(*u.shape[:-2], -1)) @ vh)
        assert o.shape == shape
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())


def test_gram_form_matches_direct_newton_schulz():
    torch.manual_seed(0)
    x = torch.randn(4, 32, 128)
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(_newton_schulz_gram(x, 5), _newton_schulz(x, 5), rtol=1e-4, atol=1e-5)


def test_overfits_a_fixed_batch():
    model = tiny()
    opt = build_optimizer(model, OptimConfig())
    losses = train(model, opt, fixed_batch(), 30)
    assert losses[-1] < 0.7 * losses[0], losses


def test_lr_schedule():
    ocfg = OptimConfig(warmup_steps=10, warmdown_frac=0.2, final_lr_frac=0.1)
    assert lr_multiplier(0, 100, ocfg) == pytest.approx(0.1)
    assert lr_multiplier(4, 100, ocfg) == pytest.approx(0.5)
    assert lr_multiplier(9, 100, ocfg) == 1.0
    assert lr_multiplier(50, 100, ocfg) == 1.0
    assert lr_multiplier(80, 100, ocfg) == 1.0  # warmdown starts after step 80
    assert lr_multiplier(90, 100, ocfg) == pytest.approx(0.5 + 0.5 * 0.1)
    assert lr_multiplier(100, 100, ocfg) == pytest.approx(0.1)
    plain = OptimConfig(warmup_steps=0, warmdown_frac=0.0)
    assert all(lr_multiplier(s, 10, plain) == 1.0 for s in range(10))


def test_set_lr_and_momentum_warmup():
    ocfg = OptimConfig(muon_momentum_warmup_steps=100, muon_momentum_start=0.85)
    assert muon_momentum(0, ocfg) == pytest.approx(0.85)
    assert muon_momentum(50, ocfg) == pytest.approx(0.90)
    assert muon_momentum(500, ocfg) == pytest.approx(0.95)
    opt = build_optimizer(tiny(), ocfg)
    set_lr(opt, 0.5, momentum=0.9)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.5 * g["initial_lr"])
    assert opt.muon.param_groups[0]["momentum"] == 0.9


def test_state_dict_round_trip_resumes_exactly():
    ocfg = OptimConfig(warmup_steps=2, weight_decay=0.01, muon_momentum_warmup_steps=5)
    batch = fixed_batch()
    model_a = tiny()
    opt_a = build_optimizer(model_a, ocfg)
    train(model_a, opt_a, batch, 3, ocfg, start=0, total=10)
    saved_model = copy.deepcopy(model_a.state_dict())
    saved_opt = copy.deepcopy(opt_a.state_dict())
    losses_a = train(model_a, opt_a, batch, 4, ocfg, start=3, total=10)

    model_b = tiny(seed=123)  # different init: everything must come from the state dicts
    opt_b = build_optimizer(model_b, ocfg)
    model_b.load_state_dict(saved_model)
    opt_b.load_state_dict(saved_opt)
    losses_b = train(model_b, opt_b, batch, 4, ocfg, start=3, total=10)
    assert losses_a == losses_b
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_load_rejects_mismatched_state():
    opt = build_optimizer(tiny(), OptimConfig())
    state = opt.state_dict()
    state["muon"] = None
    with pytest.raises(ValueError):
        opt.load_state_dict(state)


def _adam_params(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((8, 4), (4,), (3, 2, 5))]


def _adam_groups(params):
    return [dict(params=params[:2], lr=0.01, initial_lr=0.01, kind="embedding"),
            dict(params=params[2:], lr=0.003, weight_decay=0.0, initial_lr=0.003, kind="scalar")]


def _adam_run(opt, params, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for i, p in enumerate(params):
            # the middle parameter skips a step: parameters without a gradient are left alone
            p.grad = None if (i == 1 and step == 1) else torch.randn(p.shape, generator=g)
        for group in opt.param_groups:
            group["lr"] *= 0.9
        opt.step()


def test_adamw_is_bit_identical_to_torch_fused_adamw():
    from backlm.train.optim import AdamW

    ours, theirs = _adam_params(0), _adam_params(0)
    kw = dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    opt = AdamW(_adam_groups(ours), **kw)
    ref = torch.optim.AdamW(_adam_groups(theirs), fused=True, **kw)
    _adam_run(opt, ours, 5, seed=3)
    _adam_run(ref, theirs, 5, seed=3)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(opt.state_dict()["state"].values(), ref.state_dict()["state"].values(), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adamw_state_dicts_move_both_ways_between_ours_and_torchs():
    """Checkpoints written with torch.optim.AdamW (backlm before this change) resume here, and
    the other way round, with the same next updates."""
    from backlm.train.optim import AdamW

    kw = dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    start = _adam_params(0)
    torch_first = torch.optim.AdamW(_adam_groups(start), fused=True, **kw)
    _adam_run(torch_first, start, 3, seed=4)
    saved = copy.deepcopy(torch_first.state_dict())
    snapshot = [p.detach().clone() for p in start]

    ours = [nn.Parameter(t.clone()) for t in snapshot]
    theirs = [nn.Parameter(t.clone()) for t in snapshot]
    opt = AdamW(_adam_groups(ours), **kw)
    opt.load_state_dict(copy.deepcopy(saved))
    ref = torch.optim.AdamW(_adam_groups(theirs), fused=True, **kw)
    ref.load_state_dict(copy.deepcopy(saved))
    _adam_run(opt, ours, 3, seed=5)
    _adam_run(ref, theirs, 3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))

    back = [nn.Parameter(t.detach().clone()) for t in ours]
    ref2 = torch.optim.AdamW(_adam_groups(back), fused=True, **kw)
    ref2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _adam_run(opt, ours, 2, seed=6)
    _adam_run(ref2, back, 2, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(ours, back, strict=True))


def test_base_optimizer_rejects_bad_parameter_lists():
    from backlm.train.optim import AdamW

    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(ValueError, match="more than one group"):
        AdamW([dict(params=[p]), dict(params=[p])])
    opt = AdamW([p])
    with pytest.raises(ValueError, match="does not match"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})


def test_zero_grad_clears_or_zeroes():
    from backlm.train.optim import AdamW

    p = nn.Parameter(torch.zeros(3))
    opt = AdamW([p])
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None


def test_training_never_imports_torchs_compiler():
    """torch.optim's base class imports torch._dynamo on first use (~2 s of start-up on 2
    cores); backlm's optimizers must not."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from backlm.config import ModelConfig, OptimConfig\n"
        "from backlm.model.gpt import GPT\n"
        "from backlm.train.optim import build_optimizer\n"
        "m = GPT(ModelConfig(depth=2, width=64, head_dim=16, vocab_size=256, seq_len=32))\n"
        "opt = build_optimizer(m, OptimConfig())\n"
        "x = torch.randint(0, 256, (2, 32))\n"
        "m(x, x).backward(); opt.step(); opt.zero_grad(); opt.load_state_dict(opt.state_dict())\n"
        "print(sorted(k for k in sys.modules if k.startswith('torch._dynamo')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
