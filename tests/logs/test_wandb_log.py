"""wandb: offline runs write into the experiment, off writes nothing, failures never fail the
run, and auto mode goes online only with a key."""

from __future__ import annotations

import sys

from tests.helpers import train_logged as train


def test_wandb_offline_writes_into_the_experiment_and_off_writes_nothing(home):
    train("wb", "--set", "log.hdf5=false", steps=2, wandb="offline")
    runs = list((home / "exps" / "wb" / "wandb").glob("offline-run-*-wb"))
    assert runs and any(runs[0].rglob("*.wandb"))
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
