"""The comparison's figures, drawn from the rows of ``comparison.csv`` (so every plotted
number is in the CSV): learning curves, the transfer matrix, the gap with its intervals and
per-document spread, the gap against model size, and attention by layer.

Figures follow :mod:`backlm.render`'s figure policy (headless, no pyplot state, one DPI;
readable count ticks, a unit on every y axis, a single-point series marked and noted)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backlm.direction import ORDERS, Direction
from backlm.render import count_axis, figure, finish, metric_label, plot, save

ORDER_STYLE = {Direction.FORWARD: "-", Direction.BACKWARD: "--"}


def _pick(rows: Iterable[dict[str, Any]], section: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if r["section"] == section
            and all(r.get(k) == v for k, v in match.items())]


def _colors(names: Iterable[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(names))}


def curves(rows: list[dict[str, Any]], path: Path, metric: str) -> bool:
    """Train loss and the metric against tokens seen, one colour per experiment."""
    points = _pick(rows, "curve")
    if not points:
        return False
    colors = _colors(r["experiment"] for r in points)
    fig, (left, right) = figure(11, 4.2, 1, 2)
    for ax, wanted, title, ylabel in (
            (left, lambda s: s == "train_loss", "train loss", "train loss (nats/token)"),
            (right, lambda s: s != "train_loss", metric, metric_label(metric))):
        drawn = False
        for exp, color in colors.items():
            for series in dict.fromkeys(r["series"] for r in points if r["experiment"] == exp):
                if not wanted(series):
                    continue
                pts = [r for r in points if r["experiment"] == exp and r["series"] == series]
                order = next((o for o in ORDER_STYLE if series.endswith(f"_{o}")), None)
                label = exp if order is None else f"{exp} · {order}"
                plot(ax, [r["x"] for r in pts], [r["y"] for r in pts],
                     ORDER_STYLE.get(order or Direction.FORWARD), color=color, markersize=3,
                     label=label)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        finish(ax, xlabel="tokens seen", ylabel=ylabel, title=title)
    save(fig, path)
    return True


def transfer(rows: list[dict[str, Any]], path: Path) -> bool:
    """The val transfer matrix as a heat map: model (row) × evaluated order (column)."""
    import numpy as np

    cells = _pick(rows, "transfer", split="val")
    if not cells:
        return False
    exps = list(dict.fromkeys(r["experiment"] for r in cells))
    orders = list(ORDERS)  # the CSV's series names compare equal to them
    grid = np.full((len(exps), 2), np.nan)
    native = np.zeros((len(exps), 2), dtype=bool)
    for r in cells:
        i, j = exps.index(r["experiment"]), orders.index(r["series"])
        grid[i, j] = r["y"]
        native[i, j] = "native" in r["detail"]
    fig, (ax,) = figure(5.5, 1.2 + 0.55 * len(exps), fit=True)  # names down the side
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label="val bits/byte")
    ax.set_xticks(range(2), [f"{o} order" for o in orders])
    ax.set_xlabel("evaluated order")
    ax.set_ylabel("model")
    labels = {r["experiment"]: r["detail"].split(" model")[0] for r in cells}
    ax.set_yticks(range(len(exps)), [f"{e} ({labels[e]})" for e in exps])
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(exps)):
        for j in range(2):
            text = "—" if math.isnan(grid[i, j]) else f"{grid[i, j]:.4f}" + (
                " *" if native[i, j] else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if grid[i, j] > middle else "black")
    ax.set_title("transfer matrix (* native order)")
    save(fig, path)
    return True


def gaps(rows: list[dict[str, Any]], path: Path) -> bool:
    """Each gap with its document interval (and seed-level intervals), and the spread of the
    per-document differences on val."""
    units = _pick(rows, "gap")
    if not units:
        return False
    seeds = _pick(rows, "gap_seeds")
    fig, (left, right) = figure(11, 1.6 + 0.45 * (len(units) + len(seeds)), 1, 2, fit=True)
    entries = [(f"{r['experiment']} · {r['split']}", r, "o", "C0") for r in units]
    entries += [(f"{r['experiment']} · {r['split']} (seeds)", r, "D", "C3") for r in seeds]
    for k, (_label, r, marker, color) in enumerate(entries):
        lo, hi = r.get("lo"), r.get("hi")
        err = None if lo is None or hi is None else [[r["y"] - lo], [hi - r["y"]]]
        left.errorbar([r["y"]], [k], xerr=err, fmt=marker, color=color, capsize=4)
    left.axvline(0, color="grey", lw=0.8)
    left.set_yticks(range(len(entries)), [e[0] for e in entries], fontsize=8)
    left.invert_yaxis()
    left.set_ylabel("pair · split")
    left.set_xlabel("gap: forward − backward (bits/byte, 95% CI)")
    left.set_title("forward − backward gap")
    left.grid(axis="x", alpha=0.3)
    docs = _pick(rows, "gap_document", split="val")
    colors = _colors(r["experiment"] for r in docs)
    for exp, color in colors.items():
        values = [r["y"] for r in docs if r["experiment"] == exp and math.isfinite(r["y"])]
        right.hist(values, bins=min(30, max(5, len(values) // 3)), histtype="step", lw=1.5,
                   color=color, label=exp)
    right.axvline(0, color="grey", lw=0.8)
    right.set_xlabel("per-document gap, val (bits/byte)")
    right.set_ylabel("documents")
    right.set_title("per-document differences")
    if colors:
        right.legend(fontsize=8, framealpha=0.7)
    save(fig, path)
    return True


def gap_vs_size(rows: list[dict[str, Any]], path: Path) -> bool:
    """The val gap against parameters, one colour per kind of pair."""
    units = [r for r in _pick(rows, "gap", split="val") if r.get("x")]
    if not units:
        return False
    seeds = [r for r in _pick(rows, "gap_seeds", split="val") if r.get("x")]
    fig, (ax,) = figure(6.5, 4.2)
    colors = _colors(r["series"] for r in units)
    for kind, color in colors.items():
        for group, marker, size in ((units, "o", 5), (seeds, "D", 8)):
            pts = [r for r in group if r["series"] == kind]
            if not pts:
                continue
            err = [[r["y"] - r["lo"] if r.get("lo") is not None else 0 for r in pts],
                   [r["hi"] - r["y"] if r.get("hi") is not None else 0 for r in pts]]
            label = ("forward vs backward models" if kind == "models" else kind) + (
                ", mean over seeds" if group is seeds else "")
            ax.errorbar([r["x"] for r in pts], [r["y"] for r in pts], yerr=err, fmt=marker,
                        markersize=size, color=color, capsize=4, label=label,
                        alpha=1.0 if group is seeds else 0.6)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    finish(ax, xlabel="parameters", ylabel="val gap: forward − backward (bits/byte)",
           title="gap against model size", x="value")
    count_axis(ax.xaxis)
    save(fig, path)
    return True


def attention(rows: list[dict[str, Any]], path: Path) -> bool:
    """Attention entropy and distance against layer, one colour per experiment, the band
    spanning the heads."""

    points = _pick(rows, "attention")
    if not points:
        return False
    colors = _colors(r["experiment"] for r in points)
    fig, axes = figure(11, 4.2, 1, 2)
    for ax, stat, ylabel in zip(axes, ("entropy", "distance"),
                                ("entropy (nats)", "distance (tokens back)"), strict=True):
        for exp, color in colors.items():
            pts = sorted((r for r in points if r["experiment"] == exp and r["series"] == stat),
                         key=lambda r: r["x"])
            xs = [r["x"] for r in pts]
            direction = pts[0]["detail"].split(" model")[0] if pts else ""
            plot(ax, xs, [r["y"] for r in pts], ORDER_STYLE.get(direction, ":"), color=color,
                 label=f"{exp} ({direction})")
            ax.fill_between(xs, [r["lo"] for r in pts], [r["hi"] for r in pts], color=color,
                            alpha=0.15)
        finish(ax, xlabel="layer", ylabel=ylabel, title=f"attention {stat} by layer")
    save(fig, path)
    return True


def draw(rows: list[dict[str, Any]], folder: Path, metric: str,
         spans_depths: bool) -> dict[str, str]:
    """Every figure that has data, written into ``folder``; name -> file name."""
    made = {}
    for name, fn in (("curves", lambda p: curves(rows, p, metric)),
                     ("transfer", lambda p: transfer(rows, p)), ("gap", lambda p: gaps(rows, p)),
                     ("gap_vs_size", lambda p: spans_depths and gap_vs_size(rows, p)),
                     ("attention", lambda p: attention(rows, p))):
        if fn(folder / f"{name}.png"):
            made[name] = f"{name}.png"
    return made
