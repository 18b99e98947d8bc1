"""The experiment folder: every file by name, creation, lookup, reading what a run left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backlm.config import RunConfig, to_yaml
from backlm.errors import UserError
from backlm.experiment import folder as xp
from backlm.experiment.folder import Experiment


def make(root: Path, exp_id: str, **meta) -> Experiment:
    cfg = RunConfig(id=exp_id)
    metadata = {"id": exp_id, "phase": "base", "direction": "forward", "depth": 4,
                "created": "2026-12-01T10:00:00+00:00", **meta}
    return xp.create(root, exp_id, config_yaml=to_yaml(cfg), metadata=metadata,
                     parent_link=None)


def test_every_part_of_the_layout_has_a_name(tmp_path):
    e = Experiment(tmp_path / "exp1")
    rel = {k: str(getattr(e, k).relative_to(e.path)) for k in (
        "config_path", "metadata_path", "parent_link_path", "metrics_path", "summary_path",
        "tokenizer_dir", "checkpoints", "notes_dir", "samples_path", "report_path",
        "figures_dir")}
    assert rel == {
        "config_path": "config.yaml", "metadata_path": "metadata.json",
        "parent_link_path": "parent_link.json", "metrics_path": "metrics.jsonl",
        "summary_path": "training_summary.json", "tokenizer_dir": "tokenizer",
        "checkpoints": "checkpoints", "notes_dir": "notes",
        "samples_path": "notes/generation_samples.jsonl", "report_path": "RESEARCH_REPORT.md",
        "figures_dir": "figures"}
    assert e.id == "exp1"
    assert e.notes_path().name == "notes.txt" and e.notes_path(issue=True).name == "issues.txt"
    assert e.checkpoint_dir(42) == e.path / "checkpoints" / "step_000042"
    assert e.best_path("val").name == "best.json"
    assert e.best_path("5cat").name == "best_5cat.json"
    assert e.research_log("sft") == e.path / "sft.h5"
    assert e.evaluation_path("mid", "backward", "arc-easy") == \
        e.path / "evaluations" / "mid" / "backward" / "arc-easy.json"
    assert e.fivecat_path("base", 7) == e.path / "evaluations/base/fivecat/step_000007.json"
    assert e.fivecat_path("base", 7, "backward").name == "step_000007_as-backward.json"


def test_create_then_read_back(tmp_path):
    e = make(tmp_path, "run1")
    assert e.metadata()["direction"] == "forward" and e.phase == "base"
    assert e.config() == RunConfig(id="run1")
    assert e.parent_link() is None and e.lineage() == [e]
    assert e.checkpoints.is_dir() and e.notes_dir.is_dir()
    assert e.checkpoint_steps() == [] and e.latest_checkpoint() is None
    assert e.best() is None and e.training_summary() is None
    e.update_metadata(status="running")
    assert e.metadata()["status"] == "running"
    with pytest.raises(UserError, match="already exists"):
        make(tmp_path, "run1")
    assert not list(tmp_path.glob(".*"))  # nothing half-made is left


def test_checkpoint_steps_are_the_complete_ones(tmp_path):
    e = make(tmp_path, "ck")
    for step, files in ((4, ("meta.json", "model.safetensors")), (8, ("meta.json",)),
                        (12, ("meta.json", "model.safetensors"))):
        folder = e.checkpoint_dir(step)
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    (e.checkpoints / ".step_000016.tmp").mkdir()  # a write in progress
    assert e.checkpoint_steps() == [4, 12]
    assert e.latest_checkpoint() == e.checkpoint_dir(12)


def test_best_records_round_trip_and_tolerate_garbage(tmp_path):
    e = make(tmp_path, "best")
    e.write_best("val", {"step": 4, "value": 1.5})
    e.write_best("5cat", {"step": 8, "score": 0.3})
    assert e.best()["step"] == 4 and e.best("5cat")["step"] == 8
    e.best_path("val").write_text("{torn")
    assert e.best() is None  # unreadable: as if absent, never a crash


def test_corrupt_or_missing_files_are_user_errors(tmp_path):
    e = make(tmp_path, "bad")
    e.metadata_path.write_text("[1, 2]")
    with pytest.raises(UserError, match="corrupt"):
        e.metadata()
    e.metadata_path.write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        e.metadata()
    e.metadata_path.write_text(json.dumps({"id": "bad"}))
    with pytest.raises(UserError, match="data_dir"):
        e.data_dir()
    e.config_path.unlink()
    with pytest.raises(UserError, match="config.yaml"):
        e.config()


def test_lineage_follows_the_chain_that_still_exists(tmp_path):
    root = make(tmp_path, "root")
    mid = make(tmp_path, "mid")
    child = make(tmp_path, "child")
    child.parent_link_path.write_text(json.dumps(
        {"parent": "mid", "chain": [str(root.path), str(tmp_path / "gone"), str(mid.path)]}))
    assert [e.id for e in child.lineage()] == ["root", "mid", "child"]


def test_find_by_id_path_and_tag(tmp_path):
    make(tmp_path, "a", created="2026-12-01T10:00:00+00:00")
    make(tmp_path, "b", created="2026-12-01T11:00:00+00:00")
    make(tmp_path, "c", direction="backward", depth=20)
    assert xp.find("a", tmp_path).id == "a"
    assert xp.find(str(tmp_path / "b"), tmp_path).id == "b"
    assert xp.find("d4_forward", tmp_path).id == "b"  # the newest of that depth and direction
    assert xp.find("base_d20_backward", tmp_path).id == "c"
    make(tmp_path, "d", created="2026-12-01T11:00:00+00:00")
    with pytest.raises(UserError, match="ambiguous"):
        xp.find("d4_forward", tmp_path)
    with pytest.raises(UserError, match="no experiment 'zzz'"):
        xp.find("zzz", tmp_path)


def test_ids_must_be_folder_names(tmp_path):
    for bad in ("../up", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(UserError):
            xp.check_id(bad)
    assert xp.new_id("base", "backward", 4).startswith("base_backward_d4_")


def test_list_rows_marks_dead_runs_and_corrupt_folders(tmp_path):
    make(tmp_path, "dead", status="running")
    make(tmp_path, "broken").metadata_path.write_text("{")
    from backlm.experiment import list_rows

    rows = {r["id"]: r for r in list_rows(tmp_path)}
    assert rows["dead"]["status"] == "stopped"  # no live lock holder
    assert rows["broken"]["status"] == "corrupt"
    assert list_rows(tmp_path / "nowhere") == []


def test_fivecat_results_are_listed_by_step_without_other_judgements(tmp_path):
    e = make(tmp_path, "e")
    assert e.fivecat_results("base") == []  # no evaluations folder yet
    for step, as_dir in ((12, None), (3, None), (12, "forward")):
        e.fivecat_path("base", step, as_dir).parent.mkdir(parents=True, exist_ok=True)
        e.fivecat_path("base", step, as_dir).write_text("{}")
    assert e.fivecat_results("base") == [(3, e.fivecat_path("base", 3)),
                                         (12, e.fivecat_path("base", 12))]
