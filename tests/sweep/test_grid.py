"""The grid: axes parsed and refused in one line, member ids and run order, the sweep.json
record, its identity check and the ids a sweep may not take."""

from __future__ import annotations

import os

import pytest

from backlm.direction import Direction
from backlm.errors import UserError
from backlm.experiment.sweeps import sweep_folder
from backlm.sweep.grid import (
    check_members_free,
    check_same,
    grid_of,
    new_record,
    parse_grid,
    read_record,
    set_status,
    write_record,
)

FB = (Direction.FORWARD, Direction.BACKWARD)


def grid(**kw):
    args = {"directions": FB, "depths": "2,4", "seeds": "1,2"}
    args.update(kw)
    return parse_grid("aot", args.pop("directions"), args.pop("depths"), args.pop("seeds"),
                      **args)


def test_members_run_smallest_size_and_first_seed_first_with_predictable_ids():
    g = grid()
    assert g.directions == (Direction.FORWARD, Direction.BACKWARD)
    assert [m.id for m in g.members()] == [
        "aot-d2-forward-s1", "aot-d2-backward-s1", "aot-d4-forward-s1", "aot-d4-backward-s1",
        "aot-d2-forward-s2", "aot-d2-backward-s2", "aot-d4-forward-s2", "aot-d4-backward-s2"]
    assert all(m.experiments == [m.id] and m.final == m.id for m in g.members())


def test_a_chain_member_names_each_phase():
    (m, *_) = grid(phase="base,sft").members()
    assert m.experiments == ["aot-d2-forward-s1-base", "aot-d2-forward-s1-sft"]
    assert m.final == "aot-d2-forward-s1-sft"


@pytest.mark.parametrize(("kw", "words"), [
    ({"directions": ()}, "--directions is empty"),
    ({"depths": " , "}, "--depths is empty"),
    ({"seeds": "1,,2"}, "empty value"),
    ({"seeds": None}, "--seeds is missing"),
    ({"directions": FB + FB[:1]}, "--directions names forward twice"),
    ({"depths": "2,2"}, "--depths names 2 twice"),
    ({"depths": "0"}, "below 1"),
    ({"depths": "two"}, "not a whole number"),
    ({"seeds": "-1"}, "below 0"),
    ({"phase": "base,nope"}, "unknown phase"),
    ({"max_steps": 0}, "--max-steps"),
])
def test_bad_axes_are_one_line(kw, words):
    with pytest.raises(UserError, match=words):
        grid(**kw)


def test_bad_or_too_long_ids_are_refused():
    with pytest.raises(UserError, match="invalid experiment id"):
        parse_grid("bad/id", FB, "2", "1")
    with pytest.raises(UserError, match="--id is empty"):
        parse_grid(" ", FB, "2", "1")
    with pytest.raises(UserError, match="shorter --id"):
        parse_grid("x" * 110, (Direction.BIDIRECTIONAL,), "2", "1")


def test_the_record_round_trips_and_a_changed_grid_is_named(tmp_path):
    g = grid(overrides=["train.eval_every=4"], max_steps=8)
    record = new_record(g, "backlm sweep ...")
    assert grid_of(record) == g
    check_same(record, g)  # the same asks pass
    with pytest.raises(UserError, match="depths 2,4, but this command asks for 2,6"):
        check_same(record, grid(depths="2,6", overrides=["train.eval_every=4"], max_steps=8))
    with pytest.raises(UserError, match="overrides"):
        check_same(record, grid(max_steps=8))
    with pytest.raises(UserError, match="max_steps 8, but this command asks for "
                                        r"\(preset default\)"):
        check_same(record, grid(overrides=["train.eval_every=4"]))


def test_records_are_written_only_when_they_change(tmp_path):
    folder = sweep_folder(tmp_path, "aot")
    record = new_record(grid(), "cmd")
    write_record(folder, record)
    assert read_record(folder) == record
    before = os.stat(folder.record).st_mtime_ns
    set_status(record, "aot-d2-forward-s1", status="pending")  # no change
    write_record(folder, record)
    assert os.stat(folder.record).st_mtime_ns == before
    set_status(record, "aot-d2-forward-s1", status="finished")
    write_record(folder, record)
    assert read_record(folder)["members"][0]["status"] == "finished"


def test_a_corrupt_record_is_one_line(tmp_path):
    folder = sweep_folder(tmp_path, "aot")
    folder.path.mkdir(parents=True)
    folder.record.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a sweep record"):
        read_record(folder)


def test_ids_a_sweep_may_not_take(tmp_path):
    g = grid()
    (tmp_path / "aot").mkdir()
    with pytest.raises(UserError, match="sweep id aot is the id of an experiment"):
        check_members_free(tmp_path, g, None)
    (tmp_path / "aot").rmdir()
    (tmp_path / "aot-d4-forward-s2").mkdir()
    with pytest.raises(UserError, match="aot-d4-forward-s2 already exists and is not a member"):
        check_members_free(tmp_path, g, None)
    check_members_free(tmp_path, g, new_record(g, "cmd"))  # its own member: fine
