"""A user's own files in every path a command writes: each command either refuses, exit 2
with one line naming the path, before any work and leaving them byte-identical, or works
around them (files beside its output, with the names its temporary folders once had) without
touching them. Only folders backlm made are ever replaced (:func:`backlm.atomic.is_owned`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, run_cli, tree_snapshot, use_world


@dataclass
class Case:
    """One command and the user files planted where it writes."""

    args: Callable[[Path, Path], list[str]]  # (experiments, tmp) → the command line
    plant: Callable[[Path, Path], Path | list[Path]]  # plants the files; the folders to watch
    refused: bool  # True: exit 2 naming the path; False: succeeds around the files
    private_home: bool = False  # it writes into BACKLM_HOME: give it one of its own
    fix: str = "move"  # what the refusal tells the user to do


def _user_folder(path: Path, *names: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in names or ("notes.txt",):
        (path / name).write_text(f"the user's own {name}\n")
    return path


def _staging(exps: Path) -> Path:
    from backlm.experiment.folder import Experiment

    return Experiment(exps / "b0").hub_staging_dir("me/tiny")


def _siblings(path: Path) -> list[Path]:
    """Hidden folders beside ``path`` named as backlm's temporary folders once were."""
    return [_user_folder(path.parent / name)
            for name in (f".{path.name}.tmp", f".{path.name}.old", f".{path.name}.creating")]


UPLOAD = ["upload", "b0", "--repo", "me/tiny", "--dry-run", "--step", "latest"]
COMPARE = ["compare", "b0", "s1", "--bootstrap", "10", "--output"]
SUFFIXES = ("train", "--max-steps", "1", "--set", "log.wandb=off")

CASES = {
    # backlm upload --dry-run: its staging folder
    "upload --dry-run: a user's folder at the staging path": Case(
        lambda e, t: UPLOAD, lambda e, t: _user_folder(_staging(e)), True),
    "upload --dry-run: a user's model.safetensors at the staging path": Case(
        lambda e, t: UPLOAD, lambda e, t: _user_folder(_staging(e), "model.safetensors"), True),
    "upload --dry-run: folders beside the staging path": Case(
        lambda e, t: UPLOAD, lambda e, t: _siblings(_staging(e)), False),
    # backlm export EXP OUT
    "export: a user's folder at OUT": Case(
        lambda e, t: ["export", "b0", str(t / "out"), "--step", "latest"],
        lambda e, t: _user_folder(t / "out"), True),
    "export: folders beside OUT": Case(
        lambda e, t: ["export", "b0", str(t / "side" / "out"), "--step", "latest"],
        lambda e, t: _siblings(t / "side" / "out"), False),
    # backlm compare --output
    "compare: a user's folder at --output": Case(
        lambda e, t: [*COMPARE, str(t / "cmp")], lambda e, t: _user_folder(t / "cmp"), True),
    "compare: a user's COMPARISON.md among other files at --output": Case(
        lambda e, t: [*COMPARE, str(t / "cmp")],
        lambda e, t: _user_folder(t / "cmp", "COMPARISON.md", "thesis.tex"), True),
    "compare: --output below a user's file": Case(
        lambda e, t: [*COMPARE, str(t / "cmp" / "notes.txt" / "out")],
        lambda e, t: _user_folder(t / "cmp"), True, fix="choose another --output"),
    # backlm report: figures/ and RESEARCH_REPORT.md in the experiment
    "report: a user's file in figures/": Case(
        lambda e, t: ["report", "b0"], lambda e, t: _user_folder(e / "b0" / "figures"), True),
    "report: a user's RESEARCH_REPORT.md": Case(
        lambda e, t: ["report", "b0"],
        lambda e, t: _user_folder(e / "b0", "RESEARCH_REPORT.md"), True),
    # backlm data prepare --force: the dataset folder
    "data prepare --force: a user's folder at the dataset": Case(
        lambda e, t: ["data", "prepare", "--force", "--dataset", "mine"],
        lambda e, t: _user_folder(t / "home" / "data" / "mine"), True, private_home=True),
    "data prepare --chat --force: a user's folder at the chat dataset": Case(
        lambda e, t: ["data", "prepare", "--chat", "--force", "--dataset", "mine"],
        lambda e, t: _user_folder(t / "home" / "data" / "mine"), True, private_home=True),
    # backlm train / branch --id, quickstart's members and comparison
    "train --id: a user's folder at the id": Case(
        lambda e, t: [*SUFFIXES, "--id", "mine"], lambda e, t: _user_folder(e / "mine"), True),
    "branch --id: a user's folder at the id": Case(
        lambda e, t: ["branch", "sft", "--parent", "b0", "--id", "mine", "--max-steps", "1"],
        lambda e, t: _user_folder(e / "mine"), True),
    "quickstart: a user's folder at a member's id": Case(
        lambda e, t: ["quickstart", "--prefix", "qs", "--steps", "1"],
        lambda e, t: _user_folder(e / "qs-d4-backward-s0"), True, private_home=True),
    "quickstart: a user's folder at the comparison": Case(
        lambda e, t: ["quickstart", "--prefix", "qs", "--steps", "1"],
        lambda e, t: _user_folder(e / "sweeps" / "qs" / "comparison"), True,
        private_home=True),
    "quickstart: a user's folder at the sweep's": Case(
        lambda e, t: ["quickstart", "--prefix", "qs", "--steps", "1"],
        lambda e, t: _user_folder(e / "sweeps" / "qs"), True, private_home=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_users_files_are_never_replaced(name, lineage, phase_world, tmp_path, monkeypatch):
    import backlm.compare.run as compare_run
    import backlm.train.loop as loop

    case = CASES[name]
    if case.private_home:
        monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    else:
        use_world(monkeypatch, phase_world, lineage)

    def no_work(*args, **kwargs):
        raise AssertionError("started work before checking where it writes")

    if case.refused:  # refused before evaluating or training anything
        monkeypatch.setattr(compare_run, "gather", no_work)
        monkeypatch.setattr(loop, "run", no_work)
    planted = case.plant(lineage, tmp_path)
    watched = planted if isinstance(planted, list) else [planted]
    before = tree_snapshot(*watched)
    res = run_cli(case.args(lineage, tmp_path))
    assert tree_snapshot(*watched) == before, name
    if case.refused:
        line = assert_user_error(res, case.fix)
        assert ".tmp" not in line and ".old" not in line, line  # the user's path, not ours
        assert str(watched[0]) in line, line
    else:
        assert res.exit_code == 0, res.output


def test_an_older_backlms_folders_are_still_replaced(lineage, phase_world, tmp_path,
                                                     monkeypatch):
    """Folders written before the ownership marker are recognised by their exact file set."""
    from backlm.atomic import OWNED

    use_world(monkeypatch, phase_world, lineage)
    assert run_cli(UPLOAD).exit_code == 0
    staging = _staging(lineage)
    (staging / OWNED).unlink()  # as an older backlm left it
    res = run_cli(UPLOAD)
    assert res.exit_code == 0, res.output
    assert (staging / OWNED).is_file()
    (staging / OWNED).unlink()
    (staging / "mine.txt").write_text("not a staged file")
    assert_user_error(run_cli(UPLOAD), str(staging), "move")
    assert (staging / "mine.txt").read_text() == "not a staged file"


def test_creating_an_experiment_leaves_folders_beside_it(tmp_path):
    from backlm.experiment.folder import create

    root = tmp_path / "exps"
    watched = _siblings(root / "new")
    before = tree_snapshot(*watched)
    create(root, "new", config_yaml="{}\n", metadata={"id": "new"}, parent_link=None)
    assert tree_snapshot(*watched) == before
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["new", *(p.name for p in watched)])  # and no temporary folder is left
