"""The lineage forest: depth-first order, children by creation time, and parent links that
point nowhere, cannot be read or form a cycle shown as roots with a note."""

from __future__ import annotations

import json

from backlm.experiment.tree import tree_rows
from tests.helpers import make_child


def _shape(rows):
    return [(r["id"], r["depth_in_tree"]) for r in rows]


def test_depth_first_roots_by_id_children_by_created(tmp_path):
    make_child(tmp_path, "zbase", best={"step": 200, "monitor": "val_bpb", "value": 1.234})
    make_child(tmp_path, "abase", direction="backward")
    make_child(tmp_path, "late", parent="zbase", step=300, created="2026-12-03T00:00:00+00:00")
    make_child(tmp_path, "early", parent="zbase", step=200, created="2026-12-02T00:00:00+00:00")
    make_child(tmp_path, "grand", parent="early", step=50, phase="rl", status="running")
    rows = tree_rows(tmp_path)
    assert _shape(rows) == [("abase", 0), ("zbase", 0), ("early", 1), ("grand", 2),
                            ("late", 1)]
    by_id = {r["id"]: r for r in rows}
    assert by_id["zbase"]["best"] == "val_bpb 1.2340 @ step 200"
    assert by_id["zbase"]["parent_step"] is None and by_id["abase"]["best"] is None
    assert by_id["early"]["parent_step"] == 200 and by_id["grand"]["parent_step"] == 50
    assert by_id["grand"]["phase"] == "rl" and by_id["grand"]["status"] == "stopped"
    assert by_id["abase"]["direction"] == "backward"
    assert all(r["note"] is None for r in rows)


def test_missing_parent_becomes_a_root_with_a_note(tmp_path):
    make_child(tmp_path, "base")
    orphan = make_child(tmp_path, "orphan", parent="base")
    make_child(tmp_path, "kid", parent="orphan")
    import shutil

    shutil.rmtree(tmp_path / "base")
    rows = tree_rows(tmp_path)
    assert _shape(rows) == [("orphan", 0), ("kid", 1)]
    assert rows[0]["note"] == "(parent base missing)" and rows[0]["parent_step"] is None
    assert orphan.parent_link()["parent_id"] == "base"


def test_cycles_and_bad_links_do_not_crash(tmp_path):
    a = make_child(tmp_path, "a")
    b = make_child(tmp_path, "b", parent="a")
    make_child(tmp_path, "c", parent="b")
    link = b.parent_link()
    a.parent_link_path.write_text(json.dumps({**link, "parent_id": "b"}))  # a <-> b
    make_child(tmp_path, "self").parent_link_path.write_text(json.dumps({"parent_id": "self"}))
    make_child(tmp_path, "junk").parent_link_path.write_text("{not json")
    make_child(tmp_path, "list").parent_link_path.write_text("[1]")
    make_child(tmp_path, "broken").metadata_path.write_text("{")
    rows = {r["id"]: r for r in tree_rows(tmp_path)}
    assert len(rows) == 7
    assert rows["a"]["note"] == rows["b"]["note"] == "(parent links form a cycle)"
    assert rows["self"]["note"] == "(parent links form a cycle)"
    assert rows["c"]["depth_in_tree"] == 1  # still under b, which shows as a root
    assert rows["junk"]["note"] == rows["list"]["note"] == "(parent link unreadable)"
    assert rows["broken"]["status"] == "corrupt" and rows["broken"]["note"] is None
    assert tree_rows(tmp_path / "nowhere") == []


def test_without_a_best_record_the_phase_metric_is_shown_as_final(tmp_path):
    """An RL run whose best evaluation was step 0 has no best.json: its final reward is shown,
    not its bits per byte."""
    make_child(tmp_path, "b")
    make_child(tmp_path, "r", parent="b", phase="rl",
               results={"val_bpb": 4.1593, "val_reward": 0.241})
    make_child(tmp_path, "plain", results={"val_bpb": 1.5})
    best = {row["id"]: row["best"] for row in tree_rows(tmp_path)}
    assert best["r"] == "val_reward 0.2410 (final)"
    assert best["plain"] == "val_bpb 1.5000 (final)" and best["b"] is None
