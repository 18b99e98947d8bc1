"""What a run costs: prices, evaluation passes, sizes, memory, estimates, and
``train --estimate-only``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backlm import hardware
from backlm.config import ModelConfig, RunConfig, load_config
from backlm.errors import UserError
from backlm.model import native
from backlm.train import cost
from tests.helpers import TINY, assert_user_error, run_cli, tiny_args


def config(*overrides: str) -> RunConfig:
    """The tiny training config of tests/helpers.py, plus ``overrides``."""
    return load_config(RunConfig, overrides=[*TINY, *overrides])


def test_price_resolution():
    assert cost.price(config("cost.usd_per_gpu_hour=1.25"), "NVIDIA H100") == 1.25  # explicit
    assert cost.price(config("cost.gpu=a100"), "NVIDIA H100") == cost.GPU_PRICES["a100"]
    assert cost.price(config("cost.gpu=H100")) == cost.GPU_PRICES["h100"]  # any case
    assert cost.price(config(), "NVIDIA H200") == cost.GPU_PRICES["h200"]  # auto: device name
    assert cost.price(config(), "NVIDIA L40S") == cost.GPU_PRICES["l40s"]  # not "l4"
    assert cost.price(config(), "cpu") is None  # auto and nothing known: no dollars
    with pytest.raises(UserError, match="unknown cost.gpu 'tpu'"):
        cost.price(config("cost.gpu=tpu"))


@pytest.mark.parametrize("steps, every, direction, passes", [
    (8, 4, "forward", 3),  # steps 0, 4, 8
    (10, 4, "backward", 4),  # 0, 4, 8 and the last step
    (10, 4, "bidirectional", 8),  # each with both markers
    (3, 5, "forward", 2),  # 0 and the last step
    (8, 4, "forward:no-start", 2),  # train.eval_at_start=false: 4 and 8
])
def test_eval_passes(steps, every, direction, passes):
    direction, _, start = direction.partition(":")
    cfg = config(f"train.max_steps={steps}", f"train.eval_every={every}",
                 f"data.direction={direction}", f"train.eval_at_start={not start}")
    assert cost.eval_passes(cfg) == passes


def test_gpu_estimate_follows_the_assumed_mfu():
    from backlm.model.gpt import GPT

    cfg = config("train.max_steps=100", "cost.assumed_mfu=0.5", "cost.gpu=h100")
    est = cost.estimate(cfg, "H100", gpus=2, peak_flops=1e15, measure=False)
    model = GPT(cfg.model)
    assert (est.params, est.flops_per_token) == (model.num_params(), model.flops_per_token())
    assert est.planned_tokens == 100 * 256
    assert est.eval_tokens == cost.eval_passes(cfg) * 512
    assert est.tokens_per_sec == pytest.approx(0.5 * 1e15 * 2 / est.flops_per_token)
    assert est.wall_seconds == pytest.approx((100 * 256 + est.eval_tokens / 3)
                                             / est.tokens_per_sec)
    assert est.gpu_hours == pytest.approx(est.wall_seconds * 2 / 3600)
    assert est.usd == pytest.approx(est.gpu_hours * cost.GPU_PRICES["h100"])
    assert est.to_dict()["usd_per_gpu_hour"] == cost.GPU_PRICES["h100"]
    with pytest.raises(UserError, match="no known peak"):
        cost.estimate(cfg, "Mystery GPU", gpus=1, peak_flops=0.0, measure=False)


def test_cpu_estimate_is_measured_and_costs_no_gpu_hours():
    est = cost.estimate(config("train.max_steps=20"), "cpu", gpus=0, peak_flops=1e11)
    assert est.tokens_per_sec > 0
    assert est.tokens_per_sec_source.startswith("measured 2-layer proxy on this CPU: ")
    assert est.tokens_per_sec_source.endswith(" GFLOP/s")
    assert est.wall_seconds > 20 * 256 / est.tokens_per_sec  # training plus evaluation
    assert est.gpu_hours == 0.0 and est.usd is None  # no price given: no dollars
    priced = cost.estimate(config("cost.usd_per_gpu_hour=2.0"), "cpu", 0, 1e11, measure=False)
    assert priced.usd == 0.0


def test_target_gpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    peak = hardware.KNOWN_GPU_PEAKS["H100"]
    assert cost.target_gpu(config("cost.gpu=h100")) == ("H100", 1, peak)  # planning for one
    with pytest.raises(UserError, match="unknown cost.gpu 'tpu'"):
        cost.target_gpu(config("cost.gpu=tpu"))
    # the CPU estimate measures training itself: the matmul peak (seconds) is not measured
    monkeypatch.setattr(hardware, "cpu_peak", lambda dtype: pytest.fail("peak measured"))
    assert cost.target_gpu(config()) == ("cpu", 0, 0.0)


def test_estimate_only_creates_nothing(home):
    res = run_cli(tiny_args("--direction", "forward", "--id", "est", "--estimate-only"))
    assert res.exit_code == 0, res.output
    for word in ("parameters", "FLOPs per token", "planned tokens", "wall time", "GPU-hours",
                 "memory per device", "available"):
        assert word in res.output
    assert not (home / "exps" / "est").exists()
    gpu = run_cli(tiny_args("--direction", "forward", "--estimate-only", "--set", "cost.gpu=h100"))
    assert gpu.exit_code == 0 and "$" in gpu.output and "H100" in gpu.output
    bad = run_cli(tiny_args("--direction", "forward", "--estimate-only", "--set", "cost.gpu=tpu"))
    assert_user_error(bad, "unknown cost.gpu")


# --- sizes, counted -------------------------------------------------------------------------

SHAPES = [  # depth, width, head_dim, vocab, seq_len
    (2, 64, 32, 300, 32),
    (3, 48, 16, 200, 24),
    (2, 96, 64, 100, 16),  # width not a multiple of head_dim: one head, inner 64 < width
    (1, 32, 128, 50, 8),  # width below head_dim: one head, inner 128 > width
    (2, 0, 64, 64, 8),  # width 0: 64 × depth
]


@pytest.mark.parametrize("depth, width, head_dim, vocab, seq", SHAPES)
def test_model_size_is_the_models(depth, width, head_dim, vocab, seq):
    from backlm.model.gpt import GPT

    mcfg = ModelConfig(depth=depth, width=width, head_dim=head_dim, vocab_size=vocab, seq_len=seq)
    model = GPT(mcfg)
    assert cost.model_size(mcfg) == (model.num_params(), model.flops_per_token())
    matrices = sum(p.numel() for p in model.param_groups()["matrix"])
    assert sum(k * m * n for k, m, n in cost.muon_buckets(mcfg)) == matrices


@pytest.mark.parametrize("depth, width, head_dim, vocab, seq", SHAPES[:4])
def test_optimizer_flops_are_muons(depth, width, head_dim, vocab, seq):
    """Muon's batches and its Newton–Schulz matmul FLOPs, as torch's FLOP counter sees them."""
    from torch.utils.flop_counter import FlopCounterMode

    from backlm.model.gpt import GPT
    from backlm.train import optim

    cfg = RunConfig(model=ModelConfig(depth=depth, width=width, head_dim=head_dim,
                                      vocab_size=vocab, seq_len=seq))
    model = GPT(cfg.model)
    opt = optim.build_optimizer(model, cfg.optim)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    batches = []
    orthogonalize = optim.orthogonalize

    def spy(g, steps=5):
        batches.append(tuple(g.shape))
        return orthogonalize(g, steps)

    optim.orthogonalize = spy
    try:
        with FlopCounterMode(display=False) as counter:
            opt.muon.step()
    finally:
        optim.orthogonalize = orthogonalize
    assert batches == cost.muon_buckets(cfg.model)
    assert counter.get_total_flops() == cost.optimizer_flops(cfg, "cpu")


def test_estimate_never_builds_the_model(monkeypatch):
    import backlm.model.gpt

    monkeypatch.setattr(backlm.model.gpt.GPT, "__init__", lambda *a, **k: pytest.fail("built"))
    monkeypatch.setattr(cost, "_RATES", {"fp32": 1e11})  # a measured proxy would build its own
    cfg = config("model.depth=1000", "model.width=65536", "model.seq_len=1048576",
                 "train.device_batch_size=1", "train.total_batch_tokens=1048576")
    t = time.perf_counter()
    est = cost.estimate(cfg, "cpu", gpus=0, peak_flops=0.0)
    assert time.perf_counter() - t < 5  # arithmetic: nothing of that size is allocated
    assert (est.params, est.flops_per_token) == cost.model_size(cfg.model)
    step = 1048576 * est.flops_per_token + cost.optimizer_flops(cfg, "cpu")
    assert est.tokens_per_sec == pytest.approx(1048576 / (step / 1e11))
    assert est.tokens_per_sec_source.endswith(": 100.0 GFLOP/s")
    assert est.memory.total > 2**50  # petabytes: far beyond any machine
    gpu = cost.estimate(cfg, "H100", gpus=8, peak_flops=1e15)
    assert gpu.memory.grads == 2 * 4 * est.params  # fp32, and DDP's bucket copy


def test_cpu_rate_is_measured_once_per_process(monkeypatch):
    monkeypatch.setattr(cost, "_RATES", {})
    t = time.perf_counter()
    rate = cost.cpu_training_rate()
    assert 1e8 < rate < 1e14 and time.perf_counter() - t < 15
    t = time.perf_counter()
    assert cost.cpu_training_rate() == rate and time.perf_counter() - t < 0.01


HUGE = ["model.width=65536", "model.seq_len=1048576", "train.device_batch_size=1",
        "train.total_batch_tokens=1048576"]


@pytest.mark.parametrize("flags, overrides", [
    (["--depth", "2000"], ["model.depth=2000"]),
    ([a for o in HUGE for a in ("--set", o)], HUGE),
])
def test_estimate_only_answers_in_seconds_for_any_size(home, monkeypatch, flags, overrides):
    monkeypatch.setattr(cost, "_RATES", {})  # the proxy is measured within the time limit
    t = time.perf_counter()
    res = run_cli(["train", "--estimate-only", "--set", "train.device=cpu", "--set",
                   "data.dataset=tiny", *flags])
    assert res.exit_code == 0, res.output
    assert time.perf_counter() - t < 20
    mcfg = load_config(RunConfig, overrides=[*overrides, "model.vocab_size=300"]).model
    params, fpt = cost.model_size(mcfg)  # 300: the tiny dataset's tokenizer
    assert f"{params:,}" in res.output and f"{fpt:,}" in res.output
    if hardware.available_memory("cpu") is not None:
        assert "not enough for this run" in res.output


# --- memory -----------------------------------------------------------------------------------

MEMORY = ["model.depth=2", "model.width=128", "model.head_dim=32", "model.seq_len=128",
          "model.vocab_size=512", "train.device_batch_size=4", "train.total_batch_tokens=4096",
          "train.device=cpu", "train.dtype=fp32"]  # fp32 estimates (`auto` may be bf16)


def test_memory_estimate_grows_with_batch_sequence_depth_and_ranks():
    base = cost.memory_estimate(load_config(RunConfig, overrides=MEMORY))
    parts = (base.weights, base.grads, base.optimizer, base.activations, base.scratch,
             base.runtime, base.margin)
    assert sum(parts) == base.total and min(parts) > 0
    for key, value in (("train.device_batch_size", 8), ("model.seq_len", 256), ("model.depth", 4)):
        bigger = cost.memory_estimate(load_config(RunConfig, overrides=[*MEMORY, f"{key}={value}"]))
        assert bigger.activations > 1.8 * base.activations and bigger.total > base.total, key
    cfg = load_config(RunConfig, overrides=MEMORY)
    assert cost.memory_estimate(cfg, world=2).grads == 2 * base.grads  # DDP's gradient buckets
    deeper = load_config(RunConfig, overrides=[*MEMORY, "model.depth=4"])
    assert cost.memory_estimate(deeper).weights > base.weights
    # an fp32 master copy stays; bf16 activations are half as wide
    gpu = cost.memory_estimate(cfg, device="cuda")
    assert gpu.weights == base.weights and gpu.activations < base.activations


def _saved_bytes(cfg: RunConfig, bf16: bool = False) -> int:
    """Bytes of the distinct tensors autograd saves in one training forward (weights aside)."""
    import contextlib

    from backlm.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(cfg.model)
    mine = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in mine:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.device_batch_size, cfg.model.seq_len))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, x)
    return sum(saved.values())


@pytest.mark.parametrize("path", ["fused", "pytorch ops", "sdpa", "bf16"])
def test_activations_are_what_autograd_saves(monkeypatch, path):
    from backlm.model import attention

    cfg = load_config(RunConfig, overrides=MEMORY)
    if path == "fused" and native.native_kernels() is None:
        pytest.skip("the C kernels are not built")
    if path == "pytorch ops":
        monkeypatch.setattr(native, "_native_on", False)
    if path == "sdpa":  # past the saved-probability budget, CPU training falls back to SDPA
        monkeypatch.setattr(attention, "ATTENTION_SAVED_BYTES", 0)
    if path == "bf16":  # autocast on CPU without the C kernels takes the GPU's code path
        monkeypatch.setattr(native, "_native_on", False)  # (SDPA, casts, PyTorch ops)
        cfg.train.dtype = "bf16"
        estimated = cost.memory_estimate(cfg, device="cuda").activations
        assert 1.0 <= estimated / _saved_bytes(cfg, bf16=True) < 1.1
        return
    estimated = cost.memory_estimate(cfg, device="cpu").activations
    assert estimated / _saved_bytes(cfg) == pytest.approx(1.0, abs=0.01)


RSS_PROBE = """
import ctypes, gc, json, sys, torch
from backlm.train import cost
from backlm.config import RunConfig, load_config
from backlm.model.gpt import GPT
from backlm.train.optim import build_optimizer

def status(field):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith(field + ":"))

cfg = load_config(RunConfig, overrides=sys.argv[1:])
model = GPT(cfg.model)
opt = build_optimizer(model, cfg.optim)
x = torch.randint(0, cfg.model.vocab_size, (cfg.train.device_batch_size, cfg.model.seq_len))
for _ in range(2):  # optimizer state, thread pools and allocator settled
    model(x, x).backward(); opt.step(); opt.zero_grad(set_to_none=True)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size
model(x, x).backward(); opt.step(); opt.zero_grad(set_to_none=True)
print(json.dumps({"growth": status("VmHWM") - before, "peak": status("VmHWM")}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("shape", [
    ["model.depth=4", "model.width=256", "model.seq_len=256", "train.device_batch_size=16"],
    ["model.depth=2", "model.width=256", "model.seq_len=1024", "train.device_batch_size=4"],
    ["model.depth=2", "model.width=256", "model.seq_len=4096", "train.device_batch_size=4"],
    ["model.depth=6", "model.width=512", "model.seq_len=512", "train.device_batch_size=8"],
])
def test_memory_estimate_covers_the_measured_peak(shape):
    """A training step's resident growth (gradients, activations, scratch) against the estimate:
    covered, within 2×; and the whole process's peak against the total."""
    args = ["model.head_dim=64", "model.vocab_size=8192", "train.device=cpu", "train.dtype=fp32",
            "train.total_batch_tokens=65536", *shape]
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, *args], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout)
    est = cost.memory_estimate(load_config(RunConfig, overrides=args), device="cpu")
    step = (est.grads + est.activations + est.scratch) * (1 + cost.MEMORY_MARGIN)
    assert 1.0 <= step / measured["growth"] < 2.0
    assert 1.0 <= est.total / measured["peak"] < 2.0
