"""Devices, precision and peak FLOP/s (for MFU)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from backlm.errors import UserError

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
KNOWN_GPU_PEAKS = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
}


@dataclass(frozen=True)
class DeviceInfo:
    """Where a run computes and in which precision."""

    device: str  # "cpu" or "cuda:N"
    dtype: str  # "fp32" or "bf16"
    name: str
    peak_flops: float  # for the run's dtype; 0 when unknown
    peak_source: str

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def resolve_device(device: str, dtype: str, local_rank: int = 0) -> DeviceInfo:
    """Pick the device (``auto`` → CUDA if present) and dtype (``auto`` → bf16 on CUDA)."""
    import torch

    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}: use auto, cpu or cuda")
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise UserError(f"unknown dtype {dtype!r}: use auto, fp32 or bf16")
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        peak, source = gpu_peak(name, dtype)
    else:
        name = "cpu"
        peak, source = cpu_peak(dtype), "measured matmul"
    return DeviceInfo(device, dtype, name, peak, source)


def gpu_peak(name: str, dtype: str) -> tuple[float, str]:
    """Datasheet bf16 peak of a named GPU (fp32 runs use TF32-less fp32 ≈ peak/16)."""
    for key, peak in KNOWN_GPU_PEAKS.items():
        if key.lower() in name.lower():
            return (peak if dtype == "bf16" else peak / 16), f"datasheet ({key})"
    return 0.0, "unknown GPU"


_CPU_PEAK: dict[str, float] = {}


def cpu_peak(dtype: str = "fp32", size: int = 1024, seconds: float = 0.6) -> float:
    """Best measured square-matmul FLOP/s on this CPU (cached per process)."""
    if dtype in _CPU_PEAK:
        return _CPU_PEAK[dtype]
    import torch

    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(size, size, dtype=tdtype)
    b = torch.randn(size, size, dtype=tdtype)
    torch.mm(a, b)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
    _CPU_PEAK[dtype] = best
    return best


def describe(info: DeviceInfo) -> str:
    """One line for logs and metadata."""
    peak = f"{info.peak_flops / 1e12:.2f} TFLOP/s" if info.peak_flops else "unknown peak"
    return json.dumps({"device": info.device, "name": info.name, "dtype": info.dtype,
                       "peak": peak, "peak_source": info.peak_source})
