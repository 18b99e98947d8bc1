"""The report's figure writers under the figure policy: readable count ticks, a unit on every y
axis, a single-point series marked and noted (read off the saved matplotlib Figures)."""

from __future__ import annotations

import pytest

from backlm.render import single_point_note
from backlm.report import figures
from backlm.report.results import GATE_AXES
from tests.helpers import assert_png_has_data, assert_readable, kept_figures, tick_labels

STEPS = list(range(0, 1201, 10))
LONG = [{"step": s, "tokens": s * 160, "loss": 2 + 4 / (1 + s / 100)} for s in STEPS]
LONG_VAL = {"val_bpb": [("val_bpb", STEPS[::10], [1.2 + 2 / (1 + s / 200) for s in STEPS[::10]])]}


@pytest.fixture
def drawn(monkeypatch):
    return kept_figures(monkeypatch, figures)


def test_long_learning_curves_read_in_thousands_with_units(drawn, tmp_path):
    assert figures.learning_curves(tmp_path / "lc.png", LONG, LONG_VAL)
    fig = drawn["lc.png"]
    assert_readable(fig)
    steps, tokens, val = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "loss (nats/token)", "loss (nats/token)", "val_bpb (bits/byte)"]
    assert tokens.get_xlabel() == "tokens seen"
    shown = [t for t, _box in tick_labels(tokens.xaxis)]
    assert "100k" in shown and all(t == "0" or t.endswith("k") for t in shown), shown
    assert all(float(v).is_integer() for v in steps.get_xticks())
    assert_png_has_data(tmp_path / "lc.png")


def test_one_logged_step_is_a_marked_point_with_its_note(drawn, tmp_path):
    train = [{"step": 1, "tokens": 2048, "loss": 5.5}]
    assert figures.learning_curves(tmp_path / "lc.png", train,
                                   {"val_bpb": [("val_bpb", [1], [2.4])]})
    fig = drawn["lc.png"]
    assert_readable(fig)
    notes = [single_point_note(ax) for ax in fig.axes]
    assert notes == ["one point, at step 1", "one point, at tokens seen 2,048",
                     "one point, at step 1"]
    for ax in fig.axes:
        (line,) = ax.get_lines()
        assert line.get_marker() == "o" and line.get_markersize() >= 7
        assert len(ax.get_xticks()) == 1  # the step alone, not 0.95 … 1.05
    assert_png_has_data(tmp_path / "lc.png")


def test_gate_history_names_each_gates_unit(drawn, tmp_path):
    gates = {g: (*GATE_AXES[g], [("worst value", [4], [0.3])], 0.1) for g in GATE_AXES}
    assert figures.gate_history(tmp_path / "g.png", gates)
    fig = drawn["g.png"]
    assert_readable(fig)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in shown] == [unit for _name, unit in GATE_AXES.values()]
    assert all(single_point_note(ax) == "one point, at step 4" for ax in shown)


def test_log_axes_show_readable_ticks(drawn, tmp_path):
    positions = [3, 7, 15, 31, 63, 127]
    assert figures.position_loss(tmp_path / "p.png", [("val", positions, [3, 2.9, 2.8, 2.7,
                                                                            2.6, 2.5])],
                                 "loss by position", "position (last of bucket)", log_x=True)
    assert figures.stat_lines(tmp_path / "s.png", "gradient norm over training",
                              "gradient norm", [("w", [2, 4], [0.5, 10.0])], log_y=True)
    for name in ("p.png", "s.png"):
        assert_readable(drawn[name])
    x = [t for t, _box in tick_labels(drawn["p.png"].axes[0].xaxis)]
    assert x == ["4", "8", "16", "32", "64", "128"], x
    y = [t for t, _box in tick_labels(drawn["s.png"].axes[0].yaxis)]
    assert {"1", "10"} <= set(y) and not any("^" in t for t in y), y
