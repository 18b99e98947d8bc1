"""GPU check: what the CPU machines cannot measure, in one call on a lent GPU machine.

Usage (BENCHMARKS.md, "GPU check")::

    bash benchmarks/gpu_check.sh --prepare   # here: wheels into .whl/, data into .gpu_check/
    bash benchmarks/gpu_check.sh             # there: install, measure, write gpu_check.json
    python benchmarks/gpu_check.py run --dry-run [--smoke --device cpu]   # print the plan

The device step installs backlm with ``--no-deps`` (plus the carried wheels the machine lacks)
and then measures, each step on its own so that one failure is recorded and the rest go on:
the bf16 matmul peak; d12 and d20 bf16 training through ``backlm train`` (tok/s, MFU against
the measured and the datasheet peak); 5CAT and ``eval`` of the d12 model on the GPU; KV-cache
decode speed; ``--nproc-per-node 1`` (torchrun with one process); exact resume after a
SIGKILL. The JSON (``$OUT/gpu_check.json``, else under ``--workdir``) is rewritten after every
step, so a run cut short still reports what it finished. ``--smoke --device cpu`` runs the
same steps with a tiny model, for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".whl"
CHECK_DIR = ROOT / ".gpu_check"
DATASET = "gpucheck-pydocs"  # not "pydocs": a missing folder must fail, not be rebuilt there
VOCAB_SIZE = 8192
SITE = Path("/tmp/site")  # where the device step installs backlm and the carried wheels
BUDGET_S = 450  # the whole device step, installs included, must end inside 8 minutes
RESERVE_S = 15  # kept back from every subprocess so the JSON is always written

# The device image's Python packages, copied from /work/.library/device/KINDS.md ("Python
# packages already there", nvidia-h200, read 2026-11-17). A runtime dependency of backlm must be
# here, in CARRIED_WHEELS or in OPTIONAL_AT_RUNTIME (tests/benchmarks/test_gpu_check.py).
PREINSTALLED = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# Runtime dependencies the device lacks, carried as wheels (fetched here by --prepare). The
# tokenizer travels ready-made, so rustbpe is not imported there; it is carried so that the
# install is whole.
CARRIED_WHEELS = {"rustbpe": "0.1.0"}
# Runtime dependencies a run does without, and why.
OPTIONAL_AT_RUNTIME = {
    "wandb": "every run passes --wandb off, and backlm skips wandb when it is not installed",
    "fastapi": "only `backlm serve` imports it (inside the command); the check does not serve",
    "uvicorn": "only `backlm serve` imports it (inside the command); the check does not serve",
}
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64")
STEPS = ("peak", "d12", "fivecat", "eval", "decode", "torchrun", "resume", "d20")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return name.lower().replace("_", "-").replace(".", "-")


# --- what runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSpec:
    """One ``backlm train`` run: a preset plus overrides, and how to read its metrics."""

    preset: str  # a preset shipped in the package (backlm/configs/NAME.yaml)
    steps: int
    sets: tuple[str, ...]
    direction: str
    warmup: int  # leading steps left out of the medians (compile, allocator warm-up)
    min_s: int  # not started with less time left than this


@dataclass(frozen=True)
class Profile:
    """The shapes and budgets of one kind of run: the real GPU check or the CPU smoke test."""

    device: str
    d12: TrainSpec
    d20: TrainSpec
    small: TrainSpec  # torchrun and resume: compile off, so the time goes to the checks
    kill_at: int  # the resume check's SIGKILL, after the checkpoint at small's save_every
    lm_tokens: int
    decode_tokens: int
    budget_s: int


def profile(smoke: bool, device: str, vocab: int) -> Profile:
    """The GPU check's plan (``smoke``: the same steps with a tiny CPU-sized model)."""
    data = (f"data.dataset={DATASET}", f"model.vocab_size={vocab}")

    def cadence(steps: int, save: int, eval_tokens: int) -> tuple[str, ...]:
        return (f"train.eval_every={steps}", f"train.save_every={save}",
                f"train.eval_tokens={eval_tokens}")

    # Throughput runs train backward, the project's main case; the torchrun and resume runs
    # bidirectionally, whose per-document order draws are the hardest state to resume exactly.
    if not smoke:
        # Batch rows and sequence as in the presets (32 × 2048); fewer micro-steps per step
        # than their 524,288-token batches so that enough steps fit in the time. The loader
        # tokenizes inside the training loop: 8 of the 16 cores, not the default 2, so that
        # the figure is the GPU's.
        gpu = data + ("data.tokenizer_threads=8",)
        return Profile(
            device=device,
            d12=TrainSpec("d12", 40, gpu + cadence(40, 40, 65536)
                          + ("train.total_batch_tokens=262144",), "backward", 5, 120),
            d20=TrainSpec("d20", 25, gpu + cadence(25, 25, 65536)
                          + ("train.total_batch_tokens=131072",), "backward", 5, 150),
            small=TrainSpec("d12", 20, gpu + cadence(20, 10, 65536)
                            + ("model.depth=4", "train.compile=false",
                               "train.total_batch_tokens=65536"), "bidirectional", 2, 45),
            kill_at=15, lm_tokens=65536, decode_tokens=256, budget_s=BUDGET_S)
    tiny = data + ("train.dtype=fp32", "train.compile=false", "model.depth=2",
                   "model.head_dim=64", "model.seq_len=64", "train.device_batch_size=4",
                   "data.tokenizer_threads=1")
    return Profile(
        device=device,
        d12=TrainSpec("d12", 6, tiny + cadence(6, 6, 1024)
                      + ("train.total_batch_tokens=512",), "backward", 2, 0),
        d20=TrainSpec("d20", 4, tiny + cadence(4, 4, 1024)
                      + ("train.total_batch_tokens=256",), "backward", 1, 0),
        small=TrainSpec("d12", 6, tiny + cadence(6, 3, 1024)
                        + ("train.total_batch_tokens=256",), "bidirectional", 1, 0),
        kill_at=4, lm_tokens=1024, decode_tokens=32, budget_s=1200)


def backlm_argv(*args: str) -> list[str]:
    """The ``backlm`` command line as run here (the module, so no console script is needed)."""
    return [sys.executable, "-m", "backlm.cli", *args]


def train_argv(spec: TrainSpec, exp_id: str, experiments: Path, device: str,
               nproc: int | None = None) -> list[str]:
    """``backlm train`` for ``spec``; ``nproc`` adds an explicit ``--nproc-per-node``."""
    argv = backlm_argv("train", "--config", spec.preset, "--id", exp_id,
                       "--direction", spec.direction, "--max-steps", str(spec.steps),
                       "--device", device, "--wandb", "off",
                       "--experiments-dir", str(experiments))
    for item in spec.sets:
        argv += ["--set", item]
    if nproc is not None:
        argv += ["--nproc-per-node", str(nproc)]
    return argv


def resume_argv(exp_id: str, experiments: Path) -> list[str]:
    """``backlm train --resume`` of an experiment."""
    return backlm_argv("train", "--resume", exp_id, "--experiments-dir", str(experiments))


def fivecat_argv(exp_id: str, experiments: Path, device: str) -> list[str]:
    """``backlm 5cat`` on ``device``, with the packaged thresholds."""
    return backlm_argv("5cat", exp_id, "--device", device,
                       "--experiments-dir", str(experiments))


def eval_argv(exp_id: str, experiments: Path, device: str, lm_tokens: int) -> list[str]:
    """``backlm eval --tasks lm`` on ``device``."""
    return backlm_argv("eval", exp_id, "--device", device, "--tasks", "lm",
                       "--lm-tokens", str(lm_tokens), "--experiments-dir", str(experiments))


def download_argv(name: str, version: str, dest: Path) -> list[str]:
    """``pip download`` of one wheel for the device (CPython 3.12, x86-64 manylinux)."""
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp"]
    for platform in DEVICE_PLATFORMS:
        argv += ["--platform", platform]
    return [*argv, "-d", str(dest), f"{name}=={version}"]


def wheel_name(path: Path) -> str:
    """The canonical distribution name of a wheel file."""
    return canonical(path.name.split("-")[0])


def missing_wheels(wheel_dir: Path, installed: Callable[[str], bool]) -> list[Path]:
    """The carried wheels whose distribution ``installed`` says is absent."""
    return [p for p in sorted(wheel_dir.glob("*.whl")) if not installed(wheel_name(p))]


def pip_install_argv(targets: list[str], site: Path, build: bool) -> list[str]:
    """Offline ``pip install --no-deps`` into ``site`` (``build``: a source tree, backlm)."""
    extra = ["--no-build-isolation"] if build else ["--no-compile"]
    return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
            "--no-cache-dir", "--upgrade", *extra, "--target", str(site), *targets]


# --- reading results -------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or torn."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a torn last line, as after a SIGKILL, is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-step records (evaluation-only records have no ``dt``)."""
    return [r for r in rows if "dt" in r and "loss" in r]


def summarize_steps(rows: list[dict[str, Any]], warmup: int, flops_per_token: float | None,
                    peaks: dict[str, float | None]) -> dict[str, Any]:
    """Median tok/s and step time after ``warmup`` steps, and MFU against each peak."""
    steps = step_rows(rows)
    if not steps:
        return {"steps_logged": 0}
    timed = steps[warmup:] or steps[-1:]
    tps = statistics.median(r["tokens_per_sec"] for r in timed)
    out: dict[str, Any] = {
        "steps_logged": len(steps), "steps_timed": len(timed), "tok_per_s": round(tps, 1),
        "step_s": round(statistics.median(r["dt"] for r in timed), 4),
        "first_step_s": round(steps[0]["dt"], 2),  # compile and warm-up land here
        "backlm_mfu": round(statistics.median(r.get("mfu", 0.0) for r in timed), 4),
        "final_loss": steps[-1]["loss"], "flops_per_token": flops_per_token,
    }
    for name, peak in peaks.items():
        ok = peak and flops_per_token
        out[f"mfu_vs_{name}"] = round(flops_per_token * tps / peak, 4) if ok else None
    return out


def compare_losses(ref: list[dict[str, Any]], other: list[dict[str, Any]],
                   resumed_from: int) -> dict[str, Any]:
    """Per-step training losses of two runs: largest differences before and after a resume."""
    a = {r["step"]: r["loss"] for r in step_rows(ref)}
    b = {r["step"]: r["loss"] for r in step_rows(other)}
    common = sorted(set(a) & set(b))

    def worst(steps: list[int]) -> float | None:
        return max((abs(a[s] - b[s]) for s in steps), default=None)

    out: dict[str, Any] = {
        "steps_compared": len(common), "steps_missing": sorted(set(a) ^ set(b)),
        "resumed_from_step": resumed_from,
        "bit_identical": bool(common) and all(a[s] == b[s] for s in common) and set(a) == set(b),
        "max_abs_dloss": worst(common),
        "max_abs_dloss_before_resume": worst([s for s in common if s <= resumed_from]),
        "max_abs_dloss_after_resume": worst([s for s in common if s > resumed_from]),
    }
    finals = [[r.get("val_loss") for r in rows if "val_loss" in r] for rows in (ref, other)]
    if all(finals):
        out["final_val_loss"] = [finals[0][-1], finals[1][-1]]
    return out


_GRAPH_BREAK = re.compile(r"Graph break .*?in user code at (\S+)")


def compile_log(output: str) -> dict[str, Any]:
    """Where torch.compile broke the graph, and how often it recompiled (``TORCH_LOGS``)."""
    where = Counter(_in_package(m) for m in _GRAPH_BREAK.findall(output))
    return {"graph_breaks": dict(where.most_common()),
            "recompiles": output.count("Recompiling function")}


def _in_package(path: str) -> str:
    """``/x/backlm/model/gpt.py:9`` as ``backlm/model/gpt.py:9`` (the path inside the repo)."""
    parts = Path(path).parts
    start = max((i for i, p in enumerate(parts) if p == "backlm"), default=len(parts) - 2)
    return "/".join(parts[start:])


def flops_per_token(exp_path: Path) -> float | None:
    """backlm's FLOPs per token for an experiment's model (built on the meta device)."""
    import torch

    from backlm.config import RunConfig, load_config
    from backlm.model.gpt import GPT

    path = exp_path / "config.yaml"
    if not path.is_file():
        return None
    cfg = load_config(RunConfig, preset=str(path))
    with torch.device("meta"):
        return float(GPT(cfg.model).flops_per_token())


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Proc:
    """A finished subprocess."""

    rc: int | None
    seconds: float
    pid: int
    timed_out: bool
    output: str  # what it printed (stdout and stderr)

    @property
    def tail(self) -> str:
        return self.output[-600:]


class Check:
    """Runs the steps against a deadline, logs every subprocess, keeps the JSON current."""

    def __init__(self, args: argparse.Namespace, plan: Profile) -> None:
        self.args, self.plan = args, plan
        self.dry_run = args.dry_run
        self.start = time.time()
        self.deadline = self.start + (args.budget_s or plan.budget_s)
        self.work = Path(args.workdir)
        self.experiments = self.work / "experiments"
        self.out = Path(args.out or self.work / "out")
        self.env = dict(os.environ, BACKLM_HOME=str(Path(args.home)),
                        BACKLM_EXPERIMENTS=str(self.experiments), WANDB_MODE="disabled",
                        PYTHONUNBUFFERED="1")
        self.results: dict[str, Any] = {
            "schema": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "profile": "smoke" if args.smoke else "gpu", "budget_s": args.budget_s
            or plan.budget_s, "plan": asdict(plan), "steps": {},
        }
        self.log = None
        if not self.dry_run:
            shutil.rmtree(self.experiments, ignore_errors=True)  # fixed ids: start afresh
            self.experiments.mkdir(parents=True)
            self.out.mkdir(parents=True, exist_ok=True)
            self.log = open(self.out / "gpu_check.log", "w", encoding="utf-8")

    def left(self) -> float:
        return self.deadline - time.time()

    def say(self, text: str) -> None:
        print(text, flush=True)
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()

    def save(self) -> None:
        if self.dry_run:
            return
        self.results["wall_s"] = round(time.time() - self.start, 1)
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.out / "gpu_check.json")

    def call(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Run one command (its output to the log), killed when the deadline comes."""
        shown = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        self.say(f"$ {shown + ' ' if shown else ''}{' '.join(argv)}")
        if self.dry_run:
            return Proc(0, 0.0, -1, False, "")
        assert self.log is not None
        self.log.write(f"--- {label} ---\n")
        self.log.flush()
        start, t = self.log.tell(), time.time()
        # its own session: on timeout the whole group goes (torchrun and its workers too)
        proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.work,
                                env={**self.env, **(env or {})}, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, self.left() - RESERVE_S))
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        seconds = round(time.time() - t, 1)
        with open(self.out / "gpu_check.log", encoding="utf-8", errors="replace") as f:
            f.seek(start)
            output = f.read()
        return Proc(proc.returncode, seconds, proc.pid, timed_out, output)

    def step(self, name: str, fn: Callable[[], dict[str, Any]], min_s: int) -> None:
        """Run one measurement; an exception or a lack of time is recorded, not raised."""
        if self.args.only and name not in self.args.only:
            return
        self.say(f"\n== {name} ({self.left():.0f} s left)")
        if self.dry_run:  # the commands are printed as the step calls them
            fn()
            return
        if self.left() < min_s:
            res: dict[str, Any] = {"skipped": f"{self.left():.0f} s left, needs ~{min_s} s"}
        else:
            t = time.time()
            try:
                res = fn()
            except Exception as exc:  # one broken measurement must not stop the others
                res = {"error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-1500:]}
            res["step_wall_s"] = round(time.time() - t, 1)
        self.results["steps"][name] = res
        self.save()
        if "error" in res or "skipped" in res:
            self.say(f"   {name}: {res.get('error') or res.get('skipped')}")


def train_run(check: Check, spec: TrainSpec, exp_id: str, peaks: dict[str, float | None],
              nproc: int | None = None, env: dict[str, str] | None = None,
              argv: list[str] | None = None, expect_kill: bool = False) -> dict[str, Any]:
    """One ``backlm train`` subprocess and the figures its experiment folder holds."""
    argv = argv or train_argv(spec, exp_id, check.experiments, check.plan.device, nproc)
    proc = check.call(exp_id, argv, env)
    exp = check.experiments / exp_id
    meta = read_json(exp / "metadata.json")
    res: dict[str, Any] = {
        "command": argv, "env": env or {}, "rc": proc.rc, "wall_s": proc.seconds,
        "launcher_pid": proc.pid, "status": meta.get("status"), "device": meta.get("device"),
        "dtype": meta.get("dtype"), "world_size": meta.get("world_size"),
        "trainer_pid": meta.get("pid"), "startup": meta.get("startup"),
    }
    if check.dry_run:
        return res
    fpt = None
    with contextlib.suppress(Exception):  # figures without FLOPs beat no figures
        fpt = flops_per_token(exp)
    res.update(summarize_steps(read_jsonl(exp / "metrics.jsonl"), spec.warmup, fpt, peaks))
    if "TORCH_LOGS" in (env or {}):
        res["compile_log"] = compile_log(proc.output)
    if proc.timed_out:
        res["error"] = "out of time: killed (figures are from the steps it finished)"
    elif proc.rc != 0 and not expect_kill:
        res["error"] = f"exit code {proc.rc}: {proc.tail}"
    return res


def d12_model(check: Check) -> str:
    """The d12 experiment the later steps use: compiled, else its eager fallback."""
    for exp_id in ("gc-d12", "gc-d12-eager"):
        if check.dry_run or any((check.experiments / exp_id / "checkpoints").glob("step_*")):
            return exp_id
    raise RuntimeError("no d12 checkpoint (its training failed or was skipped)")


def measure_peak(device: str) -> dict[str, Any]:
    """bf16 ``torch.mm`` FLOP/s (8192³, CUDA-event timed) and the datasheet peak."""
    import torch

    from backlm.hardware import gpu_peak, measure_matmul_peak

    if device == "cpu":  # the smoke test: backlm's own CPU measurement, small and short
        return {"measured_flops": measure_matmul_peak("fp32", (512,), 0.2), "dtype": "fp32",
                "datasheet_flops": None, "datasheet_source": "none for a CPU"}
    n, reps = 8192, 20
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        c = a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        c = a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b, c
    torch.cuda.empty_cache()
    flops = 2 * n**3
    name = torch.cuda.get_device_name(device)
    datasheet, source = gpu_peak(name, "bf16")
    return {"measured_flops": flops * reps / sum(times), "best_flops": flops / min(times),
            "dtype": "bf16", "shape": [n, n, n], "reps": reps, "random_data": True,
            "datasheet_flops": datasheet or None, "datasheet_source": source}


def measure_decode(exp_path: Path, device: str, tokens: int) -> dict[str, Any]:
    """Greedy KV-cache generation from BOS, batch 1: tok/s as loaded, and under bf16 autocast."""
    import torch

    from backlm.experiment.folder import Experiment
    from backlm.experiment.loading import load_model

    lm = load_model(Experiment(exp_path), device=device)
    bos = [lm.tokenizer.special_ids.bos]
    res: dict[str, Any] = {"experiment": exp_path.name, "step": lm.step, "batch": 1,
                           "new_tokens": tokens, "weights": str(next(lm.model.parameters()).dtype)}
    for label, dtype in (("as_loaded", None), ("bf16_autocast", torch.bfloat16)):
        ctx = (torch.autocast(lm.device.type, dtype=dtype) if dtype
               else contextlib.nullcontext())
        with ctx:
            list(lm.model.generate(bos, 8, temperature=0))  # warm-up: kernels, allocator
            t = time.perf_counter()
            out = list(lm.model.generate(bos, tokens, temperature=0))
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
        res[label] = {"tok_per_s": round(len(out) / dt, 1), "seconds": round(dt, 3)}
    del lm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def run_steps(check: Check) -> None:
    """Every measurement, in the order that keeps the most if time runs out."""
    plan, exps, dev = check.plan, check.experiments, check.plan.device
    peaks: dict[str, float | None] = {"measured": None, "datasheet": None}

    def peak() -> dict[str, Any]:
        if check.dry_run:
            return {"dry_run": "bf16 8192³ torch.mm, timed with CUDA events"}
        res = measure_peak(dev)
        peaks.update(measured=res["measured_flops"], datasheet=res["datasheet_flops"])
        return res

    def fivecat() -> dict[str, Any]:
        exp_id = d12_model(check)
        proc = check.call("5cat", fivecat_argv(exp_id, exps, dev))
        found = sorted((exps / exp_id / "evaluations").glob("*/fivecat/step_*.json"))
        res = read_json(found[-1]) if found else {}
        out = {"model": exp_id, "rc": proc.rc, "wall_s": proc.seconds, "passed": res.get("passed"),
               "gates_passed": res.get("gates_passed"), "seconds": res.get("seconds"),
               "result": res}
        if proc.rc not in (0, 1) or not res:  # 1 is a failed gate: a result, not an error
            out["error"] = f"exit code {proc.rc}: {proc.tail}"
        return out

    def evaluate() -> dict[str, Any]:
        exp_id = d12_model(check)
        proc = check.call("eval", eval_argv(exp_id, exps, dev, plan.lm_tokens))
        summaries = {str(p.relative_to(exps / exp_id)): read_json(p).get("summary")
                     for p in sorted((exps / exp_id / "evaluations").glob("*/*/lm.json"))}
        out = {"model": exp_id, "rc": proc.rc, "wall_s": proc.seconds, "results": summaries}
        if proc.rc != 0:
            out["error"] = f"exit code {proc.rc}: {proc.tail}"
        return out

    def decode() -> dict[str, Any]:
        exp_id = d12_model(check)
        if check.dry_run:
            return {"dry_run": f"load_model({exp_id}) and generate {plan.decode_tokens} tokens"}
        return measure_decode(exps / exp_id, dev, plan.decode_tokens)

    def torchrun() -> dict[str, Any]:
        res = train_run(check, plan.small, "gc-torchrun", peaks, nproc=1)
        # torchrun trains in a worker process: metadata.json then names another pid
        pids = (res["trainer_pid"], res["launcher_pid"])
        res["torchrun_used"] = None if None in pids else pids[0] != pids[1]
        res["expected"] = "an explicit --nproc-per-node spawns torchrun, world_size 1"
        return res

    check.step("peak", peak, 0)
    check.step("d12", lambda: compiled_run(check, plan.d12, "gc-d12", peaks), plan.d12.min_s)
    check.step("fivecat", fivecat, 20)
    check.step("eval", evaluate, 20)
    check.step("decode", decode, 15)
    check.step("torchrun", torchrun, plan.small.min_s)
    check.step("resume", lambda: resume_check(check, peaks), 2 * plan.small.min_s)
    check.step("d20", lambda: compiled_run(check, plan.d20, "gc-d20", peaks), plan.d20.min_s)


def compiled_run(check: Check, spec: TrainSpec, exp_id: str,
                 peaks: dict[str, float | None]) -> dict[str, Any]:
    """A throughput run; if it fails with torch.compile on, a shorter one without it."""
    res = train_run(check, spec, exp_id, peaks, env={"TORCH_LOGS": "graph_breaks,recompiles"})
    failed = "error" in res and not res["error"].startswith("out of time")
    if failed and "train.compile=false" not in spec.sets and check.left() > spec.min_s / 2:
        eager = TrainSpec(spec.preset, max(spec.warmup + 5, spec.steps // 2),
                          (*spec.sets, "train.compile=false"), spec.direction, 2, 0)
        res["eager_fallback"] = train_run(check, eager, f"{exp_id}-eager", peaks)
    return res


def resume_check(check: Check, peaks: dict[str, float | None]) -> dict[str, Any]:
    """A reference run, a run SIGKILLed after step kill_at, its resume: per-step losses."""
    plan, exps = check.plan, check.experiments
    ref = train_run(check, plan.small, "gc-resume-ref", peaks)
    env = {"BACKLM_KILL_AT_STEP": str(plan.kill_at)}
    killed = train_run(check, plan.small, "gc-resume", peaks, env=env, expect_kill=True)
    resumed = train_run(check, plan.small, "gc-resume", peaks,
                        argv=resume_argv("gc-resume", exps))
    res: dict[str, Any] = {"reference": ref, "killed": killed, "resumed": resumed,
                           "killed_by_sigkill": killed["rc"] == -signal.SIGKILL}
    if check.dry_run:
        return res
    save_every = next(int(s.split("=")[1]) for s in plan.small.sets
                      if s.startswith("train.save_every="))
    res["comparison"] = compare_losses(read_jsonl(exps / "gc-resume-ref" / "metrics.jsonl"),
                                       read_jsonl(exps / "gc-resume" / "metrics.jsonl"),
                                       plan.kill_at // save_every * save_every)
    for part in ("reference", "resumed"):
        if "error" in res[part]:
            res["error"] = f"{part} run: {res[part]['error']}"
    if not res["killed_by_sigkill"]:
        res["error"] = f"the killed run exited with {killed['rc']}, not by SIGKILL"
    return res


# --- install, environment, summary -----------------------------------------------------------


def install(check: Check) -> dict[str, Any]:
    """Carried wheels the machine lacks, then backlm itself, offline into SITE."""
    from importlib import metadata

    def installed(name: str) -> bool:
        try:
            metadata.version(name)
            return True
        except metadata.PackageNotFoundError:
            return False

    wheels = missing_wheels(WHEEL_DIR, installed)
    res: dict[str, Any] = {"site": str(SITE),
                           "wheels_carried": sorted(p.name for p in WHEEL_DIR.glob("*.whl")),
                           "wheels_installed": [p.name for p in wheels]}
    if wheels:
        proc = check.call("pip wheels", pip_install_argv([str(p) for p in wheels], SITE, False))
        res["wheels_rc"] = proc.rc
    # the C extension is optional: without a compiler pip still installs, with PyTorch ops
    proc = check.call("pip backlm", pip_install_argv([str(ROOT)], SITE, True))
    res.update(backlm_rc=proc.rc, backlm_s=proc.seconds)
    where = SITE
    if proc.rc != 0:
        res["error"] = f"pip install of backlm failed, measuring the source tree: {proc.tail}"
        where = ROOT
    if not check.dry_run:
        import importlib

        sys.path.insert(0, str(where))
        importlib.invalidate_caches()
        check.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(where), os.environ.get("PYTHONPATH", "")) if p)
    return res


def environment(device: str) -> dict[str, Any]:
    """The machine, the software and how backlm was installed."""
    import platform

    import torch

    import backlm
    from backlm.config import CONFIG_DIR
    from backlm.model.native import native_kernels

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cpus": os.cpu_count(), "gcc": shutil.which("gcc"),
        "backlm": str(Path(backlm.__file__).parent), "native_kernels": native_kernels(),
        # the presets ship as package data: an install without them cannot train d12
        "presets_installed": (CONFIG_DIR / "d12.yaml").is_file(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count())
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
            ).stdout.strip()
    return info


def _pct(x: float | None) -> str:
    return f"{x:.1%}" if isinstance(x, float) else "-"


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A few readable lines of the JSON's headline figures."""
    env, steps = results.get("environment", {}), results.get("steps", {})
    lines = [f"GPU check · {env.get('gpu', 'cpu')} · torch {env.get('torch')} · "
             f"{results.get('wall_s', 0):.0f} s · profile {results.get('profile')}"]
    peak = steps.get("peak", {})
    if "measured_flops" in peak:
        sheet = peak.get("datasheet_flops")
        lines.append(f"peak   {peak['dtype']} mm {peak['measured_flops'] / 1e12:.4g} TFLOP/s "
                     f"measured · {f'{sheet / 1e12:.0f}' if sheet else '-'} datasheet")
    for name in ("d12", "d20", "torchrun"):
        r = steps.get(name, {})
        if "tok_per_s" in r:
            lines.append(f"{name:<6} {r['tok_per_s']:,.0f} tok/s · MFU {_pct(r['mfu_vs_measured'])}"
                         f" of measured, {_pct(r['mfu_vs_datasheet'])} of datasheet · first "
                         f"step {r['first_step_s']} s · {r['steps_timed']} steps timed")
    if steps.get("fivecat", {}).get("gates_passed") is not None:
        f = steps["fivecat"]
        lines.append(f"5cat   {f['gates_passed']}/5 gates · gates {f['seconds']:.1f} s · "
                     f"command {f['wall_s']} s")
    if "wall_s" in steps.get("eval", {}):
        lines.append(f"eval   lm · {steps['eval']['wall_s']} s (command)")
    if "as_loaded" in steps.get("decode", {}):
        d = steps["decode"]
        lines.append(f"decode {d['as_loaded']['tok_per_s']} tok/s ({d['weights']}) · "
                     f"{d['bf16_autocast']['tok_per_s']} tok/s (bf16 autocast), batch 1")
    if "torchrun_used" in steps.get("torchrun", {}):
        t = steps["torchrun"]
        lines.append(f"torchrun used {t['torchrun_used']} · world_size {t['world_size']}")
    cmp_ = steps.get("resume", {}).get("comparison")
    if cmp_:
        lines.append(f"resume bit-identical {cmp_['bit_identical']} · max |Δloss| "
                     f"{cmp_['max_abs_dloss']} over {cmp_['steps_compared']} steps")
    for name, r in steps.items():
        if "error" in r or "skipped" in r:
            lines.append(f"{name:<6} {'ERROR' if 'error' in r else 'skipped'}: "
                         f"{str(r.get('error') or r.get('skipped')).splitlines()[0][:160]}")
    return lines


def dataset_vocab(home: Path) -> int | None:
    """Vocabulary of the carried dataset's tokenizer, or None when it was not prepared."""
    folder = home / "data" / DATASET / "tokenizer"
    # backlm_tokenizer.json since the rename; tokenizer.json in datasets prepared before it
    name = next((n for n in ("backlm_tokenizer.json", "tokenizer.json")
                 if (folder / n).is_file()), "backlm_tokenizer.json")
    return read_json(folder / name).get("vocab_size")


def run(args: argparse.Namespace) -> int:
    """The device step; non-zero only when it cannot start at all."""
    vocab = dataset_vocab(Path(args.home))
    if vocab is None and not args.dry_run:
        print(f"no prepared data in {args.home}/data/{DATASET}: run `bash benchmarks/"
              "gpu_check.sh --prepare` on a machine with network, and carry .gpu_check",
              file=sys.stderr)
        return 2
    check = Check(args, profile(args.smoke, args.device, vocab or VOCAB_SIZE))
    check.say(f"GPU check · {args.device} · budget {check.left():.0f} s · out {check.out}")
    check.results["install"] = {"skipped": "--no-install"} if args.no_install else install(check)
    if not check.dry_run:
        try:
            check.results["environment"] = env = environment(args.device)
        except Exception as exc:  # no torch, no backlm or no GPU: nothing can be measured
            check.results["error"] = f"{type(exc).__name__}: {exc}"
            check.save()
            print(f"cannot start: {check.results['error']}", file=sys.stderr)
            return 2
        check.say(f"device: {env.get('gpu', 'cpu')} · torch {env['torch']} · CUDA "
                  f"{env['cuda']} · native kernels {env['native_kernels']}")
    run_steps(check)
    check.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    check.save()
    if not check.dry_run:
        check.say("\n" + "\n".join(summary_lines(check.results)))
        check.say(f"wrote {check.out / 'gpu_check.json'}")
    return 0


# --- prepare (on a machine with network) -----------------------------------------------------


def fetch_wheels(dest: Path) -> list[Path]:
    """The carried wheels in ``dest``, downloaded when absent; any other wheel is removed."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {canonical(n): v for n, v in CARRIED_WHEELS.items()}
    for path in dest.glob("*.whl"):
        if wanted.get(wheel_name(path)) != path.name.split("-")[1]:
            path.unlink()  # two versions of one package would stop the install there
    for name, version in CARRIED_WHEELS.items():
        if not any(wheel_name(p) == canonical(name) for p in dest.glob("*.whl")):
            subprocess.run(download_argv(name, version, dest), check=True)
    return sorted(dest.glob("*.whl"))


def folder_mib(path: Path) -> float:
    """Size of the files under ``path``, MiB."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def prepare(args: argparse.Namespace) -> int:
    """Wheels into .whl/ and the small dataset into .gpu_check/home (this checkout's backlm)."""
    sys.path.insert(0, str(ROOT))
    from backlm.data.corpus import prepare_corpus

    if not args.no_wheels:
        for path in fetch_wheels(WHEEL_DIR):
            print(f"wheel {path.name} ({path.stat().st_size / 2**20:.1f} MiB)")
    target = Path(args.home) / "data" / DATASET
    roots = [Path(r) for r in args.roots] or None
    summary = prepare_corpus(target, vocab_size=VOCAB_SIZE, workers=args.workers,
                             force=args.force, roots=roots)
    for split, s in summary.splits.items():
        print(f"{split:<5} {s.documents:>7,} documents {s.tokens:>10,} tokens")
    print(f"data {target} ({folder_mib(target):.1f} MiB, vocab {summary.vocab_size})")
    carried = [p for p in (WHEEL_DIR, CHECK_DIR) if p.is_dir()]
    print(f"carry {', '.join(p.name for p in carried)}: "
          f"{sum(folder_mib(p) for p in carried):.1f} MiB (64 MiB with the working tree)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="here: fetch wheels, build the small dataset")
    prep.add_argument("--home", default=str(CHECK_DIR / "home"))
    prep.add_argument("--roots", nargs="*", default=[],
                      help="folders to read docstrings from (default: the installation's)")
    prep.add_argument("--workers", type=int, default=2)
    prep.add_argument("--force", action="store_true", help="rebuild the dataset")
    prep.add_argument("--no-wheels", action="store_true", help="do not fetch wheels")
    go = sub.add_parser("run", help="there: install, measure, write gpu_check.json")
    go.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    go.add_argument("--smoke", action="store_true", help="tiny shapes (tests, CPU)")
    go.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    go.add_argument("--no-install", action="store_true", help="use the importable backlm")
    go.add_argument("--home", default=str(CHECK_DIR / "home"), help="the carried BACKLM_HOME")
    go.add_argument("--workdir", default="/tmp/backlm-gpu-check",
                    help="WORKDIR/experiments is emptied first, then filled")
    go.add_argument("--out", default=os.environ.get("OUT") or None,
                    help="where gpu_check.json and .log go (default: $OUT, else WORKDIR/out)")
    go.add_argument("--budget-s", type=int, default=0, help="default: the profile's")
    go.add_argument("--only", type=lambda s: s.split(","), default=None,
                    help=f"comma list of steps: {','.join(STEPS)}")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args)
    unknown = set(args.only or ()) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {', '.join(sorted(unknown))}: use {', '.join(STEPS)}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
