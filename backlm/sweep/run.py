"""Planning and running a sweep through the one training entry (``backlm.train.train``, or the
phase chain for ``--phase base,sft``), member after member, then 5CAT on each.

:func:`plan_sweep` checks everything before anything is written: the record of an earlier run
must match the grid, no member id may be taken by a stranger, and each member's config is
resolved and validated as ``backlm train`` validates a run (a depth whose width does not fit
the preset's head size is refused here). :func:`run_sweep` acts on the plan: a finished member
is skipped, an interrupted one resumed (``--resume`` semantics), a new one created; ``sweep.json``
follows each change atomically; a member that stops (Ctrl-C) stops the sweep, and the same
command continues it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.callbacks import Progress
from backlm.config import RunConfig
from backlm.errors import UserError
from backlm.experiment import folder as xp
from backlm.experiment.sweeps import SWEEPS, SweepFolder, sweep_folder
from backlm.sweep.grid import (
    Grid,
    Member,
    check_members_free,
    check_same,
    new_record,
    read_record,
    set_status,
    write_record,
)


@dataclass
class MemberPlan:
    """One member, its resolved config (its first phase's) and what running it will do."""

    member: Member
    cfg: RunConfig
    state: str  # "new", "continue" or "finished"
    estimate: Any = None  # backlm.train.cost.Estimate of all its phases (dry run only)


@dataclass
class SweepPlan:
    """A validated sweep: nothing written yet."""

    grid: Grid
    root: Path
    folder: SweepFolder
    record: dict[str, Any] | None  # the earlier run's sweep.json
    members: list[MemberPlan]
    launch: Any  # backlm.train.launch.LaunchPlan
    explicit: frozenset[str]
    names: dict[str, str] | None = None  # the caller's option names (member_config)

    @property
    def estimated_seconds(self) -> float | None:
        times = [m.estimate.wall_seconds for m in self.members if m.estimate is not None]
        return sum(times) if times else None


@dataclass
class SweepResult:
    """What a run of the sweep did: each member's outcome, 5CAT verdicts, the comparison."""

    plan: SweepPlan
    outcomes: dict[str, str] = field(default_factory=dict)  # member id -> trained/continued/skipped
    fivecat: dict[str, dict[str, Any]] = field(default_factory=dict)  # experiment -> result
    comparison: Any = None  # backlm.sweep.compare.SweepComparison (None: kept as it was)
    summary_path: Path | None = None  # the sweep's SWEEP.md, once written
    stopped: Any = None  # the RunSummary of a member that did not finish


# How the options that decide a member's keys are named where the sweep came from (a preset
# sweep such as the quickstart names its own), for a --set they would replace.
FLAG_NAMES = {"id": "--id", "directions": "--directions", "depths": "--depths",
              "seeds": "--seeds", "max_steps": "--max-steps"}


def member_config(grid: Grid, member: Member, names: dict[str, str] | None = None
                  ) -> RunConfig:
    """A member's config: preset < ``--set`` < the member's cell (id, direction, depth, seed)
    and ``--max-steps``; a ``--set`` of a key the grid decides is refused naming the option
    (``names``: how the caller spells them, default :data:`FLAG_NAMES`)."""
    from backlm.config import Flags, load_config

    n = {**FLAG_NAMES, **(names or {})}
    values: dict[str, Any] = {"id": member.id, "data": {"direction": member.direction},
                              "model": {"depth": member.depth},
                              "train": {"seed": member.seed}}
    labels = {"id": f"the sweep's member ids ({grid.sweep_id}-d<depth>-<direction>-s<seed>)",
              "data.direction": f"{n['directions']} ({member.direction} for {member.id})",
              "model.depth": f"{n['depths']} {member.depth} (for {member.id})",
              "train.seed": f"{n['seeds']} {member.seed} (for {member.id})"}
    fixes = {"id": f"drop the --set (use {n['id']})",
             "data.direction": "drop the --set (each member trains its own direction)",
             "model.depth": f"drop the --set (use {n['depths']})",
             "train.seed": f"drop the --set (use {n['seeds']})"}
    if grid.max_steps is not None:
        values["train"]["max_steps"] = grid.max_steps
        labels["train.max_steps"] = f"{n['max_steps']} {grid.max_steps}"
        fixes["train.max_steps"] = f"drop the --set (use {n['max_steps']})"
    if len(grid.phases) > 1:  # a chain starts with its base run
        values["phase"], labels["phase"] = "base", f"--phase {','.join(grid.phases)}"
    return load_config(RunConfig, grid.preset, list(grid.overrides),
                       Flags(values, labels, fixes))


def _explicit(grid: Grid) -> frozenset[str]:
    from backlm.config import explicit_keys

    keys = {"id", "data.direction", "model.depth", "train.seed"}
    if grid.max_steps is not None:
        keys.add("train.max_steps")
    return frozenset(explicit_keys(list(grid.overrides), None) | keys)


def _child_sets(grid: Grid) -> list[str]:
    """The ``--set`` values a chain's later phases take (the chain's own rule)."""
    return [o for o in grid.overrides if not o.strip().startswith(("model.", "id=", "phase="))]


def _check_depth(grid: Grid, member: Member, cfg: RunConfig, world: int) -> None:
    from backlm.train.plan import check_config

    try:
        check_config(copy.deepcopy(cfg), world)
    except UserError as exc:
        raise UserError(f"--depths {member.depth} does not fit preset "
                        f"{grid.preset or '(defaults)'} with these settings: {exc}") from None


def _state(root: Path, member: Member) -> str:
    from backlm.train.plan import FINISHED

    final = xp.Experiment(Path(root) / member.final)
    if final.metadata_path.is_file() and str(final.metadata().get("status")) in FINISHED:
        return "finished"
    first = xp.Experiment(Path(root) / member.experiments[0])
    return "continue" if first.metadata_path.is_file() else "new"


def _plan_member(plan: SweepPlan, member: Member, estimate: bool) -> MemberPlan:
    from backlm.train.chain import plan_chain
    from backlm.train.plan import check_used, plan_new_run, plan_resume

    grid, world = plan.grid, plan.launch.world
    cfg = member_config(grid, member, plan.names)
    check_used(cfg, plan.explicit, grid.phases)
    _check_depth(grid, member, cfg, world)
    state = _state(plan.root, member)
    try:
        if len(grid.phases) > 1 and state != "finished":
            plan_chain(copy.deepcopy(cfg), plan.root, member.id, grid.phases, _child_sets(grid),
                       world=world, explicit=plan.explicit)
        elif state == "new":
            # it also gives cfg the dataset tokenizer's vocabulary, as the run will
            plan_new_run(cfg, plan.root, world, plan.explicit, memory=not estimate)
        elif state == "continue":
            plan_resume(member.id, plan.root)
    except UserError as exc:
        raise UserError(f"member {member.id}: {exc}") from None
    return MemberPlan(member, cfg, state, _estimate(grid, cfg) if estimate else None)


def _estimate(grid: Grid, cfg: RunConfig) -> Any:
    """The cost estimate of every phase of a member, summed (``backlm train --estimate-only``'s
    numbers)."""
    import dataclasses

    from backlm.train.chain import member_configs
    from backlm.train.cost import estimate, target_gpu

    configs = (member_configs(cfg, grid.phases, _child_sets(grid)) if len(grid.phases) > 1
               else [cfg])
    parts = [estimate(c, *target_gpu(c)) for c in configs]
    total = parts[0]
    for p in parts[1:]:
        total = dataclasses.replace(total, wall_seconds=total.wall_seconds + p.wall_seconds,
                                    planned_tokens=total.planned_tokens + p.planned_tokens)
    return total


def _check_outputs(folder: SweepFolder, record: dict[str, Any] | None) -> None:
    """Before any training: the sweep's folder is new or this sweep's, and its comparison
    folder one compare may replace; a user's folder is never touched."""
    from backlm.compare.output import MARKDOWN
    from backlm.compare.run import check_output
    from backlm.paths import check_writable

    if folder.path.is_dir():
        check_output(folder.comparison_dir, MARKDOWN)
    if record is None and folder.path.is_dir() and any(folder.path.iterdir()):
        raise UserError(f"{folder.path} exists and is not a sweep's folder (no "
                        f"{folder.record.name}): move it away or choose another --id")
    if folder.path.exists() and not folder.path.is_dir():
        raise UserError(f"{folder.path} is a file, not a sweep's folder: move it away or "
                        "choose another --id")
    check_writable(folder.path, "the sweep folder", "choose another --experiments-dir")


def plan_sweep(grid: Grid, root: Path, *, processes: Any = None, estimate: bool = False,
               names: dict[str, str] | None = None) -> SweepPlan:
    """Validate the whole sweep (nothing is written); ``estimate`` adds each member's cost
    estimate and reports a member too large for the device instead of refusing it; ``names``:
    how the caller spells the options a member's keys come from."""
    from backlm.train.launch import Processes

    root = Path(root)
    folder = sweep_folder(root, grid.sweep_id)
    record = read_record(folder)
    if record is not None:
        check_same(record, grid)
    check_members_free(root, grid, record)
    _check_outputs(folder, record)
    probe = member_config(grid, grid.members()[0], names)
    launch = (processes or Processes()).plan(probe.train.device)
    plan = SweepPlan(grid, root, folder, record, [], launch, _explicit(grid), names)
    plan.members = [_plan_member(plan, m, estimate) for m in grid.members()]
    return plan


# --- running ----------------------------------------------------------------------------------


def _train_member(plan: SweepPlan, mp: MemberPlan, observers: Sequence[Any],
                  say: Callable[[str], None]) -> Any:
    """Train (or continue) one member through the training entry; its last run's summary."""
    from backlm.train.chain import run_chain
    from backlm.train.launch import train

    if len(plan.grid.phases) > 1:
        summaries = list(run_chain(copy.deepcopy(mp.cfg), plan.root, plan.grid.phases,
                                   plan.launch, observers=observers, say=say,
                                   explicit=plan.explicit, overrides=plan.grid.overrides))
        return summaries[-1] if summaries else None
    if mp.state == "continue":
        return train(None, plan.root, resume=mp.member.id, plan=plan.launch,
                     observers=observers, say=say)
    return train(copy.deepcopy(mp.cfg), plan.root, plan=plan.launch, observers=observers,
                 say=say, explicit=plan.explicit)


def run_members(plan: SweepPlan, result: SweepResult, record: dict[str, Any],
                observers: Sequence[Any], say: Callable[[str], None]) -> bool:
    """Every member in order; False when one stopped (the sweep stops with it)."""
    from backlm.train.plan import FINISHED

    total = len(plan.members)
    for i, mp in enumerate(plan.members, 1):
        mid = mp.member.id
        if mp.state == "finished":
            result.outcomes[mid] = "skipped"
            set_status(record, mid, status="finished")
            continue
        say(f"[bold]sweep {plan.grid.sweep_id} · {i}/{total} · "
            f"{'continuing' if mp.state == 'continue' else 'training'}[/] {mid}")
        set_status(record, mid, status="running")
        write_record(plan.folder, record)
        try:
            summary = _train_member(plan, mp, observers, say)
        except BaseException:
            set_status(record, mid, status="interrupted")
            write_record(plan.folder, record)
            raise
        finished = summary is not None and summary.status in FINISHED
        set_status(record, mid, status="finished" if finished else
                   str(getattr(summary, "status", "failed")))
        write_record(plan.folder, record)
        result.outcomes[mid] = "continued" if mp.state == "continue" else "trained"
        if not finished:
            result.stopped = summary
            return False
    write_record(plan.folder, record)
    return True


def fivecat_member(exp_id: str, root: Path, progress: Progress | None
                   ) -> tuple[str, dict[str, Any]]:
    """5CAT of a member's model (its best step), or the result already saved for it: (done or
    skipped, the saved JSON: ``gates_passed``, ``gates_total``, ``inverted`` …)."""
    from backlm.experiment.loading import chosen_step
    from backlm.fivecat.runner import FivecatOptions, check

    exp = xp.find(exp_id, root)
    saved = exp.fivecat_path(exp.phase, chosen_step(exp))
    status = "skipped"
    if not saved.is_file():
        saved, status = check(exp_id, root, FivecatOptions(), progress=progress).path, "done"
    return status, xp.read_json(saved, "5CAT result")


# Held-out tokens each member is evaluated on for the comparison (stored, as `backlm eval
# --lm-tokens` stores it): the same leading held-out documents for every member, so the gaps
# pair; all of a dataset's held-out text would take compare longer than training on 2 cores.
LM_TOKENS = 65536


def evaluate_member(exp_id: str, root: Path, progress: Progress | None) -> str:
    """Store the member's language modelling in both orders (``backlm eval --tasks lm``) unless
    it is stored already: done or skipped."""
    from backlm.direction import ORDERS
    from backlm.evaluation import EvalOptions, run_eval
    from backlm.evaluation.tasks import LM_TASK

    exp = xp.find(exp_id, root)
    if all(exp.evaluation_path(exp.phase, o, LM_TASK).is_file() for o in ORDERS):
        return "skipped"
    run_eval(exp_id, root, EvalOptions(tasks=[LM_TASK], lm_tokens=LM_TOKENS), progress)
    return "done"


def run_sweep(plan: SweepPlan, *, command: str = "", observers: Sequence[Any] = (),
              say: Callable[[str], None] = lambda _: None, progress: Progress | None = None,
              compare: bool = True) -> SweepResult:
    """Run (or continue) a planned sweep: members, 5CAT on each, then the comparison
    (:func:`backlm.sweep.compare.compare_sweep`). A member that does not finish ends it early
    with :attr:`SweepResult.stopped` set; rerunning the same command continues."""
    from backlm.sweep.compare import compare_sweep, is_fresh

    record = plan.record or new_record(plan.grid, command)
    write_record(plan.folder, record)
    result = SweepResult(plan)
    if not run_members(plan, result, record, observers, say):
        return result
    for mp in plan.members:
        say(f"[bold]sweep {plan.grid.sweep_id} · 5CAT and evaluation[/] {mp.member.final}")
        _, five = fivecat_member(mp.member.final, plan.root, progress)
        if compare:
            evaluate_member(mp.member.final, plan.root, progress)
        result.fivecat[mp.member.final] = five
        set_status(record, mp.member.id,
                   fivecat=f"{five.get('gates_passed')}/{five.get('gates_total')}"
                   + (" inverted" if five.get("inverted") else ""))
    write_record(plan.folder, record)
    if compare and not is_fresh(plan.grid, plan.root):
        say(f"[bold]sweep {plan.grid.sweep_id} · comparing the members[/]")
        result.comparison = compare_sweep(plan.grid, plan.root, progress)
    if compare:
        result.summary_path = plan.folder.summary_path
    return result


def open_sweep(sweep_id: str, root: Path) -> Grid:
    """The grid of an existing sweep (for ``--compare`` without the axes)."""
    from backlm.sweep.grid import grid_of

    record = read_record(sweep_folder(root, sweep_id))
    if record is None:
        raise UserError(f"no sweep {sweep_id!r} in {Path(root) / SWEEPS}: start it with "
                        "`backlm sweep --id ID --directions ... --depths ... --seeds ...`")
    return grid_of(record)
