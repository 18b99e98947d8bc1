"""Where a sweep keeps its files, and the members each sweep lists (what ``backlm ls``
groups by)."""

from __future__ import annotations

import json

import pytest

from backlm.errors import UserError
from backlm.experiment.sweeps import sweep_folder, sweep_members, sweeps_root


def test_a_sweep_lives_under_the_experiments_root(tmp_path):
    folder = sweep_folder(tmp_path, "aot")
    assert folder.path == tmp_path / "sweeps" / "aot" and folder.id == "aot"
    assert folder.record.name == "sweep.json" and folder.comparison_dir.parent == folder.path
    with pytest.raises(UserError, match="invalid experiment id"):
        sweep_folder(tmp_path, "../x")


def test_members_are_read_from_each_record_and_a_bad_record_lists_none(tmp_path):
    assert sweep_members(tmp_path) == {}
    good = sweep_folder(tmp_path, "b")
    good.path.mkdir(parents=True)
    good.record.write_text(json.dumps({"members": [
        {"id": "b-d1-forward-s1", "experiments": ["b-d1-forward-s1"]},
        {"id": "b-d1-backward-s1", "experiments": ["b-d1-backward-s1-base",
                                                   "b-d1-backward-s1-sft"]}]}))
    bad = sweep_folder(tmp_path, "a")
    bad.path.mkdir(parents=True)
    bad.record.write_text("{torn")
    (sweeps_root(tmp_path) / ".b.123.tmp").mkdir()
    assert sweep_members(tmp_path) == {"b": ["b-d1-forward-s1", "b-d1-backward-s1-base",
                                             "b-d1-backward-s1-sft"]}
