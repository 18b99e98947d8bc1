"""``backlm sweep`` in-process: the dry run answers with the grid and the estimate and writes
nothing; bad input and a changed grid are one line, exit 2, nothing written; ``--compare`` of a
recorded sweep; ``backlm ls`` groups a sweep's members under it."""

from __future__ import annotations

import pytest

from backlm.direction import Direction
from backlm.experiment.sweeps import sweep_folder
from backlm.sweep.grid import new_record, parse_grid, write_record
from backlm.train import cost
from tests.helpers import TINY, assert_user_error, fake_experiment, run_cli, tree_snapshot

SETS = [a for s in TINY if not s.startswith("model.depth=") for a in ("--set", s)]
GRID = ["--id", "aot", "--directions", "forward,backward", "--depths", "1,2", "--seeds", "1,2",
        "--max-steps", "4"]


def test_the_dry_run_prints_the_grid_and_the_estimate_and_writes_nothing(home, monkeypatch):
    monkeypatch.setitem(cost._RATES, "fp32", 2e10)  # measuring the CPU takes seconds
    res = run_cli(["sweep", *GRID, *SETS, "--dry-run"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for words in ("aot-d1-forward-s1", "aot-d2-backward-s2", "est. time", "8 members",
                  "in total"):
        assert words in res.output
    assert res.output.index("aot-d1-backward-s1") < res.output.index("aot-d2-forward-s1")
    assert not (home / "exps").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--directions", ""], "--directions is empty"),
    (["--directions", "forward,upward"], "unknown direction 'upward' in --directions"),
    (["--seeds", "1,1"], "--seeds names 1 twice"),
    (["--depths", ""], "--depths is empty"),
    (["--set", "model.head_dim=128", "--set", "model.width=0"], "--depths 1 does not fit"),
    (["--set", "train.seed=3"], "--seeds"),
    (["--id", "x/y"], "invalid experiment id"),
])
def test_bad_input_is_one_line_and_writes_nothing(home, args, words):
    res = run_cli(["sweep", *GRID, *SETS, *args, "--dry-run"])
    assert_user_error(res, words)
    res = run_cli(["sweep", *GRID, *SETS, *args])
    assert_user_error(res, words)
    assert not (home / "exps").exists()


def test_a_sweep_id_that_is_an_experiment_is_refused(home):
    fake_experiment(home / "exps", "aot", "forward", 1, 1)
    before = tree_snapshot(home / "exps")
    assert_user_error(run_cli(["sweep", *GRID, *SETS]), "sweep id aot is the id of an experiment")
    assert tree_snapshot(home / "exps") == before


def recorded(root, **kw):
    grid = parse_grid("aot", (Direction.FORWARD, Direction.BACKWARD), "1,2", "1,2",
                      overrides=[s for s in SETS if s != "--set"], max_steps=4, **kw)
    write_record(sweep_folder(root, "aot"), new_record(grid, "backlm sweep ..."))
    return grid


def test_a_changed_grid_under_the_same_id_is_refused_naming_the_field(home):
    root = home / "exps"
    recorded(root)
    before = tree_snapshot(root)
    changed = [a if a != "1,2" else "1,3" for a in GRID]  # --depths 1,3 (and seeds 1,3)
    assert_user_error(run_cli(["sweep", *changed, *SETS]), "depths 1,2", "1,3")
    assert_user_error(run_cli(["sweep", *GRID, *SETS, "--max-steps", "5"]), "max_steps")
    assert_user_error(run_cli(["sweep", *GRID, *SETS, "--compare"]), "--directions",
                      "with --compare")
    assert tree_snapshot(root) == before


def test_compare_reads_the_recorded_grid(home, monkeypatch):
    monkeypatch.setattr("backlm.compare.figures.draw", lambda *a, **k: {})
    root = home / "exps"
    grid = recorded(root)
    for m in grid.members()[:4]:  # seed 1 done, seed 2 not yet
        fake_experiment(root, m.id, str(m.direction), m.depth, m.seed, gap=0.05)
    res = run_cli(["sweep", "--id", "aot", "--compare"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "fwd − bwd models" in res.output and "aot-d2-backward-s2" in res.output  # left out
    assert sweep_folder(root, "aot").summary_path.is_file()
    assert_user_error(run_cli(["sweep", "--id", "nope", "--compare"]), "no sweep 'nope'")


def test_ls_groups_a_sweeps_members_under_it(home):
    root = home / "exps"
    grid = recorded(root)
    for m in grid.members()[:3]:
        fake_experiment(root, m.id, str(m.direction), m.depth, m.seed)
    fake_experiment(root, "alone", "forward", 1, 1)
    fake_experiment(root, "zz-before", "backward", 1, 1)
    res = run_cli(["ls"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = res.output
    order = [out.index(w) for w in ("sweep aot", "aot-d1-forward-s1", "aot-d1-backward-s1",
                                    "aot-d2-forward-s1", "not in a sweep", "alone", "zz-before")]
    assert order == sorted(order), out
    assert "3/3 finished" in out
