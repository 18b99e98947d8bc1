"""Planning and running a sweep: member configs (seeds are the data order), refusals before
anything is written, statuses in sweep.json as members finish or stop, and a real sweep that a
Ctrl-C stops and the same command continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from matplotlib.image import imread

from backlm.direction import Direction
from backlm.errors import UserError
from backlm.experiment.sweeps import sweep_folder
from backlm.sweep import parse_grid, plan_sweep, run_sweep
from backlm.sweep.run import member_config
from backlm.train import cost
from tests.helpers import FIVECAT_TINY, TINY, fake_experiment, fivecat_home

FB = (Direction.FORWARD, Direction.BACKWARD)
SETS = [s for s in TINY if not s.startswith("model.depth=")]  # the grid gives the depth


def tiny_grid(**kw):
    args = {"depths": "1,2", "seeds": "1,2", "overrides": SETS, "max_steps": 4}
    args.update(kw)
    return parse_grid("aot", args.pop("directions", FB), args.pop("depths"), args.pop("seeds"),
                      **args)


def test_a_member_config_is_its_cell_and_seeds_are_the_data_order():
    g = tiny_grid()
    m = g.members()[3]
    cfg = member_config(g, m)
    assert (cfg.id, cfg.data.direction, cfg.model.depth, cfg.train.seed, cfg.train.max_steps) \
        == ("aot-d2-backward-s1", Direction.BACKWARD, 2, 1, 4)
    with pytest.raises(UserError, match="--seeds"):
        member_config(tiny_grid(overrides=[*SETS, "train.seed=5"]), m)


def test_a_depth_that_does_not_fit_is_refused_before_anything_is_written(home):
    root = home / "exps"
    with pytest.raises(UserError, match="--depths 1 does not fit"):
        plan_sweep(tiny_grid(overrides=[*SETS, "model.head_dim=128", "model.width=0"]), root)
    assert not root.exists()


def test_the_dry_run_plan_estimates_every_member_and_writes_nothing(home, monkeypatch):
    monkeypatch.setitem(cost._RATES, "fp32", 2e10)  # measuring the CPU takes seconds
    plan = plan_sweep(tiny_grid(), home / "exps", estimate=True)
    assert [m.state for m in plan.members] == ["new"] * 8
    assert all(m.estimate.wall_seconds > 0 for m in plan.members)
    assert plan.estimated_seconds == pytest.approx(sum(m.estimate.wall_seconds
                                                       for m in plan.members))
    assert not (home / "exps").exists()


def test_members_are_recorded_as_they_finish_or_stop_and_a_rerun_skips_the_finished(
        home, monkeypatch):
    root = home / "exps"
    trained = []

    def fake_train(plan, mp, observers, say):
        status = "interrupted" if len(trained) == 1 else "finished"
        trained.append(mp.member.id)
        exp = fake_experiment(root, mp.member.id, str(mp.member.direction), mp.member.depth,
                              mp.member.seed)
        exp.update_metadata(status=status)
        return SimpleNamespace(status=status, exp_id=mp.member.id)

    monkeypatch.setattr("backlm.sweep.run._train_member", fake_train)
    plan = plan_sweep(tiny_grid(), root)
    result = run_sweep(plan, command="backlm sweep ...")
    assert result.stopped.exp_id == "aot-d1-backward-s1"
    record = json.loads(sweep_folder(root, "aot").record.read_text())
    assert [m["status"] for m in record["members"]][:3] == ["finished", "interrupted",
                                                            "pending"]
    assert record["command"] == "backlm sweep ..."
    monkeypatch.setattr("backlm.train.plan.plan_resume", lambda *a, **k: None)  # weightless
    again = plan_sweep(tiny_grid(), root)
    assert [m.state for m in again.members][:3] == ["finished", "continue", "new"]


@pytest.mark.slow
def test_a_real_sweep_stopped_by_ctrl_c_continues_with_the_same_command(tmp_path):
    args = [sys.executable, "-m", "backlm.cli", "sweep", "--id", "aot", "--directions",
            "forward,backward", "--depths", "1,2", "--seeds", "1,2", "--max-steps", "24"]
    for s in FIVECAT_TINY:
        args += [] if s.startswith("model.depth=") else ["--set", s]
    args += ["--set", "train.save_every=8", "--set", "train.eval_every=8"]
    with fivecat_home(tmp_path) as home:
        exps, env = home / "exps", dict(os.environ)
        first = exps / "aot-d1-forward-s1" / "metrics.jsonl"
        # a shell's background job starts with SIGINT ignored, which Python would keep
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                            signal.SIG_DFL))
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if first.is_file() and '"step": 9' in first.read_text():
                proc.send_signal(signal.SIGINT)  # Ctrl-C once a checkpoint is behind it
                break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 130, out
        assert "again" in out
        record = json.loads((exps / "sweeps" / "aot" / "sweep.json").read_text())
        statuses = [m["status"] for m in record["members"]]
        assert "interrupted" in statuses and statuses[-1] == "pending", statuses

        res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr
        record = json.loads((exps / "sweeps" / "aot" / "sweep.json").read_text())
        assert [m["status"] for m in record["members"]] == ["finished"] * 8
        for m in record["members"]:
            steps = [json.loads(x)["step"] for x in
                     (exps / m["id"] / "metrics.jsonl").read_text().splitlines() if x.strip()]
            assert steps[-1] == 24 and len(steps) == len(set(steps)), m["id"]  # resumed
            assert m["fivecat"] and "/" in m["fivecat"]
        summary = (exps / "sweeps" / "aot" / "SWEEP.md").read_text()
        assert "d1" in summary and "d2" in summary and "t-interval" in summary
        assert (exps / "sweeps" / "aot" / "comparison" / "COMPARISON.md").is_file()
        pixels = imread(exps / "sweeps" / "aot" / "scaling.png")[..., :3].reshape(-1, 3)
        assert (pixels.min(axis=1) < 0.9).mean() > 0.01
        assert "SWEEP.md" in res.stdout.replace("\n", "")
