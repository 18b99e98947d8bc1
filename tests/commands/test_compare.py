"""``backlm compare``: the comparison folder from the command line; bad input is one line,
exit 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import (
    assert_user_error,
    copy_experiments,
    fake_experiment,
    run_cli,
    tree_snapshot,
    use_world,
)


def test_compare_writes_the_default_folder(compare_world, phase_world, tmp_path, monkeypatch):
    exps = copy_experiments(compare_world, tmp_path / "exps")
    use_world(monkeypatch, phase_world, exps)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("COLUMNS", "160")  # keep rich tables on one line each
    before = tree_snapshot(exps)
    res = run_cli(["compare", "f0", "b0", "bi0", "--bootstrap", "200", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    out = work / "comparisons" / "f0_vs_b0_vs_bi0"
    assert sorted(p.name for p in out.iterdir()) == [
        ".backlm-owned", "COMPARISON.md", "attention.png", "comparison.csv", "curves.png", "gap.png",
        "transfer.png"]
    assert [p.name for p in work.iterdir()] == ["comparisons"]  # no temporary left
    lines = res.output.splitlines()
    assert any("f0 − b0" in x and "val" in x for x in lines)
    assert any("bi0 (its two orders)" in x for x in lines)
    assert "wrote comparisons/f0_vs_b0_vs_bi0" in res.output
    assert "no 5CAT result: f0, b0, bi0" in res.output
    # the experiments gain only the language-modelling evaluations compare computed
    after = tree_snapshot(exps)
    added = sorted(str(Path(p).relative_to(exps)) for p in set(after) - set(before)
                   if after[p] != "dir")
    assert added == [f"{e}/evaluations/base/{o}/lm.json" for e in ("b0", "bi0", "f0")
                     for o in ("backward", "forward")]
    assert {p: h for p, h in after.items() if p in before} == before


def test_an_earlier_comparison_is_replaced(tmp_path):
    root = tmp_path / "exps"
    for direction in ("forward", "backward"):
        fake_experiment(root, direction[:3], direction, 2, 1, -0.02)
    out = tmp_path / "out"
    args = ["compare", "for", "bac", "--experiments-dir", str(root), "-o", str(out),
            "--bootstrap", "100"]
    assert run_cli(args).exit_code == 0
    (out / "stale.png").write_bytes(b"from an older comparison")
    res = run_cli([*args, "--metric", "loss", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert not (out / "stale.png").exists()  # the folder is the new comparison, whole
    md = (out / "COMPARISON.md").read_text()
    assert "--metric loss --bootstrap 100 --seed 3" in md and "final loss" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exps", "out"]


BAD = [
    (["compare", "f0"], "at least two experiments, got 1"),
    (["compare", "f0", "nope"], "no experiment 'nope'"),
    (["compare", "f0", "f0"], "same experiment (f0)"),
    (["compare", "f0", "b0", "-o", "{file}"], "is a file: move it away or choose a folder "
                                                    "with --output"),
    (["compare", "f0", "b0", "-o", "{file}/sub"], "cannot be created"),
    (["compare", "f0", "b0", "-o", "{busy}"], "holds files backlm did not write"),
    (["compare", "f0", "b0", "--metric", "val_nothing"], "no experiment logged the metric "
                                                         "'val_nothing'"),
    (["compare", "f0", "b0", "--bootstrap", "0"], "--bootstrap must be between"),
    (["compare"], "Missing argument"),
]


@pytest.mark.parametrize(("args", "words"), BAD)
def test_bad_input_is_one_line_and_writes_nothing(compare_world, phase_world, tmp_path,
                                                  monkeypatch, args, words):
    use_world(monkeypatch, phase_world, compare_world)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.md").write_text("not a folder")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("someone's work")
    args = [a.format(file=tmp_path / "taken.md", busy=tmp_path / "busy") for a in args]
    before = tree_snapshot(tmp_path, compare_world)
    res = run_cli(args)
    assert_user_error(res, words)
    assert tree_snapshot(tmp_path, compare_world) == before
