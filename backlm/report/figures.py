"""The research report's figures (PNG, drawn under :mod:`backlm.render`'s figure policy).

Every function draws one figure from plain numbers and returns whether it drew one: a figure
is written only when it has finite data to show, so no figure of a report is ever empty. Ticks,
units and single-point series follow the policy (:func:`backlm.render.finish`): a series of one
point is a marked point with a note, and every y axis names its unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backlm.render import PANEL, TITLE, count_axis, figure, finish, metric_label, plot, save

# One series: (label, xs, ys).
Series = tuple[str, Sequence[float], Sequence[float]]
# One panel: (title, x label, y label with its unit, series, horizontal reference line or
# None); every x axis of the report counts something (steps, tokens, positions).
Panel = tuple[str, str, str, list[Series], float | None]


def _finite(series: Series) -> Series:
    label, xs, ys = series
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys, strict=False)
             if y is not None and x is not None and math.isfinite(float(y))
             and math.isfinite(float(x))]
    return label, [p[0] for p in pairs], [p[1] for p in pairs]


def draw_panels(path: Path, panels: Sequence[Panel], title: str = "",
                columns: int | None = None, log_x: bool = False, log_y: bool = False) -> bool:
    """Panels of line plots side by side (wrapping after ``columns``); panels and series
    without finite points are dropped, and nothing is written when none is left. A log axis
    is used only where every value on it is positive (base 2 for x: positions bucketed by
    powers of two)."""
    kept = []
    for name, xlabel, ylabel, series, ref in panels:
        finite = [s for s in map(_finite, series) if s[1]]
        if finite:
            kept.append((name, xlabel, ylabel, finite, ref))
    if not kept:
        return False
    cols = min(len(kept), columns or len(kept))
    rows = math.ceil(len(kept) / cols)
    fig, axes = figure(PANEL[0] * cols, PANEL[1] * rows + (TITLE if title else 0), rows, cols,
                       title=title)
    for ax, (name, xlabel, ylabel, series, ref) in zip(axes, kept, strict=False):
        for label, xs, ys in series:
            plot(ax, xs, ys, linewidth=1.5, label=label)
        if ref is not None and math.isfinite(ref):
            ax.axhline(ref, color="0.35", linestyle="--", linewidth=1, label="threshold")
        log = log_x and all(x > 0 for _, xs, _ in series for x in xs)
        if log:
            ax.set_xscale("log", base=2)
        if log_y and all(y > 0 for _, _, ys in series for y in ys):
            ax.set_yscale("log")
            count_axis(ax.yaxis, integer=False)
        finish(ax, xlabel=xlabel, ylabel=ylabel, title=name,
               legend=len(series) > 1 or ref is not None)
        if log:
            count_axis(ax.xaxis, base=2)
    for ax in axes[len(kept):]:
        ax.set_visible(False)
    save(fig, path)
    return True


def learning_curves(path: Path, train: list[dict], val: dict[str, list[Series]]) -> bool:
    """Train loss against step and against tokens seen; one panel per validation metric
    family (``val_bpb``, ``val_chat_loss`` …) with a line per order."""
    steps = [r["step"] for r in train]
    loss = [r["loss"] for r in train]
    panels: list[Panel] = [("train loss", "step", "loss (nats/token)",
                            [("train", steps, loss)], None)]
    with_tokens = [r for r in train if isinstance(r.get("tokens"), int | float)]
    if with_tokens:
        panels.append(("train loss by tokens seen", "tokens seen", "loss (nats/token)",
                       [("train", [r["tokens"] for r in with_tokens],
                         [r["loss"] for r in with_tokens])], None))
    for family, series in val.items():
        panels.append((family, "step", metric_label(family), series, None))
    return draw_panels(path, panels, "learning curves", columns=3)


def position_loss(path: Path, curves: list[Series], title: str, xlabel: str,
                  log_x: bool = False) -> bool:
    """Mean loss at each token position, one line per curve (e.g. first vs last step)."""
    return draw_panels(path, [(title, xlabel, "loss (nats/token)", curves, None)],
                       log_x=log_x)


def stat_lines(path: Path, title: str, ylabel: str, series: list[Series],
               log_y: bool = False) -> bool:
    """One statistic of several parameters or layers over training steps."""
    return draw_panels(path, [(title, "step", ylabel, series, None)], log_y=log_y)


def gate_history(path: Path,
                 gates: dict[str, tuple[str, str, list[Series], float | None]]) -> bool:
    """One panel per 5CAT gate (name, y label with its unit, series, threshold): its value
    over steps with the pass threshold dashed."""
    panels: list[Panel] = [(f"{gate} {name}", "step", ylabel, series, threshold)
                           for gate, (name, ylabel, series, threshold) in gates.items()]
    return draw_panels(path, panels, "5CAT gates over training", columns=3)


def head_maps(path: Path, maps: dict[str, Any], title: str) -> bool:
    """One heat map per statistic: layers down, heads across, each cell labelled."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    kept = {k: np.asarray(v, dtype=float) for k, v in maps.items()
            if np.size(v) and np.isfinite(v).any()}
    if not kept:
        return False
    layers, heads = next(iter(kept.values())).shape
    fig, axes = figure(max(PANEL[0], 0.5 * heads + 1.6) * len(kept),
                       max(PANEL[1], 0.35 * layers + 1.4), 1, len(kept), title=title, fit=True)
    for ax, (name, grid) in zip(axes, kept.items(), strict=True):
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        fig.colorbar(image, ax=ax, label=name)
        if layers * heads <= 256:  # labels stay legible
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="k" if image.norm(v) > 0.6 else "w")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    save(fig, path)
    return True
