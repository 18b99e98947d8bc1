"""backlm.render: the Markdown table writer (checked against a GFM table parser) and the figure
policy."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from backlm.render import (
    DPI,
    cell,
    count_axis,
    exact,
    figure,
    finish,
    metric_label,
    plot,
    readable,
    save,
    single_point_note,
    table,
)
from tests.helpers import assert_readable, tick_labels

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
    for ax in axes:
        ax.set_ylabel("loss (nats/token)")
    save(fig, tmp_path / "sub" / "a.png")
    with Image.open(tmp_path / "sub" / "a.png") as image:
        assert image.format == "PNG" and image.size == (round(4.6 * DPI), round(3.3 * DPI))
    fig, (ax,) = figure(3, 2, fit=True)
    assert fig.get_layout_engine() is not None


@pytest.mark.parametrize(("value", "shown"), [
    (0, "0"), (7, "7"), (250, "250"), (0.25, "0.25"), (1.2345, "1.23"), (1000, "1k"),
    (120000, "120k"), (150000, "150k"), (1_500_000, "1.5M"), (999_999, "1M"),
    (2e9, "2B"), (-40000, "-40k"), (3.5e12, "3.5T")])
def test_counts_read_with_a_suffix_and_three_digits(value, shown):
    assert readable(value) == shown


def test_exact_writes_a_lone_value_in_full():
    assert exact(2048) == "2,048" and exact(4.0) == "4" and exact(0.5) == "0.5"


@pytest.mark.parametrize(("name", "label"), [
    ("val_bpb", "val_bpb (bits/byte)"), ("val_bpb_backward", "val_bpb_backward (bits/byte)"),
    ("val_loss", "val_loss (nats/token)"), ("val_chat_loss", "val_chat_loss (nats/token)"),
    ("val_reward", "val_reward (reward, 0–1)"), ("tokens_per_sec", "tokens_per_sec (tokens/s)"),
    ("task_acc", "task_acc (accuracy, fraction)"), ("something", "something")])
def test_a_metric_label_names_its_unit(name, label):
    assert metric_label(name) == label


def test_a_tokens_axis_reads_in_thousands_without_labels_running_together():
    fig, (ax,) = figure(4.6, 3.3)
    tokens = list(range(0, 192_001, 1600))
    plot(ax, tokens, [1 / (1 + t) for t in tokens], label="train")
    finish(ax, xlabel="tokens seen", ylabel="loss (nats/token)")
    assert_readable(fig)
    shown = [t for t, _box in tick_labels(ax.xaxis)]
    assert 3 <= len(shown) <= 7 and all(t == "0" or t.endswith("k") for t in shown), shown


def test_a_step_axis_has_whole_ticks_only():
    fig, (ax,) = figure(4.6, 3.3)
    plot(ax, [1, 2, 3], [3.0, 2.0, 1.5], label="train")
    finish(ax, xlabel="step", ylabel="loss (nats/token)")
    fig.canvas.draw()
    locs = [t.get_loc() for t in ax.xaxis.get_major_ticks()]
    assert locs and all(float(v).is_integer() for v in locs), locs


def test_a_single_point_is_marked_noted_and_alone_on_its_axis():
    fig, (ax,) = figure(4.6, 3.3)
    line = plot(ax, [7], [2.4], label="val_bpb")
    finish(ax, xlabel="step", ylabel="val_bpb (bits/byte)")
    assert line.get_marker() == "o" and line.get_markersize() >= 7
    assert single_point_note(ax) == "one point, at step 7"
    assert list(ax.get_xticks()) == [7] and ax.get_xlim()[0] < 7 < ax.get_xlim()[1]


def test_single_points_among_curves_are_counted_and_the_axis_kept():
    fig, (ax,) = figure(4.6, 3.3)
    plot(ax, [0, 10, 20], [3, 2, 1], label="long")
    plot(ax, [20], [1.5], label="short")
    ax.axhline(1.0, label="threshold")  # a reference line is no series
    finish(ax, xlabel="step", ylabel="loss (nats/token)")
    assert single_point_note(ax) == "1 series of one point, at step 20"
    assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= 20
    fig, (ax,) = figure(4.6, 3.3)
    plot(ax, [0, 10], [3, 2], label="a")
    finish(ax, xlabel="step", ylabel="loss (nats/token)")
    assert single_point_note(ax) == ""


def test_a_crowded_legend_gets_a_band_above_the_data():
    fig, (ax,) = figure(4.6, 3.3)
    for i in range(6):
        plot(ax, [0, 1, 2], [i, i + 1, i + 2], label=f"blocks.{i}")
    top = max(max(line.get_ydata()) for line in ax.get_lines())
    finish(ax, xlabel="step", ylabel="norm")
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    highest = ax.transData.transform((0, top))[1]
    assert legend.y0 > highest, (legend, highest)


def test_a_log_axis_keeps_readable_major_ticks(tmp_path):
    fig, (ax,) = figure(4.6, 3.3)
    plot(ax, [1, 2], [2e6, 7e6], label="gap")
    ax.set_xscale("log")
    ax.set_yscale("log")
    count_axis(ax.yaxis)
    finish(ax, xlabel="step", ylabel="parameters", x="value")
    fig.canvas.draw()
    shown = [t for t, _box in tick_labels(ax.yaxis)]
    assert shown and all(t.endswith("M") for t in shown), shown


def test_a_figure_with_an_unlabelled_y_axis_is_refused(tmp_path):
    fig, axes = figure(4.6, 3.3, 1, 2)
    axes[0].set_ylabel("loss (nats/token)")
    axes[1].set_title("val_bpb")
    with pytest.raises(ValueError, match="val_bpb"):
        save(fig, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()
    with pytest.raises(ValueError, match="y label"):
        finish(axes[1], xlabel="step", ylabel=" ")
