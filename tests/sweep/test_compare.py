"""The sweep's comparison on weightless experiments with stored evaluations: the gap per size
with seed-level and pooled intervals, the bidirectional model's per-order cost, 5CAT rows, the
scaling figure and SWEEP.md, written only when the members changed."""

from __future__ import annotations

import os

import pytest
from matplotlib.image import imread

from backlm.direction import Direction
from backlm.errors import UserError
from backlm.sweep import compare_sweep, parse_grid
from backlm.sweep.compare import is_fresh
from tests.helpers import fake_experiment

ALL = tuple(Direction)
GAP = {1: 0.02, 2: 0.06}  # forward reads worse by this many bits per byte, by depth


def members(root, grid, only=None):
    for m in grid.members():
        if only is None or m.id in only:
            fake_experiment(root, m.id, str(m.direction), m.depth, m.seed, gap=GAP[m.depth])


@pytest.fixture(autouse=True)
def no_compare_figures(monkeypatch):
    """compare's own figures (its tests draw them) take most of a comparison's time."""
    monkeypatch.setattr("backlm.compare.figures.draw", lambda *a, **k: {})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("swept")
    grid = parse_grid("aot", ALL, "1,2", "1,2")
    members(root, grid)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("backlm.compare.figures.draw", lambda *a, **k: {})
        return grid, root, compare_sweep(grid, root, bootstrap=200)


def test_the_gap_per_size_has_seed_and_pooled_intervals(swept):
    _grid, _root, result = swept
    models = [r for r in result.sizes if r.kind == "models"]
    assert [r.depth for r in models] == [1, 2]
    for r in models:
        assert sorted(r.per_seed) == [1, 2] and r.seeds.n == 2 and r.pooled is not None
        assert r.seeds.value == pytest.approx(GAP[r.depth], abs=0.05)
        assert r.pooled.lo < r.pooled.value < r.pooled.hi
    assert models[0].params < models[1].params
    assert any(r.kind == Direction.BIDIRECTIONAL for r in result.sizes)


def test_the_bidirectional_cost_is_against_the_dedicated_model_of_each_order(swept):
    _grid, _root, result = swept
    assert {(r.depth, r.order) for r in result.costs} == {
        (d, o) for d in (1, 2) for o in (Direction.FORWARD, Direction.BACKWARD)}
    for r in result.costs:  # the fake bidirectional reads each order as well as its own model
        assert abs(r.pooled.value) < 0.05 and sorted(r.per_seed) == [1, 2]


def test_the_summary_figure_and_fivecat_rows_are_written(swept):
    grid, _root, result = swept
    text = result.folder.summary_path.read_text()
    for words in ("## Forward − backward gap per size", "t-interval", "scaling.png",
                  "cost per order", "## 5CAT of every member", "aot-d2-bidirectional-s2"):
        assert words in text
    assert len(result.fivecat) == 12 and all(r["passed"] is None for r in result.fivecat)
    pixels = imread(result.folder.scaling_figure)[..., :3].reshape(-1, 3)
    assert (pixels.std(axis=0) > 0.01).any() and (pixels.min(axis=1) < 0.9).mean() > 0.01
    assert (result.folder.comparison_dir / "COMPARISON.md").is_file()


def test_a_comparison_is_fresh_until_a_member_changes(swept):
    grid, root, result = swept
    assert is_fresh(grid, root)
    meta = root / grid.members()[0].id / "metadata.json"
    stamp = meta.stat().st_mtime
    later = result.folder.summary_path.stat().st_mtime + 5
    try:
        os.utime(meta, (later, later))
        assert not is_fresh(grid, root)
    finally:
        os.utime(meta, (stamp, stamp))


def test_unfinished_members_are_left_out_and_two_are_needed(tmp_path):
    grid = parse_grid("aot", ALL, "1", "1")
    members(tmp_path, grid, only={"aot-d1-forward-s1"})
    with pytest.raises(UserError, match="1 finished member"):
        compare_sweep(grid, tmp_path, bootstrap=50)
    members(tmp_path, grid, only={"aot-d1-backward-s1"})
    result = compare_sweep(grid, tmp_path, bootstrap=50)
    assert result.missing == ["aot-d1-bidirectional-s1"] and not result.costs
    assert "Not finished yet" in result.folder.summary_path.read_text()
