"""End-to-end training on a tiny model: experiment tree, exact resume after SIGKILL, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backlm.cli import app

TINY = [
    "model.depth=2", "model.width=64", "model.head_dim=32", "model.seq_len=32",
    "model.vocab_size=300", "train.device_batch_size=4", "train.total_batch_tokens=256",
    "train.eval_every=4", "train.eval_tokens=512", "train.save_every=4", "train.device=cpu",
    "data.dataset=tiny", "data.docs_per_batch=32", "data.buffer_docs=16", "log.wandb=off",
]


def tiny_args(*extra: str, steps: int = 8) -> list[str]:
    args = ["train", "--max-steps", str(steps)]
    for s in TINY:
        args += ["--set", s]
    return args + list(extra)


def metrics(exp: Path) -> list[dict]:
    return [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]


def losses(exp: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(exp) if "loss" in m}


def run_cli(args, env=None):
    return CliRunner().invoke(app, args, env=env)


def test_train_writes_the_experiment_tree(home):
    res = run_cli(tiny_args("--direction", "backward", "--id", "bw"))
    assert res.exit_code == 0, res.output
    exp = home / "exps" / "bw"
    for name in ("config.yaml", "metadata.json", "parent_link.json", "metrics.jsonl",
                 "tokenizer/tokenizer.json", "checkpoints/step_000004/model.safetensors",
                 "checkpoints/step_000008/meta.json", "checkpoints/step_000008/optim.safetensors"):
        assert (exp / name).exists(), name
    meta = json.loads((exp / "metadata.json").read_text())
    assert meta["status"] == "finished" and meta["direction"] == "backward"
    assert meta["phase"] == "base" and meta["depth"] == 2 and meta["torch"]
    # seconds from this (pytest) process's start: positive, and the step takes time
    assert 0 < meta["startup"]["first_step_start_s"] < meta["startup"]["first_step_end_s"]
    assert json.loads((exp / "parent_link.json").read_text()) is None
    ck = json.loads((exp / "checkpoints/step_000008/meta.json").read_text())
    assert ck["direction"] == "backward" and ck["model_config"]["depth"] == 2
    assert ck["step"] == 8 and len(ck["loaders"]) == 2  # 256 tokens = 2 streams of 4×32
    m = metrics(exp)
    assert m[0]["step"] == 0 and "val_bpb" in m[0]
    assert [x["step"] for x in m if "loss" in x] == list(range(1, 9))
    assert m[-1]["val_bpb"] < m[0]["val_bpb"]  # it learns
    assert not (exp / "run.lock").exists()
    ls = run_cli(["ls"])
    assert ls.exit_code == 0 and "bw" in ls.output and "backward" in ls.output


def test_bidirectional_logs_per_direction_losses(home):
    res = run_cli(tiny_args("--direction", "bidirectional", "--id", "bi", steps=4))
    assert res.exit_code == 0, res.output
    last = metrics(home / "exps" / "bi")[-1]
    assert {"val_loss_forward", "val_loss_backward", "val_bpb_forward", "val_bpb_backward"} <= set(last)


def _train_subprocess(home: Path, exp_id: str, extra_env: dict | None = None, resume=False):
    args = ["train", "--resume", exp_id] if resume else tiny_args("--direction", "backward", "--id",
                                                         exp_id, steps=12)
    env = dict(os.environ, **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "backlm.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_reproduces_the_losses(home):
    ref = _train_subprocess(home, "ref")
    assert ref.returncode == 0, ref.stderr
    killed = _train_subprocess(home, "crash", {"BACKLM_KILL_AT_STEP": "6"})
    assert killed.returncode == -9  # a real SIGKILL between the checkpoints at 4 and 8
    exp = home / "exps" / "crash"
    assert json.loads((exp / "metadata.json").read_text())["status"] == "running"
    assert max(losses(exp)) == 6
    resumed = _train_subprocess(home, "crash", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(home / "exps" / "ref"), losses(exp)
    assert sorted(b) == list(range(1, 13))  # steps 5-6 rewritten, none duplicated
    assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]]


def test_two_process_gloo_matches_one_process(home):
    one = run_cli(tiny_args("--direction", "forward", "--id", "one", steps=4))
    assert one.exit_code == 0, one.output
    env = dict(os.environ)
    two = subprocess.run(
        [sys.executable, "-m", "backlm.cli", *tiny_args("--direction", "forward", "--id", "two",
                                                      "--nproc-per-node", "2", steps=4)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(home / "exps" / "one"), losses(home / "exps" / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-5)
    # Only rank 0 wrote: one metrics line per step plus the initial evaluation.
    assert len(metrics(home / "exps" / "two")) == 5
    meta = json.loads((home / "exps" / "two" / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["status"] == "finished"


def test_torchrun_argv_is_pure():
    from backlm.launch import LaunchPlan, plan_launch, torchrun_argv

    argv = torchrun_argv(LaunchPlan(4), Path("/x/e"), resume=True, python="py")
    assert argv == ["py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
                    "--nnodes=1", "-m", "backlm.worker", "--experiment", "/x/e", "--resume"]
    multi = torchrun_argv(LaunchPlan(8, 2, 1, "10.0.0.1", 1234), Path("e"), False, python="py")
    assert "--nnodes=2" in multi and "--node-rank=1" in multi and "--standalone" not in multi
    assert "--master-addr=10.0.0.1" in multi and "--master-port=1234" in multi
    assert plan_launch(None, 1, "auto", 8, False).nproc_per_node == 8
    assert plan_launch(None, 1, "cpu", 8, False).nproc_per_node == 1
    assert not plan_launch(None, 1, "auto", 8, True).distributed  # already inside torchrun
    assert plan_launch(2, 1, "cpu", 0, False).distributed


def _one_line_error(res, needle):
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert "Traceback" not in res.output
    assert lines[0].startswith("error:") and needle in res.output, res.output


@pytest.mark.parametrize("args,needle", [
    (["--config", "nope"], "unknown config preset"),
    (["--set", "train.bogus=1"], "unknown config key"),
    (["--set", "train.eval_every=abc"], "expects int"),
    (["--depth", "0"], "depth must be at least 1"),
    (["--direction", "sideways"], "unknown direction"),
    (["--set", "train.total_batch_tokens=100"], "multiple of"),
])
def test_bad_training_input(home, args, needle):
    res = run_cli([*tiny_args("--direction", "forward", "--id", "bad"), *args])
    _one_line_error(res, needle)
    assert not (home / "exps" / "bad" / "checkpoints").exists() or needle == "multiple of"


def test_resume_errors_leave_experiments_untouched(home):
    _one_line_error(run_cli(["train", "--resume", "ghost"]), "no experiment 'ghost'")
    assert run_cli(tiny_args("--direction", "forward", "--id", "ok", steps=4)).exit_code == 0
    exp = home / "exps" / "ok"
    weights = exp / "checkpoints" / "step_000004" / "model.safetensors"
    weights.write_bytes(b"garbage")
    before = sorted(p.name for p in exp.rglob("*"))
    _one_line_error(run_cli(["train", "--resume", "ok"]), "corrupt")
    assert sorted(p.name for p in exp.rglob("*")) == before
    _one_line_error(run_cli(tiny_args("--direction", "forward", "--id", "ok")), "already exists")


def test_second_concurrent_run_is_refused(home):
    assert run_cli(tiny_args("--direction", "forward", "--id", "busy", steps=4)).exit_code == 0
    exp = home / "exps" / "busy"
    lock = exp / "run.lock"
    import socket

    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    before = (exp / "metrics.jsonl").read_text()
    _one_line_error(run_cli(["train", "--resume", "busy"]), "in use by pid")
    assert (exp / "metrics.jsonl").read_text() == before and lock.exists()
