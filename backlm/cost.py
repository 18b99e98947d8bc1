"""What a run costs: estimates before (``--estimate-only``) and actual figures after.

On CPU the estimate times a few real training micro-steps of the configured model (random
tokens, same shapes, same optimizer); on a GPU that is not present it assumes
``cost.assumed_mfu`` of the GPU's datasheet bf16 peak. Dollars are GPU-hours times
``cost.usd_per_gpu_hour`` or the preset price of ``cost.gpu``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from backlm.config import RunConfig
from backlm.errors import UserError

# Typical on-demand cloud prices, USD per GPU-hour (late 2026); set cost.usd_per_gpu_hour for
# your own contract.
GPU_PRICES = {
    "h200": 3.50, "h100": 2.50, "a100": 1.40, "l40s": 0.90, "a10g": 0.75, "l4": 0.60,
    "4090": 0.40, "3090": 0.25,
}
GPU_PEAK_KEYS = {"h200": "H200", "h100": "H100", "a100": "A100", "l40s": "L40S", "a10g": "A10G",
                 "l4": "L4", "4090": "4090", "3090": "3090"}


@dataclass
class Estimate:
    """Planned size, time and money of a run."""

    params: int
    flops_per_token: int
    planned_tokens: int
    eval_tokens: int
    device: str
    tokens_per_sec: float
    tokens_per_sec_source: str
    wall_seconds: float
    gpus: int
    gpu_hours: float
    usd_per_gpu_hour: float | None
    usd: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def price(cfg: RunConfig, device_name: str = "") -> float | None:
    """USD per GPU-hour: explicit figure, else the preset of ``cost.gpu`` or the device name."""
    if cfg.cost.usd_per_gpu_hour is not None:
        return cfg.cost.usd_per_gpu_hour
    key = cfg.cost.gpu.lower()
    if key == "auto":
        key = next((k for k in GPU_PRICES if k in device_name.lower()), "")
        if not key:
            return None
    if key not in GPU_PRICES:
        raise UserError(f"unknown cost.gpu {cfg.cost.gpu!r}: choose auto or one of "
                        f"{', '.join(GPU_PRICES)} (or set cost.usd_per_gpu_hour)")
    return GPU_PRICES[key]


def eval_passes(cfg: RunConfig) -> int:
    """Validation passes a run makes (step 0, every eval_every, the last step) × markers."""
    evals = 1 + cfg.train.max_steps // cfg.train.eval_every
    if cfg.train.max_steps % cfg.train.eval_every:
        evals += 1
    return evals * (2 if cfg.data.direction == "bidirectional" else 1)


def _measure_cpu(cfg: RunConfig) -> tuple[float, float]:
    """Seconds per training step and per evaluated token, timed on this CPU."""
    import torch

    from backlm.model import GPT
    from backlm.optim import build_optimizer

    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    rows, T = cfg.train.device_batch_size, cfg.model.seq_len
    x = torch.randint(0, cfg.model.vocab_size, (rows, T))
    micro = []
    for i in range(3):
        t = time.perf_counter()
        model(x, x).backward()
        if i:
            micro.append(time.perf_counter() - t)
    t = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    opt_time = time.perf_counter() - t
    micro_steps = cfg.train.total_batch_tokens // (rows * T)
    step_time = micro_steps * min(micro) + opt_time
    with torch.no_grad():
        t = time.perf_counter()
        model(x, x, loss_reduction="none")
        eval_per_token = (time.perf_counter() - t) / (rows * T)
    return step_time, eval_per_token


def estimate(cfg: RunConfig, device_name: str, gpus: int, peak_flops: float,
             measure: bool = True) -> Estimate:
    """Estimate a run of ``cfg`` on ``gpus`` devices (0: CPU) of the given name and peak."""
    import torch

    from backlm.model import GPT

    with torch.device("meta"):  # sizes only: no weights are allocated
        model = GPT(cfg.model)
    params, fpt = model.num_params(), model.flops_per_token()
    tokens = cfg.train.max_steps * cfg.train.total_batch_tokens
    eval_tokens = eval_passes(cfg) * cfg.train.eval_tokens
    if gpus == 0 and measure:
        step_time, eval_tok = _measure_cpu(cfg)
        tps = cfg.train.total_batch_tokens / step_time
        wall = cfg.train.max_steps * step_time + eval_tokens * eval_tok
        source = "measured on this CPU"
    else:
        if not peak_flops:
            raise UserError(f"no known peak for {device_name!r}: set cost.gpu to a named GPU "
                            f"({', '.join(GPU_PRICES)})")
        tps = cfg.cost.assumed_mfu * peak_flops * max(gpus, 1) / fpt
        wall = (tokens + eval_tokens / 3) / tps
        source = f"assumed MFU {cfg.cost.assumed_mfu:.0%} of {peak_flops / 1e12:.0f} TFLOP/s"
    usd_h = price(cfg, device_name) if gpus else cfg.cost.usd_per_gpu_hour
    gpu_hours = wall * gpus / 3600
    return Estimate(params, fpt, tokens, eval_tokens, device_name, tps, source, wall, gpus,
                    gpu_hours, usd_h, gpu_hours * usd_h if usd_h is not None else None)


def target_gpu(cfg: RunConfig) -> tuple[str, int, float]:
    """(device name, GPU count, peak FLOP/s) the estimate is for: present GPUs, else the
    GPU named in ``cost.gpu``, else this CPU."""
    import torch

    from backlm.hardware import KNOWN_GPU_PEAKS, cpu_peak

    if cfg.train.device != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in KNOWN_GPU_PEAKS.items() if k.lower() in name.lower()), 0.0)
        return name, torch.cuda.device_count(), peak
    key = cfg.cost.gpu.lower()
    if key != "auto":
        if key not in GPU_PEAK_KEYS:
            raise UserError(f"unknown cost.gpu {cfg.cost.gpu!r}: choose auto or one of "
                            f"{', '.join(GPU_PEAK_KEYS)}")
        return GPU_PEAK_KEYS[key], 1, KNOWN_GPU_PEAKS[GPU_PEAK_KEYS[key]]
    return "cpu", 0, cpu_peak("fp32")
