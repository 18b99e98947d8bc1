"""What a comparison holds (the dataclasses ``backlm compare`` fills and writes) and the
gathering of one experiment from its own files: ``metrics.jsonl`` read past a torn last line,
the metric's final and best values, 5CAT results, task evaluations, the training summary, and
the language-modelling evaluations in both orders: the stored results of ``backlm eval`` when
they hold per-document sums over the same documents of the checkpoint compared, otherwise
computed now exactly as ``backlm eval`` computes them
(:func:`backlm.evaluation.runner.lm_results`) and stored where it stores them
(:func:`~backlm.evaluation.runner.store_lm_results`), so the next comparison reads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backlm.compare import stats
from backlm.direction import ORDERS, Direction
from backlm.errors import UserError
from backlm.experiment import Experiment

SPLITS = ("val", "ood")
# where a reading came from: an evaluation file read, one computed now and stored in the
# experiment for next time, one computed now that could not be stored (a read-only folder)
STORED, COMPUTED, UNSTORED = "stored", "computed", "computed, not stored"


@dataclass
class CompareOptions:
    """What to compare and how."""

    metric: str = "val_bpb"
    output: Path | None = None  # default: ./comparisons/<id>_vs_<id>…
    bootstrap: int = 2000
    seed: int = 0
    device: str = "auto"


@dataclass
class Reading:
    """One model's language modelling in one order: per split the bpb and per-document sums."""

    order: str
    native: bool
    step: int
    source: str  # STORED, COMPUTED or UNSTORED
    splits: dict[str, dict[str, Any]]  # split -> {"bpb", "loss", "per_document"}


@dataclass
class Member:
    """One experiment as the comparison sees it."""

    exp: Experiment
    meta: dict[str, Any]
    seed: int | None = None
    params: int | None = None
    curves: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    final: tuple[int, float] | None = None  # (step, value) of the metric
    best: tuple[int, float] | None = None
    readings: dict[str, Reading] = field(default_factory=dict)
    fivecat: dict[str, Any] | None = None
    tasks: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    lineage_gpu_hours: float | None = None
    attention: Any = None  # backlm.logs.reader.AttentionLog of the phase's research log

    @property
    def id(self) -> str:
        return self.exp.id

    @property
    def direction(self) -> str:
        """The name its metadata holds (equal to its :class:`Direction`), ``?`` if none."""
        return str(self.meta.get("direction") or "?")

    @property
    def phase(self) -> str:
        return str(self.meta.get("phase") or "base")

    @property
    def depth(self) -> int | None:
        depth = self.meta.get("depth")
        return depth if isinstance(depth, int) else None


@dataclass
class Gap:
    """``bpb(forward) − bpb(backward)`` over the same documents of one split."""

    split: str
    interval: stats.Interval
    forward_bpb: float
    backward_bpb: float
    nbytes: int
    doc_diff: np.ndarray  # per-document bpb difference
    hashes: list[str]
    pair: stats.Pair


@dataclass
class GapUnit:
    """A forward reading and a backward reading to set against each other."""

    label: str
    kind: str  # "models" (a forward and a backward model) or "bidirectional" (its two orders)
    forward: Member
    backward: Member
    gaps: dict[str, Gap] = field(default_factory=dict)

    @property
    def seed(self) -> int | None:
        return self.forward.seed

    @property
    def params(self) -> int | None:
        return self.forward.params


@dataclass
class SeedGroup:
    """Units of one kind, phase and depth on one split: the seed-level view."""

    label: str
    kind: str
    split: str
    units: list[GapUnit]
    seeds: stats.Interval  # mean gap over units with its t-interval
    pooled: stats.Interval | None  # documents resampled with one draw in every unit


@dataclass
class Comparison:
    """Everything ``backlm compare`` found and computed; written by compare_output."""

    members: list[Member]
    options: CompareOptions
    output: Path
    units: list[GapUnit] = field(default_factory=list)
    groups: list[SeedGroup] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def spans_depths(self) -> bool:
        return len({u.forward.depth for u in self.units if u.gaps}) > 1


# --- gathering --------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def curves(rows: list[dict[str, Any]], metric: str, tokens_per_step: int | None,
           bidirectional: bool) -> dict[str, list[tuple[int, float, float]]]:
    """Series name -> ``(step, tokens seen, value)``: the train loss and the metric (per order
    for a bidirectional run)."""
    seen = {r["step"]: r["tokens"] for r in rows
            if isinstance(r.get("step"), int) and _number(r.get("tokens")) is not None}
    per_order = bidirectional and not metric.endswith(tuple(f"_{o}" for o in ORDERS))
    names = [f"{metric}_{o}" for o in ORDERS] if per_order else [metric]
    out: dict[str, list[tuple[int, float, float]]] = {}
    for r in rows:
        step = r.get("step")
        if not isinstance(step, int):
            continue
        tokens = seen.get(step, step * (tokens_per_step or 1))
        for series in ("loss", *names):
            value = _number(r.get(series))
            if value is not None:
                name = "train_loss" if series == "loss" else series
                out.setdefault(name, []).append((step, float(tokens), value))
    return out


def _final_best(m: Member, rows: list[dict[str, Any]], metric: str) -> None:
    points = [(r["step"], v) for r in rows
              if isinstance(r.get("step"), int) and (v := _number(r.get(metric))) is not None]
    if not points:
        return
    best = m.exp.best("val") or {}
    if best.get("monitor") == metric and best.get("mode") in ("min", "max"):
        mode = best["mode"]
    else:
        mode = "max" if any(w in metric for w in ("reward", "acc", "score", "f1")) else "min"
    m.final = points[-1]
    m.best = (min if mode == "min" else max)(points, key=lambda p: p[1])


def _wanted_checkpoint(exp: Experiment) -> dict[str, Any]:
    """What a stored evaluation must have been made of to stand for the model compare loads:
    that checkpoint's step and, where its meta has one, its weights' sha256 (a run extended,
    or a checkpoint rewritten, since the evaluation makes the file stale)."""
    from backlm.experiment import checkpoint as ckpt
    from backlm.experiment.loading import chosen_step

    try:
        step = chosen_step(exp)
        sha = ckpt.read_meta(exp.checkpoint_dir(step)).get("model_sha256")
    except (UserError, OSError, ValueError, AttributeError):
        return {}
    return {"step": step, **({"model_sha256": sha} if sha else {})}


def _stored_reading(exp: Experiment, phase: str, order: Direction,
                    wanted: dict[str, Any]) -> Reading | None:
    """The stored lm evaluation in ``order``, if it keeps per-document sums and was made of
    the ``wanted`` checkpoint (:func:`backlm.experiment.identity.differs`; a file from before
    sha256s were recorded is checked on its step alone; an experiment whose checkpoint cannot
    be read keeps its stored files, which are all there is of it)."""
    from backlm.evaluation.tasks import LM_TASK
    from backlm.experiment.folder import read_json
    from backlm.experiment.identity import differs

    path = exp.evaluation_path(phase, order, LM_TASK)
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        asked = {k: v for k, v in wanted.items()
                 if k != "model_sha256" or data.get("model_sha256") is not None}
        if differs(data, asked) is not None:
            return None
        return _reading(data, STORED)
    except (UserError, KeyError, TypeError, ValueError):
        return None


def _reading(data: dict[str, Any], source: str) -> Reading | None:
    splits = {r["split"]: {"bpb": float(r["bpb"]), "loss": float(r["loss"]),
                           "per_document": r["per_document"]}
              for r in data["records"] if "per_document" in r}
    if "val" not in splits:
        return None
    return Reading(data["direction"], bool(data["native"]), int(data["step"]), source, splits)


def same_documents(readings: Sequence[Reading | None], split: str = "val") -> bool:
    """Whether every reading covers the same documents of ``split`` (text hashes, bytes)."""
    docs = [r.splits[split]["per_document"] for r in readings
            if r is not None and split in r.splits]
    return all(d["hash"] == docs[0]["hash"] and d["bytes"] == docs[0]["bytes"] for d in docs)


def readings(m: Member, options: CompareOptions, notes: list[str]) -> None:
    """Both orders' lm evaluations: stored when both are (same step, same documents), else
    computed now (both, so one model's two readings always cover the same documents) and
    stored in the experiment as ``backlm eval --tasks lm`` stores them, for the next
    comparison and report; an experiment this user cannot write is compared all the same,
    with a note that nothing was stored."""
    from backlm.evaluation.runner import EvalOptions, lm_results, store_lm_results

    wanted = _wanted_checkpoint(m.exp)
    stored = {o: _stored_reading(m.exp, m.phase, o, wanted) for o in ORDERS}
    steps = {r.step for r in stored.values() if r is not None}
    if all(stored.values()) and len(steps) == 1 and same_documents(list(stored.values())):
        m.readings = {o: r for o, r in stored.items() if r is not None}
        return
    try:
        results = lm_results(m.exp, EvalOptions(directions=ORDERS, tasks=["lm"],
                                                device=options.device))
    except (UserError, OSError) as exc:
        m.readings = {o: r for o, r in stored.items() if r is not None}
        notes.append(f"{m.id}: no language-modelling evaluation in both orders, and none could "
                     f"be computed now ({exc}); run `backlm eval {m.id} --tasks lm`")
        return
    source = COMPUTED
    try:
        store_lm_results(m.exp, results)
    except (UserError, OSError) as exc:
        source = UNSTORED
        reason = exc if isinstance(exc, UserError) else exc.strerror or type(exc).__name__
        notes.append(f"{m.id}: language modelling computed now, not stored ({reason})")
    m.readings = {o: r for o, data in results.items() if (r := _reading(data, source))}


def _extras(m: Member, notes: list[str]) -> None:
    """5CAT (latest result), task evaluations and cost."""
    from backlm.evaluation.tasks import KNOWN_TASKS, LM_TASK
    from backlm.experiment.folder import read_json
    from backlm.train import lineage_costs

    for _step, path in reversed(m.exp.fivecat_results(m.phase)):
        try:
            data = read_json(path)
        except UserError:
            continue
        if isinstance(data, dict):
            m.fivecat = data
            break
    for task in (t for t in KNOWN_TASKS if t != LM_TASK):
        for order in ORDERS:
            path = m.exp.evaluation_path(m.phase, order, task)
            try:
                data = read_json(path) if path.is_file() else None
                summary = data["summary"] if data else None
                if summary is not None and _number(summary.get("score")) is not None:
                    m.tasks.append({"task": task, "order": order, "metric": summary["metric"],
                                    "score": float(summary["score"]),
                                    "native": bool(data.get("native"))})
            except (UserError, KeyError, TypeError, AttributeError):
                notes.append(f"{m.id}: unreadable {task} evaluation in {order} order, skipped")
    m.summary = m.exp.training_summary()
    m.attention = _attention(m, notes)
    hours = [r["gpu_hours"] for r in lineage_costs(m.exp)]
    m.lineage_gpu_hours = float(sum(hours)) if all(_number(h) is not None for h in hours) else None


def _attention(m: Member, notes: list[str]) -> Any:
    """The attention statistics of the member's research log, if it logged any."""
    from backlm.logs.reader import open_log, read_attention

    path = m.exp.research_log(m.phase)
    if not path.is_file():
        return None
    try:
        with open_log(path) as f:
            return read_attention(f)
    except (UserError, OSError, KeyError, ValueError) as exc:
        notes.append(f"{m.id}: research log unreadable ({exc}): no attention statistics")
        return None


def gather(exp: Experiment, rows: list[dict[str, Any]], options: CompareOptions,
           notes: list[str]) -> Member:
    """One experiment's curves, metric, evaluations, 5CAT, tasks and cost."""
    from backlm.train.cost import model_size

    m = Member(exp, exp.metadata())
    tokens_per_step = None
    try:
        cfg = exp.config()
        m.seed, m.params = cfg.train.seed, model_size(cfg.model)[0]
        tokens_per_step = cfg.train.total_batch_tokens
        if m.depth is None:
            m.meta["depth"] = cfg.model.depth
    except (UserError, ValueError, TypeError, KeyError) as exc:
        notes.append(f"{m.id}: configuration unreadable ({exc}): seed and size unknown")
    m.curves = curves(rows, options.metric, tokens_per_step,
                      m.direction == Direction.BIDIRECTIONAL)
    _final_best(m, rows, options.metric)
    if not rows:
        notes.append(f"{m.id}: no training metrics logged: no learning curves")
    elif m.final is None:
        notes.append(f"{m.id}: logged no {options.metric}")
    readings(m, options, notes)
    _extras(m, notes)
    return m
