"""``backlm probe reversal``: teach fictional facts, ask for each side from the other, and set
the models side by side with bootstrap intervals over facts.

The facts (:mod:`backlm.data.facts`) are made for the parent's tokenizer and corpus; teaching
them is a ``mid`` branch of the parent whose text stream is the facts dataset alone
(``chat.text_frac=1``): the one training loop, recorded in the lineage like any child. The
measurements are :mod:`backlm.evaluation.reversal`'s; the intervals are
:func:`backlm.compare.stats.bootstrap_mean` over facts. One result per experiment phase,
``evaluations/<phase>/reversal.json`` with its figure, carries the checkpoint's
``model_sha256``: a result of other weights, facts, ``k`` or seed is computed again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.errors import UserError
from backlm.experiment import Experiment

METRICS = ("em", "top1", "mrr")
METRIC_NAMES = {"em": "exact match", "top1": "top-1 of K", "mrr": "reciprocal rank"}
TEACH_SETS = ("data.dataset", "chat.text_frac", "early_stop.restore_best", "train.max_steps")


@dataclass
class ProbeOptions:
    """What to probe: fact counts, candidates, seed; with ``parent``, the teaching child."""

    facts: int = 100
    controls: int = 50
    k: int = 10
    seed: int = 0
    resamples: int = 2000
    samples: int = 5  # facts per probe and set that the generation engine also answers
    device: str = "auto"
    parent: str | None = None  # teach the facts to a child of this experiment first
    exp_id: str | None = None  # the child's id
    steps: int = 150  # the child's optimizer steps
    overrides: list[str] = field(default_factory=list)  # more --set values for the child


@dataclass
class ProbeResult:
    """One experiment's stored probe."""

    exp: Experiment
    data: dict[str, Any]
    path: Path
    figure: Path
    reused: bool


def check_options(o: ProbeOptions, refs: Sequence[str]) -> None:
    """Refuse what cannot run (one line) before anything is read or written."""
    from backlm.data.facts import check_counts

    check_counts(o.facts, o.controls)
    if not 2 <= o.k <= min(o.facts, o.controls):
        raise UserError(f"--k must be between 2 and the smaller of --facts and --controls "
                        f"({min(o.facts, o.controls)}), got {o.k}")
    if o.samples < 0:
        raise UserError(f"--samples must be 0 or more, got {o.samples}")
    if o.resamples < 1:
        raise UserError(f"--resamples must be at least 1, got {o.resamples}")
    if o.steps < 1:
        raise UserError(f"--steps must be at least 1, got {o.steps}")
    if o.parent is None and not refs:
        raise UserError("name experiments to probe, or --parent EXP to teach the facts first")
    if o.parent is None and (o.exp_id is not None or o.overrides):
        raise UserError("--id and --set describe the teaching child: give --parent EXP too")
    taken = [s for s in o.overrides if s.split("=", 1)[0].strip() in TEACH_SETS]
    if taken:
        raise UserError(f"--set {taken[0]} is the probe's own setting: use --steps, or drop it")


def facts_for(exp: Experiment, o: ProbeOptions) -> Any:
    """The facts ``exp`` was taught (its dataset's record), else the ones ``o`` makes for its
    corpus: a parent and its teaching child get the same facts."""
    from backlm.data.facts import dataset_words, generate, read_dataset

    data = exp.data_dir()
    return read_dataset(data) or generate(o.facts, o.controls, o.seed, dataset_words(data))


def run_probe(refs: Sequence[str], root: Path, o: ProbeOptions, *,
              progress: Any = None, say: Callable[[str], None] = lambda _: None,
              observers: Sequence[Any] = ()) -> list[ProbeResult]:
    """Teach the facts (with ``o.parent``), then probe every experiment: the stored result when
    it is for the same weights, facts, k and seed, else computed and stored."""
    from backlm.experiment import find

    check_options(o, refs)
    exps = [find(r, root) for r in refs]
    if o.parent is not None:
        exps.append(teach(root, o, say, observers))
    return [probe_one(exp, o, progress, say) for exp in exps]


def teach(root: Path, o: ProbeOptions, say: Callable[[str], None],
          observers: Sequence[Any]) -> Experiment:
    """Make the facts for ``o.parent``, plan its ``mid`` child on them (nothing written until
    the plan holds), write the facts dataset and train the child."""
    from backlm.data.facts import check_tokenizer, write_dataset
    from backlm.direction import body_capacity
    from backlm.experiment import find
    from backlm.paths import dataset_dir
    from backlm.tokenizer import Tokenizer
    from backlm.train import plan_branch, train

    parent = find(o.parent, root)
    fact_set = facts_for(parent, o)
    cfg = parent.config()
    check_tokenizer(fact_set, Tokenizer.load(parent.tokenizer_dir),
                    body_capacity(cfg.model.seq_len))
    sets = [f"data.dataset={fact_set.name()}", "chat.text_frac=1.0",
            "early_stop.restore_best=false", f"train.max_steps={o.steps}",
            f"description=reversal probe, {len(fact_set.facts)} facts, seed {fact_set.seed}",
            *o.overrides]
    planned = plan_branch("mid", parent.id, root, exp_id=o.exp_id, overrides=sets,
                          given_for=("mid",))
    folder = dataset_dir(fact_set.name())
    if write_dataset(folder, fact_set):
        say(f"facts written to {folder}")
    train(None, root, branch=planned, observers=observers, say=say)
    return find(planned.cfg.id, root)


def probe_one(exp: Experiment, o: ProbeOptions, progress: Any = None,
              say: Callable[[str], None] = lambda _: None) -> ProbeResult:
    """``exp``'s probe: stored when current, else measured, with intervals, and stored."""
    from backlm.data.facts import check_tokenizer
    from backlm.direction import body_capacity
    from backlm.experiment import load_model

    fact_set = facts_for(exp, o)
    loaded = load_model(exp, device=o.device)
    path, figure = exp.reversal_path(loaded.phase), exp.reversal_path(loaded.phase, figure=True)
    key = {"model_sha256": loaded.meta.get("model_sha256"), "facts_sha256": fact_set.sha256(),
           "k": o.k, "seed": o.seed, "resamples": o.resamples}
    stored = read_result(path)
    if stored and all(stored.get(n) == v for n, v in key.items()) and figure.is_file():
        return ProbeResult(exp, stored, path, figure, reused=True)
    check_tokenizer(fact_set, loaded.tokenizer, body_capacity(loaded.model.cfg.seq_len))
    data = measure(loaded, fact_set, o, progress)
    data.update(key)
    store(data, path, figure)
    say(f"{exp.id}: reversal probe written to {path}")
    return ProbeResult(exp, data, path, figure, reused=False)


def measure(loaded: Any, fact_set: Any, o: ProbeOptions, progress: Any = None
            ) -> dict[str, Any]:
    """The probe's measurements of one model, each summary number with its 95 % bootstrap
    interval over facts."""
    from backlm.evaluation.reversal import chance, evaluate_reversal
    from backlm.experiment.folder import utcnow

    entries = evaluate_reversal(loaded, fact_set, o.k, o.seed, progress, o.samples)
    for entry in entries:
        for part in entry["splits"].values():
            part["summary"] = {"n": part["summary"]["n"],
                               **{m: interval(part["records"], m, o) for m in METRICS}}
    return {"experiment": loaded.exp.id, "probe": "reversal", "phase": loaded.phase,
            "step": loaded.step, "model_direction": loaded.direction, "created": utcnow(),
            "facts": len(fact_set.facts), "controls": len(fact_set.controls),
            "chance": chance(o.k), "probes": entries, "fact_set": fact_set.to_json()}


def interval(records: Sequence[dict[str, Any]], metric: str, o: ProbeOptions
             ) -> dict[str, float | None]:
    """Mean of ``metric`` over facts with its bootstrap interval (compare's one bootstrap)."""
    import numpy as np

    from backlm.compare.stats import bootstrap_mean

    values = np.array([float(r["em"]) if metric == "em" else
                       float(r["rank"] == 1) if metric == "top1" else 1.0 / r["rank"]
                       for r in records])
    got = bootstrap_mean(values, o.resamples, o.seed)
    return {"value": got.value, "lo": got.lo, "hi": got.hi}


def read_result(path: Path) -> dict[str, Any] | None:
    """A stored probe, or None when absent or unreadable (then it is measured again)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("probe") == "reversal" else None


def store(data: dict[str, Any], path: Path, figure: Path) -> None:
    """The figure, then the result, each written atomically (the result last: a result on disk
    always has its figure)."""
    from backlm.atomic import atomic_path, write_json
    from backlm.render import save

    fig = draw(data)
    with atomic_path(figure) as tmp:
        save(fig, tmp)
    write_json(path, data)


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per probe: flow, phrasing, order, and each metric on facts and controls."""
    out = []
    for entry in data.get("probes") or []:
        row = {"experiment": data.get("experiment"), "direction": data.get("model_direction"),
               "flow": entry["flow"], "phrasing": entry["phrasing"], "order": entry["order"]}
        for split, part in entry["splits"].items():
            for metric in METRICS:
                row[f"{split}_{metric}"] = (part.get("summary") or {}).get(metric) or {}
        out.append(row)
    return out


def draw(data: dict[str, Any]) -> Any:
    """Two panels (reciprocal rank, exact match): a bar per probe for the taught facts and the
    controls, with 95 % intervals, and chance as a line."""
    from backlm.render import figure, finish

    table = rows(data)
    labels = [f"{r['flow']}\n{r['phrasing']}\n{r['order']}" for r in table]
    fig, axes = figure(max(6.0, 1.6 * len(table) + 2.5), 4.2, 1, 2, fit=True,
                       title=f"Reversal probe: {data.get('experiment')} "
                             f"({data.get('model_direction')}, K={data.get('k')})")
    for ax, metric in zip(axes, ("mrr", "em"), strict=True):
        for shift, split, colour in ((-0.2, "facts", "tab:blue"), (0.2, "controls", "tab:gray")):
            vals = [r[f"{split}_{metric}"] for r in table]
            ys = [v.get("value") or 0.0 for v in vals]
            err = [[max(0.0, y - (v.get("lo") if v.get("lo") is not None else y))
                    for y, v in zip(ys, vals, strict=True)],
                   [max(0.0, (v.get("hi") if v.get("hi") is not None else y) - y)
                    for y, v in zip(ys, vals, strict=True)]]
            ax.bar([i + shift for i in range(len(table))], ys, 0.4, yerr=err, capsize=3,
                   color=colour, label="taught facts" if split == "facts" else "controls")
        if metric == "mrr":
            ax.axhline(data["chance"]["mrr"], color="tab:red", linestyle="--",
                       label=f"chance (K={data.get('k')})")
        ax.set_xticks(range(len(table)), labels, fontsize=7)
        ax.set_ylim(0, 1.05)
        finish(ax, xlabel="flow · phrasing · order", ylabel=f"{METRIC_NAMES[metric]}, fraction",
               title=METRIC_NAMES[metric], x="value")
    return fig


def side_by_side(exps: Sequence[Experiment]) -> list[dict[str, Any]]:
    """The stored probe rows of ``exps`` (each experiment's newest phase that has one), for a
    comparison; experiments without a probe give none."""
    out = []
    for exp in exps:
        found = [d for p in exp.reversal_results() if (d := read_result(p))]
        if found:
            newest = found[-1]
            out += [dict(r, k=newest.get("k"), chance=newest.get("chance")) for r in rows(newest)]
    return out


def markdown(exps: Sequence[Experiment]) -> list[str]:
    """The comparison's "Reversal probe" section (nothing when no experiment has a probe)."""
    from backlm.render import table

    got = side_by_side(exps)
    if not got:
        return []
    lines = ["## Reversal probe", "",
             "Mean reciprocal rank of the right entity among K candidates and greedy exact "
             "match, on taught facts and on never-taught controls (chance), with 95 % bootstrap "
             "intervals over facts (`backlm probe reversal`).", ""]
    lines += table(["experiment", "direction", "flow", "phrasing", "order", "MRR facts",
                    "MRR controls", "EM facts", "EM controls", "K"],
                   [[r["experiment"], r["direction"], r["flow"], r["phrasing"], r["order"],
                     shown(r["facts_mrr"]), shown(r["controls_mrr"]), shown(r["facts_em"]),
                     shown(r["controls_em"]), r["k"]] for r in got])
    return [*lines, ""]


def shown(value: dict[str, Any]) -> str:
    """``0.412 [0.35, 0.47]``, or ``–`` when missing."""
    v, lo, hi = value.get("value"), value.get("lo"), value.get("hi")
    if v is None:
        return "–"
    return f"{v:.3f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")
