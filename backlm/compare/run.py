"""``backlm compare``: several experiments side by side, and the forward-vs-backward gap on
the same documents with honest uncertainty (DESIGN.md §1-2).

Everything is validated before anything is read at length or written: at least two distinct
experiments, the output folder, the metric. Each experiment is then gathered from its own
files and its language-modelling evaluations in both orders (:mod:`backlm.compare.gather`):
read when ``backlm eval`` (or an earlier comparison) stored them for the checkpoint compared,
otherwise computed and stored in the experiment, so only the first comparison pays for them.

The gap is ``bpb(forward) − bpb(backward)`` over the same held-out documents (checked by
text hash and bytes: never two different texts): a forward model against a backward model of
the same phase and depth (same seed first), or a bidirectional model's two orders. Its
interval is a paired bootstrap over documents; several seeds of one kind and depth add a
t-interval over the per-seed gaps (:mod:`backlm.compare.stats`). The result is written by
:mod:`backlm.compare.output` into one folder, atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backlm.callbacks import Progress
from backlm.compare import stats
from backlm.compare.gather import (
    COMPUTED,
    SPLITS,
    UNSTORED,
    CompareOptions,
    Comparison,
    Gap,
    GapUnit,
    Member,
    SeedGroup,
    gather,
    same_documents,
)
from backlm.direction import ORDERS, Direction
from backlm.errors import UserError
from backlm.experiment import Experiment, find

DEFAULT_FOLDER = "comparisons"
MAX_NAME = 100


# --- validation -------------------------------------------------------------------------------


def default_output(ids: Sequence[str]) -> Path:
    """``./comparisons/<id>_vs_<id>…`` (a long list is cut and given a short hash)."""
    import hashlib

    name = "_vs_".join(ids)
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9]}-{digest}"
    return Path(DEFAULT_FOLDER) / name


def check_output(out: Path, marker: str) -> None:
    """An output folder compare may write, checked before anything is evaluated: new, empty,
    or an earlier comparison (holding backlm's marker, or an older backlm's:
    :func:`~backlm.compare.output.old_comparison`); never a file, below one, or a folder
    compare cannot write. ``marker``: kept for callers; the check names the files itself."""
    from backlm.atomic import check_replaceable
    from backlm.compare.output import old_comparison
    from backlm.paths import check_writable

    out = Path(out)
    if out.is_file():
        raise UserError(f"output {out} is a file: move it away or choose a folder with --output")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"output {out} cannot be created: {blocker} is a file; choose another "
                        "--output")
    check_replaceable(out, "output folder", old_comparison)
    check_writable(out.parent, "the output folder's parent", "choose another --output")


def known_metrics(rows: list[dict[str, Any]]) -> set[str]:
    """Metric names a run logged; a bidirectional run's per-order names also folded into one."""
    names = set()
    for r in rows:
        for k, v in r.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                names |= {k, *(k.removesuffix(f"_{o}") for o in ORDERS)}
    return names


def prepare(refs: Sequence[str], root: Path, options: CompareOptions,
            marker: str) -> tuple[list[Experiment], Path, dict[str, list[dict]]]:
    """Check every input (nothing is written): the experiments, the output and the metric."""
    from backlm.logs.jsonl import read

    if len(refs) < 2:
        raise UserError(f"compare needs at least two experiments, got {len(refs)}: name "
                        "another, e.g. `backlm compare EXP_A EXP_B`")
    if not 1 <= options.bootstrap <= 1_000_000:
        raise UserError(f"--bootstrap must be between 1 and 1000000, got {options.bootstrap}")
    exps = [find(r, root) for r in refs]
    seen: dict[Path, str] = {}
    for ref, exp in zip(refs, exps, strict=True):
        key = exp.path.resolve()
        if key in seen:
            raise UserError(f"{ref!r} and {seen[key]!r} are the same experiment ({exp.id}): "
                            "compare different experiments")
        seen[key] = ref
        exp.metadata()  # corrupt metadata fails here, before anything else
    out = Path(options.output) if options.output else default_output([e.id for e in exps])
    check_output(out, marker)
    rows = {e.id: read(e.metrics_path) for e in exps}
    found = set().union(*(known_metrics(r) for r in rows.values()))
    if options.metric not in found:
        shown = ", ".join(sorted(m for m in found if m.startswith("val_"))) or "none yet"
        raise UserError(f"no experiment logged the metric {options.metric!r} (validation "
                        f"metrics logged: {shown}): choose one with --metric")
    return exps, out, rows


# --- the gap ----------------------------------------------------------------------------------


def pair_units(members: Sequence[Member], notes: list[str]) -> list[GapUnit]:
    """Bidirectional models against themselves; forward models against backward models of the
    same phase and depth, equal seeds first, then the rest in id order."""
    bidi, fwd, bwd = Direction.BIDIRECTIONAL, Direction.FORWARD, Direction.BACKWARD
    units = [GapUnit(f"{m.id} (its two orders)", bidi.value, m, m)
             for m in members if m.direction == bidi]
    keys = sorted({(m.phase, m.depth or 0) for m in members if m.direction in ORDERS})
    for phase, depth in keys:
        fw = [m for m in members if m.direction == fwd and (m.phase, m.depth or 0)
              == (phase, depth)]
        bw = [m for m in members if m.direction == bwd and (m.phase, m.depth or 0)
              == (phase, depth)]
        pairs = []
        for f in list(fw):
            b = next((b for b in bw if b.seed == f.seed), None)
            if b is not None:
                pairs.append((f, b))
                fw.remove(f)
                bw.remove(b)
        for f, b in zip(fw, bw, strict=False):
            pairs.append((f, b))
            notes.append(f"{f.id} and {b.id} are paired with different seeds "
                         f"({f.seed} and {b.seed})")
        for m in fw[len(bw):] + bw[len(fw):]:
            notes.append(f"{m.id}: no {bwd if m.direction == fwd else fwd} "
                         f"model of phase {phase}, depth {depth} to set it against")
        units += [GapUnit(f"{f.id} − {b.id}", "models", f, b) for f, b in pairs]
    return units


def measure(unit: GapUnit, options: CompareOptions, notes: list[str]) -> None:
    """The unit's gap on every split both readings hold, over the same documents only."""
    f = unit.forward.readings.get(Direction.FORWARD)
    b = unit.backward.readings.get(Direction.BACKWARD)
    if f is None or b is None:
        notes.append(f"gap {unit.label}: a language-modelling evaluation is missing")
        return
    for split in (s for s in SPLITS if s in f.splits and s in b.splits):
        fd, bd = f.splits[split]["per_document"], b.splits[split]["per_document"]
        try:
            pair = stats.paired_documents(fd, bd)
        except (ValueError, KeyError) as exc:
            notes.append(f"gap {unit.label} on {split}: not computed, the evaluations are "
                         f"{exc}; evaluate both on the same data with the same `backlm eval "
                         "--lm-tokens`")
            continue
        interval = stats.bootstrap_gap([pair], options.bootstrap, options.seed)
        diff = stats.doc_bpb(pair[0], pair[2]) - stats.doc_bpb(pair[1], pair[2])
        unit.gaps[split] = Gap(split, interval, stats.bpb(pair[0], pair[2]),
                               stats.bpb(pair[1], pair[2]), int(pair[2].sum()), diff,
                               list(fd["hash"]), pair)


def seed_groups(units: Sequence[GapUnit], options: CompareOptions) -> list[SeedGroup]:
    """Units of one kind, phase and depth with two or more seeds: the mean gap over seeds with
    its t-interval, and a pooled bootstrap when every unit holds the same documents."""
    out = []
    keys = dict.fromkeys((u.kind, u.forward.phase, u.forward.depth, s)
                         for u in units for s in u.gaps)
    for kind, phase, depth, split in keys:
        group = [u for u in units if (u.kind, u.forward.phase, u.forward.depth) ==
                 (kind, phase, depth) and split in u.gaps]
        if len({u.seed for u in group}) < 2:
            continue
        gaps = [u.gaps[split] for u in group]
        pooled = None
        if all(g.hashes == gaps[0].hashes for g in gaps):
            pooled = stats.bootstrap_gap([g.pair for g in gaps], options.bootstrap,
                                         options.seed)
        what = "forward vs backward models" if kind == "models" else "bidirectional models"
        out.append(SeedGroup(f"{what}, {phase} d{depth}", kind, split, group,
                             stats.seed_interval([g.interval.value for g in gaps]), pooled))
    return out


def missing_notes(members: Sequence[Member]) -> list[str]:
    """One note per kind of missing part, naming the experiments and the command that helps."""
    def computed(source: str) -> list[str]:
        return [f"{m.id} (step {next(iter(m.readings.values())).step})" for m in members
                if any(r.source == source for r in m.readings.values())]

    stored_now, unstored = computed(COMPUTED), computed(UNSTORED)
    no_fivecat = [m.id for m in members if m.fivecat is None]
    no_summary = [m.id for m in members if m.summary is None]
    notes = []
    if stored_now:
        notes.append(f"language modelling computed now and stored in the experiment, as "
                     f"`backlm eval EXP --tasks lm` stores it (the next comparison reads it): "
                     f"{', '.join(stored_now)}")
    if unstored:
        notes.append(f"language modelling computed now, not stored (nothing was written to "
                     f"these experiments): {', '.join(unstored)}; whoever can write them can "
                     "store it with `backlm eval EXP --tasks lm`")
    if no_fivecat:
        notes.append(f"no 5CAT result: {', '.join(no_fivecat)}; run `backlm 5cat EXP`")
    if no_summary:
        notes.append(f"no training summary (a crashed or still running run), cost unknown: "
                     f"{', '.join(no_summary)}")
    return notes


# --- the whole comparison ---------------------------------------------------------------------


def run_compare(refs: Sequence[str], root: Path, options: CompareOptions,
                progress: Progress | None = None) -> Comparison:
    """Compare experiments (ids, tags or folders) and write the comparison folder."""
    from backlm.compare import output as compare_output

    exps, out, rows = prepare(refs, root, options, compare_output.MARKDOWN)
    result = Comparison([], options, out)
    for i, exp in enumerate(exps):
        if progress is not None:
            progress("experiments", i, len(exps))
        result.members.append(gather(exp, rows[exp.id], options, result.notes))
    if progress is not None:
        progress("experiments", len(exps), len(exps))
    result.notes += missing_notes(result.members)
    with_docs = [m for m in result.members if m.readings]
    if not same_documents([next(iter(m.readings.values())) for m in with_docs]):
        result.notes.append("the experiments were evaluated on different val documents "
                            f"({', '.join(m.id for m in with_docs)}): transfer-matrix rows "
                            "compare different texts, and no gap is taken across them")
    result.units = pair_units(result.members, result.notes)
    for unit in result.units:
        measure(unit, options, result.notes)
    result.groups = seed_groups(result.units, options)
    compare_output.write(result)
    return result
