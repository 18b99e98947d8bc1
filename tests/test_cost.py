"""What a run costs: prices, evaluation passes, estimates, and ``train --estimate-only``."""

from __future__ import annotations

import pytest
import torch

from backlm import cost, hardware
from backlm.config import RunConfig, load_config
from backlm.errors import UserError
from tests.helpers import TINY, run_cli, tiny_args


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
])
def test_eval_passes(steps, every, direction, passes):
    cfg = config(f"train.max_steps={steps}", f"train.eval_every={every}",
                 f"data.direction={direction}")
    assert cost.eval_passes(cfg) == passes


def test_gpu_estimate_follows_the_assumed_mfu():
    from backlm.model import GPT

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
    assert est.tokens_per_sec > 0 and est.tokens_per_sec_source == "measured on this CPU"
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
    monkeypatch.setattr(hardware, "cpu_peak", lambda dtype: 1e11)
    assert cost.target_gpu(config()) == ("cpu", 0, 1e11)


def test_estimate_only_creates_nothing(home):
    res = run_cli(tiny_args("--direction", "forward", "--id", "est", "--estimate-only"))
    assert res.exit_code == 0, res.output
    for word in ("parameters", "FLOPs per token", "planned tokens", "wall time", "GPU-hours"):
        assert word in res.output
    assert not (home / "exps" / "est").exists()
    gpu = run_cli(tiny_args("--direction", "forward", "--estimate-only", "--set", "cost.gpu=h100"))
    assert gpu.exit_code == 0 and "$" in gpu.output and "H100" in gpu.output
    bad = run_cli(tiny_args("--direction", "forward", "--estimate-only", "--set", "cost.gpu=tpu"))
    assert bad.exit_code == 2 and "unknown cost.gpu" in bad.output
