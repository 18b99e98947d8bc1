"""wandb: offline runs write into the experiment, off writes nothing, failures never fail the
run, and auto mode goes online only with a key."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from tests.helpers import train_logged as train


def test_wandb_offline_writes_into_the_experiment_and_off_writes_nothing(home):
    import subprocess

    train("wb", "--set", "log.hdf5=false", steps=2, wandb="offline")
    runs = list((home / "exps" / "wb" / "wandb").glob("offline-run-*-wb"))
    assert runs and any(runs[0].rglob("*.wandb"))
    # the README's hint: `wandb sync <experiment>/wandb/offline-run-*` finds the run (the
    # experiment folder itself holds no run: wandb looks one level down, not two)
    cli = [sys.executable, "-c", "from wandb.cli.cli import cli; cli()", "sync", "--dry-run"]
    for path, found in ((runs[0], "Would sync 1 run(s)"), (home / "exps" / "wb", "No runs")):
        res = subprocess.run([*cli, str(path)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "WANDB_SILENT": "false"})
        assert found in res.stdout + res.stderr, res.stdout + res.stderr
    assert not (home / "exps" / "wb" / "base.h5").exists()
    train("nowb", steps=2, wandb="off")
    assert not (home / "exps" / "nowb" / "wandb").exists()


def test_wandb_failures_never_fail_the_run(home, monkeypatch):
    import wandb

    def broken(*a, **k):
        raise RuntimeError("no wandb service")

    monkeypatch.setattr(wandb, "init", broken)
    res = train("wbinit", steps=2, wandb="offline")
    assert "wandb unavailable (RuntimeError: no wandb service)" in res.output

    class FlakyRun:
        def log(self, *a, **k):
            raise ConnectionError("gone")

        def finish(self, *a, **k):
            pass

    monkeypatch.setattr(wandb, "init", lambda *a, **k: FlakyRun())
    res = train("wblog", steps=3, wandb="offline")
    assert res.output.count("wandb.log failed") == 1
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    res = train("wbmissing", steps=2, wandb="offline")
    assert "wandb unavailable (ModuleNotFoundError" in res.output


def test_wandb_auto_mode_needs_a_key_to_go_online(monkeypatch, tmp_path):
    from backlm.logs.wandb_log import resolve_mode

    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "off" and resolve_mode("offline") == "offline"


def test_wandb_runs_are_tagged_and_grouped_by_lineage(home, lineage, monkeypatch):
    """Tags say direction, phase and depth; a lineage shares one group (its root experiment);
    the job type is the phase."""
    import wandb

    from backlm.experiment.folder import Experiment
    from backlm.logs.wandb_log import run_labels

    for exp_id, group, phase in (("b0", "b0", "base"), ("s1", "b0", "sft")):
        exp = Experiment(lineage / exp_id)
        labels = run_labels(SimpleNamespace(cfg=exp.config(), exp=exp))
        direction, depth = exp.metadata()["direction"], exp.config().model.depth
        assert labels == {"tags": [f"direction:{direction}", f"phase:{phase}",
                                   f"depth:{depth}"], "group": group, "job_type": phase}

    seen = {}

    class Run:
        def log(self, *a, **k):
            pass

        def finish(self, *a, **k):
            pass

    def init(**kwargs):
        seen.update(kwargs)
        return Run()

    monkeypatch.setattr(wandb, "init", init)  # what a real training run asks wandb for
    train("wbtags", steps=1, direction="backward", wandb="offline")
    assert seen["tags"] == ["direction:backward", "phase:base", "depth:2"]
    assert seen["group"] == "wbtags" and seen["job_type"] == "base"
