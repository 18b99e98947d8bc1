"""``backlm ls``: a table of experiments, or a line saying there are none."""

from __future__ import annotations

import json

from tests.helpers import run_cli


def test_empty_folder_says_so(tmp_path):
    res = run_cli(["ls", "--experiments-dir", str(tmp_path / "none")])
    assert res.exit_code == 0 and "no experiments in" in res.output


def test_rows_show_status_step_and_bpb(tmp_path):
    for exp_id, meta in (("a-run", {"status": "finished", "results": {"val_bpb": 1.25}}),
                         ("broken", None)):
        folder = tmp_path / exp_id
        (folder / "checkpoints" / "step_000004").mkdir(parents=True)
        for name in ("meta.json", "model.safetensors"):
            (folder / "checkpoints" / "step_000004" / name).write_text("{}")
        text = "{" if meta is None else json.dumps({"id": exp_id, "phase": "base",
                                                    "direction": "backward", "depth": 4, **meta})
        (folder / "metadata.json").write_text(text)
    res = run_cli(["ls", "--experiments-dir", str(tmp_path)])
    assert res.exit_code == 0
    line = next(x for x in res.output.splitlines() if "a-run" in x)
    assert "backward" in line and "1.2500" in line and "finished" in line and " 4 " in line
    assert "corrupt" in next(x for x in res.output.splitlines() if "broken" in x)


def test_tree_indents_children_under_parents(tmp_path, monkeypatch):
    from tests.helpers import make_child

    monkeypatch.setenv("COLUMNS", "160")  # keep rich tables on one line each
    make_child(tmp_path, "base1", best={"step": 40, "monitor": "val_bpb", "value": 1.5})
    make_child(tmp_path, "sft1", parent="base1", step=40, direction="backward")
    make_child(tmp_path, "rl1", parent="sft1", step=7, phase="rl")
    make_child(tmp_path, "stray", parent="gone")
    res = run_cli(["ls", "--experiments-dir", str(tmp_path), "--tree"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()

    def line(word):
        return next(x for x in lines if word in x)

    order = [lines.index(line(w)) for w in ("base1", "sft1", "rl1", "stray")]
    assert order == sorted(order)
    assert "│ base1" in line("base1") and "val_bpb 1.5000 @ step 40" in line("base1")
    assert "│ └─ sft1" in line("sft1") and " 40 " in line("sft1") and "backward" in line("sft1")
    assert "│    └─ rl1" in line("rl1") and " 7 " in line("rl1") and "rl" in line("rl1")
    stray = lines.index(line("stray"))
    assert "└─" not in line("stray") and "(parent gone missing)" in lines[stray + 1]


def test_tree_of_an_empty_folder(tmp_path):
    res = run_cli(["ls", "--experiments-dir", str(tmp_path), "--tree"])
    assert res.exit_code == 0 and "no experiments in" in res.output


def test_a_running_run_shows_its_live_step_and_a_finished_one_its_checkpoint(exps, monkeypatch):
    """e1: checkpoint at step 8, metrics.jsonl to step 12 (its last line torn mid-write)."""
    from backlm.atomic import write_json
    from backlm.experiment.folder import Experiment

    monkeypatch.setenv("COLUMNS", "160")

    def row():
        res = run_cli(["ls", "--experiments-dir", str(exps)])
        assert res.exit_code == 0, res.output
        return next(x for x in res.output.splitlines() if "e1" in x)

    lock = Experiment(exps / "e1").lock().acquire()  # this live process is the run
    try:
        assert " 12 " in row() and "running" in row()  # the live step, not checkpoint 8
    finally:
        lock.release()
    assert " 8 " in row() and "stopped" in row()  # killed: its resume point
    write_json(exps / "e1" / "metadata.json", {"id": "e1", "phase": "base",
                                               "status": "finished"})
    assert " 8 " in row() and "finished" in row()
