"""``backlm probe reversal``: a probe stored in the experiment and reused, shown by report and
compare; a teaching child in the lineage (slow); bad input (one line, exit 2, nothing
written)."""

from __future__ import annotations

import json
import shutil

import pytest

from backlm.experiment.folder import Experiment
from tests.helpers import assert_png_has_data, assert_user_error, run_cli, tree_snapshot

FAST = ["--facts", "4", "--controls", "4", "--k", "3", "--resamples", "50", "--samples", "1",
        "--device", "cpu"]


def test_probe_stores_its_result_and_reuses_it(lineage):
    res = run_cli(["probe", "reversal", "b0", *FAST])
    assert res.exit_code == 0, res.output
    exp = Experiment(lineage / "b0")
    path, png = exp.reversal_path("base"), exp.reversal_path("base", figure=True)
    data = json.loads(path.read_text())
    assert data["model_sha256"] and data["k"] == 3 and data["facts"] == 4
    assert [(p["flow"], p["phrasing"]) for p in data["probes"]] == [
        ("B→A", "statement"), ("A→B", "reversed")]
    mrr = data["probes"][0]["splits"]["controls"]["summary"]["mrr"]
    assert mrr["lo"] <= mrr["value"] <= mrr["hi"]
    assert_png_has_data(png)
    text = " ".join(res.output.split())
    assert "B→A" in text and "written:" in text
    again = run_cli(["probe", "reversal", "b0", *FAST])
    assert again.exit_code == 0 and "stored:" in " ".join(again.output.split())


def test_the_comparison_sets_probes_side_by_side(lineage):
    from backlm.atomic import write_json
    from backlm.compare import probe

    stored = {"probe": "reversal", "experiment": "b0", "model_direction": "backward", "k": 3,
              "chance": {"mrr": 0.6, "top1": 0.33}, "probes": [
                  {"flow": f, "phrasing": p, "order": "backward", "splits": {
                      s: {"summary": {m: {"value": 0.5, "lo": 0.4, "hi": 0.6}
                                      for m in probe.METRICS}} for s in ("facts", "controls")}}
                  for f, p in (("B→A", "statement"), ("A→B", "reversed"))]}
    write_json(Experiment(lineage / "b0").reversal_path("base"), stored)
    lines = probe.markdown([Experiment(lineage / "b0"), Experiment(lineage / "s1")])
    assert lines[0] == "## Reversal probe"
    assert sum(line.startswith("| b0 |") for line in lines) == 2
    assert not any(line.startswith("| s1 |") for line in lines)  # no probe stored: no rows
    assert probe.markdown([Experiment(lineage / "s1")]) == []


@pytest.mark.parametrize(("args", "words"), [
    (["b0", "--k", "1"], ["--k"]),
    (["b0", "--facts", "4", "--controls", "8", "--k", "5"], ["--k", "4"]),
    (["b0", "--facts", "0"], ["--facts"]),
    (["b0", "--controls", "-3"], ["--controls"]),
    (["nope"], ["nope"]),
    ([], ["--parent"]),
    (["b0", "--id", "t1"], ["--parent"]),
    (["--parent", "b0", "--set", "data.dataset=x"], ["data.dataset"]),
    (["--parent", "b0", "--steps", "0"], ["--steps"]),
])
def test_bad_input_is_one_line_and_writes_nothing(lineage, phase_world, args, words):
    before = tree_snapshot(lineage, phase_world / "home")
    assert_user_error(run_cli(["probe", "reversal", *args]), *words)
    assert tree_snapshot(lineage, phase_world / "home") == before


@pytest.mark.slow
def test_another_k_is_measured_again_and_the_report_shows_the_probe(lineage):
    exp = Experiment(lineage / "b0")
    path = exp.reversal_path("base")
    assert run_cli(["probe", "reversal", "b0", *FAST]).exit_code == 0
    # another K is another result: measured again
    other = run_cli(["probe", "reversal", "b0", *FAST, "--k", "2"])
    assert other.exit_code == 0 and json.loads(path.read_text())["k"] == 2
    # the report shows it
    rep = run_cli(["report", "b0", "--experiments-dir", str(lineage)])
    assert rep.exit_code == 0, rep.output
    doc = exp.report_path.read_text()
    assert "## Reversal probe (phase base" in doc and "](evaluations/base/reversal.png)" in doc


@pytest.mark.slow
def test_teaching_child_learns_in_the_lineage(lineage, phase_world, tmp_path, monkeypatch):
    """``--parent b0`` makes the facts, trains a mid child on them (the one loop) and probes it;
    the child's lineage and data are the facts'."""
    home = tmp_path / "home"
    shutil.copytree(phase_world / "home", home)
    monkeypatch.setenv("BACKLM_HOME", str(home))
    res = run_cli(["probe", "reversal", "--parent", "b0", "--id", "t1", "--steps", "2", *FAST,
                   "--set", "chat.dataset=tinychat", "--set", "train.eval_every=2",
                   "--set", "train.save_every=2"])
    assert res.exit_code == 0, res.output
    child = Experiment(lineage / "t1")
    assert child.parent_link()["parent_id"] == "b0"
    meta = child.metadata()
    assert meta["phase"] == "mid" and meta["status"] == "finished"
    facts = json.loads((child.data_dir() / "facts.json").read_text())
    assert len(facts["facts"]) == 4 and child.data_dir().parent == home / "data"
    data = json.loads(child.reversal_path("mid").read_text())
    assert data["fact_set"] == facts and data["phase"] == "mid"
    # the parent is probed on the very same facts
    assert run_cli(["probe", "reversal", "b0", *FAST]).exit_code == 0
    parent = json.loads(Experiment(lineage / "b0").reversal_path("base").read_text())
    assert parent["facts_sha256"] == data["facts_sha256"]
