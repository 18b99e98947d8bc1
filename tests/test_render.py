"""backlm.render: the Markdown table writer (checked against a GFM table parser) and the figure
policy."""

from __future__ import annotations

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from backlm.render import DPI, cell, figure, save, table

GFM = MarkdownIt("commonmark").enable("table")


def parsed(lines: list[str]) -> list[list[str]]:
    """Each row of the first table in ``lines`` (header first) as its cells' shown text."""
    out = []
    for row in re.findall(r"<tr>(.*?)</tr>", GFM.render("\n".join(lines)), re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        out.append([html.unescape(c) for c in cells])
    return out


# Any text at all: Markdown punctuation, line breaks of every kind, code-span backticks.
ANY = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
ANY_HEAVY = st.text(st.sampled_from("|\\`*_ \n\r\tab<>[]()!#-"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.one_of(ANY, ANY_HEAVY), min_size=3, max_size=3), min_size=1,
                max_size=4), st.lists(st.one_of(ANY, ANY_HEAVY), min_size=3, max_size=3))
def test_no_cell_changes_the_tables_column_count(rows, headers):
    lines = table(headers, rows)
    assert len(lines) == len(rows) + 2  # a row is one line, whatever its cells hold
    shown = parsed(lines)
    assert len(shown) == len(rows) + 1
    assert all(len(r) == 3 for r in shown), lines


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("ab |\\\n\r"), max_size=30))
def test_plain_text_is_shown_as_written_on_one_line(text):
    """Pipes and backslashes, wherever they fall, come out as they went in."""
    (_, (shown,)) = parsed(table(["x"], [[text]]))
    assert shown == re.sub(r"\r\n|\r|\n", " ", text).strip(" ")


def test_code_spans_keep_their_backslashes_and_show_their_pipes():
    assert parsed(table(["token", "id"], [["`<|bos|>`", 0], [r"`C:\x` and C:\|", 1]]))[1:] == [
        ["<code><|bos|></code>", "0"], [r"<code>C:\x</code> and C:\|", "1"]]
    assert cell("**bold** `a|b`") == r"**bold** `a\|b`"  # the caller's Markdown stays


def test_figures_are_pngs_at_the_policy_dpi(tmp_path):
    from PIL import Image

    fig, axes = figure(4.6, 3.3, 1, 2, title="t")
    assert len(axes) == 2
    axes[0].plot([0, 1], [1, 0])
    save(fig, tmp_path / "sub" / "a.png")
    with Image.open(tmp_path / "sub" / "a.png") as image:
        assert image.format == "PNG" and image.size == (round(4.6 * DPI), round(3.3 * DPI))
    fig, (ax,) = figure(3, 2, fit=True)
    assert fig.get_layout_engine() is not None
