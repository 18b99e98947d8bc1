"""``backlm note``: timestamped lines in notes.txt / issues.txt at the experiment's latest
step."""

from __future__ import annotations

import re

from tests.helpers import run_cli

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00  step (\d+)  (.*)$")


def test_note_and_issue_append_timestamped_lines(exps):
    assert run_cli(["note", "e1", "lr looks\n too high"]).exit_code == 0
    res = run_cli(["note", "e1", "second", "--experiments-dir", str(exps)])
    assert res.exit_code == 0 and "notes.txt" in res.output
    notes = (exps / "e1" / "notes" / "notes.txt").read_text().splitlines()
    assert [LINE.match(x).groups() for x in notes] == [("12", "lr looks too high"),
                                                       ("12", "second")]
    assert run_cli(["note", "e1", "loss spike", "--issue"]).exit_code == 0
    issues = (exps / "e1" / "notes" / "issues.txt").read_text().splitlines()
    assert LINE.match(issues[0]).groups() == ("12", "loss spike")
    assert len((exps / "e1" / "notes" / "notes.txt").read_text().splitlines()) == 2


def test_latest_step_falls_back_to_checkpoints(exps):
    from backlm.experiment.folder import Experiment
    from backlm.experiment.notes import latest_step

    (exps / "e1" / "metrics.jsonl").unlink()
    assert latest_step(Experiment(exps / "e1")) == 8
