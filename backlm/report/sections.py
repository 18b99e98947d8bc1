"""The research report's training sections: learning curves (metrics.jsonl), loss by token
position and gradient and activation statistics (the research log); plus the Markdown helpers
and the context every section writes through.

A section shows what its data holds and, where the data is missing, one line naming the
command (or training option) that produces it. Figures are drawn by
:mod:`backlm.report.figures` into the staging folder of the report being built.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm import render
from backlm.direction import ORDERS, Direction
from backlm.errors import UserError
from backlm.evaluation.tasks import LM_TASK
from backlm.experiment import Experiment
from backlm.missing import is_missing
from backlm.report import figures as figs

MAX_LINES_PLOTTED = 6  # parameters or layers per statistics figure
VAL_FAMILIES = ("val_bpb", "val_chat_loss", "val_reward")
SUFFIXES = ("", *(f"_{o}" for o in ORDERS))  # a metric, then its per-order names


@dataclass
class Context:
    """What the sections read (parsed once) and where they put figures and hints."""

    exp: Experiment
    meta: dict[str, Any]
    config: dict[str, Any]  # config.yaml as plain data ({} when absent)
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]  # every evaluation result file, parsed
    figures_dir: Path
    figures: list[str] = field(default_factory=list)  # file names written
    missing: list[str] = field(default_factory=list)  # the "how to get it" lines

    @property
    def direction(self) -> str:
        """The name metadata (else the config) holds, equal to its :class:`Direction`; ``?``."""
        return str(self.meta.get("direction") or self.setting("data.direction") or "?")

    def setting(self, dotted: str) -> Any:
        """A config value by dotted name (None when absent)."""
        node: Any = self.config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def last_step(self) -> int:
        steps = [r["step"] for r in self.metrics if isinstance(r.get("step"), int)]
        return max(steps, default=0)

    def absent(self, text: str) -> list[str]:
        """A missing-data line (also collected for the command's summary)."""
        if text not in self.missing:  # one research log can be missing for two sections
            self.missing.append(text)
        return [f"_{text}_", ""]

    def image(self, name: str, alt: str, draw: Callable[..., bool], *args: Any,
              **kw: Any) -> list[str]:
        """Draw a figure; its Markdown reference, or a line saying there was nothing finite."""
        if draw(self.figures_dir / name, *args, **kw):
            self.figures.append(name)
            return [f"![{alt}]({self.exp.figures_dir.name}/{name})", ""]
        return [f"_No finite values to plot for {alt}._", ""]


# --- Markdown helpers -----------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, a missing one (None, NaN) as '-'."""
    if value is None or (isinstance(value, float) and is_missing(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table of :func:`fmt` cells (:func:`backlm.render.table`), then a blank
    line."""
    return render.table(headers, [[fmt(v) for v in row] for row in rows]) + [""]


def plural(n: int, word: str) -> str:
    """``1 line``, ``2 lines``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def natural(name: str) -> list[Any]:
    """Sort key putting ``blocks.2`` before ``blocks.10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def spread(names: Sequence[Any], k: int) -> list[Any]:
    """At most ``k`` names evenly spaced over ``names`` (first and last included)."""
    if len(names) <= k:
        return list(names)
    return [names[round(i * (len(names) - 1) / (k - 1))] for i in range(k)]


# --- learning curves ------------------------------------------------------------------------


def learning_curves(ctx: Context) -> list[str]:
    """Train loss by step and tokens; validation metrics per order (bidirectional)."""
    lines = ["## Learning curves", ""]
    train = [r for r in ctx.metrics if number(r.get("loss")) and isinstance(r.get("step"), int)]
    val: dict[str, list[figs.Series]] = {}
    rows = []
    for family in VAL_FAMILIES:
        for key in (family + o for o in SUFFIXES):
            pts = [(r["step"], r[key]) for r in ctx.metrics if number(r.get(key))]
            if pts:
                val.setdefault(family, []).append((key, [p[0] for p in pts], [p[1] for p in pts]))
                best = (max if family == "val_reward" else min)(pts, key=lambda p: p[1])
                rows.append((key, pts[0][1], pts[-1][1], best[1], best[0]))
    if not train and not val:
        return lines + ctx.absent(f"No training metrics in {ctx.exp.metrics_path.name}: it is "
                                  f"written from the first step of `backlm train` (resume with "
                                  f"`backlm train --resume {ctx.exp.id}`)")
    if train:
        rows.insert(0, ("train loss", train[0]["loss"], train[-1]["loss"],
                        min(r["loss"] for r in train),
                        min(train, key=lambda r: r["loss"])["step"]))
    if torn_tail(ctx.exp.metrics_path):
        lines += [f"The last line of {ctx.exp.metrics_path.name} is incomplete (the run was cut "
                  "while writing it) and is left out.", ""]
    lines += [f"{len(ctx.metrics)} logged steps, the last at step {ctx.last_step()}."
              + (" Validation is reported per order (marker) for this bidirectional model."
                 if ctx.direction == Direction.BIDIRECTIONAL else ""), ""]
    lines += table(["metric", "first", "last", "best", "best at step"], rows)
    return lines + ctx.image("learning_curves.png", "learning curves", figs.learning_curves,
                             train, val)


def torn_tail(path: Path) -> bool:
    """Whether the file's last line is not a whole JSON record (a write cut short)."""
    import json

    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    except OSError:
        return False
    try:
        json.loads(last)
    except ValueError:
        return bool(last.strip())
    return False


# --- the research log: loss by position, gradients, activations -----------------------------


@dataclass
class LogData:
    """What the report reads from the research log."""

    name: str
    position: list[tuple[int, list[float]]]  # (step, mean loss per position): first, last
    grads: tuple[list[int], dict[str, list[float]]]  # steps, norm per parameter
    acts: tuple[list[int], dict[str, list[float]]]  # steps, rms per layer
    attention: Any = None  # backlm.logs.reader.AttentionLog, or None when not logged


def read_log(exp: Experiment) -> LogData:
    """The research log's per-position losses and statistics; UserError when there is none
    or it cannot be read."""
    from backlm.logs.reader import log_path, open_log, read_attention, rows

    path = log_path(exp)
    with open_log(path) as f:
        n = rows(f, "per_token")
        steps = f["per_token/step"][:n] if n else []
        position = [(int(steps[i]), [float(v) for v in f["per_token/position_loss"][i]])
                    for i in sorted({0, n - 1})] if n else []

        def stat(group: str, key: str) -> tuple[list[int], dict[str, list[float]]]:
            k = rows(f, group)
            if not k or group not in f:
                return [], {}
            names = sorted((x for x in f[group] if x != "step"), key=natural)
            return ([int(s) for s in f[f"{group}/step"][:k]],
                    {x: [float(v) for v in f[f"{group}/{x}/{key}"][:k]] for x in names})

        return LogData(path.name, position, stat("gradients", "norm"),
                       stat("activations", "rms"), read_attention(f))


def log_or_reason(ctx: Context) -> LogData | str:
    """The research log's data, or the line saying why there is none."""
    try:
        return read_log(ctx.exp)
    except (KeyError, OSError, ValueError) as exc:  # an HDF5 file, but not of this schema
        return (f"The research log could not be read ({exc}); `backlm log {ctx.exp.id}` shows "
                "what it holds")
    except UserError as exc:
        if ctx.setting("log.hdf5") is False:
            return ("No research log: training ran with log.hdf5 off; train with "
                    "`--set log.hdf5=true` (the default) to record per-token losses and "
                    "gradient and activation statistics")
        return f"No research log: {exc}"


def _cadence_hint(ctx: Context, what: str, option: str, log: str) -> str:
    every = ctx.setting(option)
    return (f"No {what} in {log}: training logs them every {option} steps ({every} in this "
            f"run, which reached step {ctx.last_step()}); train with `--set {option}=N` "
            "(N below the run's length) to record them")


def position_section(ctx: Context, log: LogData | str) -> list[str]:
    """Per-position mean loss from the research log (first vs last logged step) and from the
    language-modelling evaluation in each order."""
    lines = ["## Loss by token position", ""]
    if isinstance(log, str):
        lines += ctx.absent(log)
    elif not log.position:
        lines += ctx.absent(_cadence_hint(ctx, "per-token losses", "log.per_token_every",
                                          log.name))
    else:
        curves = [(f"step {s}", list(range(len(v))), v) for s, v in log.position]
        lines += [f"Mean loss at each position of the logged training rows (`/per_token/"
                  f"position_loss` in {log.name}), in model order: position 0 is the first "
                  "token the model reads (for a backward model, the end of the text). Rows "
                  "pack several documents.", ""]
        rows = []
        for s, v in log.position:
            q = max(1, len(v) // 4)
            head = [x for x in v[:q] if math.isfinite(x)]
            tail = [x for x in v[-q:] if math.isfinite(x)]
            rows.append((s, sum(head) / len(head) if head else None,
                         sum(tail) / len(tail) if tail else None))
        lines += table(["step", "mean loss, first quarter", "mean loss, last quarter"], rows)
        lines += ctx.image("position_loss.png", "loss by position during training",
                           figs.position_loss, curves, "loss by position (training rows)",
                           "position (model order)")
    curves = []
    for ev in ctx.evals:
        for rec in ev.get("records") or []:
            buckets = rec.get("by_position") if isinstance(rec, dict) else None
            if ev.get("task") == LM_TASK and buckets:
                label = f"{rec.get('split')} · {ev.get('direction')}" + (
                    " (native)" if ev.get("native") else "")
                curves.append((label, [b.get("last") for b in buckets],
                               [b.get("loss") for b in buckets]))
    if curves:
        lines += ["Loss by position in the language-modelling evaluation, per evaluated order "
                  "(positions bucketed by powers of two).", ""]
        lines += ctx.image("eval_position_loss.png", "loss by position per evaluated order",
                           figs.position_loss, curves, "loss by position (evaluation)",
                           "position (last of bucket)", log_x=True)
    return lines


def dynamics_section(ctx: Context, log: LogData | str) -> list[str]:
    """Gradient norms and activation RMS over training, for a few parameters and layers."""
    lines = ["## Gradient and activation statistics", ""]
    if isinstance(log, str):
        return lines + ctx.absent(log)
    parts = (("gradients", "parameter", "gradient norm", "norm", log.grads,
              "gradient_norms.png"),
             ("activations", "layer", "activation RMS", "rms", log.acts, "activations.png"))
    for group, kind, title, stat, (steps, values), name in parts:
        if not steps:
            lines += ctx.absent(_cadence_hint(ctx, f"{title} statistics", "log.stats_every",
                                              log.name))
            continue
        shown = spread(list(values), MAX_LINES_PLOTTED)
        lines += [f"`/{group}/*/{stat}` in {log.name}: {len(values)} logged at {len(steps)} "
                  f"steps ({steps[0]}–{steps[-1]}); {len(shown)} shown.", ""]
        lines += table([kind, f"{stat} first", f"{stat} last", f"{stat} max"],
                       [(x, values[x][0], values[x][-1], max(values[x])) for x in shown])
        lines += ctx.image(name, title, figs.stat_lines, f"{title} over training", title,
                           [(x, steps, values[x]) for x in shown], log_y=True)
    return lines


def attention_section(ctx: Context, log: LogData | str) -> list[str]:
    """Attention entropy and attended distance per layer over training, and per head at the
    last logged step."""
    lines = ["## Attention: entropy and distance", ""]
    if isinstance(log, str):
        return lines + ctx.absent(log)
    att = log.attention
    if att is None:
        return lines + ctx.absent(_cadence_hint(ctx, "attention statistics",
                                                "log.attention_every", log.name))
    layers, heads = att.entropy.shape[1:]
    lines += [f"`/attention/` in {log.name}: {layers} layers × {heads} heads at "
              f"{plural(len(att.steps), 'step')} ({att.steps[0]}–{att.steps[-1]}), over every "
              "query of the logged training rows. Entropy is in nats (a query at position i "
              "spread evenly over its i+1 keys has log(i+1)); distance is how many tokens "
              "back, in the order the model reads, its attention lands on average.", ""]
    rows = [(f"blocks.{i}", float(att.entropy[0, i].mean()), float(att.entropy[-1, i].mean()),
             float(att.distance[0, i].mean()), float(att.distance[-1, i].mean()),
             f"{att.distance[-1, i].min():.2f}–{att.distance[-1, i].max():.2f}")
            for i in range(layers)]
    lines += table(["layer", "entropy first", "entropy last", "distance first",
                    "distance last", "distance by head, last"], rows)
    shown = spread(range(layers), MAX_LINES_PLOTTED)
    panels = [(f"{title} (mean over heads)", "step", unit,
               [(f"blocks.{i}", att.steps, [float(v) for v in getattr(att, stat)[:, i]
                                            .mean(axis=1)]) for i in shown], None)
              for stat, title, unit in (("entropy", "attention entropy", "entropy (nats)"),
                                        ("distance", "attended distance",
                                         "distance (tokens back)"))]
    lines += ctx.image("attention.png", "attention entropy and distance over training",
                       figs.draw_panels, panels, "attention over training")
    lines += ctx.image("attention_heads.png", "attention per head at the last logged step",
                       figs.head_maps, {"entropy (nats)": att.last("entropy"),
                                        "distance (tokens back)": att.last("distance")},
                       f"attention per head, step {att.steps[-1]}")
    return lines
