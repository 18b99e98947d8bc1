"""What a run costs: estimates before (``--estimate-only``) and actual figures after.

Estimates come from the configuration alone, in seconds for any size: parameters, FLOPs and
memory are counted analytically (the model is never built). On CPU the throughput is this
CPU's training FLOP/s, measured once on a small fixed model, divided by the run's FLOPs; on a
GPU it assumes ``cost.assumed_mfu`` of the datasheet bf16 peak. Dollars are GPU-hours times
``cost.usd_per_gpu_hour`` or the preset price of ``cost.gpu``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from backlm.config import ModelConfig, RunConfig
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
    memory: MemoryEstimate | None = None  # per device
    available_memory: int | None = None  # bytes free on the device, when it is this machine's

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
    """Validation passes a run makes (step 0 unless ``eval_at_start`` is off, every
    eval_every, the last step) × markers."""
    evals = int(cfg.train.eval_at_start) + cfg.train.max_steps // cfg.train.eval_every
    if cfg.train.max_steps % cfg.train.eval_every:
        evals += 1
    return evals * len(cfg.data.direction.orders)


def model_size(mcfg: ModelConfig) -> tuple[int, int]:
    """``(parameters, training FLOPs per token)`` of ``GPT(mcfg)``, counted without building it.

    Equal to ``num_params()`` and ``flops_per_token()``: an embedding and an untied head of
    ``vocab × width``; per block q/k/v ``3 × inner × width``, the attention output
    ``width × inner`` and the MLP's two ``4·width × width`` matrices, where ``inner`` is
    ``heads × head_dim``; no biases and no norm weights.
    """
    C, inner, V = mcfg.model_dim, mcfg.n_heads * mcfg.head_dim, mcfg.vocab_size
    params = 2 * V * C + mcfg.depth * (4 * inner * C + 8 * C * C)
    return params, 6 * (params - V * C) + 12 * mcfg.depth * inner * mcfg.seq_len


def muon_buckets(mcfg: ModelConfig) -> list[tuple[int, int, int]]:
    """Muon's batches in step order, as ``(matrices, rows, cols)`` with ``rows ≤ cols``.

    Muon orthogonalises the hidden matrices of one shape (up to transposition) in one call.
    """
    C, inner = mcfg.model_dim, mcfg.n_heads * mcfg.head_dim
    buckets: dict[tuple[int, int], int] = {}
    for count, m, n in ((3, inner, C), (1, C, inner), (1, 4 * C, C), (1, C, 4 * C)):
        key = (min(m, n), max(m, n))
        buckets[key] = buckets.get(key, 0) + count * mcfg.depth
    return [(k, m, n) for (m, n), k in buckets.items()]


def _gram_form(m: int, n: int, device: str) -> bool:
    # the condition under which backlm.train.optim.orthogonalize iterates on the Gram matrix
    return device == "cpu" and 2 * n > 3 * m


def optimizer_flops(cfg: RunConfig, device: str = "cpu") -> int:
    """FLOPs of one Muon step: Newton–Schulz on every hidden matrix (AdamW's are negligible)."""
    s = cfg.optim.ns_steps
    total = 0
    for k, m, n in muon_buckets(cfg.model):
        if _gram_form(m, n, device):
            total += k * (4 * m * m * n + (8 * s - 6) * m**3)
        else:
            total += k * s * (4 * m * m * n + 2 * m**3)
    return total


# The throughput proxy: a model small enough that a training micro-step takes a fraction of a
# second on a laptop CPU, large enough that its matmuls run at the rates real runs get. Its
# FLOP/s, counted as flops_per_token counts them, stands in for any configured model's; on a
# quiet 2-core machine it predicted the micro-step and Muon times of cpu-tiny and of 2-8 layer
# variants within 25%, and a 32k vocabulary trained 1.7× slower than predicted (its loss is
# less matmul-bound). Muon's Newton–Schulz matmuls are charged at the same rate, not timed.
PROXY = {"depth": 2, "width": 256, "head_dim": 64, "vocab_size": 2048, "seq_len": 256}
PROXY_ROWS = 4
PROXY_SECONDS = 0.6  # after the warm-up, repeats within about this long; the best one counts
_RATES: dict[str, float] = {}


def cpu_training_rate(dtype: str = "fp32") -> float:
    """Training FLOP/s (forward + backward) this CPU achieves on the proxy model in ``dtype``,
    measured once per process."""
    if dtype not in _RATES:
        _RATES[dtype] = _measure_rate(dtype)
    return _RATES[dtype]


def _measure_rate(dtype: str) -> float:
    import contextlib

    import torch

    from backlm.hardware import cpu_has_native_bf16
    from backlm.model.gpt import GPT

    mcfg, rows = ModelConfig(**PROXY), PROXY_ROWS
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else None
    if bf16 and not cpu_has_native_bf16():  # emulated bf16 is ~10× slower: 1/8 of the work
        mcfg, rows = ModelConfig(**{**PROXY, "seq_len": PROXY["seq_len"] // 2}), 1
    times: list[float] = []
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
        torch.manual_seed(0)
        model = GPT(mcfg)
        x = torch.randint(0, mcfg.vocab_size, (rows, mcfg.seq_len))
        start = time.perf_counter()
        # the first repeat warms up allocations and thread pools and is not counted
        while len(times) < 2 or (len(times) < 6 and time.perf_counter() - start < PROXY_SECONDS):
            t = time.perf_counter()
            with bf16 or contextlib.nullcontext():
                loss = model(x, x)
            loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
    return rows * mcfg.seq_len * model_size(mcfg)[1] / min(times[1:])


@dataclass
class MemoryEstimate:
    """Bytes one device holds at the peak of a training step (see :func:`memory_estimate`)."""

    weights: int  # fp32 parameters and the rotary tables
    grads: int  # fp32 gradients (twice under DDP, whose buckets copy them)
    optimizer: int  # Muon's momentum for hidden matrices, AdamW's two moments for the rest
    activations: int  # what autograd keeps for backward over one micro-batch
    scratch: int  # what the peak adds on top: backward's or the optimizer step's temporaries
    runtime: int  # interpreter, torch and the data loader; on a GPU the CUDA context
    margin: int  # allocator slack on the tensors above
    total: int


# Bytes the process needs besides the counted tensors: python, torch, backlm and the loader
# (a whole tiny training run peaks at 0.41 GiB resident); on a GPU the CUDA context and cuBLAS
# workspaces (unmeasured here: a generous figure).
RUNTIME_BYTES = {"cpu": 2**29, "cuda": 2**30}
# Slack on the counted tensors: glibc keeps freed blocks and fragments, so a CPU step's resident
# growth ran up to 20% above the tensors it holds at its peak (tests/train/test_cost.py measures it).
MEMORY_MARGIN = 0.3


def planned_device(cfg: RunConfig) -> str:
    """``cpu`` or ``cuda``: where ``cfg`` would train on this machine."""
    if cfg.train.device == "cpu":
        return "cpu"
    import torch

    return "cuda" if cfg.train.device.startswith("cuda") or torch.cuda.is_available() else "cpu"


def memory_estimate(cfg: RunConfig, world: int = 1, device: str | None = None) -> MemoryEstimate:
    """Bytes one of ``world`` ranks needs to train ``cfg`` on ``device`` (``cpu``/``cuda``;
    default :func:`planned_device`), counted from the shapes as the code keeps its tensors.

    Activations are one micro-batch of ``device_batch_size × seq_len`` tokens through every
    block: both norms' outputs, q/k/v, the attention output and its copy for the projection,
    the MLP's hidden tensor before and after ReLU², and on CPU in fp32 the attention
    probabilities the blocked kernel saves (SDPA keeps none); the loss keeps its gradients
    with respect to the hidden states and the head. Scratch is the larger of what backward
    allocates inside one block (on top of the activations) and Muon's batched copies.
    """
    from backlm.hardware import resolve_dtype
    from backlm.model import native
    from backlm.model.attention import ATTENTION_BLOCK, ATTENTION_SAVED_BYTES
    from backlm.model.kernels import HEAD_CHUNK_ELEMENTS

    device = device or planned_device(cfg)
    m, t = cfg.model, cfg.train
    C, H, V, L, T, B = m.model_dim, m.n_heads, m.vocab_size, m.depth, m.seq_len, t.device_batch_size
    inner, N = H * m.head_dim, B * T
    params = model_size(m)[0]
    matrices = L * (4 * inner * C + 8 * C * C)
    fp32 = resolve_dtype(t.dtype, device)[0] == "fp32"
    e = 4 if fp32 else 2  # bytes of an element the matmuls produce
    fused = device == "cpu" and fp32 and native.native_kernels() is not None
    k, r = divmod(T, ATTENTION_BLOCK)  # query block i keeps (rows × keys up to its end)
    probs = 4 * B * H * (ATTENTION_BLOCK**2 * k * (k + 1) // 2 + r * T)
    blocked = device == "cpu" and fp32 and probs <= ATTENTION_SAVED_BYTES

    block = 2 * N * (4 * C + 4) + N * 2 * H * 4  # two norms' outputs and scales, QK-norm scales
    # q and k (normed, rotated), v, the attention output and its (B, T, inner) copy for the
    # projection; without the C kernels q, k and v are strided views, so either the blocked
    # kernel keeps contiguous copies or SDPA keeps v's view of the whole qkv product: 2 more
    block += N * inner * e * (5 if fused else 7)
    block += probs if blocked else B * H * T * 4  # saved probabilities or SDPA's log-sum-exp
    block += 8 * N * C * e  # the MLP's hidden tensor, before and after ReLU²
    # first and final norm, the loss's saved gradients (hidden states and head), token ids
    ends = 2 * N * C * 4 + N * C * e + V * C * e + 2 * N * 8
    if not fp32:  # bf16 copies of the normed inputs and of the hidden matrices
        block += 2 * N * C * 2
        ends += 2 * matrices
    activations = L * block + ends

    rows = max(1, min(HEAD_CHUNK_ELEMENTS.get(device, 2**24) // max(V, 1), N))
    loss = 2 * rows * V * 4 + N * 8 + (0 if fp32 else V * C * 6 + N * C * 2)
    ds = B * H * min(ATTENTION_BLOCK, T) * T * 4 if blocked else 0
    backward = 2 * N * C * 4 + max(6 * N * C * e, 7 * N * inner * e + N * C * e + ds)
    muon, prev = 0, 0
    for count, rows_, cols in muon_buckets(m):  # the last batch's result lives on into the next
        cur = count * rows_ * cols
        gram = count * rows_ * rows_ * (4 if _gram_form(rows_, cols, device) else 2)
        muon, prev = max(muon, 4 * (prev + 3 * cur + gram)), cur
    scratch = max(loss, backward, muon - activations)

    weights = 4 * params + 4 * T * m.head_dim  # + cos and sin, seq_len × head_dim / 2 each
    grads = 4 * params * (2 if world > 1 else 1)
    optimizer = 4 * matrices + 8 * (params - matrices)
    tensors = weights + grads + optimizer + activations + scratch
    margin = int(MEMORY_MARGIN * tensors)
    runtime = RUNTIME_BYTES[device]
    return MemoryEstimate(weights, grads, optimizer, activations, scratch, runtime, margin,
                          tensors + margin + runtime)


def estimate(cfg: RunConfig, device_name: str, gpus: int, peak_flops: float,
             measure: bool = True) -> Estimate:
    """Estimate a run of ``cfg`` on ``gpus`` devices (0: CPU) of the given name and peak.

    Nothing is allocated for the configured model: sizes are counted, and on CPU (``measure``)
    the throughput comes from :func:`cpu_training_rate`.
    """
    from backlm.hardware import available_memory

    params, fpt = model_size(cfg.model)
    tokens = cfg.train.max_steps * cfg.train.total_batch_tokens
    eval_tokens = eval_passes(cfg) * cfg.train.eval_tokens
    if gpus == 0 and measure:
        from backlm.hardware import resolve_dtype

        rate = cpu_training_rate(resolve_dtype(cfg.train.dtype, "cpu")[0])
        step_time = (cfg.train.total_batch_tokens * fpt + optimizer_flops(cfg, "cpu")) / rate
        tps = cfg.train.total_batch_tokens / step_time
        wall = cfg.train.max_steps * step_time + eval_tokens * fpt / 3 / rate  # forward: 1/3
        source = (f"measured {PROXY['depth']}-layer proxy on this CPU: {rate / 1e9:.1f} GFLOP/s")
    else:
        if not peak_flops:
            raise UserError(f"no known peak for {device_name!r}: set cost.gpu to a named GPU "
                            f"({', '.join(GPU_PRICES)})")
        tps = cfg.cost.assumed_mfu * peak_flops * max(gpus, 1) / fpt
        wall = (tokens + eval_tokens / 3) / tps
        source = f"assumed MFU {cfg.cost.assumed_mfu:.0%} of {peak_flops / 1e12:.0f} TFLOP/s"
    usd_h = price(cfg, device_name) if gpus else cfg.cost.usd_per_gpu_hour
    gpu_hours = wall * gpus / 3600
    device = "cuda" if gpus else "cpu"
    here = device == "cpu" or planned_device(cfg) == "cuda"  # else a GPU planned, not present
    return Estimate(params, fpt, tokens, eval_tokens, device_name, tps, source, wall, gpus,
                    gpu_hours, usd_h, gpu_hours * usd_h if usd_h is not None else None,
                    memory_estimate(cfg, max(gpus, 1), device),
                    available_memory(device) if here else None)


def target_gpu(cfg: RunConfig) -> tuple[str, int, float]:
    """(device name, GPU count, peak FLOP/s) the estimate is for: present GPUs, else the
    GPU named in ``cost.gpu``, else this CPU, with no peak: the CPU estimate measures what
    training achieves instead (the matmul peak would take seconds to measure, unused)."""
    import torch

    from backlm.hardware import KNOWN_GPU_PEAKS

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
    return "cpu", 0, 0.0
