"""``backlm train`` end to end on a tiny model: the experiment tree it writes, and user errors
(bad input, resume problems, a run already in progress) reported as one line."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import assert_user_error, losses, metrics, run_cli, tiny_args


def test_eval_at_start_off_trains_at_once_and_validates_later(home):
    res = run_cli(tiny_args("--direction", "forward", "--id", "nostart",
                            "--set", "train.eval_at_start=false", "--set", "train.eval_every=4"))
    assert res.exit_code == 0, res.output
    exp = home / "exps" / "nostart"
    m = metrics(exp)
    assert m[0]["step"] == 1 and "loss" in m[0]  # no step-0 record: the first is a step's
    assert [x["step"] for x in m if "val_bpb" in x] == [4, 8]
    meta = json.loads((exp / "metadata.json").read_text())
    assert meta["status"] == "finished" and meta["startup"]["first_step_end_s"] > 0
    assert "step 0 " not in res.output and "step      0" not in res.output


def test_a_kept_cpu_peak_below_the_runs_rate_is_measured_again(home, monkeypatch):
    """A peak kept from a busy moment would read MFU above 100%: the run measures it anew."""
    from backlm import hardware

    monkeypatch.setattr(hardware, "_CPU_PEAK", {"fp32": 1e3})  # 1 kFLOP/s: any run beats it
    monkeypatch.setattr(hardware, "_CPU_PEAK_SOURCE", {"fp32": "measured matmul (kept from x)"})
    monkeypatch.setattr(hardware, "_CPU_PEAK_KEPT", {"fp32"})
    monkeypatch.setattr(hardware, "measure_matmul_peak", lambda dtype: 1e15)
    res = run_cli(tiny_args("--direction", "forward", "--id", "peak"))
    assert res.exit_code == 0, res.output
    exp = home / "exps" / "peak"
    meta = json.loads((exp / "metadata.json").read_text())
    assert meta["mfu_peak"]["flops"] == 1e15
    assert meta["mfu_peak"]["source"].startswith("measured matmul (again: 0 GFLOP/s from an earlier")
    assert all(0 < m["mfu"] < 1 for m in metrics(exp) if "mfu" in m)


def test_train_writes_the_experiment_tree(home):
    res = run_cli(tiny_args("--direction", "backward", "--id", "bw"))
    assert res.exit_code == 0, res.output
    exp = home / "exps" / "bw"
    for name in ("config.yaml", "metadata.json", "parent_link.json", "metrics.jsonl",
                 "tokenizer/backlm_tokenizer.json", "checkpoints/step_000004/model.safetensors",
                 "checkpoints/step_000008/meta.json", "checkpoints/step_000008/optim.safetensors"):
        assert (exp / name).exists(), name
    meta = json.loads((exp / "metadata.json").read_text())
    assert meta["status"] == "finished" and meta["direction"] == "backward"
    assert meta["phase"] == "base" and meta["depth"] == 2 and meta["torch"]
    # seconds from this (pytest) process's start: positive, and the step takes time
    assert 0 < meta["startup"]["first_step_start_s"] < meta["startup"]["first_step_end_s"]
    assert meta["mfu_peak"]["flops"] > 0 and meta["mfu_peak"]["source"].startswith("measured matmul")
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


@pytest.mark.parametrize("args,needle", [
    (["--config", "nope"], "unknown config preset"),
    (["--set", "train.bogus=1"], "unknown config key"),
    (["--set", "train.eval_every=abc"], "expects int"),
    (["--set", "model.depth=0"], "depth must be at least 1"),
    (["--direction", "sideways"], "unknown direction"),
    (["--set", "train.total_batch_tokens=100"], "multiple of"),
])
def test_bad_training_input(home, args, needle):
    res = run_cli([*tiny_args("--direction", "forward", "--id", "bad"), *args])
    assert_user_error(res, needle)
    assert not (home / "exps" / "bad" / "checkpoints").exists() or needle == "multiple of"


def test_resume_errors_leave_experiments_untouched(home):
    assert_user_error(run_cli(["train", "--resume", "ghost"]), "no experiment 'ghost'")
    assert run_cli(tiny_args("--direction", "forward", "--id", "ok", steps=4)).exit_code == 0
    exp = home / "exps" / "ok"
    weights = exp / "checkpoints" / "step_000004" / "model.safetensors"
    weights.write_bytes(b"garbage")
    before = sorted(p.name for p in exp.rglob("*"))
    assert_user_error(run_cli(["train", "--resume", "ok"]), "corrupt")
    assert sorted(p.name for p in exp.rglob("*")) == before
    assert_user_error(run_cli(tiny_args("--direction", "forward", "--id", "ok")), "already exists")


def test_second_concurrent_run_is_refused(home):
    assert run_cli(tiny_args("--direction", "forward", "--id", "busy", steps=4)).exit_code == 0
    exp = home / "exps" / "busy"
    lock = exp / "run.lock"
    import socket

    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    before = (exp / "metrics.jsonl").read_text()
    assert_user_error(run_cli(["train", "--resume", "busy"]), "in use by pid")
    assert (exp / "metrics.jsonl").read_text() == before and lock.exists()


def _snapshot(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_changes_nothing_and_max_steps_extends_it(home):
    import yaml

    assert run_cli(tiny_args("--direction", "backward", "--id", "done", steps=4)).exit_code == 0
    exp = home / "exps" / "done"
    before = _snapshot(exp)
    res = run_cli(["train", "--resume", "done"])
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output
    assert _snapshot(exp) == before
    assert_user_error(run_cli(["train", "--resume", "done", "--max-steps", "3"]), "already at step 4")
    assert _snapshot(exp) == before
    res = run_cli(["train", "--resume", "done", "--max-steps", "6"])
    assert res.exit_code == 0, res.output
    assert sorted(losses(exp)) == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((exp / "config.yaml").read_text())["train"]["max_steps"] == 6
    change = json.loads((exp / "metadata.json").read_text())["max_steps_changes"]
    assert [(c["from"], c["to"], c["at_step"]) for c in change] == [(4, 6, 4)]


# --set, --seed, --depth, --direction, --device, --wandb may come with --resume when they say
# what the run already is; one that changes it is refused naming the key (tests/train/test_chain.py)
@pytest.mark.parametrize("flag", [["--config", "cpu-tiny"], ["--description", "x"],
                                  ["--id", "y"], ["--phase", "base"]])
def test_flags_that_cannot_apply_on_resume_are_refused(home, flag):
    assert_user_error(run_cli(["train", "--resume", "anything", *flag]), f"{flag[0]} cannot")


def test_resume_trusts_no_file_of_the_experiment(home):
    import yaml

    assert run_cli(tiny_args("--direction", "forward", "--id", "edit", steps=4)).exit_code == 0
    exp = home / "exps" / "edit"
    config, meta = exp / "config.yaml", exp / "checkpoints" / "step_000004" / "meta.json"
    good_config, good_meta = config.read_text(), meta.read_text()
    before = _snapshot(exp)
    cfg = yaml.safe_load(good_config)
    cfg["model"]["depth"] = 3
    cfg["train"]["max_steps"] = 8
    config.write_text(yaml.safe_dump(cfg))
    assert_user_error(run_cli(["train", "--resume", "edit"]), "config.yaml says model.depth=3")
    config.write_text(good_config)
    for change, needle in (({"direction": "sideways"}, "unknown direction"),
                           ({"step": "x"}, "invalid 'step'"), ({"loaders": None}, "lacks")):
        meta.write_text(json.dumps({**json.loads(good_meta), **change}))
        assert_user_error(run_cli(["train", "--resume", "edit"]), needle)
    meta.write_text(good_meta)
    assert _snapshot(exp) == before


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(home, monkeypatch):
    import backlm.evaluation.lm as lm

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure in the first evaluation")

    with monkeypatch.context() as patch:
        patch.setattr(lm, "score", broken)
        res = run_cli(tiny_args("--direction", "forward", "--id", "again", steps=4))
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError)
    assert not (home / "exps" / "again").exists()
    assert run_cli(tiny_args("--direction", "forward", "--id", "again", steps=4)).exit_code == 0


def test_with_stdout_to_a_file_training_prints_plain_step_lines_from_the_first_step(home):
    """nohup, SLURM, CI: no terminal, so no bar; plain lines at the first step, every
    log.print_every steps and at the last, each with the run's figures."""
    import re
    import subprocess
    import sys

    log = home / "train.log"
    args = tiny_args("--direction", "backward", "--id", "batch", "--set", "log.print_every=3",
                     "--set", "log.print_seconds=0")
    with open(log, "w") as out:
        res = subprocess.run([sys.executable, "-m", "backlm.cli", *args], stdout=out,
                             stderr=subprocess.PIPE, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = log.read_text().splitlines()
    step_line = re.compile(r"^step (\d{5})/00008 \(\d+\.\d\d%\) \| loss: \d+\.\d{4} \| lrm: "
                           r"\d\.\d\d \| dt: [\d,]+ms \| tok/sec: [\d,]+ \| mfu: \d+\.\d% \| "
                           r"eta: (\d+s|\d+m\d\ds|\?)$")
    steps = [int(m[1]) for m in map(step_line.match, lines) if m]
    assert steps == [1, 4, 7, 8], log.read_text()
    assert any(x.startswith("precision: ") for x in lines), log.read_text()  # messages too
    assert lines.index(next(x for x in lines if x.startswith("step 00001/"))) < lines.index(
        next(x for x in lines if x.startswith("step      4 · val_loss")))
    assert "\x1b[" not in log.read_text()  # no terminal control codes in a log file
    assert any(x.startswith("tokenized ") and x.endswith("/tokens") for x in lines), \
        log.read_text()  # a line longer than 80 characters is not wrapped


def test_a_base_run_refuses_a_chat_dataset(home):
    from tests.helpers import tiny_chat

    tiny_chat(home)
    res = run_cli([*tiny_args("--id", "bad"), "--set", "data.dataset=tinychat"])
    assert_user_error(res, "dataset 'tinychat' is a chat dataset", "data.dataset (a base run)")
    assert not (home / "exps" / "bad").exists()
