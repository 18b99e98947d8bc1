"""benchmarks/gpu_check.py on CPU: the plan, its plumbing, the carried wheels, a smoke run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


gc = _load()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BACKLM_EXPERIMENTS", str(tmp_path / "exps"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("OUT", raising=False)


def runtime_dependencies() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [gc.canonical(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0])
            for d in project["dependencies"]]


# --- the carried-wheel list ------------------------------------------------------------------


def test_every_runtime_dependency_is_there_carried_or_optional():
    carried = {gc.canonical(n) for n in gc.CARRIED_WHEELS}
    optional = {gc.canonical(n) for n in gc.OPTIONAL_AT_RUNTIME}
    uncovered = [d for d in runtime_dependencies()
                 if d not in gc.PREINSTALLED | carried | optional]
    assert not uncovered, f"add to CARRIED_WHEELS (and re-run --prepare): {uncovered}"


def test_carried_and_optional_lists_hold_nothing_stale():
    deps = set(runtime_dependencies())
    for name in [*gc.CARRIED_WHEELS, *gc.OPTIONAL_AT_RUNTIME]:
        assert gc.canonical(name) in deps, f"{name} is no longer a dependency of backlm"
        assert gc.canonical(name) not in gc.PREINSTALLED, f"{name} is on the device already"
    assert all(re.fullmatch(r"\d+(\.\d+)*", v) for v in gc.CARRIED_WHEELS.values())


def test_runs_need_no_optional_package():
    """wandb is optional on the device because every run turns it off."""
    for smoke in (False, True):
        plan = gc.profile(smoke, "cuda", 8192)
        for spec in (plan.d12, plan.d20, plan.small):
            argv = gc.train_argv(spec, "x", Path("/e"), plan.device)
            assert argv[argv.index("--wandb") + 1] == "off"


def test_prepared_wheel_folder_matches_the_list():
    if not gc.WHEEL_DIR.is_dir():
        pytest.skip("no .whl/ here: `bash benchmarks/gpu_check.sh --prepare` makes it")
    found = {gc.wheel_name(p): p.name.split("-")[1] for p in gc.WHEEL_DIR.glob("*.whl")}
    assert found == {gc.canonical(n): v for n, v in gc.CARRIED_WHEELS.items()}


def test_wheels_are_fetched_for_the_device_python():
    argv = gc.download_argv("rustbpe", "0.1.0", Path("/w"))
    assert argv[1:4] == ["-m", "pip", "download"]
    for flag in ("--no-deps", "--only-binary=:all:"):
        assert flag in argv
    assert argv[argv.index("--python-version") + 1] == "3.12"
    assert argv[argv.index("--implementation") + 1] == "cp"
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert "manylinux_2_17_x86_64" in platforms and all("x86_64" in p for p in platforms)
    assert argv[-3:] == ["-d", "/w", "rustbpe==0.1.0"]


def test_only_missing_wheels_are_installed(tmp_path):
    for name in ("rustbpe-0.1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
                 "typing_extensions-4.0-py3-none-any.whl"):
        (tmp_path / name).touch()
    missing = gc.missing_wheels(tmp_path, lambda name: name == "typing-extensions")
    assert [p.name for p in missing] == ["rustbpe-0.1.0-cp312-cp312-manylinux_2_17_x86_64.whl"]
    assert gc.missing_wheels(tmp_path, lambda name: True) == []


def test_installs_are_offline_and_skip_dependencies():
    wheels = gc.pip_install_argv(["a.whl"], Path("/tmp/site"), build=False)
    source = gc.pip_install_argv(["/repo"], Path("/tmp/site"), build=True)
    for argv in (wheels, source):
        for flag in ("--no-index", "--no-deps", "--upgrade"):
            assert flag in argv
        assert argv[argv.index("--target") + 1] == "/tmp/site"
    assert "--no-build-isolation" in source and "--no-build-isolation" not in wheels
    assert source[-1] == "/repo"


# --- the plan --------------------------------------------------------------------------------


@pytest.mark.parametrize("smoke", [False, True])
def test_every_run_is_a_valid_config(smoke):
    """Overrides name real keys, and each global batch splits into whole micro-batches."""
    from backlm.config import RunConfig, load_config
    from backlm.train.loop import plan_streams

    plan = gc.profile(smoke, "cpu" if smoke else "cuda", 8192)
    for spec in (plan.d12, plan.d20, plan.small):
        cfg = load_config(RunConfig, preset=spec.preset,
                          overrides=list(spec.sets))
        assert cfg.data.dataset == gc.DATASET and cfg.model.vocab_size == 8192
        assert plan_streams(cfg, 1)[0] >= 1
        assert cfg.train.eval_every == spec.steps and spec.warmup < spec.steps
        if not smoke:
            assert cfg.train.dtype == "bf16"
            assert cfg.train.device_batch_size == 32 and cfg.model.seq_len == 2048
    small = load_config(RunConfig, preset=plan.small.preset,
                        overrides=list(plan.small.sets))
    # the kill lands after a checkpoint and before the end, so the resume has work to redo
    assert small.train.save_every <= plan.kill_at < plan.small.steps
    assert plan.kill_at % small.train.save_every


def test_train_command_plumbing():
    plan = gc.profile(False, "cuda", 4096)
    argv = gc.train_argv(plan.d12, "gc-d12", Path("/exps"), "cuda")
    assert argv[:4] == [sys.executable, "-m", "backlm.cli", "train"]
    from backlm.config import preset_path

    assert preset_path(argv[argv.index("--config") + 1]).name == "d12.yaml"  # a packaged preset
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets == list(plan.d12.sets) and "model.vocab_size=4096" in sets
    for flag, value in (("--device", "cuda"), ("--id", "gc-d12"), ("--max-steps", "40"),
                        ("--experiments-dir", "/exps"), ("--direction", "backward")):
        assert argv[argv.index(flag) + 1] == value
    assert "--nproc-per-node" not in argv
    argv = gc.train_argv(plan.small, "gc-torchrun", Path("/exps"), "cuda", nproc=1)
    assert argv[-2:] == ["--nproc-per-node", "1"]
    assert gc.resume_argv("gc-resume", Path("/e"))[3:] == [
        "train", "--resume", "gc-resume", "--experiments-dir", "/e"]


def test_fivecat_and_eval_commands():
    argv = gc.fivecat_argv("gc-d12", Path("/e"), "cuda")
    assert argv[3:5] == ["5cat", "gc-d12"] and argv[argv.index("--device") + 1] == "cuda"
    assert "--spec" not in argv  # the packaged thresholds
    argv = gc.eval_argv("gc-d12", Path("/e"), "cuda", 65536)
    assert argv[3:5] == ["eval", "gc-d12"]
    assert argv[argv.index("--tasks") + 1] == "lm"
    assert argv[argv.index("--lm-tokens") + 1] == "65536"


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path, capsys):
    work = tmp_path / "work"
    assert gc.main(["run", "--dry-run", "--home", str(tmp_path / "none"), "--workdir",
                    str(work)]) == 0
    out = capsys.readouterr().out
    assert "--target /tmp/site" in out and "--no-build-isolation" in out  # backlm's install
    assert out.count(" backlm.cli train --config ") == 5  # d12, torchrun, 2 resume, d20
    assert "--nproc-per-node 1" in out and "BACKLM_KILL_AT_STEP=15 " in out
    assert "train --resume gc-resume" in out
    assert " 5cat gc-d12 --device cuda" in out and " eval gc-d12 --device cuda" in out
    for step in gc.STEPS:
        assert f"== {step} " in out
    assert not work.exists()


def test_only_and_unknown_steps(tmp_path, capsys):
    args = ["run", "--dry-run", "--home", str(tmp_path), "--workdir", str(tmp_path / "w")]
    assert gc.main([*args, "--only", "peak,resume"]) == 0
    out = capsys.readouterr().out
    assert "== resume" in out and "== d12" not in out
    with pytest.raises(SystemExit):
        gc.main([*args, "--only", "peak,nonsense"])


def test_missing_data_is_the_only_start_failure(tmp_path, capsys):
    rc = gc.main(["run", "--no-install", "--home", str(tmp_path / "none"), "--workdir",
                  str(tmp_path / "w")])
    assert rc == 2 and "--prepare" in capsys.readouterr().err


def test_shell_script_passes_arguments_through(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--smoke", "--device",
         "cpu", "--home", str(tmp_path), "--workdir", str(tmp_path / "w"), "--only", "d12"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--device cpu" in proc.stdout and "model.depth=2" in proc.stdout


def test_prepare_builds_the_carried_dataset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"m{i}.py").write_text(
            f'def f{i}():\n    """Function {i} turns a list of words into a sorted tuple of '
            f'unique words, ignoring case, for the test corpus number {i}."""\n')
    rc = gc.main(["prepare", "--no-wheels", "--home", str(tmp_path / "home"), "--roots",
                  str(src), "--workers", "1"])
    assert rc == 0
    data = tmp_path / "home" / "data" / gc.DATASET
    assert (data / "train_00000.parquet").is_file() and (data / "ood_00000.parquet").is_file()
    assert gc.dataset_vocab(tmp_path / "home") > 256


# --- reading results -------------------------------------------------------------------------


def rows(losses: dict[int, float], dt: float = 0.5) -> list[dict]:
    out = [{"step": 0, "val_loss": 9.0}]
    out += [{"step": s, "loss": v, "dt": dt, "tokens_per_sec": 1000 * s, "mfu": 0.1}
            for s, v in losses.items()]
    return out + [{"step": max(losses), "val_loss": 5.0}]


def test_summary_skips_warmup_and_uses_both_peaks():
    recs = rows({1: 9.0, 2: 8.0, 3: 7.0, 4: 6.0, 5: 5.0})
    recs[1]["dt"] = 60.0  # the compile step
    s = gc.summarize_steps(recs, warmup=2, flops_per_token=1e6,
                           peaks={"measured": 8e9, "datasheet": None})
    assert s["steps_logged"] == 5 and s["steps_timed"] == 3
    assert s["tok_per_s"] == 4000 and s["first_step_s"] == 60.0 and s["final_loss"] == 5.0
    assert s["mfu_vs_measured"] == 0.5 and s["mfu_vs_datasheet"] is None
    assert gc.summarize_steps([{"step": 0, "val_loss": 1.0}], 2, None, {}) == {"steps_logged": 0}


def test_loss_comparison_separates_before_and_after_resume():
    ref = rows({1: 3.0, 2: 2.5, 3: 2.0, 4: 1.5})
    same = gc.compare_losses(ref, rows({1: 3.0, 2: 2.5, 3: 2.0, 4: 1.5}), resumed_from=2)
    assert same["bit_identical"] and same["max_abs_dloss"] == 0.0 and same["steps_compared"] == 4
    assert same["final_val_loss"] == [5.0, 5.0]
    off = gc.compare_losses(ref, rows({1: 3.0, 2: 2.5, 3: 2.25}), resumed_from=2)
    assert not off["bit_identical"] and off["steps_missing"] == [4]
    assert off["max_abs_dloss_before_resume"] == 0.0 and off["max_abs_dloss_after_resume"] == 0.25


def test_compile_log_counts_graph_breaks_by_place():
    output = "\n".join([
        "V1201 [__graph_breaks] Graph break in user code at /x/backlm/model/kernels.py:73",
        "V1201 [__graph_breaks] Graph break (user stack suppressed due to duplicate graph "
        "break) in user code at /x/backlm/model/kernels.py:73",
        "V1201 [__graph_breaks] Graph break in user code at /x/backlm/model/gpt.py:9",
        "V1201 [__recompiles] Recompiling function forward in /x/backlm/model/gpt.py:1",
    ])
    assert gc.compile_log(output) == {
        "graph_breaks": {"backlm/model/kernels.py:73": 2, "backlm/model/gpt.py:9": 1}, "recompiles": 1}
    assert gc.compile_log("") == {"graph_breaks": {}, "recompiles": 0}


def test_flops_per_token_is_the_models(tmp_path):
    from backlm.config import RunConfig, load_config, to_yaml
    from backlm.model.gpt import GPT

    cfg = load_config(RunConfig, overrides=["model.depth=2", "model.head_dim=32",
                                            "model.seq_len=64", "model.vocab_size=300"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert gc.flops_per_token(tmp_path) == GPT(cfg.model).flops_per_token()
    assert gc.flops_per_token(tmp_path / "missing") is None


# --- the whole driver, on CPU ----------------------------------------------------------------


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_figure(tmp_path):
    """Every step end to end with a tiny model on CPU (about 3 minutes on 2 cores)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    assert gc.main(["prepare", "--no-wheels", "--home", str(tmp_path / "home"), "--roots",
                    stdlib]) == 0
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--device", "cpu", "--smoke", "--no-install",
         "--home", str(tmp_path / "home"), "--workdir", str(tmp_path / "work"), "--out",
         str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    steps = res["steps"]
    assert set(steps) == set(gc.STEPS)
    assert not [n for n, s in steps.items() if "error" in s or "skipped" in s], steps
    assert steps["peak"]["measured_flops"] > 0
    for name in ("d12", "d20", "torchrun"):
        assert steps[name]["tok_per_s"] > 0 and steps[name]["mfu_vs_measured"] > 0
        assert steps[name]["status"] == "finished" and steps[name]["world_size"] == 1
    assert steps["fivecat"]["rc"] in (0, 1) and steps["fivecat"]["gates_passed"] is not None
    assert len(steps["eval"]["results"]) == 2  # lm, forward and backward
    assert steps["decode"]["as_loaded"]["tok_per_s"] > 0
    resume = steps["resume"]
    assert resume["killed_by_sigkill"] and resume["comparison"]["steps_compared"] == 6
    assert resume["comparison"]["bit_identical"]  # CPU fp32 is deterministic
    assert "GPU check · cpu" in proc.stdout and (out / "gpu_check.log").stat().st_size > 0
