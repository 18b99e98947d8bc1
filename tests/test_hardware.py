"""Devices, peaks and the process clock behind MFU and time-to-first-step."""

from __future__ import annotations

import io
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from backlm import hardware
from backlm.errors import UserError


def test_matmul_peak_is_a_plausible_rate():
    t = time.perf_counter()
    peak = hardware.measure_matmul_peak("fp32", sizes=(64, 128), seconds=0.05)
    assert math.isfinite(peak) and 1e6 < peak < 1e15
    assert time.perf_counter() - t < 5


def test_cpu_peak_is_measured_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "_CPU_PEAK", {})
    monkeypatch.setattr(hardware, "measure_matmul_peak", lambda dtype: calls.append(dtype) or 1e11)
    monkeypatch.setenv("BACKLM_MEASURE_PEAK", "1")
    assert hardware.cpu_peak("fp32") == hardware.cpu_peak("fp32") == 1e11
    hardware.cpu_peak("bf16")
    assert calls == ["fp32", "bf16"]


def test_cpu_peak_is_kept_between_processes_for_a_day(monkeypatch, tmp_path):
    from backlm import paths

    cache = tmp_path / "home" / "cpu_peak.json"
    monkeypatch.setattr(paths, "peak_cache_file", lambda: cache)
    calls = []
    monkeypatch.setattr(hardware, "measure_matmul_peak", lambda dtype: calls.append(dtype) or 3e11)

    def fresh_process(dtype="fp32"):
        monkeypatch.setattr(hardware, "_CPU_PEAK", {})
        monkeypatch.setattr(hardware, "_CPU_PEAK_SOURCE", {})
        monkeypatch.setattr(hardware, "_CPU_PEAK_KEPT", set())
        return hardware.cpu_peak(dtype), hardware._CPU_PEAK_SOURCE[dtype]

    assert fresh_process() == (3e11, "measured matmul")
    assert fresh_process()[0] == 3e11 and fresh_process()[1].startswith("measured matmul (kept from ")
    assert calls == ["fp32"]
    assert fresh_process("bf16")[1] == "measured matmul"  # another dtype is another key
    # a day later, another thread count, or asked to: measured again
    stored = json.loads(cache.read_text())
    for entry in stored.values():
        entry["at"] -= hardware.PEAK_CACHE_SECONDS + 1
    cache.write_text(json.dumps(stored))
    assert fresh_process()[1] == "measured matmul"
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, old - 1) if old > 1 else 2)
    try:
        assert fresh_process()[1] == "measured matmul"
    finally:
        torch.set_num_threads(old)
    monkeypatch.setenv("BACKLM_MEASURE_PEAK", "1")
    assert fresh_process()[1] == "measured matmul"
    assert calls == ["fp32", "bf16", "fp32", "fp32", "fp32"]


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", '{"x": 1}',
                                     '{"k": {"flops": "fast", "at": 0}}'])
def test_a_damaged_peak_cache_is_measured_over(monkeypatch, tmp_path, content):
    from backlm import paths

    cache = tmp_path / "cpu_peak.json"
    cache.write_text(content)
    monkeypatch.setattr(paths, "peak_cache_file", lambda: cache)
    monkeypatch.setattr(hardware, "_CPU_PEAK", {})
    monkeypatch.setattr(hardware, "_CPU_PEAK_SOURCE", {})
    monkeypatch.setattr(hardware, "_CPU_PEAK_KEPT", set())
    monkeypatch.setattr(hardware, "measure_matmul_peak", lambda dtype: 5e10)
    assert hardware.cpu_peak("fp32") == 5e10
    assert len(json.loads(cache.read_text())) >= 1


def test_an_unwritable_peak_cache_only_costs_a_measurement(monkeypatch, tmp_path):
    from backlm import paths

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(paths, "peak_cache_file", lambda: blocker / "sub" / "cpu_peak.json")
    monkeypatch.setattr(hardware, "_CPU_PEAK", {})
    monkeypatch.setattr(hardware, "measure_matmul_peak", lambda dtype: 5e10)
    assert hardware.cpu_peak("fp32") == 5e10


def test_process_start_is_before_now():
    started = hardware.process_start()
    assert time.time() - 7 * 24 * 3600 < started <= time.time()


@pytest.mark.parametrize(("name", "dtype", "peak"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA A100-SXM4-80GB", "fp32", 312e12 / 16),
    ("Some Future GPU", "bf16", 0.0),
])
def test_gpu_peaks_by_name(name, dtype, peak):
    assert hardware.gpu_peak(name, dtype)[0] == peak


def test_bad_devices_are_user_errors(monkeypatch):
    with pytest.raises(UserError, match="unknown device"):
        hardware.resolve_device("tpu", "auto")
    with pytest.raises(UserError, match="unknown dtype"):
        hardware.resolve_device("cpu", "fp8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        hardware.resolve_device("cuda", "auto")


def test_cpu_defaults_to_fp32_with_a_measured_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(hardware, "cpu_peak", lambda dtype: 2e11)
    info = hardware.resolve_device("auto", "auto")
    assert (info.device, info.dtype, info.peak_flops, info.is_cuda) == ("cpu", "fp32", 2e11, False)
    assert info.dtype_reason == "auto: no native bf16 on this CPU"


@pytest.mark.parametrize(("flags", "reason"), [
    ("fpu avx512f avx512_bf16", "auto: native AVX512-BF16"),
    ("fpu avx512_bf16 amx_bf16 amx_tile", "auto: native AMX"),
])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch, flags, reason):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "_cpuinfo", lambda field: flags if field == "flags" else "")
    peaks = []
    monkeypatch.setattr(hardware, "cpu_peak", lambda dtype: peaks.append(dtype) or 4e11)
    info = hardware.resolve_device("cpu", "auto")
    assert (info.dtype, info.dtype_reason, peaks) == ("bf16", reason, ["bf16"])
    assert hardware.precision_line(info) == f"cpu · bf16 ({reason})"
    # asked for explicitly, fp32 stays fp32 on such a CPU
    fixed = hardware.resolve_device("cpu", "fp32")
    assert (fixed.dtype, fixed.dtype_reason) == ("fp32", "asked for")


def test_auto_follows_native_bf16_on_cpu_and_is_bf16_on_cuda(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.auto_dtype("cpu")[0] == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.auto_dtype("cpu")[0] == "fp32"
    assert hardware.auto_dtype("cuda:0") == ("bf16", "auto: CUDA")


def test_no_preset_pins_fp32():
    """cpu-tiny leaves the precision to the CPU; the GPU presets ask for bf16."""
    import yaml

    from backlm.config import preset_path

    for name in ("cpu-tiny", "d12", "d20", "d26"):
        dtype = yaml.safe_load(preset_path(name).read_text())["train"]["dtype"]
        assert dtype == ("auto" if name == "cpu-tiny" else "bf16"), name


def test_longest_gpu_name_wins_and_describe_is_one_json_line():
    assert hardware.gpu_peak("NVIDIA H100 NVL", "bf16") == (835e12, "datasheet (H100 NVL)")
    assert hardware.gpu_peak("NVIDIA H200", "fp32") == (989e12 / 16, "datasheet (H200)")
    gpu = hardware.DeviceInfo("cuda:1", "bf16", "NVIDIA H100", 989e12, "datasheet (H100)",
                              "auto: CUDA")
    line = hardware.describe(gpu)
    assert "\n" not in line and gpu.is_cuda
    assert json.loads(line) == {"device": "cuda:1", "name": "NVIDIA H100", "dtype": "bf16",
                                "dtype_reason": "auto: CUDA", "peak": "989.00 TFLOP/s",
                                "peak_source": "datasheet (H100)"}
    cpu = hardware.DeviceInfo("cpu", "fp32", "cpu", 0.0, "measured matmul")
    assert json.loads(hardware.describe(cpu))["peak"] == "unknown peak" and not cpu.is_cuda


def test_available_memory(monkeypatch, tmp_path):
    free = hardware.available_memory("cpu")
    if Path("/proc/meminfo").exists():
        assert free is not None and 0 < free <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert hardware.available_memory("tpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.available_memory("cuda") is None and hardware.available_memory("cuda:1") is None


def test_a_container_limit_caps_available_memory(monkeypatch):
    files = {"/sys/fs/cgroup/memory.max": "1073741824\n",
             "/sys/fs/cgroup/memory.current": "402653184\n",
             "/sys/fs/cgroup/memory.stat": "anon 268435456\ninactive_file 134217728\n",
             "/proc/meminfo": "MemTotal: 99999999 kB\nMemAvailable: 8388608 kB\n"}
    real_open = open

    def fake_open(path, *args, **kwargs):
        if str(path) in files:
            return io.StringIO(files[str(path)])
        if str(path).startswith("/sys/fs/cgroup"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    # the limit less the usage, less the page cache the kernel would drop first
    assert hardware.available_memory("cpu") == 2**30 - (384 - 128) * 2**20
    files["/sys/fs/cgroup/memory.max"] = "max\n"
    assert hardware.available_memory("cpu") == 8 * 2**30  # no limit: MemAvailable


# Documented in resolve_device's docstring and BENCHMARKS.md ("Precision by capability").
BF16_STEPS, BF16_TOLERANCE = 30, 0.05


@pytest.mark.slow
def test_bf16_training_follows_fp32(home):
    """The same tiny model, data and seed trained BF16_STEPS steps in fp32 and under bf16
    autocast: the final training losses agree within BF16_TOLERANCE nats (bf16 is emulated on
    CPUs without native bf16, hence tiny), both far below the start."""
    from tests.helpers import losses, run_cli, tiny_args

    out = {}
    for dtype in ("fp32", "bf16"):
        res = run_cli(tiny_args("--id", dtype, "--set", f"train.dtype={dtype}",
                                "--set", f"train.eval_every={BF16_STEPS}",
                                "--set", f"train.save_every={BF16_STEPS}", steps=BF16_STEPS))
        assert res.exit_code == 0, res.output
        assert f"precision: cpu · {dtype} (asked for)" in res.output
        out[dtype] = losses(home / "exps" / dtype)
    first, last = out["fp32"][1], out["fp32"][BF16_STEPS]
    assert last < first - 1.0  # it learned, so agreeing is not two flat lines
    assert abs(out["bf16"][BF16_STEPS] - last) < BF16_TOLERANCE, (out["fp32"], out["bf16"])
