"""Documents for people to read: the one Markdown table writer (research report, comparison,
hub model card) and the one figure policy (size, layout, DPI, PNG) of every figure written.

It must not know what a report, a comparison or an experiment is: callers format their own
numbers; this module turns cells into a table row and axes into a PNG.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
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
    """Write ``fig`` as a PNG at :data:`DPI`, creating the folder it goes in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
