"""Documents for people to read: the one Markdown table writer (research report, comparison,
hub model card) and the one figure policy of every figure written: size, layout, DPI, PNG;
readable count ticks (120k, 1.5M; whole steps); a unit on every y axis; a series of a single
point drawn as a marked point with a note, never as a lone dot on a fractional axis.

It must not know what a report, a comparison or an experiment is: callers format their own
numbers; this module turns cells into a table row and axes into a PNG.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

# --- Markdown tables ----------------------------------------------------------------------

# A CommonMark code span: a run of backticks closed by the next run of the same length.
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def cell(value: Any) -> str:
    """``str(value)`` as the text of one GFM table cell, shown as written and never splitting
    its row.

    A row is one line, so a line break becomes a space. GFM splits a row at every pipe that
    no backslash precedes, inside code spans too, and removes that backslash before it reads
    the cell's inline Markdown: so every pipe becomes ``\\|``. A backslash of the text is
    doubled outside code spans (``C:\\|`` keeps its backslash; ``a\\*b`` stays literal) and
    left alone inside them, where Markdown shows backslashes as they are. Everything else is
    Markdown the caller meant (``**bold**``, code spans)."""
    text = _LINE_BREAK.sub(" ", str(value))
    out, start = [], 0
    for span in _CODE_SPAN.finditer(text):
        out.append(text[start:span.start()].replace("\\", "\\\\"))
        out.append(span.group())
        start = span.end()
    out.append(text[start:].replace("\\", "\\\\"))
    return "".join(out).replace("|", "\\|")


def table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines: the header, the delimiter row and one line per row, every cell
    (headers included) written by :func:`cell`."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(cell(c) for c in cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


# --- figures ------------------------------------------------------------------------------

DPI = 100
PANEL = (4.6, 3.3)  # inches: one panel of a grid of line plots
# Fixed margins in inches (left, right, bottom, top); a title adds TITLE at the top.
MARGINS = (0.75, 0.2, 0.55, 0.35)
TITLE = 0.35


def figure(width: float, height: float, rows: int = 1, cols: int = 1, *, title: str = "",
           fit: bool = False) -> tuple[Figure, list[Axes]]:
    """A headless figure (matplotlib's object API on the Agg canvas, no pyplot state) of
    ``width`` × ``height`` inches with a ``rows`` × ``cols`` grid of axes, in reading order.

    Margins are fixed in inches, because a layout engine costs a second full draw of the
    figure (about 1.7× the time); ``fit`` asks for the constrained layout instead, for axes
    whose tick labels are names (experiments down an axis) or that carry colour bars, which
    fixed margins would cut off."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained" if fit else None)
    if not fit:
        left, right, bottom, top = MARGINS
        top += TITLE if title else 0
        fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                            top=1 - top / height, wspace=0.3, hspace=0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    if title:
        fig.suptitle(title)
    return fig, list(axes)


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG at :data:`DPI`, creating the folder it goes in; a figure with a
    visible axes (colour bars included) that has no y label is refused, because a reader
    cannot tell what its numbers measure."""
    unlabelled = [ax.get_title() or f"axes {i}" for i, ax in enumerate(fig.axes)
                  if ax.get_visible() and not ax.get_ylabel().strip()]
    if unlabelled:
        raise ValueError(f"figure {path.name}: no y label on {', '.join(unlabelled)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)


# --- figures: ticks, units, single points ---------------------------------------------------

MAX_TICKS = 6  # ticks per count axis: "120k" labels of a 4.6-inch panel stay apart
FEW_POINTS = 30  # a series with fewer points shows a marker at each
NOTE = "one point"  # the note of a single-point series: "one point, at step 7"
SERIES = "backlm-series"  # the gid of a line drawn by plot()
LEGEND_BEST = 4  # legend entries that "best" still places off the data
_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))

# A metric's unit by a part of its name, first match wins (``val_chat_loss`` is a loss).
UNITS = (("bpb", "bits/byte"), ("ppl", "perplexity"), ("reward", "reward, 0–1"),
         ("acc", "accuracy, fraction"), ("tokens_per_sec", "tokens/s"), ("mfu", "fraction"),
         ("loss", "nats/token"))


def readable(value: float) -> str:
    """A tick label taken in at a glance: at most three significant digits and a k/M/B/T
    suffix from a thousand up (120000 → ``120k``, 1500000 → ``1.5M``, 0.25 → ``0.25``)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    for size, suffix in _SUFFIXES:
        if abs(value) >= size * 0.9995:  # 999_999 reads 1M, not 1e+03k
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def exact(value: float) -> str:
    """A single value written out in full (``2,048``; ``0.5``), for a note or a lone tick."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"


def metric_label(name: str) -> str:
    """An axis label for a logged metric: its name and its unit (``val_bpb (bits/byte)``);
    the bare name when its unit is not known."""
    unit = next((u for part, u in UNITS if part in name), None)
    return f"{name} ({unit})" if unit else name


def count_axis(axis: Axis, *, integer: bool = True, base: float = 10) -> None:
    """Ticks of an axis of counts (steps, tokens seen, parameters, positions, layers):
    readable labels (:func:`readable`), few enough not to run together, whole numbers only
    when ``integer``. A log axis has ticks at powers of ``base`` (and at 2× and 5× them when
    it spans under two decades) and no minor labels; call it after the data is drawn."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    if axis.get_scale() == "log":
        low, high = sorted(axis.get_view_interval())
        narrow = base == 10 and low > 0 and high / low < 100  # under two decades: 1-2-5 ticks
        axis.set_major_locator(LogLocator(base=base, subs=(1, 2, 5) if narrow else (1,),
                                          numticks=MAX_TICKS + 1))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(MaxNLocator(MAX_TICKS, integer=integer,
                                           steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: readable(v)))


def plot(ax: Axes, xs: Sequence[float], ys: Sequence[float], *args: Any, **style: Any) -> Any:
    """One series as a line, with markers when it has few points; a single point gets a
    larger marker (:func:`finish` adds its note: it counts the lines drawn here, not
    reference lines or error bars). Returns the Line2D."""
    n = len(xs)
    if n < FEW_POINTS:
        style.setdefault("marker", "o")
        style.setdefault("markersize", 4)
    if n == 1:
        style["markersize"] = max(7, style["markersize"])
    return ax.plot(list(xs), list(ys), *args, gid=SERIES, **style)[0]


def finish(ax: Axes, *, xlabel: str, ylabel: str, title: str = "", x: str = "count",
           legend: bool = True) -> None:
    """Label and tick ``ax`` under the policy, after its series are drawn.

    ``x`` is ``"count"`` (whole-number counts: steps, tokens, layers), ``"real"`` (a count
    axis that may be fractional) or ``"value"`` (leave the ticks alone). The legend (more
    than one entry) goes where it covers the fewest points, half transparent; past
    :data:`LEGEND_BEST` entries, in a band above the data that the y axis makes room for. A
    series of a single point is noted in the legend's title ("one point, at step 7"); when
    every series has its points at one x, the axis shows that x alone, centred, instead of
    fractional ticks around a lone dot."""
    from matplotlib.ticker import ScalarFormatter

    if not ylabel.strip():
        raise ValueError(f"axes {title or xlabel!r}: a y label with its unit is required")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if x != "value":
        count_axis(ax.xaxis, integer=x == "count")
    if isinstance(ax.yaxis.get_major_formatter(), ScalarFormatter):
        # values that differ in the fourth decimal would read "+1.132" over the axis and
        # ticks of 0.0001: a reader wants the values themselves
        ax.yaxis.get_major_formatter().set_useOffset(False)
    note = _single_points(ax, xlabel, fix_axis=x != "value")
    handles, _labels = ax.get_legend_handles_labels()
    handles = handles if legend and len(handles) > 1 else []
    if not note and not handles:
        return
    style = {"fontsize": 8, "title": note, "title_fontsize": 8, "framealpha": 0.7}
    if len(handles) <= LEGEND_BEST:
        ax.legend(handles=handles, loc="best", **style)
        return
    # "best" finds no free corner for this many entries: the legend gets a band of its own
    # above the data, in two columns
    rows = math.ceil(len(handles) / 2) + bool(note)
    _headroom(ax, min(0.5, 0.075 * rows + 0.05))
    ax.legend(handles=handles, loc="upper center", ncols=2, **style)


def _headroom(ax: Axes, share: float) -> None:
    """Raise the top of the y axis so the data keeps the lower ``1 - share`` of the axes."""
    bottom, top = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(bottom, bottom * (top / bottom) ** (1 / (1 - share)))
    else:
        ax.set_ylim(bottom, bottom + (top - bottom) / (1 - share))


def single_point_note(ax: Axes) -> str:
    """The note :func:`finish` gave ``ax`` for its single-point series ("" when none)."""
    found = ax.get_legend()
    return found.get_title().get_text() if found is not None else ""


def _single_points(ax: Axes, xlabel: str, fix_axis: bool) -> str:
    import numpy as np

    xs = [np.asarray(ln.get_xdata(), float) for ln in ax.get_lines()
          if ln.get_gid() == SERIES and np.size(ln.get_xdata())]
    singles = [float(x[0]) for x in xs if x.size == 1]
    if not singles:
        return ""
    where = f", at {xlabel} {exact(singles[0])}" if len(set(singles)) == 1 else ""
    every_x = {float(v) for x in xs for v in x}
    if fix_axis and ax.get_xscale() == "linear" and len(every_x) == 1:
        (v,) = every_x
        pad = max(1.0, abs(v) * 0.5)
        ax.set_xlim(v - pad, v + pad)
        ax.set_xticks([v], [exact(v)])
    if len(singles) == len(xs):
        return f"{NOTE}{where}" if len(xs) == 1 else f"{NOTE} per series{where}"
    return f"{len(singles)} series of {NOTE}{where}"
