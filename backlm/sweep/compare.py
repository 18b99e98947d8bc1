"""A sweep's comparison: ``backlm compare`` of its members, read out per size.

The numbers all come from :func:`backlm.compare.run_compare` (the gap of each forward/backward
pair over the same documents with its paired bootstrap, the t-interval over seeds and the
pooled document interval per depth) and from :mod:`backlm.compare.stats` (the same bootstrap for
what compare does not pair: a bidirectional model's reading in one order against the dedicated
model of that order, same depth and seed, trained on as many tokens). On top of them this module
writes ``SWEEP.md`` (gap per size, the bidirectional model's per-order cost, 5CAT of every
member) and ``scaling.png`` (the gap against parameters) into the sweep's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.direction import ORDERS, Direction
from backlm.errors import UserError
from backlm.experiment import folder as xp
from backlm.experiment.sweeps import SweepFolder, sweep_folder
from backlm.sweep.grid import Grid

SPLIT = "val"


@dataclass
class SizeRow:
    """The forward − backward gap (models, or a bidirectional model's two orders) at one depth."""

    kind: str  # "models" or "bidirectional"
    depth: int
    params: float | None
    per_seed: dict[int, Any]  # seed -> stats.Interval over documents
    seeds: Any = None  # stats.Interval over seeds (t), None with one seed
    pooled: Any = None  # stats.Interval, documents resampled with one draw in every seed


@dataclass
class CostRow:
    """bpb of a bidirectional model in one order − bpb of the dedicated model of that order."""

    depth: int
    order: Direction
    params: float | None
    per_seed: dict[int, Any]
    seeds: Any = None
    pooled: Any = None


@dataclass
class SweepComparison:
    """What ``--compare`` found: compare's result and the sweep's views of it."""

    grid: Grid
    folder: SweepFolder
    comparison: Any  # backlm.compare.gather.Comparison
    sizes: list[SizeRow] = field(default_factory=list)
    costs: list[CostRow] = field(default_factory=list)
    fivecat: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # members not finished yet


def finished_members(grid: Grid, root: Path) -> tuple[list[str], list[str]]:
    """(the final experiments of finished members, those of the others), in run order."""
    from backlm.train.plan import FINISHED

    done, missing = [], []
    for m in grid.members():
        exp = xp.Experiment(Path(root) / m.final)
        ok = exp.metadata_path.is_file() and str(exp.metadata().get("status")) in FINISHED
        (done if ok else missing).append(m.final)
    return done, missing


def is_fresh(grid: Grid, root: Path) -> bool:
    """Whether the sweep's ``SWEEP.md`` is newer than every member's results (metadata and
    5CAT): then comparing again would write the same."""
    folder = sweep_folder(root, grid.sweep_id)
    if not folder.summary_path.is_file():
        return False
    stamps = []
    for m in grid.members():
        exp = xp.Experiment(Path(root) / m.final)
        if not exp.metadata_path.is_file():
            return False
        stamps += [p.stat().st_mtime for p in
                   [exp.metadata_path, *(r for _, r in exp.fivecat_results())]]
    return folder.summary_path.stat().st_mtime > max(stamps)


def compare_sweep(grid: Grid, root: Path, progress: Any = None,
                  bootstrap: int = 2000) -> SweepComparison:
    """Compare the finished members (at least two) and write the sweep's comparison."""
    from backlm.compare import CompareOptions, run_compare

    folder = sweep_folder(root, grid.sweep_id)
    done, missing = finished_members(grid, root)
    if len(done) < 2:
        raise UserError(f"sweep {grid.sweep_id} has {len(done)} finished member(s): a "
                        "comparison needs two; continue the sweep with the same command")
    comparison = run_compare(done, root, CompareOptions(output=folder.comparison_dir,
                                                        bootstrap=bootstrap), progress)
    result = SweepComparison(grid, folder, comparison, missing=missing)
    result.sizes = size_rows(comparison)
    result.costs = cost_rows(comparison, bootstrap)
    result.fivecat = [_fivecat_row(m) for m in comparison.members]
    write(result)
    return result


def size_rows(comparison: Any) -> list[SizeRow]:
    """The val gap per kind and depth: every seed's, and compare's seed-level view."""
    rows: dict[tuple[str, int], SizeRow] = {}
    for unit in comparison.units:
        gap = unit.gaps.get(SPLIT)
        depth = unit.forward.depth
        if gap is None or depth is None:
            continue
        row = rows.setdefault((unit.kind, depth), SizeRow(unit.kind, depth, unit.params, {}))
        row.per_seed[unit.seed] = gap.interval
    for grp in comparison.groups:
        row = rows.get((grp.kind, grp.units[0].forward.depth))
        if row is not None and grp.split == SPLIT:
            row.seeds, row.pooled = grp.seeds, grp.pooled
    for row in rows.values():
        if row.pooled is None and len(row.per_seed) == 1:
            row.pooled = next(iter(row.per_seed.values()))  # one seed: its documents alone
    return sorted(rows.values(), key=lambda r: (r.kind != "models", r.depth))


def cost_rows(comparison: Any, bootstrap: int) -> list[CostRow]:
    """Each bidirectional member against the dedicated model of each order (same depth and
    seed, the same number of training tokens), over the same documents."""
    from backlm.compare import stats

    members = comparison.members
    rows = []
    for order in ORDERS:
        pairs: dict[int, dict[int, Any]] = {}  # depth -> seed -> Pair
        params: dict[int, Any] = {}
        for bidi in (m for m in members if m.direction == Direction.BIDIRECTIONAL):
            own = next((m for m in members if m.direction == order and m.depth == bidi.depth
                        and m.seed == bidi.seed and m.phase == bidi.phase), None)
            a = bidi.readings.get(order)
            b = own.readings.get(order) if own is not None else None
            if a is None or b is None or SPLIT not in a.splits or SPLIT not in b.splits:
                continue
            try:
                pair = stats.paired_documents(a.splits[SPLIT]["per_document"],
                                              b.splits[SPLIT]["per_document"])
            except (ValueError, KeyError):
                continue
            pairs.setdefault(bidi.depth, {})[bidi.seed] = pair
            params[bidi.depth] = bidi.params
        for depth, by_seed in sorted(pairs.items()):
            row = CostRow(depth, order, params[depth],
                          {s: stats.bootstrap_gap([p], bootstrap) for s, p in by_seed.items()})
            if len(by_seed) > 1:
                row.seeds = stats.seed_interval([iv.value for iv in row.per_seed.values()])
            try:
                row.pooled = stats.bootstrap_gap(list(by_seed.values()), bootstrap)
            except ValueError:
                row.pooled = None  # the seeds hold different documents
            rows.append(row)
    return sorted(rows, key=lambda r: (r.depth, r.order != Direction.FORWARD))


def _fivecat_row(member: Any) -> dict[str, Any]:
    five = member.fivecat or {}
    return {"experiment": member.id, "direction": member.direction, "depth": member.depth,
            "seed": member.seed, "passed": five.get("gates_passed"),
            "total": five.get("gates_total"), "inverted": bool(five.get("inverted")),
            "ok": bool(five.get("passed"))}


# --- writing ----------------------------------------------------------------------------------


def write(result: SweepComparison) -> None:
    """``scaling.png`` and ``SWEEP.md`` into the sweep's folder, each atomically."""
    from backlm import atomic
    from backlm.render import save
    from backlm.sweep.figure import scaling
    from backlm.sweep.summary import markdown

    fig = scaling(result.sizes, result.costs)
    if fig is not None:
        with atomic.atomic_path(result.folder.scaling_figure) as tmp:
            save(fig, tmp)
    else:  # an earlier figure would show members this comparison no longer has
        result.folder.scaling_figure.unlink(missing_ok=True)
    atomic.write_text(result.folder.summary_path, markdown(result, fig is not None))
