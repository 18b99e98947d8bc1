"""Phase chains: ``backlm train --phase base,mid,sft`` trains each phase as a child of the one
before, and the same command continues an interrupted chain where it stopped.

Members are named ``<prefix>-<phase>`` (prefix: ``--id``, else ``chain_<direction>_d<depth>_
<time>``). Base takes the command's config; each child takes its phase's defaults, the
command's ``--set`` keys that are not the model's shape (the shape is inherited), and starts
from its parent's best checkpoint (latest when none is recorded). A finished member is skipped,
an unfinished one resumed, a missing one created.

:func:`train_phases` is what ``backlm train`` runs: a chain of one phase is a plain run (new,
or resumed), on the processes the machine gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backlm.config import RunConfig
from backlm.experiment import folder as xp
from backlm.train.plan import FINISHED

if TYPE_CHECKING:
    from backlm.train.launch import Processes
    from backlm.train.summary import RunSummary


def chain_prefix(cfg: RunConfig) -> str:
    """The chain's id prefix."""
    stamp = xp.new_id("chain", cfg.data.direction, cfg.model.depth)
    return xp.check_id(cfg.id or stamp)


def train_phases(cfg: RunConfig | None, root: Path, phases: Sequence[str] = ("base",), *,
                 processes: Processes | None = None, resume: str | None = None,
                 max_steps: int | None = None, observers: Sequence[Any] = (),
                 say: Callable[[str], None] = lambda _: None, explicit: Collection[str] = (),
                 overrides: Sequence[str] = ()) -> Iterator[RunSummary]:
    """Train ``cfg`` (or continue the experiment ``resume``, ``max_steps`` extending it), or,
    with several ``phases``, the chain that starts from ``cfg`` (:func:`run_chain`), in this
    process or through torchrun as ``processes`` and the machine decide; yields each run's
    summary (a resumed run that is already over: one with ``nothing_to_do``)."""
    from backlm.train.launch import Processes, train

    plan = (processes or Processes()).plan(cfg.train.device if cfg else "auto")
    if len(phases) > 1:
        if cfg is None:
            raise ValueError("a chain starts from a config")
        yield from run_chain(cfg, root, phases, plan, observers=observers, say=say,
                             explicit=explicit, overrides=overrides)
        return
    yield train(cfg, root, resume=resume, plan=plan, observers=observers, say=say,
                explicit=explicit, max_steps=max_steps if resume else None)


def run_chain(cfg: RunConfig, root: Path, phases: Sequence[str], plan: Any, *,
              observers: Sequence[Any] = (), say: Callable[[str], None] = lambda _: None,
              explicit: Collection[str] = (), overrides: Sequence[str] = ()
              ) -> Iterator[Any]:
    """Train (or continue) each member of the chain; yields each member's summary and stops
    after one that did not finish."""
    from backlm.train.branch import plan_branch
    from backlm.train.launch import train

    prefix = chain_prefix(cfg)
    _check_members(root, prefix, phases)
    child_sets = [o for o in overrides if not o.strip().startswith(("model.", "id=", "phase="))]
    parent = None
    for phase in phases:
        exp_id = f"{prefix}-{phase}"
        exp = xp.Experiment(Path(root) / exp_id)
        if exp.metadata_path.is_file():
            if str(exp.metadata().get("status")) in FINISHED:
                say(f"chain: {exp_id} already finished, skipped")
                parent = exp_id
                continue
            say(f"chain: continuing {exp_id}")
            summary = train(None, root, resume=exp_id, plan=plan, observers=observers, say=say)
        elif phase == "base":
            say(f"chain: training {exp_id}")
            base = dataclasses.replace(cfg, id=exp_id)
            summary = train(base, root, plan=plan, observers=observers, say=say,
                            explicit={*explicit, "id"})
        else:
            say(f"chain: training {exp_id} from {parent}")
            branch = plan_branch(phase, str(parent), root, exp_id=exp_id, overrides=child_sets,
                                 world=plan.world)
            summary = train(None, root, branch=branch, plan=plan, observers=observers, say=say)
        yield summary
        if summary.status not in FINISHED:
            say(f"chain stopped at {exp_id} ({summary.status}); continue it with the same "
                f"command and --id {prefix}")
            return
        parent = exp_id


def _check_members(root: Path, prefix: str, phases: Sequence[str]) -> None:
    """Members that exist already must be the chain's: its phase, branched from the member
    before (another chain with the same --id, e.g. base,sft then base,mid,sft, is refused
    before anything trains)."""
    from backlm.errors import UserError
    from backlm.train.phases import article

    for parent, phase in zip([None, *phases], phases, strict=False):
        exp = xp.Experiment(Path(root) / f"{prefix}-{phase}")
        if not exp.metadata_path.is_file():
            continue
        found = str(exp.metadata().get("phase"))
        link = exp.parent_link() or {}
        want = f"{prefix}-{parent}" if parent else None
        if found != phase or link.get("parent_id") != want:
            origin = f"a child of {link.get('parent_id')}" if link.get("parent_id") else "a root"
            raise UserError(f"{exp.id} exists as {article(found)} {found} run, {origin}, but the "
                            f"chain --phase {','.join(phases)} needs {article(phase)} {phase} run "
                            f"{'from ' + want if want else 'that is a root'}: give another --id")
