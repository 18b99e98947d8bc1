"""The research report engine (backlm/report/write.py and its sections): every section from the data
that exists, a line naming the command for each missing one, figures with data in them, the
previous report kept when writing fails, and the overview of all experiments."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from backlm.atomic import OWNED
from backlm.errors import UserError
from backlm.experiment.folder import Experiment
from backlm.report import figures as report_figures
from backlm.report import write as rep
from tests.helpers import assert_png_has_data, copy_experiments, png_data, tree_snapshot

REPORTED = ("b0", "bi0", "s1", "crash")


@pytest.fixture(scope="module")
def reported(report_world, tmp_path_factory) -> Path:
    """A copy of the report world with a report written for b0, bi0, s1 and crash."""
    root = copy_experiments(report_world, tmp_path_factory.mktemp("reported") / "exps")
    for exp_id in REPORTED:
        rep.write_report(exp_id, root)
    return root


def text(root: Path, exp_id: str) -> str:
    return Experiment(root / exp_id).report_path.read_text(encoding="utf-8")


def section(doc: str, title: str) -> str:
    """The body of ``## title`` up to the next ``## `` heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def test_header_states_the_direction_first(reported):
    doc = text(reported, "b0")
    lines = [x for x in doc.splitlines() if x.strip()]
    assert lines[0] == "# Research report: b0"
    assert lines[1].startswith("**Direction: backward**")
    meta = Experiment(reported / "b0").metadata()
    assert f"| base | finished | 2 | {meta['created']} | {meta['finished']} | " \
           f"{meta['git_commit']} |" in doc
    assert "Checkpoints at steps 1, 4; best by validation: 4" in doc


def test_configuration_shows_key_settings_and_the_whole_file(reported):
    body = section(text(reported, "bi0"), "Configuration")
    assert "| data.direction | bidirectional |" in body and "| data.mix | 0.5 |" in body
    assert "| model.seq_len | 128 |" in body
    full = (reported / "bi0" / "config.yaml").read_text()
    assert "<details>" in body and full.strip() in body
    assert "data.mix" not in section(text(reported, "b0"), "Configuration")  # not bidirectional


def test_lineage_names_the_parent_and_its_step(reported):
    body = section(text(reported, "s1"), "Lineage")
    assert "Started from `b0` at step 4 (base, backward)" in body
    assert "| b0 | base | backward | scratch | 4 |" in body
    assert "| s1 | sft | backward | b0 @ 4 | 2 |" in body
    assert "A base run" in section(text(reported, "b0"), "Lineage")


def test_learning_curves_per_order_for_bidirectional(reported):
    body = section(text(reported, "bi0"), "Learning curves")
    last = [json.loads(x) for x in (reported / "bi0" / "metrics.jsonl").read_text().splitlines()][-1]
    for key in ("val_bpb_forward", "val_bpb_backward"):
        assert re.search(rf"\| {key} \| [\d.]+ \| {last[key]:.4g} \|", body), key
    assert "![learning curves](figures/learning_curves.png)" in body
    assert "per order" in body


def test_sft_curves_include_the_chat_loss(reported):
    body = section(text(reported, "s1"), "Learning curves")
    assert "| val_chat_loss |" in body


def test_research_log_sections_plot_positions_gradients_and_activations(reported):
    doc = text(reported, "bi0")
    body = section(doc, "Loss by token position")
    assert "| 2 |" in body and "| 4 |" in body  # first and last logged step
    assert "figures/position_loss.png" in body and "figures/eval_position_loss.png" in body
    body = section(doc, "Gradient and activation statistics")
    assert "figures/gradient_norms.png" in body and "figures/activations.png" in body
    assert "| blocks.0 |" in body and "| blocks.1 |" in body
    assert "at 2 steps (2–4)" in body
    for name in ("position_loss", "gradient_norms", "activations"):
        assert_png_has_data(reported / "bi0" / "figures" / f"{name}.png")


def test_attention_section_per_layer_over_training_and_per_head(reported):
    """bi0 trained with log.attention_every=2: the table is its research log's numbers."""
    from tests.helpers import read_h5

    body = section(text(reported, "bi0"), "Attention: entropy and distance")
    assert "2 layers × 2 heads at 2 steps (2–4)" in body
    with read_h5(reported / "bi0" / "base.h5") as f:
        ent, dist = f["attention/entropy"][:], f["attention/distance"][:]
    for i in range(2):
        cells = [rep.fmt(float(v)) for v in (ent[0, i].mean(), ent[-1, i].mean(),
                                             dist[0, i].mean(), dist[-1, i].mean())]
        spread = f"{dist[-1, i].min():.2f}–{dist[-1, i].max():.2f}"
        assert f"| blocks.{i} | {' | '.join(cells)} | {spread} |" in body
    assert "figures/attention.png" in body and "figures/attention_heads.png" in body
    assert_png_has_data(reported / "bi0" / "figures" / "attention.png")
    assert png_data(reported / "bi0" / "figures" / "attention_heads.png")["foreground"] > 0.3


def test_research_log_without_rows_names_the_logging_options(reported):
    doc = text(reported, "b0")
    assert "log.per_token_every steps (50 in this run, which reached step 4)" in doc
    assert "`--set log.stats_every=N`" in doc
    figures = {p.name for p in (reported / "b0" / "figures").iterdir()}
    assert not figures & {"position_loss.png", "gradient_norms.png", "activations.png"}
    assert "eval_position_loss.png" in figures  # the evaluation still has positions


def test_a_log_from_before_attention_statistics_names_the_option(report_world, tmp_path):
    import h5py

    root = copy_experiments(report_world, tmp_path / "exps")
    with h5py.File(root / "b0" / "base.h5", "r+") as f:
        del f["attention"]  # as files written before the group existed
    rep.write_report("b0", root)
    body = section(text(root, "b0"), "Attention: entropy and distance")
    assert "No attention statistics in base.h5" in body
    assert "`--set log.attention_every=N`" in body
    assert not list((root / "b0" / "figures").glob("attention*"))


def test_fivecat_latest_table_history_and_other_judgements(reported):
    body = section(text(reported, "b0"), "5CAT")
    assert "step 4 (base), judged as **backward**: **5/5 gates passed — PASS**" in body
    assert "| B | order margin | val | 0.3 | >= 0.05 | pass |" in body
    history = body.split("### History")[1]
    assert "| 1 | `backlm 5cat` | 4/5 | 1.2 | -0.2 |" in history
    assert "| 4 | `backlm 5cat` | 5/5 | 1.2 | 0.3 |" in history
    other = json.loads(next((reported / "b0").glob("evaluations/base/fivecat/*_as-*.json"))
                       .read_text())
    assert f"step 4 as forward: {other['gates_passed']}/5" in body
    assert_png_has_data(reported / "b0" / "figures" / "fivecat_history.png")


def test_fivecat_for_bidirectional_is_per_marker(reported):
    body = section(text(reported, "bi0"), "5CAT")
    assert "| gate | figure | set | marker |" in body
    for marker in ("forward", "backward"):
        assert f"| B | marker margin | val | {marker} | 0.08 | >= 0.02 | pass |" in body


def test_evaluations_compare_native_and_cross_direction(reported):
    body = section(text(reported, "b0"), "Evaluations")
    files = {o: json.loads((reported / "b0" / "evaluations" / "base" / o / "lm.json")
                           .read_text())["summary"] for o in ("forward", "backward")}
    native, cross = files["backward"]["val_loss"], files["forward"]["val_loss"]
    assert (f"| lm | val_loss | {cross:.4g} | {native:.4g} | {native:.4g} | {cross:.4g} | "
            f"{native - cross:.4g} |") in body
    assert "backward *" in body and "forward *" not in body
    assert f"| val | backward | yes | {native:.4g} | {files['backward']['val_bpb']:.4g} |" in body
    bi = section(text(reported, "bi0"), "Evaluations")
    assert "forward *" in bi and "backward *" in bi  # both orders native


def test_cost_notes_and_missing_samples(reported):
    doc = text(reported, "b0")
    body = section(doc, "Early stopping and cost")
    assert "| stop reason | max steps |" in body and "| steps | 4 of 4 |" in body
    notes = section(doc, "Notes")
    assert "step 4  loss | fell fast" in notes and "eval on OOD pending" in notes
    assert "log.sample_every steps (500 in this run" in section(doc, "Generation samples")


def test_samples_are_shown_in_reading_order(reported):
    body = section(text(reported, "bi0"), "Generation samples")
    assert "Every sample's reading-order tokens equal its model-order tokens" in body
    records = [json.loads(x) for x in
               (reported / "bi0" / "notes" / "generation_samples.jsonl").read_text().splitlines()]
    for r in records:
        assert f"order {r['order']}" in body
        assert r["reading_order_text"].rstrip("\n") in body


def test_samples_stored_in_model_order_are_flagged(report_world):
    exp = Experiment(report_world / "bi0")
    records = [json.loads(x) for x in exp.samples_path.read_text().splitlines()]
    assert rep.reading_order_mismatches(exp, records) == 0
    backward = [dict(r, reading_order_ids=r["model_order_ids"]) for r in records
                if r["order"] == "backward"]
    assert rep.reading_order_mismatches(exp, backward) == len(backward) > 0


def test_a_crashed_run_without_checkpoints_says_what_produces_each_part(reported):
    doc = text(reported, "crash")
    assert "no process holds the run lock" in doc and "`backlm train --resume crash`" in doc
    assert "| sft | stopped |" in doc
    assert "No checkpoints" in doc
    assert "| crash | sft | backward | b0 @ 4 | 2 | - | - | - | - |" in doc  # no totals yet
    assert "No research log: training ran with log.hdf5 off" in doc
    assert "No training_summary.json: `backlm train` writes it when a run ends, and this run " \
           "is stopped; continue it with `backlm train --resume crash`" in doc
    assert "No evaluations yet: run `backlm eval crash`" in doc
    assert "No 5CAT results: run `backlm 5cat crash`" in doc
    assert 'No notes: add one with `backlm note crash "text"`' in doc
    # the torn last metrics line is skipped, the steps before it are plotted
    curves = section(doc, "Learning curves")
    assert "3 logged steps, the last at step 2" in curves
    assert "The last line of metrics.jsonl is incomplete" in curves
    assert "incomplete" not in text(reported, "b0")
    assert sorted(p.name for p in (reported / "crash" / "figures").iterdir()) == [
        OWNED, "learning_curves.png"]


@pytest.mark.parametrize("exp_id", REPORTED)
def test_figures_are_referenced_and_have_data(reported, exp_id):
    refs = set(re.findall(r"\]\(figures/([\w.-]+\.png)\)", text(reported, exp_id)))
    files = {p.name for p in (reported / exp_id / "figures").iterdir()} - {OWNED}
    assert refs == files and files
    for name in files:
        assert_png_has_data(reported / exp_id / "figures" / name)
    assert not list((reported / exp_id).glob(".report-*"))  # the staging folder is gone


def test_a_blank_figure_fails_the_pixel_check(tmp_path):
    from matplotlib.figure import Figure

    blank = tmp_path / "blank.png"
    fig = Figure()
    fig.subplots().set_title("nothing")
    fig.savefig(blank)
    assert png_data(blank)["series_pixels"] < 30
    assert not report_figures.draw_panels(tmp_path / "none.png",
                                          [("t", "x", "y", [("s", [1, 2], [float("nan")] * 2)],
                                            None)])
    assert not (tmp_path / "none.png").exists()


def test_a_failed_rewrite_keeps_the_previous_report(report_world, tmp_path, monkeypatch):
    root = copy_experiments(report_world, tmp_path / "exps")
    exp = Experiment(root / "crash")
    rep.write_report("crash", root)
    (exp.figures_dir / "stale.png").write_bytes(b"old")
    before = tree_snapshot(exp.path)

    def boom(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report_figures, "learning_curves", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        rep.write_report("crash", root)
    assert tree_snapshot(exp.path) == before
    monkeypatch.undo()
    rep.write_report("crash", root)  # a good rewrite replaces the figures folder whole
    assert not (exp.figures_dir / "stale.png").exists()
    assert (exp.figures_dir / "learning_curves.png").is_file()


def test_the_swap_restores_the_old_figures_when_it_fails(report_world, tmp_path, monkeypatch):
    import os

    root = copy_experiments(report_world, tmp_path / "exps")
    exp = Experiment(root / "crash")
    rep.write_report("crash", root)
    before = tree_snapshot(exp.path)
    real = os.replace

    def refuse(src, dst):
        if Path(dst) == exp.report_path:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(rep.os, "replace", refuse)
    # the message names the report, not the hidden folder it was built in
    with pytest.raises(UserError, match=r"cannot write \S+/RESEARCH_REPORT.md: No space left"):
        rep.write_report("crash", root)
    assert tree_snapshot(exp.path) == before


def test_an_unknown_experiment_writes_nothing(report_world):
    before = tree_snapshot(report_world)
    with pytest.raises(UserError, match="no experiment 'nope'"):
        rep.write_report("nope", report_world)
    assert tree_snapshot(report_world) == before


def test_overview_lists_every_experiment(reported):
    rows = {r["id"]: r for r in rep.overview(reported)}
    assert set(rows) == {"b0", "s1", "bi0", "bi1", "crash"}
    assert rows["b0"]["fivecat"] == "5/5" and rows["bi1"]["fivecat"] is None
    assert rows["b0"]["report"] and not rows["bi1"]["report"]
    assert rows["crash"]["status"] == "stopped" and rows["crash"]["step"] == 0
    assert rows["s1"]["depth_in_tree"] == 1 and rows["b0"]["best"].startswith("val_bpb")
    assert rows["bi0"]["direction"] == "bidirectional" and rows["bi0"]["step"] == 4


def test_an_unreadable_research_log_is_a_line_not_a_failure(report_world, tmp_path):
    root = copy_experiments(report_world, tmp_path / "exps")
    exp = Experiment(root / "s1")
    exp.research_log().write_bytes(bytes(range(256)) * 64)
    result = rep.write_report("s1", root)
    doc = exp.report_path.read_text()
    line = "No research log: research log " + str(exp.research_log()) + " cannot be read"
    assert line in section(doc, "Loss by token position")
    assert line in section(doc, "Gradient and activation statistics")
    assert sum(line in m for m in result.missing) == 1  # said once in the command's summary
    assert "| val_chat_loss |" in doc  # the rest of the report is there
