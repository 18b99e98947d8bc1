"""Launch plans and torchrun command lines, and a two-process gloo run that matches one
process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import losses, metrics, run_cli, tiny_args


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
    from backlm.train.launch import LaunchPlan, plan_launch, torchrun_argv

    argv = torchrun_argv(LaunchPlan(4), Path("/x/e"), resume=True, python="py")
    assert argv == ["py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
                    "--nnodes=1", "-m", "backlm.train.worker", "--experiment", "/x/e", "--resume"]
    multi = torchrun_argv(LaunchPlan(8, 2, 1, "10.0.0.1", 1234), Path("e"), False, python="py")
    assert "--nnodes=2" in multi and "--node-rank=1" in multi and "--standalone" not in multi
    assert "--master-addr=10.0.0.1" in multi and "--master-port=1234" in multi
    assert plan_launch(None, 1, "auto", 8, False).nproc_per_node == 8
    assert plan_launch(None, 1, "cpu", 8, False).nproc_per_node == 1
    assert not plan_launch(None, 1, "auto", 8, True).distributed  # already inside torchrun
    assert plan_launch(2, 1, "cpu", 0, False).distributed


def test_processes_plan_on_this_machine(monkeypatch):
    """The engine, not the command, asks torch for GPUs and torchrun's environment."""
    import torch

    from backlm.train.launch import Processes

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert Processes().plan("auto").nproc_per_node == 4
    assert Processes().plan("cpu").world == 1 and not Processes().plan("cpu").distributed
    assert Processes(2, master_port=1234).plan("cpu").master_port == 1234
    monkeypatch.setenv("LOCAL_RANK", "0")  # a rank torchrun started trains in itself
    assert not Processes().plan("auto").distributed


def test_cache_tokens_before_training(home):
    from types import SimpleNamespace

    from backlm.train.launch import cache_tokens

    d = home / "home" / "data" / "tiny"
    said: list[str] = []

    def run(phase, data=d):
        exp = SimpleNamespace(data_dir=lambda: data, tokenizer_dir=d / "tokenizer")
        cfg = SimpleNamespace(phase=phase, data=SimpleNamespace(tokenizer_threads=1))
        cache_tokens(exp, cfg, said.append)

    run("sft")  # no text stream: nothing cached
    run("base", home / "missing")  # no data: left for the run to report
    assert not (d / "tokens").exists() and not said
    run("base")
    assert len(list((d / "tokens").glob("train_00000.*.tokens"))) == 1
    assert len(said) == 1 and said[0].startswith("tokenized 1 train shard(s) once")
    run("mid")  # valid already: silent
    assert len(said) == 1
