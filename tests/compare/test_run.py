"""``backlm compare``'s engine: tiny forward, backward and bidirectional models side by side
(figures with data in them, a CSV holding every plotted number, the Markdown's sections), the
gap only over the same documents, seeds and depths, and experiments with missing parts."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backlm.atomic import OWNED, write_json
from backlm.compare import stats
from backlm.compare.output import CSV, MARKDOWN
from backlm.compare.run import CompareOptions, run_compare
from backlm.experiment.folder import Experiment
from tests.helpers import (
    FAKE_DOCS,
    copy_experiments,
    fake_experiment,
    run_cli,
    use_world,
    write_stored,
)

C0, C1, C2 = "#1f77b4", "#ff7f0e", "#2ca02c"  # matplotlib's first three series colours


def colour_pixels(path: Path, colour: str, tol: float = 0.06) -> int:
    """How many pixels of a PNG are (nearly) ``colour``."""
    import matplotlib.image as mpimg
    from matplotlib.colors import to_rgb

    img = mpimg.imread(path)[..., :3]
    return int((np.abs(img - np.asarray(to_rgb(colour))).max(axis=2) < tol).sum())


def read_csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / CSV, newline="") as f:
        return list(csv.DictReader(f))


def pick(rows, section, **match):
    return [r for r in rows if r["section"] == section
            and all(r[k] == v for k, v in match.items())]


@pytest.fixture(scope="module")
def compared(compare_world, phase_world, tmp_path_factory):
    """``compare f0 b0 bi0`` on a copy of the compare world (``exps``), evaluations computed
    (none were stored) and stored in the copy."""
    tmp = tmp_path_factory.mktemp("compared")
    exps = copy_experiments(compare_world, tmp / "exps")
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, phase_world, exps)
        result = run_compare(["f0", "b0", "bi0"], exps,
                             CompareOptions(output=out, bootstrap=500, device="cpu"))
    return SimpleNamespace(result=result, out=out, rows=read_csv(out), exps=exps,
                           md=(out / MARKDOWN).read_text())


def test_forward_backward_and_bidirectional_side_by_side(compared):
    out, rows, md = compared.out, compared.rows, compared.md
    assert sorted(p.name for p in out.iterdir()) == [
        OWNED, MARKDOWN, "attention.png", CSV, "curves.png", "gap.png", "transfer.png"]
    for section in ("## Experiments", "## Learning curves", "## Final and best val_bpb",
                    "### Tasks", "## Cross-direction transfer",
                    "## Forward − backward gap on the same documents", "## Notes"):
        assert section in md
    for figure in ("curves.png", "transfer.png", "gap.png"):
        assert f"]({figure})" in md
    assert "gap_vs_size" not in md  # one depth only
    # curves: the train loss and val_bpb of each, per order for the bidirectional model
    series = {(r["experiment"], r["series"]) for r in pick(rows, "curve")}
    assert {("f0", "train_loss"), ("f0", "val_bpb"), ("b0", "val_bpb"), ("bi0", "train_loss"),
            ("bi0", "val_bpb_forward"), ("bi0", "val_bpb_backward")} <= series
    f0_val = [(float(r["x"]), float(r["y"])) for r in pick(rows, "curve", experiment="f0",
                                                           series="val_bpb")]
    metrics = [json.loads(x) for x in (compared.result.members[0].exp.metrics_path
                                       ).read_text().splitlines()]
    assert f0_val == [(float(m.get("tokens", 0)), m["val_bpb"]) for m in metrics
                      if "val_bpb" in m]  # x is tokens seen, y the logged value
    final = f0_val[-1][1]
    assert f"| f0 | {final:.4f} (4) | {final:.4f} (4) | — | max steps |" in md
    assert "language modelling computed now and stored in the experiment, as `backlm eval " \
           "EXP --tasks lm` stores it (the next comparison reads it): f0 (step 4), b0 (step " \
           "4), bi0 (step 4)" in md


def test_the_transfer_matrix_and_the_gap_agree_with_the_evaluations(compared):
    rows, md = compared.rows, compared.md
    cells = {(r["experiment"], r["series"]): r for r in pick(rows, "transfer", split="val")}
    assert len(cells) == 6
    assert "native" in cells["f0", "forward"]["detail"]
    assert "cross" in cells["f0", "backward"]["detail"]
    assert "native" in cells["bi0", "backward"]["detail"]
    bpb = {k: float(r["y"]) for k, r in cells.items()}
    # a model reads its own order better than the other after training
    assert bpb["f0", "forward"] < bpb["f0", "backward"]
    assert bpb["b0", "backward"] < bpb["b0", "forward"]
    gaps = {r["experiment"]: r for r in pick(rows, "gap", split="val")}
    assert set(gaps) == {"f0 − b0", "bi0 (its two orders)"}
    assert float(gaps["f0 − b0"]["y"]) == pytest.approx(bpb["f0", "forward"]
                                                        - bpb["b0", "backward"])
    assert float(gaps["bi0 (its two orders)"]["y"]) == pytest.approx(
        bpb["bi0", "forward"] - bpb["bi0", "backward"])
    for label, r in gaps.items():
        lo, hi, y = float(r["lo"]), float(r["hi"]), float(r["y"])
        assert lo < y < hi and hi - lo < 0.5
        docs = pick(rows, "gap_document", experiment=label, split="val")
        assert len(docs) == int(r["n"]) == int(cells["f0", "forward"]["n"]) > 10
        assert len({d["detail"] for d in docs}) == len(docs)  # one row per document hash
    unit = next(u for u in compared.result.units if u.label == "f0 − b0")
    g = unit.gaps["val"]
    assert np.average(g.doc_diff, weights=g.pair[2]) == pytest.approx(g.interval.value)
    assert stats.bootstrap_gap([g.pair], 500, 0) == g.interval  # seeded: reproducible
    assert "f0 − b0" in md and "bi0 (its two orders)" in md and "95% CI" in md


def test_every_figure_has_data_in_it(compared):
    out = compared.out
    for colour in (C0, C1, C2):  # f0, b0, bi0: each curve is drawn
        assert colour_pixels(out / "curves.png", colour) > 150, colour
    for colour in (C0, C1):  # gap markers, and the per-document histograms of both pairs
        assert colour_pixels(out / "gap.png", colour) > 60, colour
    import matplotlib.image as mpimg

    img = mpimg.imread(out / "transfer.png")[..., :3]
    saturated = (img.max(axis=2) - img.min(axis=2)) > 0.2  # the heat map's cells
    assert saturated.sum() > 20_000
    assert len({tuple(np.round(p, 1)) for p in img[saturated]}) >= 4  # cells differ


def test_attention_side_by_side_for_the_three_directions(compared, compare_world):
    """Each model's attention at its last logged step, per layer, as its research log holds it
    (trained with log.attention_every=2: steps 2 and 4), in the CSV, the table and the figure."""
    from tests.helpers import read_h5

    rows, md = compared.rows, compared.md
    for exp_id, direction in (("f0", "forward"), ("b0", "backward"), ("bi0", "bidirectional")):
        with read_h5(compare_world / exp_id / "base.h5") as f:
            assert list(f["attention/step"][:]) == [2, 4]
            ent, dist = f["attention/entropy"][-1], f["attention/distance"][-1]
        for stat, grid in (("entropy", ent), ("distance", dist)):
            got = sorted(pick(rows, "attention", experiment=exp_id, series=stat),
                         key=lambda r: int(r["x"]))
            assert [int(r["x"]) for r in got] == [0, 1] and {r["step"] for r in got} == {"4"}
            assert [float(r["y"]) for r in got] == pytest.approx(grid.mean(axis=1), rel=1e-6)
            assert [float(r["lo"]) for r in got] == pytest.approx(grid.min(axis=1), rel=1e-6)
            assert [float(r["hi"]) for r in got] == pytest.approx(grid.max(axis=1), rel=1e-6)
            assert all(direction in r["detail"] for r in got)
        cells = " · ".join(f"{v:.2f}" for v in dist.mean(axis=1))
        assert f"| {exp_id} | {direction} | 4 |" in md and cells in md
    assert "## Attention: entropy and distance by layer" in md and "](attention.png)" in md
    for colour in (C0, C1, C2):  # a line per model
        assert colour_pixels(compared.out / "attention.png", colour) > 40, colour


def test_the_computed_evaluation_is_what_backlm_eval_stores(compared, compare_world,
                                                            phase_world, tmp_path, monkeypatch):
    exps = copy_experiments(compare_world, tmp_path / "exps")
    use_world(monkeypatch, phase_world, exps)
    res = run_cli(["eval", "f0", "--tasks", "lm", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    f0 = compared.result.members[0]
    for order in ("forward", "backward"):
        stored = json.loads(Experiment(exps / "f0").evaluation_path("base", order, "lm")
                            .read_text())
        val = next(r for r in stored["records"] if r["split"] == "val")
        computed = f0.readings[order].splits["val"]
        assert val["per_document"]["hash"] == computed["per_document"]["hash"]
        np.testing.assert_allclose(val["per_document"]["nats"],
                                   computed["per_document"]["nats"], atol=1e-5)
        assert val["bpb"] == pytest.approx(computed["bpb"])
    # stored results are read, not recomputed
    import backlm.evaluation.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a stored evaluation")

    monkeypatch.setattr(runner, "lm_results", refuse)
    out = tmp_path / "again"
    with pytest.raises(AssertionError, match="recomputed"):  # b0 has none stored
        run_compare(["f0", "b0"], exps, CompareOptions(output=out, bootstrap=50))
    assert not out.exists()  # a failure writes nothing
    write_stored(Experiment(exps / "b0"), compared.result.members[1])
    again = run_compare(["f0", "b0"], exps, CompareOptions(output=out, bootstrap=500))
    assert {r.source for m in again.members for r in m.readings.values()} == {"stored"}
    assert again.units[0].gaps["val"].interval.value == pytest.approx(
        compared.result.units[1].gaps["val"].interval.value, abs=1e-5)
    # a stored file of another step, or of other weights, is stale: it is recomputed
    b0 = Experiment(exps / "b0")
    for field, value in (("step", 10_000), ("model_sha256", "0" * 64)):
        path = b0.evaluation_path("base", "forward", "lm")
        data = json.loads(path.read_text())
        data[field] = value
        path.write_text(json.dumps(data))
        with pytest.raises(AssertionError, match="recomputed"):
            run_compare(["f0", "b0"], exps, CompareOptions(output=tmp_path / field, bootstrap=50))
        write_stored(b0, compared.result.members[1])


def test_the_first_comparison_stores_what_it_computed_and_the_second_reads_it(
        compared, phase_world, tmp_path, monkeypatch):
    import backlm.evaluation.runner as runner

    exps = compared.exps
    for member in compared.result.members:  # stored as `backlm eval` stores it
        assert {r.source for r in member.readings.values()} == {"computed"}
        for order, reading in member.readings.items():
            data = json.loads(member.exp.evaluation_path("base", order, "lm").read_text())
            ckpt = json.loads((member.exp.checkpoint_dir(4) / "meta.json").read_text())
            assert (data["task"], data["direction"], data["step"]) == ("lm", order, 4)
            assert data["model_sha256"] == ckpt["model_sha256"] is not None
            val = next(r for r in data["records"] if r["split"] == "val")
            assert val["per_document"] == reading.splits["val"]["per_document"]
            assert val["bpb"] == reading.splits["val"]["bpb"]
    assert not list(exps.rglob(".*.tmp"))  # no temporary left
    scored = []
    monkeypatch.setattr(runner, "lm_results", lambda *a, **k: scored.append(a) or {})
    use_world(monkeypatch, phase_world, exps)
    again = run_compare(["f0", "b0", "bi0"], exps,
                        CompareOptions(output=tmp_path / "again", bootstrap=500, device="cpu"))
    assert scored == []  # no language modelling computed the second time
    assert {r.source for m in again.members for r in m.readings.values()} == {"stored"}
    for first, second in zip(compared.result.units, again.units, strict=True):
        assert first.label == second.label
        assert first.gaps["val"].interval == second.gaps["val"].interval  # identical
    assert "computed now" not in (tmp_path / "again" / MARKDOWN).read_text()


def test_experiments_the_user_cannot_write_are_compared_and_nothing_is_stored(
        compared, compare_world, phase_world, tmp_path, monkeypatch):
    import os

    import backlm.evaluation.runner as runner
    import backlm.paths as paths
    from backlm.errors import UserError
    from tests.helpers import tree_snapshot

    exps = copy_experiments(compare_world, tmp_path / "exps")  # nothing stored in this copy
    # what lm_results computes is what the first comparison stored: read, not scored again
    computed = {m.id: {o: json.loads(m.exp.evaluation_path("base", o, "lm").read_text())
                       for o in ("forward", "backward")} for m in compared.result.members}
    monkeypatch.setattr(runner, "lm_results", lambda exp, options: computed[exp.id])
    folders = [exps / "f0", exps / "b0"]
    for folder in folders:
        for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            d.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: the probe answers as for anyone else
        real = paths.check_writable

        def probe(folder, what, fix):
            if any(Path(folder).absolute().is_relative_to(f) for f in folders):
                raise UserError(f"{what} {folder} is not writable (Permission denied); {fix}")
            return real(folder, what, fix)

        monkeypatch.setattr(paths, "check_writable", probe)
    use_world(monkeypatch, phase_world, exps)
    monkeypatch.setenv("COLUMNS", "200")
    before = tree_snapshot(*folders)
    try:
        res = run_cli(["compare", "f0", "b0", "--bootstrap", "50", "--device", "cpu",
                       "-o", str(tmp_path / "out")])
    finally:
        for folder in folders:
            for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
                d.chmod(0o755)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    output = " ".join(res.output.split())
    assert "language modelling computed now, not stored (nothing was written to these " \
           "experiments): f0 (step 4), b0 (step 4)" in output
    assert "f0: language modelling computed now, not stored (the evaluations folder" in output
    assert tree_snapshot(*folders) == before  # nothing written
    md = (tmp_path / "out" / MARKDOWN).read_text()
    assert "f0 − b0" in md and "computed, not stored" in md


def test_seeds_and_depths_give_seed_intervals_and_the_gap_against_size(tmp_path):
    root = tmp_path / "exps"
    true_gap = {2: -0.03, 4: -0.06}
    for depth in (2, 4):
        for seed in (1, 2, 3):
            for direction in ("forward", "backward"):
                fake_experiment(root, f"{direction[0]}w-d{depth}-s{seed}", direction, depth,
                                seed, true_gap[depth])
    fake_experiment(root, "fw-d2-s9", "forward", 2, 9, true_gap[2])  # no partner
    ids = sorted(p.name for p in root.iterdir())
    result = run_compare(ids, root, CompareOptions(output=tmp_path / "out", bootstrap=300))
    labels = sorted(u.label for u in result.units)
    assert labels == sorted(f"fw-d{d}-s{s} − bw-d{d}-s{s}" for d in (2, 4) for s in (1, 2, 3))
    assert any("fw-d2-s9: no backward model of phase base, depth 2" in n for n in result.notes)
    assert len(result.groups) == 2 and result.spans_depths
    for group in result.groups:
        depth = group.units[0].forward.depth
        gaps = [u.gaps["val"].interval.value for u in group.units]
        assert group.seeds == stats.seed_interval(gaps)
        assert group.seeds.lo < true_gap[depth] < group.seeds.hi
        assert group.pooled.lo < true_gap[depth] < group.pooled.hi
    out = tmp_path / "out"
    md = (out / MARKDOWN).read_text()
    assert "### Gap against model size" in md and "Across seeds" in md
    rows = read_csv(out)
    seeds = pick(rows, "gap_seeds", split="val")
    assert len(seeds) == 2 and {r["n"] for r in seeds} == {"3"}
    assert len(pick(rows, "gap_pooled", split="val")) == 2
    params = {r["x"] for r in pick(rows, "gap", split="val")}
    assert len(params) == 2  # two model sizes on the size plot's x axis
    assert colour_pixels(out / "gap_vs_size.png", C0) > 100
    assert colour_pixels(out / "gap.png", "#d62728") > 30  # the seed-level intervals (C3)


def test_different_documents_are_never_compared(tmp_path):
    root = tmp_path / "exps"
    fake_experiment(root, "fw", "forward", 2, 1, -0.02)
    fake_experiment(root, "bw", "backward", 2, 1, hashes=[f"other{i}" for i in range(FAKE_DOCS)])
    result = run_compare(["fw", "bw"], root, CompareOptions(output=tmp_path / "out"))
    assert result.units[0].gaps == {}
    assert any("gap fw − bw on val: not computed" in n and "not the same documents" in n
               for n in result.notes)
    assert any("different val documents" in n for n in result.notes)
    md = (tmp_path / "out" / MARKDOWN).read_text()
    assert "No gap" in md and not pick(read_csv(tmp_path / "out"), "gap")


def test_missing_parts_crashed_runs_and_extras(compared, compare_world, tmp_path):
    from backlm.experiment import folder as xp

    exps = copy_experiments(compare_world, tmp_path / "exps")
    f0, b0 = Experiment(exps / "f0"), Experiment(exps / "b0")
    write_stored(f0, compared.result.members[0])
    write_stored(b0, compared.result.members[1])
    with open(b0.metrics_path, "a") as f:
        f.write('{"step": 5, "loss": 2.')  # killed mid-line
    b0.summary_path.unlink()
    b0.update_metadata(status="running")
    write_json(f0.fivecat_path("base", 4), {"gates_passed": 4, "gates_total": 5, "step": 4})
    write_json(f0.evaluation_path("base", "backward", "arc-easy"), {
        "native": False, "summary": {"metric": "acc", "score": 0.25}})
    xp.create(exps, "empty", config_yaml="", parent_link=None,
              metadata={"id": "empty", "phase": "base", "direction": "forward", "depth": 2})
    result = run_compare(["f0", "b0", "empty"], exps,
                         CompareOptions(output=tmp_path / "out", bootstrap=200))
    md = (tmp_path / "out" / MARKDOWN).read_text()
    assert "| f0 |" in md and "4/5 (step 4)" in md
    assert "| f0 | arc-easy | acc | backward (cross) | 0.2500 |" in md
    notes = "\n".join(result.notes)
    for words in ("cost unknown: b0, empty", "empty: no training metrics logged",
                  "run `backlm eval empty --tasks lm`", "no 5CAT result: b0, empty; run "
                  "`backlm 5cat EXP`"):
        assert words in notes
    assert result.units[0].label == "f0 − b0" and "val" in result.units[0].gaps
    curve = pick(read_csv(tmp_path / "out"), "curve", experiment="b0", series="train_loss")
    assert [r["step"] for r in curve] == ["1", "2", "3", "4"]  # the torn line is skipped


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import backlm.compare.figures as figures

    root = tmp_path / "exps"
    fake_experiment(root, "fw", "forward", 2, 1)
    fake_experiment(root, "bw", "backward", 2, 1)
    out = tmp_path / "cmp" / "out"
    run_compare(["fw", "bw"], root, CompareOptions(output=out, bootstrap=10))
    before = (out / MARKDOWN).read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(figures, "draw", broken)
    with pytest.raises(RuntimeError):
        run_compare(["fw", "bw"], root, CompareOptions(output=out, bootstrap=10))
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary left
    assert (out / MARKDOWN).read_text() == before  # the earlier comparison stands


def test_a_full_disk_while_writing_names_the_output_not_the_temporary_folder(tmp_path,
                                                                            monkeypatch):
    import errno

    import backlm.compare.figures as figures
    from backlm.errors import UserError

    root = tmp_path / "exps"
    fake_experiment(root, "fw", "forward", 2, 1)
    fake_experiment(root, "bw", "backward", 2, 1)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1] / "curves.png"))

    monkeypatch.setattr(figures, "draw", full)
    out = tmp_path / "out"
    with pytest.raises(UserError) as exc:
        run_compare(["fw", "bw"], root, CompareOptions(output=out, bootstrap=10))
    assert str(exc.value) == (f"cannot write the comparison to {out}: No space left on device; "
                              "free some space or choose another --output")
    assert [p.name for p in tmp_path.iterdir()] == ["exps"]  # nothing left behind
