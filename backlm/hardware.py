"""Devices, precision and peak FLOP/s (for MFU)."""

from __future__ import annotations

import json
import os
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
    dtype_reason: str = ""  # why this precision, e.g. "native AVX512-BF16" or "asked for"

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def resolve_device(device: str, dtype: str, local_rank: int = 0) -> DeviceInfo:
    """Pick the device (``auto`` → CUDA if present) and dtype (``auto``: :func:`auto_dtype`).

    On CPU, ``auto`` is bf16 only where the CPU multiplies bf16 in hardware: there bf16 autocast
    trains faster than fp32 (1.45× on the 2-core Zen4 of issue 17), and the loss follows fp32's
    closely: tests/test_hardware.py trains the same tiny model N = 30 steps each way and
    asserts the final training losses agree within 0.05 nats (measured: 0.0006, at a loss of
    2.03 from 5.70; BENCHMARKS.md, "Precision by capability"). Elsewhere bf16 is emulated and
    3-4× slower than fp32 (0.24-0.37× on the Xeons of BENCHMARKS.md and issue 17), so ``auto`` stays fp32.
    bf16 runs take the fused C loss kernel (its logits are fp32) and PyTorch's ops elsewhere.
    """
    import torch

    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}: use auto, cpu or cuda")
    dtype, reason = resolve_dtype(dtype, device)
    if dtype not in ("fp32", "bf16"):
        raise UserError(f"unknown dtype {dtype!r}: use auto, fp32 or bf16")
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        peak, source = gpu_peak(name, dtype)
    else:
        name = "cpu"
        peak = cpu_peak(dtype)
        source = _CPU_PEAK_SOURCE.get(dtype, "measured matmul")
    return DeviceInfo(device, dtype, name, peak, source, reason)


def resolve_dtype(dtype: str, device: str) -> tuple[str, str]:
    """The precision a configured ``dtype`` means on ``device``, and why (``auto`` resolved
    by :func:`auto_dtype`; anything else is taken as asked for, and checked by the caller)."""
    return auto_dtype(device) if dtype == "auto" else (dtype, "asked for")


def auto_dtype(device: str) -> tuple[str, str]:
    """What ``dtype: auto`` means on ``device`` (``cpu``, ``cuda`` or ``cuda:N``), and why.

    CUDA: bf16. CPU: bf16 where it has native bf16 (AVX512-BF16 or AMX), else fp32.
    """
    if device.startswith("cuda"):
        return "bf16", "auto: CUDA"
    if cpu_has_native_bf16():
        flags = _cpuinfo("flags").split()
        return "bf16", f"auto: native {'AMX' if 'amx_bf16' in flags else 'AVX512-BF16'}"
    return "fp32", "auto: no native bf16 on this CPU"


def gpu_peak(name: str, dtype: str) -> tuple[float, str]:
    """Datasheet bf16 peak of a named GPU (fp32 runs use TF32-less fp32 ≈ peak/16)."""
    for key, peak in KNOWN_GPU_PEAKS.items():
        if key.lower() in name.lower():
            return (peak if dtype == "bf16" else peak / 16), f"datasheet ({key})"
    return 0.0, "unknown GPU"


_CPU_PEAK: dict[str, float] = {}
_CPU_PEAK_SOURCE: dict[str, str] = {}
_CPU_PEAK_KEPT: set[str] = set()  # dtypes whose peak this process read from the file
# Measuring the peak takes ~1.8 s of every command's start on 2 cores; a peak measured within
# this long on the same CPU, thread count and torch is reused (BENCHMARKS.md, first step).
PEAK_CACHE_SECONDS = 24 * 3600

# Square sizes for the CPU peak: MKL reaches its peak only on large matrices (on the quiet
# 2-core Xeon of BENCHMARKS.md, ~160 GFLOP/s at 1024² against ~260 at 3072²), and an MFU
# against a small-matrix "peak" reads high (68% in the progress bar for a run at ~41%).
PEAK_SIZES = {"fp32": (2048, 3072), "bf16": (1024, 2048)}


def measure_matmul_peak(dtype: str = "fp32", sizes: tuple[int, ...] | None = None,
                        seconds: float = 0.6) -> float:
    """Best FLOP/s of square ``torch.mm`` over ``sizes``, about ``seconds`` of timed work.

    Each size gets one untimed warm-up and then ``seconds / len(sizes)`` of timed products
    (at least one); with the machine possibly shared, the best sample is the peak.
    """
    import torch

    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    sizes = sizes or peak_sizes(dtype)
    best = 0.0
    for n in sizes:
        # the values do not change MKL's speed; filling is 10× cheaper than randn at 3072²
        a, b = torch.full((n, n), 0.5, dtype=tdtype), torch.full((n, n), 0.25, dtype=tdtype)
        c = torch.empty(n, n, dtype=tdtype)
        torch.mm(a, b, out=c)
        start = time.perf_counter()
        while True:
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            now = time.perf_counter()
            best = max(best, 2 * n**3 / (now - t))
            if now - start >= seconds / len(sizes):
                break
    return best


def _cpuinfo(field: str) -> str:
    """The first ``field`` line of /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((x for x in f if x.split(":")[0].strip() == field), "")
    except OSError:
        return ""
    return line.partition(":")[2].strip()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    flags = _cpuinfo("flags").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_model() -> str:
    """The CPU's model name, for benchmark output."""
    import platform

    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def peak_sizes(dtype: str) -> tuple[int, ...]:
    """Square sizes the CPU peak of ``dtype`` is measured at."""
    if dtype == "bf16" and not cpu_has_native_bf16():
        # emulated bf16 runs near 1 GFLOP/s: one 2048² product would take a minute, and small
        # products reach the same rate
        return (256, 512)
    return PEAK_SIZES[dtype]


def cpu_peak(dtype: str = "fp32") -> float:
    """This CPU's measured matmul peak for ``dtype``: once per process, and kept in
    :func:`backlm.paths.peak_cache_file` for :data:`PEAK_CACHE_SECONDS`, keyed by CPU model,
    flags, thread count and torch version (``BACKLM_MEASURE_PEAK=1`` measures anew)."""
    if dtype not in _CPU_PEAK:
        _CPU_PEAK[dtype], _CPU_PEAK_SOURCE[dtype] = _stored_or_measured_peak(dtype)
        if "(kept from" in _CPU_PEAK_SOURCE[dtype]:
            _CPU_PEAK_KEPT.add(dtype)
    return _CPU_PEAK[dtype]


def checked_peak(info: DeviceInfo, achieved: float) -> DeviceInfo:
    """``info``, or, when a run reached ``achieved`` FLOP/s per process above a CPU peak kept
    from an earlier run (kept from a busy moment), ``info`` with the peak measured again; the
    new figure replaces the kept one in this process and in the file."""
    import dataclasses

    dtype = info.dtype
    if info.is_cuda or dtype not in _CPU_PEAK_KEPT or not achieved > info.peak_flops > 0:
        return info
    _CPU_PEAK_KEPT.discard(dtype)
    _CPU_PEAK[dtype], _ = _stored_or_measured_peak(dtype, force=True)
    _CPU_PEAK_SOURCE[dtype] = (f"measured matmul (again: {info.peak_flops / 1e9:.0f} GFLOP/s from "
                               f"an earlier run was below this run's {achieved / 1e9:.0f})")
    return dataclasses.replace(info, peak_flops=_CPU_PEAK[dtype], peak_source=_CPU_PEAK_SOURCE[dtype])


def _stored_or_measured_peak(dtype: str, force: bool = False) -> tuple[float, str]:
    import hashlib

    import torch

    from backlm import atomic
    from backlm.paths import peak_cache_file

    flags = hashlib.sha256(_cpuinfo("flags").encode()).hexdigest()[:12]
    key = f"{cpu_model()}|flags {flags}|{torch.get_num_threads()} threads|torch {torch.__version__}|{dtype}"
    path = peak_cache_file()
    try:
        stored = json.loads(path.read_text())
        stored = stored if isinstance(stored, dict) else {}
    except (OSError, ValueError):
        stored = {}
    entry = stored.get(key)
    now = time.time()
    force = force or os.environ.get("BACKLM_MEASURE_PEAK") == "1"
    if (not force and isinstance(entry, dict)
            and isinstance(entry.get("flops"), (int, float)) and entry["flops"] > 0
            and isinstance(entry.get("at"), (int, float)) and 0 <= now - entry["at"] < PEAK_CACHE_SECONDS):
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry["at"]))
        return float(entry["flops"]), f"measured matmul (kept from {when})"
    peak = measure_matmul_peak(dtype)
    stored[key] = {"flops": peak, "at": now}
    try:  # a read-only home only costs the next run its measurement
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, stored)
    except OSError:
        pass
    return peak, "measured matmul"


def process_start() -> float:
    """Wall-clock time this process started (from /proc on Linux), else now.

    Time to the first training step is measured from here, so interpreter start-up and
    imports count, as they do for a user waiting on the command.
    """
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def describe(info: DeviceInfo) -> str:
    """One line for logs and metadata."""
    peak = f"{info.peak_flops / 1e12:.2f} TFLOP/s" if info.peak_flops else "unknown peak"
    return json.dumps({"device": info.device, "name": info.name, "dtype": info.dtype,
                       "dtype_reason": info.dtype_reason, "peak": peak,
                       "peak_source": info.peak_source})


def precision_line(info: DeviceInfo) -> str:
    """The run's precision and why, for the start of training: ``bf16 (auto: native AMX)``."""
    return f"{info.name} · {info.dtype} ({info.dtype_reason})" if info.dtype_reason else (
        f"{info.name} · {info.dtype}")


def available_memory(device: str) -> int | None:
    """Bytes a run can still allocate on ``device`` (``cpu``, ``cuda`` or ``cuda:N``), or None
    when that cannot be known here.

    CPU: ``MemAvailable`` of /proc/meminfo, capped by the cgroup's memory limit when a
    container sets one; CUDA: the driver's free memory on the device.
    """
    if device == "cpu":
        free = _meminfo_available()
        limit = _cgroup_headroom()
        return free if limit is None else limit if free is None else min(free, limit)
    if device == "cuda" or device.startswith("cuda:"):
        import torch

        if not torch.cuda.is_available():
            return None
        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, ValueError, AssertionError):
            return None
    return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            line = next((x for x in f if x.startswith("MemAvailable:")), "")
        return int(line.split()[1]) * 1024 if line else None
    except (OSError, ValueError, IndexError):
        return None


def _cgroup_headroom() -> int | None:
    # cgroup v2, then v1: a container's limit less its usage, where usage counts page cache
    # the kernel would drop first (inactive files) as free; "max" or a huge v1 value: no limit
    for folder, limit_name, usage_name, cache_key in (
        ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
         "total_inactive_file"),
    ):
        try:
            with open(f"{folder}/{limit_name}") as f:
                text = f.read().strip()
            with open(f"{folder}/{usage_name}") as f:
                usage = int(f.read().strip())
            limit = 2**63 if text == "max" else int(text)
        except (OSError, ValueError):
            continue
        if limit >= 2**60:
            return None
        try:
            with open(f"{folder}/memory.stat") as f:
                stat = dict(line.split()[:2] for line in f if line.strip())
            usage -= min(usage, int(stat.get(cache_key, 0)))
        except (OSError, ValueError):
            pass
        return max(0, limit - usage)
    return None
