"""The sweep's scaling figure: the forward − backward gap against parameters (each seed, the
mean over seeds with its t-interval, the pooled document interval) and, when the sweep has a
bidirectional model, its per-order cost against the dedicated models. Drawn under the one
figure policy (:mod:`backlm.render`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backlm.direction import ORDERS, Direction

MODELS = "models"  # compare's kind of a forward/backward pair of models
KIND_LABEL = {MODELS: "forward vs backward models",
              Direction.BIDIRECTIONAL: "bidirectional, its two orders",
              Direction.FORWARD: "forward order", Direction.BACKWARD: "backward order"}
KIND_COLOR = {MODELS: "C0", Direction.BIDIRECTIONAL: "C1", Direction.FORWARD: "C2",
              Direction.BACKWARD: "C3"}
SHIFT = 1.04  # the seed-level and pooled bars sit just left and right of the size they are for


def _series(ax: Any, rows: Sequence[Any], key: str) -> None:
    """One series: every seed's gap (dots), the mean over seeds with its t-interval (a
    capped bar), the pooled document interval (a thick bar), joined across sizes."""
    from backlm.render import plot

    color = KIND_COLOR[key]
    rows = sorted((r for r in rows if r.params), key=lambda r: r.params)
    if not rows:
        return
    labels = {"seed": "each seed", "t": "95% t-interval over seeds",
              "pooled": "95% CI, documents pooled"}

    def label(what: str) -> str | None:  # each kind of mark in the legend once
        return labels.pop(what, None)

    for r in rows:
        ys = [iv.value for iv in r.per_seed.values()]
        ax.scatter([r.params] * len(ys), ys, s=14, color=color, alpha=0.45, zorder=3,
                   label=label("seed"))
        if r.seeds is not None and r.seeds.lo is not None:
            ax.errorbar([r.params / SHIFT], [r.seeds.value],
                        yerr=[[r.seeds.value - r.seeds.lo], [r.seeds.hi - r.seeds.value]],
                        fmt="none", color=color, capsize=4, lw=1.2, label=label("t"))
        if r.pooled is not None and r.pooled.lo is not None:
            ax.vlines(r.params * SHIFT, r.pooled.lo, r.pooled.hi, color=color, lw=4,
                      alpha=0.5, label=label("pooled"))
        ax.annotate(f"d{r.depth}", (r.params, _mean(r)), textcoords="offset points",
                    xytext=(-22, 6), fontsize=8, color=color)
    plot(ax, [r.params for r in rows], [_mean(r) for r in rows], "-", color=color,
         label=f"{KIND_LABEL[key]}: mean")


def _mean(row: Any) -> float:
    if row.seeds is not None:
        return row.seeds.value
    values = [iv.value for iv in row.per_seed.values()]
    return sum(values) / len(values)


def _axes(ax: Any, ylabel: str, title: str) -> None:
    from backlm.render import count_axis, finish

    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    finish(ax, xlabel="parameters (log scale)", ylabel=ylabel, title=title, x="value")
    count_axis(ax.xaxis)
    ax.margins(x=0.15)


def scaling(sizes: Sequence[Any], costs: Sequence[Any]) -> Any:
    """The figure (None when no size has a gap): left, the gap against parameters; right, when
    there are bidirectional members, their per-order cost."""
    from backlm.render import figure

    if not any(r.params for r in sizes):
        return None
    panels = 2 if any(r.params for r in costs) else 1
    fig, axes = figure(6.5 * panels, 4.6, 1, panels)
    for kind in (MODELS, Direction.BIDIRECTIONAL):
        _series(axes[0], [r for r in sizes if r.kind == kind], kind)
    _axes(axes[0], "val gap: forward − backward (bits/byte)", "gap against model size")
    if panels == 2:
        for order in ORDERS:
            _series(axes[1], [r for r in costs if r.order == order], order)
        _axes(axes[1], "bidirectional − dedicated (bits/byte)",
              "bidirectional model's cost per order")
    return fig
