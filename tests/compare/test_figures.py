"""The comparison's figure writers under the figure policy: a unit on every y axis (curves
included), readable token ticks, single-point series marked and noted."""

from __future__ import annotations

import pytest

from backlm.compare import figures
from backlm.render import single_point_note
from tests.helpers import assert_readable, kept_figures, tick_labels


def curve(exp: str, series: str, xs, ys) -> list[dict]:
    return [{"section": "curve", "experiment": exp, "series": series, "x": x, "y": y}
            for x, y in zip(xs, ys, strict=True)]


def rows_of(n: int, tokens_per_step: int) -> list[dict]:
    xs = [s * tokens_per_step for s in range(n)]
    out = []
    for exp, shift in (("fw", 0.0), ("bw", 0.05)):
        out += curve(exp, "train_loss", xs, [5 - 0.002 * i + shift for i in range(n)])
        out += curve(exp, "val_bpb", xs, [2 - 0.001 * i + shift for i in range(n)])
    out += [{"section": "attention", "experiment": "fw", "series": stat, "x": layer, "y": 3.0,
             "lo": 2.5, "hi": 3.5, "detail": "forward model"}
            for stat in ("entropy", "distance") for layer in (0, 1)]
    out += [{"section": "gap", "experiment": "fw − bw", "series": "models", "split": "val",
             "y": -0.03, "lo": -0.05, "hi": -0.01, "x": d * 1e6}
            for d in (2, 4)]
    out += [{"section": "gap_document", "experiment": "fw − bw", "split": "val", "y": v / 100}
            for v in range(-10, 10)]
    out += [{"section": "transfer", "experiment": e, "series": o, "split": "val", "y": 1.2,
             "detail": f"{e} model" + (", native" if e[0] == o[0] else "")}
            for e in ("fw", "bw") for o in ("forward", "backward")]
    return out


@pytest.fixture
def drawn(monkeypatch):
    return kept_figures(monkeypatch, figures)


def test_every_comparison_figure_labels_its_y_axes_with_units(drawn, tmp_path):
    made = figures.draw(rows_of(120, 1600), tmp_path, "val_bpb", spans_depths=True)
    assert set(made) == {"curves", "transfer", "gap", "gap_vs_size", "attention"}
    for fig in drawn.values():
        assert_readable(fig)
    train, metric = drawn["curves.png"].axes
    assert train.get_ylabel() == "train loss (nats/token)"
    assert metric.get_ylabel() == "val_bpb (bits/byte)"
    shown = [t for t, _box in tick_labels(train.xaxis)]
    assert "100k" in shown and all(t == "0" or t.endswith("k") for t in shown), shown
    gap_x = [t for t, _box in tick_labels(drawn["gap_vs_size.png"].axes[0].xaxis)]
    assert gap_x and all(t.endswith("M") for t in gap_x), gap_x


def test_single_step_curves_are_marked_points_with_a_note(drawn, tmp_path):
    rows = [*curve("fw", "train_loss", [2048], [5.5]), *curve("bw", "train_loss", [2048], [5.4]),
            *curve("fw", "val_bpb", [2048], [2.4]), *curve("bw", "val_bpb", [2048], [2.3])]
    assert figures.curves(rows, tmp_path / "c.png", "val_bpb")
    fig = drawn["c.png"]
    assert_readable(fig)
    for ax in fig.axes:
        assert single_point_note(ax) == "one point per series, at tokens seen 2,048"
        assert [t for t, _box in tick_labels(ax.xaxis)] == ["2,048"]
        assert all(line.get_markersize() >= 7 for line in ax.get_lines())
