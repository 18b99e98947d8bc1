"""What metadata records about where a run came from."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from backlm.experiment import provenance
from tests.helpers import TINY


def test_environment_and_command_line(monkeypatch):
    env = provenance.environment()
    assert set(env) == {"python", "torch", "cuda", "host", "platform"}
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    monkeypatch.setattr(sys, "argv", ["/usr/bin/backlm", "train", "--depth", "4"])
    assert provenance.command_line() == "backlm train --depth 4"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def _provenance_in(tree: Path):
    """provenance.py loaded from a copy at ``tree``/backlm/experiment: git_commit looks for the
    checkout that holds the source file, not the one the process runs in."""
    source = tree / "backlm" / "experiment" / "provenance.py"
    source.parent.mkdir(parents=True)
    shutil.copy(provenance.__file__, source)
    spec = importlib.util.spec_from_file_location(f"provenance_at_{tree.name}", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_git_commit_is_the_head_of_the_checkout_holding_the_source(tmp_path, monkeypatch):
    repo = tmp_path / "checkout"
    copy = _provenance_in(repo)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    first = _git(repo, "rev-parse", "HEAD")
    monkeypatch.chdir(tmp_path)  # not the checkout: the commit follows the source file
    assert copy.git_commit() == first
    (repo / "README").write_text("x")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "second")
    assert copy.git_commit() == _git(repo, "rev-parse", "HEAD") != first


def test_a_new_experiment_records_that_commit(home, tmp_path, monkeypatch):
    from backlm.config import RunConfig, load_config
    from backlm.train.launch import create_experiment

    repo = tmp_path / "checkout"
    source = repo / "backlm" / "experiment" / "provenance.py"
    source.parent.mkdir(parents=True)
    source.write_text("# the source tree of this run\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    # the module that launch.py calls, now living in that checkout
    monkeypatch.setattr(provenance, "__file__", str(source))
    cfg = load_config(RunConfig, overrides=[*TINY, "id=prov"], flags={"log": {"wandb": "off"}})
    exp = create_experiment(cfg, home / "exps")
    assert exp.metadata()["git_commit"] == _git(repo, "rev-parse", "HEAD")


def test_no_checkout_or_no_git_records_none(tmp_path, monkeypatch):
    # git would search upward from the copy; stop it at tmp_path whatever lies above
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    copy = _provenance_in(tmp_path / "installed")
    assert copy.git_commit() is None
    repo = tmp_path / "checkout"
    copy = _provenance_in(repo)
    _git(repo, "init", "-q")
    assert copy.git_commit() is None  # a checkout without a commit yet
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git not installed
    assert copy.git_commit() is None
