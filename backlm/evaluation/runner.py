"""One evaluation of one checkpoint: every requested task in every requested direction.

``run_eval`` checks everything a user can get wrong (experiment, directions, tasks, task
data, step) before the model is loaded, then writes one JSON file per task and evaluated
direction to ``experiments/<id>/evaluations/<phase>/<direction>/<task>.json``::

    {"experiment", "task", "direction", "model_direction", "native", "phase", "step",
     "created", "summary": {...}, "records": [...]}

``direction`` is the evaluated order (for a bidirectional model: the marker used);
``native`` says whether the model was trained in it. The summary's ``score`` (with its
``metric``) is what the cross-direction table compares; language modelling summarises
``val_loss``/``val_bpb`` (and ``ood_*``) and its records hold each split's loss by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.atomic import write_json
from backlm.callbacks import Progress
from backlm.direction import ORDERS, Direction
from backlm.errors import UserError
from backlm.evaluation import tasks as T
from backlm.experiment import Experiment

DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class EvalOptions:
    """What to evaluate; ``tasks`` None means lm plus every task whose data is downloaded."""

    directions: Sequence[Direction] = ORDERS
    tasks: Sequence[str] | None = None
    step: int | None = None
    max_per_task: int | None = None
    lm_tokens: int | None = None  # default: every held-out document
    batch_size: int | None = None  # default: the run's train.device_batch_size
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    device: str = "auto"


@dataclass
class TaskResult:
    """One task in one evaluated direction."""

    task: str
    direction: Direction
    native: bool
    summary: dict[str, Any]
    path: Path


@dataclass
class EvalReport:
    """Everything one ``backlm eval`` produced."""

    exp: Experiment
    phase: str
    step: int
    model_direction: Direction
    directions: list[Direction]
    results: list[TaskResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    logged: bool = False  # summaries also went to the research log
    model_sha256: str | None = None  # the checkpoint's weights, so a reader can tell a stale file

    def get(self, task: str, direction: Direction) -> TaskResult | None:
        """The result of ``task`` in ``direction``, if it was evaluated."""
        return next((r for r in self.results if r.task == task and r.direction == direction),
                    None)


def resolve_tasks(requested: Sequence[str] | None, notes: list[str]) -> list[str]:
    """Requested tasks (checked, data present); by default lm + every downloaded task."""
    if requested is None:
        missing = [t for t in T.KNOWN_TASKS[1:] if not T.is_downloaded(t)]
        if missing:
            notes.append(f"not downloaded, skipped: {', '.join(missing)} "
                         "(`backlm data download --task arc|mmlu|gsm8k`)")
        return [t for t in T.KNOWN_TASKS if t == T.LM_TASK or t not in missing]
    tasks = T.parse_tasks(requested)
    for task in tasks:
        if task != T.LM_TASK:
            T.task_files(task)  # raises with the exact download command
    return tasks


def run_eval(ref: str, root: Path, options: EvalOptions,
             progress: Progress | None = None) -> EvalReport:
    """Evaluate an experiment's checkpoint (id, tag or path): write the result files and add
    their summaries to the research log."""
    from backlm.experiment import find
    from backlm.experiment.loading import load_model, resolve_step

    orders = list(dict.fromkeys(options.directions))  # parsed where they came in
    for flag, value in (("--max-per-task", options.max_per_task),
                        ("--lm-tokens", options.lm_tokens), ("--max-new-tokens",
                                                             options.max_new_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    exp = find(ref, root)
    notes: list[str] = []
    tasks = resolve_tasks(options.tasks, notes)
    resolve_step(exp, options.step)  # a missing step fails before any data is read
    # Every input is read before the model is loaded, so bad data fails fast.
    examples: dict[str, Any] = {t: T.load_task(t, options.max_per_task) for t in tasks
                                if t != T.LM_TASK}
    if T.LM_TASK in tasks:
        examples[T.LM_TASK] = _held_out(exp, options.lm_tokens, notes)
    loaded = load_model(exp, step=options.step, device=options.device)
    report = EvalReport(exp, loaded.phase, loaded.step, loaded.direction, orders, notes=notes,
                        model_sha256=loaded.meta.get("model_sha256"))
    for task in tasks:
        for order in orders:
            # one bar per task and order
            records, summary = _evaluate(loaded, task, order, examples[task], options, progress,
                                         f"{task} · {order}")
            report.results.append(_write(report, task, order, summary, records))
    report.logged = log_to_research_log(report)
    return report


def lm_results(exp: Experiment, options: EvalOptions) -> dict[str, dict[str, Any]]:
    """Language modelling of ``exp``'s checkpoint in each of ``options.directions``, exactly
    as ``run_eval`` would store it (the result file's content, per order), written nowhere
    (:func:`store_lm_results` writes it)."""
    from backlm.experiment import load_model
    from backlm.experiment.folder import utcnow

    orders = list(dict.fromkeys(options.directions))
    data = _held_out(exp, options.lm_tokens, [])
    loaded = load_model(exp, step=options.step, device=options.device)
    out = {}
    for order in orders:
        records, summary = _lm(loaded, data, order, options)
        native = order in loaded.direction.orders
        out[order.value] = {"experiment": exp.id, "task": T.LM_TASK, "direction": order,
                      "model_direction": loaded.direction, "native": native,
                      "phase": loaded.phase, "step": loaded.step,
                      "model_sha256": loaded.meta.get("model_sha256"), "created": utcnow(),
                      "summary": summary, "records": records}
    return out


def store_lm_results(exp: Experiment, results: dict[str, dict[str, Any]]) -> list[Path]:
    """Write :func:`lm_results` where ``run_eval`` writes them (one file per order, each
    atomically), so a later comparison or report reads them instead of computing them again;
    the paths written. An experiment folder this user cannot write raises :class:`UserError`
    before anything is written."""
    from backlm.paths import check_writable

    paths = {order: exp.evaluation_path(data["phase"], data["direction"], T.LM_TASK)
             for order, data in results.items()}
    for folder in dict.fromkeys(p.parent for p in paths.values()):
        check_writable(folder, "the evaluations folder", "evaluate as a user who can write "
                       f"the experiment: `backlm eval {exp.id} --tasks lm`")
    for order, path in paths.items():
        write_json(path, results[order])
    return list(paths.values())


def _evaluate(loaded: Any, task: str, order: Direction, examples: Any, options: EvalOptions,
              progress: Progress | None, label: str) -> tuple[list[dict], dict[str, Any]]:
    from backlm.evaluation import scoring

    if task == T.LM_TASK:
        return _lm(loaded, examples, order, options)
    if task in T.MULTIPLE_CHOICE:
        return scoring.evaluate_choice_task(loaded, examples, order, progress, label)
    return scoring.evaluate_generation_task(loaded, examples, order, options.max_new_tokens,
                                            progress, label)


def _batch_size(exp: Experiment) -> int:
    """Windows per forward pass: the run's device batch (8 if its config is unreadable)."""
    try:
        return exp.config().train.device_batch_size
    except (UserError, OSError, ValueError, KeyError):
        return 8


def _held_out(exp: Experiment, max_tokens: int | None, notes: list[str]) -> dict[str, Any]:
    """Held-out documents per split of the experiment's dataset, tokenized with its own
    tokenizer (whole splits, or ``max_tokens`` of whole documents each)."""
    from backlm.evaluation.lm import held_out, lm_shards
    from backlm.tokenizer import Tokenizer

    shards, missing = lm_shards(exp.data_dir())
    notes.extend(missing)
    tokenizer = Tokenizer.load(exp.tokenizer_dir)
    return {split: held_out(paths, tokenizer, max_tokens) for split, paths in shards.items()}


def _lm(loaded: Any, data: dict[str, Any], order: Direction,
        options: EvalOptions) -> tuple[list[dict], dict[str, Any]]:
    from backlm.evaluation.lm import evaluate_text, lm_record

    batch_size = options.batch_size or _batch_size(loaded.exp)
    records, summary = [], {"metric": "val_loss"}
    for split, docs in data.items():
        sums = evaluate_text(loaded, docs, order, batch_size=batch_size)
        records.append(lm_record(split, sums, docs))
        summary.update({f"{split}_loss": sums.loss, f"{split}_bpb": sums.bpb,
                        f"{split}_tokens": int(sums.tokens)})
    summary["score"] = summary["val_loss"]
    return records, summary


def _write(report: EvalReport, task: str, order: Direction, summary: dict[str, Any],
           records: list[dict]) -> TaskResult:
    from backlm.experiment.folder import utcnow

    native = order in report.model_direction.orders
    path = report.exp.evaluation_path(report.phase, order, task)
    write_json(path, {
        "experiment": report.exp.id, "task": task, "direction": order,
        "model_direction": report.model_direction, "native": native, "phase": report.phase,
        "step": report.step, "model_sha256": report.model_sha256, "created": utcnow(),
        "summary": summary, "records": records,
    })
    return TaskResult(task, order, native, summary, path)


# --- comparisons ----------------------------------------------------------------------------


def direction_rows(report: EvalReport) -> list[dict[str, Any]]:
    """Per task: score per evaluated direction, native, cross and gap (native − cross).

    Native and cross exist for forward and backward models evaluated in both orders; a
    bidirectional model is native in both, so they stay None for it. For language modelling
    the score is a loss, so there a negative gap means the native order is better.
    """
    rows = []
    for task in dict.fromkeys(r.task for r in report.results):
        scores = {d: r.summary["score"] for d in report.directions
                  if (r := report.get(task, d)) is not None}
        metric = next(r.summary["metric"] for r in report.results if r.task == task)
        native = cross = gap = None
        model = report.model_direction
        if model != Direction.BIDIRECTIONAL:
            native, cross = scores.get(model), scores.get(model.opposite)
            if native is not None and cross is not None:
                gap = native - cross
        rows.append({"task": task, "metric": metric, "scores": scores, "native": native,
                     "cross": cross, "gap": gap})
    return rows


def lm_matrix(report: EvalReport) -> list[dict[str, Any]]:
    """Language-modelling rows: split × evaluated direction with CE (nats/token) and bpb."""
    rows = []
    for split in ("val", "ood"):
        for d in report.directions:
            r = report.get(T.LM_TASK, d)
            if r is not None and f"{split}_loss" in r.summary:
                rows.append({"split": split, "direction": d, "native": r.native,
                             "loss": r.summary[f"{split}_loss"],
                             "bpb": r.summary[f"{split}_bpb"]})
    return rows


def log_to_research_log(report: EvalReport) -> bool:
    """Append every summary to the experiment's research log of the evaluated phase.

    One entry per task (the log's kind), its values named ``<direction>/<key>``. Returns False
    when the experiment has no research log, or (with a note in the report) when the log
    refuses the append, e.g. while a live run writes it: the JSON results are written by then
    either way.
    """
    from backlm.logs.hdf5 import log_eval

    per_task: dict[str, dict[str, float]] = {}
    for r in report.results:
        per_task.setdefault(r.task, {}).update(
            {f"{r.direction}/{k}": float(v) for k, v in r.summary.items()
             if isinstance(v, int | float) and not isinstance(v, bool)})
    logged = False
    try:
        for task, values in per_task.items():
            logged = log_eval(report.exp, report.phase, task, report.step, values)
    except UserError as exc:
        report.notes.append(f"research log not updated: {exc}")
        return False
    return logged
