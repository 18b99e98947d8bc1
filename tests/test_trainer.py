"""The training loop: per-direction evaluation, exact resume after SIGKILL and after Ctrl-C
(also in the middle of a step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from backlm.callbacks import Callback
from tests.helpers import losses, metrics, run_cli, tiny_args


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


def _subprocess_train(home, exp_id, env=None, resume=False, steps=12, extra=()):
    args = ["train", "--resume", exp_id] if resume else tiny_args(
        "--direction", "backward", "--id", exp_id, *extra, steps=steps)
    return subprocess.run([sys.executable, "-m", "backlm.cli", *args],
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=300)


def test_ctrl_c_saves_and_resume_matches(home):
    ref = _subprocess_train(home, "ref2")
    assert ref.returncode == 0, ref.stderr
    res = _subprocess_train(home, "intr", {"BACKLM_INTERRUPT_AT_STEP": "6"})
    assert res.returncode == 130, res.stderr
    assert "resume" in res.stdout and "Traceback" not in res.stderr
    exp = home / "exps" / "intr"
    assert (exp / "checkpoints" / "step_000006" / "model.safetensors").exists()
    assert json.loads((exp / "training_summary.json").read_text())["stop_reason"] == "interrupted"
    assert json.loads((exp / "metadata.json").read_text())["status"] == "interrupted"
    resumed = _subprocess_train(home, "intr", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(home / "exps" / "ref2"), losses(exp)
    assert sorted(b) == list(range(1, 13)) and all(a[s] == b[s] for s in a)
    assert json.loads((exp / "training_summary.json").read_text())["sessions"] == 2


class _InterruptMidStep(Callback):
    """Raises Ctrl-C after the backward pass of step 6, before the optimizer step."""

    def on_after_backward(self, state, step):
        if step == 6:
            raise KeyboardInterrupt


def test_ctrl_c_mid_step_rewinds_the_data(home):
    from backlm import trainer
    from backlm.experiment import Experiment

    assert run_cli(tiny_args("--direction", "forward", "--id", "ref3", steps=10)).exit_code == 0
    assert run_cli(tiny_args("--direction", "forward", "--id", "mid", steps=1)).exit_code == 0
    exp = Experiment(home / "exps" / "mid")
    # Same config as ref3 but stopped by an interrupt inside step 6.
    cfg = (home / "exps" / "ref3" / "config.yaml").read_text().replace("id: ref3", "id: mid")
    exp.config_path.write_text(cfg)
    for p in exp.checkpoints.glob("step_*"):
        import shutil

        shutil.rmtree(p)
    exp.metrics_path.unlink()
    s = trainer.run(exp, exp.config(), observers=[_InterruptMidStep()])
    assert s.status == "interrupted" and s.steps == 5
    s = trainer.run(exp, exp.config(), resume=True)
    assert s.status == "finished"
    a, b = losses(home / "exps" / "ref3"), losses(exp.path)
    assert all(a[k] == b[k] for k in a), [(k, a[k], b[k]) for k in a if a[k] != b[k]]
