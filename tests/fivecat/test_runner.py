"""``check``: 5CAT of one checkpoint as ``backlm 5cat`` runs it, called directly."""

from __future__ import annotations

import json
import shutil

import pytest

from backlm.errors import UserError
from backlm.experiment.folder import Experiment
from backlm.fivecat.runner import FivecatOptions, check


def test_check_saves_the_result_where_the_experiment_says(forward, home):
    ticks = []
    report = check("fwd", home / "exps", FivecatOptions(max_samples=6),
                   progress=lambda label, done, total: ticks.append((done, total)))
    exp = Experiment(forward)
    assert report.exp == exp and report.phase == "base" and report.checkpoint_direction == "forward"
    assert report.path == exp.fivecat_path("base", report.step)
    saved = json.loads(report.path.read_text())
    assert saved["step"] == report.step and saved["direction"] == "forward"
    assert saved["gates_passed"] == report.result.passed_count
    assert ticks and ticks[-1][0] == ticks[-1][1]  # every probe reported
    assert report.warnings == []  # no research log (log.hdf5 off): nothing to update


def test_a_judged_as_result_is_kept_apart(forward, home):
    report = check("fwd", home / "exps", FivecatOptions(max_samples=6, direction="backward"))
    assert report.result.direction == "backward" and report.checkpoint_direction == "forward"
    assert report.path.name == f"step_{report.step:06d}_as-backward.json"


def test_bad_input_fails_before_the_model_loads(forward, home, monkeypatch):
    import backlm.experiment.loading as inference

    monkeypatch.setattr(inference, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(UserError, match="no checkpoint at step 3"):
        check("fwd", home / "exps", FivecatOptions(step=3))
    with pytest.raises(UserError, match="unknown direction"):
        check("fwd", home / "exps", FivecatOptions(direction="up"))
    moved = forward.parent / "moved-runner"
    shutil.copytree(forward, moved)
    meta = json.loads((moved / "metadata.json").read_text())
    (moved / "metadata.json").write_text(json.dumps(dict(meta, data_dir=str(moved / "gone"))))
    with pytest.raises(UserError, match="does not exist"):
        check("moved-runner", home / "exps", FivecatOptions())
