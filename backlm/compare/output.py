"""A comparison written down: ``COMPARISON.md``, the PNG figures and ``comparison.csv``.

The CSV is long (one number a row: ``section, experiment, series, split, step, x, y, lo, hi,
n, detail``) and the figures are drawn from those very rows (:mod:`backlm.compare.figures`),
so every number plotted or tabled is in it. The folder is written whole or not at all
(:func:`backlm.atomic.atomic_folder`).

Sections: ``curve`` (x tokens seen, y the train loss or the metric), ``summary`` (final and
best metric, 5CAT gates, size and cost), ``task``, ``transfer`` (bits per byte of a model,
``experiment``, reading an order, ``series``), ``gap`` (x parameters, y the gap with its
bootstrap interval), ``gap_document`` (x document index, y its bpb difference, detail its
text hash), ``gap_seeds`` (t-interval over seeds) and ``gap_pooled`` (documents resampled with
one draw across seeds), ``attention`` (x layer, y the mean over heads at the last logged
step, lo and hi the heads' range; series entropy or distance).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backlm.atomic import atomic_folder
from backlm.compare import probe
from backlm.direction import ORDERS, Direction
from backlm.errors import UserError
from backlm.missing import is_missing
from backlm.render import table

if TYPE_CHECKING:
    from backlm.compare.gather import Comparison, Member

MARKDOWN = "COMPARISON.md"
CSV = "comparison.csv"
COLUMNS = ("section", "experiment", "series", "split", "step", "x", "y", "lo", "hi", "n",
           "detail")
SUMMARY_KEYS = ("steps", "tokens", "wall_seconds", "gpu_hours", "usd")


def _row(section: str, experiment: str, series: str, y: Any, **kw: Any) -> dict[str, Any]:
    return {"section": section, "experiment": experiment, "series": series, "y": y, **kw}


def _member_rows(m: Member, metric: str) -> list[dict[str, Any]]:
    out = [_row("curve", m.id, series, value, step=step, x=tokens)
           for series, points in m.curves.items() for step, tokens, value in points]
    for name, point in ((f"final_{metric}", m.final), (f"best_{metric}", m.best)):
        if point is not None:
            out.append(_row("summary", m.id, name, point[1], step=point[0]))
    if m.params is not None:
        out.append(_row("summary", m.id, "params", m.params))
    if m.fivecat is not None:
        out.append(_row("summary", m.id, "fivecat_passed", m.fivecat.get("gates_passed"),
                        step=m.fivecat.get("step"), n=m.fivecat.get("gates_total")))
    for key in SUMMARY_KEYS:
        value = (m.summary or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append(_row("summary", m.id, key, value))
    if m.lineage_gpu_hours is not None:
        out.append(_row("summary", m.id, "lineage_gpu_hours", m.lineage_gpu_hours))
    out += [_row("task", m.id, t["task"], t["score"], split=t["order"],
                 detail=f"{t['metric']}, {'native' if t['native'] else 'cross'}")
            for t in m.tasks]
    att = m.attention
    if att is not None:
        for stat in ("entropy", "distance"):
            grid = att.last(stat)
            out += [_row("attention", m.id, stat, float(grid[i].mean()), x=i, step=att.steps[-1],
                         lo=float(grid[i].min()), hi=float(grid[i].max()), n=grid.shape[1],
                         detail=f"{m.direction} model, layer {i}: mean over heads (lo, hi: "
                                "the heads' range)") for i in range(grid.shape[0])]
    for order, r in m.readings.items():
        for split, d in r.splits.items():
            out.append(_row("transfer", m.id, order, d["bpb"], split=split, step=r.step,
                            n=len(d["per_document"]["hash"]),
                            detail=f"{m.direction} model, {'native' if r.native else 'cross'}"
                                   f", {r.source}"))
    return out


def csv_rows(c: Comparison) -> list[dict[str, Any]]:
    """Every number of the comparison, one a row."""
    out = [r for m in c.members for r in _member_rows(m, c.options.metric)]
    for u in c.units:
        for split, g in u.gaps.items():
            iv = g.interval
            out.append(_row("gap", u.label, u.kind, iv.value, split=split, x=u.params,
                            lo=iv.lo, hi=iv.hi, n=iv.n,
                            detail=f"seed {u.seed}, depth {u.forward.depth}, forward bpb "
                                   f"{g.forward_bpb!r}, backward bpb {g.backward_bpb!r}"))
            out += [_row("gap_document", u.label, u.kind, float(d), split=split, x=i, detail=h)
                    for i, (d, h) in enumerate(zip(g.doc_diff, g.hashes, strict=True))]
    for grp in c.groups:
        params = [u.params for u in grp.units if u.params is not None]
        x = sum(params) / len(params) if params else None
        seeds = ", ".join(str(u.seed) for u in grp.units)
        out.append(_row("gap_seeds", grp.label, grp.kind, grp.seeds.value, split=grp.split,
                        x=x, lo=grp.seeds.lo, hi=grp.seeds.hi, n=grp.seeds.n,
                        detail=f"t-interval over seeds {seeds}"))
        if grp.pooled is not None:
            p = grp.pooled
            out.append(_row("gap_pooled", grp.label, grp.kind, p.value, split=grp.split, x=x,
                            lo=p.lo, hi=p.hi, n=p.n, detail="documents resampled, one draw "
                            "in every seed"))
    return out


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text (floats in full precision, blanks for what a row lacks)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        # a missing number (None or NaN) is a blank cell, never "nan"
        writer.writerow({k: "" if r.get(k) is None or r[k] != r[k] else
                         (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    return buf.getvalue()


def old_comparison(folder: Path) -> bool:
    """Whether ``folder`` is a comparison an older backlm wrote (before the ownership marker):
    the Markdown, the CSV and PNG figures, nothing else."""
    return (folder / MARKDOWN).is_file() and all(
        p.is_file() and not p.is_symlink() and (p.name in (MARKDOWN, CSV) or p.suffix == ".png")
        for p in folder.iterdir())


def write(c: Comparison) -> None:
    """The comparison folder, whole: figures, CSV, then the Markdown that shows them."""
    from backlm.compare.figures import draw

    rows = csv_rows(c)
    try:
        with atomic_folder(c.output, "output folder", old_comparison) as tmp:
            figures = draw(rows, tmp, c.options.metric, c.spans_depths)
            (tmp / CSV).write_text(to_csv(rows), encoding="utf-8")
            (tmp / MARKDOWN).write_text(markdown(c, figures), encoding="utf-8")
    except OSError as exc:  # name the user's folder, not the temporary one beside it
        raise UserError(f"cannot write the comparison to {c.output}: {exc.strerror or exc}; "
                        "free some space or choose another --output") from None


# --- Markdown ---------------------------------------------------------------------------------


def _f(value: Any, digits: int = 4, signed: bool = False) -> str:
    if is_missing(value):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [*table(header, rows), ""]


def _hours(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 3600:.2f} h"


def _experiments(c: Comparison) -> list[str]:
    rows = []
    for m in c.members:
        s = m.summary or {}
        rows.append([m.id, m.direction, m.phase, str(m.depth or "—"),
                     f"{m.params:,}" if m.params else "—", str(m.seed if m.seed is not None
                                                                else "—"),
                     str(s.get("steps", "—")), f"{s['tokens']:,}" if isinstance(
                         s.get("tokens"), int) else "—", str(m.meta.get("status", "?"))])
    return ["## Experiments", "", *_table(["experiment", "direction", "phase", "depth",
                                           "parameters", "seed", "steps", "tokens", "status"],
                                          rows)]


def _summary(c: Comparison) -> list[str]:
    metric, rows = c.options.metric, []
    for m in c.members:
        five = m.fivecat
        five_cell = (f"{five.get('gates_passed')}/{five.get('gates_total')} (step "
                     f"{five.get('step')})" if five else "—")
        s = m.summary or {}
        rows.append([m.id, _point(m.final), _point(m.best), five_cell,
                     str(s.get("stop_reason", "—")), _hours(s.get("wall_seconds")),
                     f"{_f(s.get('gpu_hours'), 3)} ({_f(m.lineage_gpu_hours, 3)})",
                     f"${s['usd']:.2f}" if isinstance(s.get("usd"), int | float) else "—"])
    lines = [f"## Final and best {metric}, 5CAT and cost", ""]
    lines += _table(["experiment", f"final {metric} (step)", "best (step)", "5CAT",
                     "stopped by", "wall time", "GPU-hours (lineage)", "cost"], rows)
    bidir = [m.id for m in c.members if m.direction == Direction.BIDIRECTIONAL]
    if bidir:
        lines += [f"For a bidirectional model ({', '.join(bidir)}) {metric} is the mean of "
                  "its two orders; the curves show each.", ""]
    tasks = [[m.id, t["task"], t["metric"], t["order"] + ("" if t["native"] else " (cross)"),
              _f(t["score"])] for m in c.members for t in m.tasks]
    lines += ["### Tasks", ""]
    lines += (_table(["experiment", "task", "metric", "order", "score"], tasks) if tasks else
              ["No task evaluations: `backlm data download --task arc` then `backlm eval EXP`.",
               ""])
    return lines


def _point(point: tuple[int, float] | None) -> str:
    return "—" if point is None or is_missing(point[1]) else f"{point[1]:.4f} ({point[0]})"


def _transfer(c: Comparison, figures: dict[str, str]) -> list[str]:
    lines = ["## Cross-direction transfer", "",
             "Bits per byte of each model (row) reading each order (column) over the same "
             "held-out documents; **bold** is an order the model was trained in, plain is the "
             "cross reading (a one-direction model scored in the other order, as `backlm eval` "
             "does).", ""]
    for split in ("val", "ood"):
        rows = []
        for m in c.members:
            cells = []
            for order in ORDERS:
                r = m.readings.get(order)
                d = r.splits.get(split) if r else None
                bpb = "—" if d is None else _f(d["bpb"])
                cells.append(f"**{bpb}**" if bpb != "—" and r.native else bpb)
            if any(cell != "—" for cell in cells):
                steps = sorted({r.step for r in m.readings.values()})
                sources = sorted({r.source for r in m.readings.values()})
                rows.append([f"{m.id} ({m.direction})", *cells,
                             f"{'/'.join(map(str, steps))} · {'/'.join(sources)}"])
        if rows:
            lines += [f"{split}:", ""]
            lines += _table(["model (direction)", "forward order", "backward order",
                             "step · source"], rows)
    if "transfer" in figures:
        lines += [f"![transfer matrix]({figures['transfer']})", ""]
    return lines


def _gap(c: Comparison, figures: dict[str, str]) -> list[str]:
    o = c.options
    lines = ["## Forward − backward gap on the same documents", "",
             "gap = bpb of the forward reading − bpb of the backward reading, over the same "
             "held-out documents (same text hashes and bytes, checked), each model in its own "
             "order (a bidirectional model: its two markers). Negative: forward reads the text "
             f"better. 95% CI: paired bootstrap over documents, {o.bootstrap} resamples, "
             f"seed {o.seed}.", ""]
    rows = [[u.label, split, str(g.interval.n), f"{g.nbytes:,}", _f(g.forward_bpb),
             _f(g.backward_bpb), f"**{_f(g.interval.value, signed=True)}**",
             f"[{_f(g.interval.lo, signed=True)}, {_f(g.interval.hi, signed=True)}]"]
            for u in c.units for split, g in u.gaps.items()]
    if not rows:
        return lines + ["No gap: it needs a forward and a backward model of the same phase "
                        "and depth, or a bidirectional model, with language-modelling "
                        "evaluations (see the notes).", ""]
    lines += _table(["pair", "split", "documents", "bytes", "forward bpb", "backward bpb",
                     "gap", "95% CI"], rows)
    if c.groups:
        seeds = [[g.label, g.split, str(g.seeds.n), f"**{_f(g.seeds.value, signed=True)}**",
                  f"[{_f(g.seeds.lo, signed=True)}, {_f(g.seeds.hi, signed=True)}]",
                  "—" if g.pooled is None else
                  f"[{_f(g.pooled.lo, signed=True)}, {_f(g.pooled.hi, signed=True)}]"]
                 for g in c.groups]
        lines += ["Across seeds (mean of the per-seed gaps; t-interval over seeds; pooled: "
                  "documents resampled with one draw in every seed):", ""]
        lines += _table(["group", "split", "seeds", "mean gap", "95% t-interval over seeds",
                         "95% CI, documents pooled"], seeds)
    else:
        lines += ["One seed per kind and depth: no seed-level interval (compare several seeds "
                  "of each direction for one).", ""]
    if "gap" in figures:
        lines += [f"![gap]({figures['gap']})", ""]
    if "gap_vs_size" in figures:
        lines += ["### Gap against model size", "", f"![gap vs size]({figures['gap_vs_size']})",
                  ""]
    return lines


def _attention(c: Comparison, figures: dict[str, str]) -> list[str]:
    lines = ["## Attention: entropy and distance by layer", ""]
    rows = [[m.id, m.direction, str(m.attention.steps[-1]),
             " · ".join(_f(float(v.mean()), 3) for v in m.attention.last("entropy")),
             " · ".join(_f(float(v.mean()), 2) for v in m.attention.last("distance"))]
            for m in c.members if m.attention is not None]
    if not rows:
        return lines + ["No attention statistics in the research logs: training records them "
                        "every `log.attention_every` steps (`--set log.attention_every=N`).", ""]
    lines += ["At each model's last logged step, per layer (first to last) and averaged over "
              "heads: the entropy of a query's attention in nats, and how many tokens back it "
              "looks on average, counted in the order the model reads. A bidirectional model's "
              "rows mix both markers.", ""]
    lines += _table(["experiment", "direction", "step", "entropy by layer",
                     "distance by layer"], rows)
    if "attention" in figures:
        lines += [f"![attention by layer]({figures['attention']})", "",
                  "The band around each line is the range over heads.", ""]
    missing = [m.id for m in c.members if m.attention is None]
    if missing:
        lines += [f"Not logged for {', '.join(missing)}.", ""]
    return lines


def markdown(c: Comparison, figures: dict[str, str]) -> str:
    """``COMPARISON.md``: the experiments, curves, tables, transfer matrix, gap and notes."""
    ids = [m.id for m in c.members]
    o = c.options
    lines = [f"# Comparison: {' · '.join(ids)}", "",
             f"`backlm compare {' '.join(ids)} --metric {o.metric} --bootstrap {o.bootstrap} "
             f"--seed {o.seed}` · {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Every "
             f"number tabled or plotted here is in [{CSV}]({CSV}).", ""]
    lines += _experiments(c)
    lines += ["## Learning curves", ""]
    lines += ([f"![learning curves]({figures['curves']})", "",
               f"Train loss and {o.metric} against tokens seen (a bidirectional model's "
               f"{o.metric} per order: dashed is the backward order).", ""]
              if "curves" in figures else ["No metrics logged yet.", ""])
    lines += _summary(c) + _transfer(c, figures) + _gap(c, figures) + _attention(c, figures)
    lines += probe.markdown([m.exp for m in c.members])  # stored reversal probes
    if c.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in c.notes), ""]
    return "\n".join(lines)
