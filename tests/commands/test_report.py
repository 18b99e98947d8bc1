"""``backlm report``: an experiment's report with its figures, the overview of every
experiment, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backlm.experiment.folder import Experiment
from tests.helpers import (
    assert_png_has_data,
    assert_user_error,
    copy_experiments,
    run_cli,
    tree_snapshot,
)


@pytest.fixture
def exps(report_world, tmp_path) -> Path:
    return copy_experiments(report_world, tmp_path / "exps")


def test_report_writes_the_report_and_lists_what_is_missing(exps):
    res = run_cli(["report", "b0", "--experiments-dir", str(exps)])
    assert res.exit_code == 0, res.output
    exp = Experiment(exps / "b0")
    assert f"wrote {exp.report_path} with 5 figures" in " ".join(res.output.split())
    assert "missing: No generation samples" in res.output
    doc = exp.report_path.read_text()
    assert doc.startswith("# Research report: b0\n\n**Direction: backward**")
    for name in ("learning_curves", "fivecat_history", "eval_position_loss", "attention",
                 "attention_heads"):
        assert f"](figures/{name}.png)" in doc
        assert_png_has_data(exp.figures_dir / f"{name}.png")


def test_report_without_an_experiment_prints_the_overview(exps):
    Experiment(exps / "b0").report_path.write_text("# a report\n")  # as `report b0` leaves
    res = run_cli(["report", "--experiments-dir", str(exps)])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip().removeprefix("└─ "): line
            for line in res.output.splitlines() if line.startswith("│") and "│" in line[1:]}
    for exp_id in ("b0", "s1", "bi0", "bi1", "crash"):
        assert exp_id in rows, res.output
    b0 = [c.strip() for c in rows["b0"].split("│")]
    assert b0[1:6] == ["b0", "base", "backward", "finished", "4"]
    assert "5/5" in b0 and b0[-2] == "yes"
    assert [c.strip() for c in rows["s1"].split("│")][-2] == "-"  # no report yet
    assert "stopped" in rows["crash"]
    assert "4 without a report: `backlm report EXP` writes one" in res.output
    assert not Experiment(exps / "s1").report_path.exists()  # the overview writes nothing


def test_report_of_an_empty_folder(tmp_path):
    res = run_cli(["report", "--experiments-dir", str(tmp_path / "none")])
    assert res.exit_code == 0 and "no experiments in" in res.output
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("args", [
    ["report", "nope"],
    ["report", "d9_forward"],
])
def test_unknown_experiment_is_one_line_and_writes_nothing(exps, args):
    before = tree_snapshot(exps)
    res = run_cli([*args, "--experiments-dir", str(exps)])
    assert assert_user_error(res).startswith("error: no experiment")
    assert tree_snapshot(exps) == before


def test_an_experiments_dir_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args in (["report"], ["report", "b0"]):
        res = run_cli([*args, "--experiments-dir", str(blocker / "exps")])
        assert_user_error(res, "is a file")
    assert blocker.read_text() == "x"


def test_corrupt_metadata_is_one_line_and_writes_nothing(exps):
    exp = Experiment(exps / "bi1")
    exp.metadata_path.write_text("{oops")
    before = tree_snapshot(exps)
    res = run_cli(["report", "bi1", "--experiments-dir", str(exps)])
    assert_user_error(res, "metadata.json", "corrupt")
    assert tree_snapshot(exps) == before
    res = run_cli(["report", "--experiments-dir", str(exps)])  # the overview still lists it
    assert res.exit_code == 0 and "corrupt" in res.output, res.output
