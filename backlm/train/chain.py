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
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
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
                 overrides: Sequence[str] = (), flags: Mapping[str, Any] | None = None
                 ) -> Iterator[RunSummary]:
    """Train ``cfg`` (or continue the experiment ``resume``, ``max_steps`` extending it), or,
    with several ``phases``, the chain that starts from ``cfg`` (:func:`run_chain`), in this
    process or through torchrun as ``processes`` and the machine decide; yields each run's
    summary (a resumed run that is already over: one with ``nothing_to_do``). With ``resume``,
    ``overrides`` and ``flags`` (the command's nested option values) must say what the run
    already is (:func:`backlm.train.plan.check_resume_asked`)."""
    from backlm.train.launch import Processes, train

    plan = (processes or Processes()).plan(cfg.train.device if cfg else "auto")
    if len(phases) > 1:
        if cfg is None:
            raise ValueError("a chain starts from a config")
        yield from run_chain(cfg, root, phases, plan, observers=observers, say=say,
                             explicit=explicit, overrides=overrides)
        return
    asked = (list(overrides), dict(flags or {})) if resume else None
    yield train(cfg, root, resume=resume, plan=plan, observers=observers, say=say,
                explicit=explicit, max_steps=max_steps if resume else None, asked=asked)


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
    plan_chain(cfg, root, prefix, phases, child_sets, world=plan.world, explicit=explicit)
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


def member_configs(cfg: RunConfig, phases: Sequence[str], child_sets: Sequence[str]
                   ) -> list[RunConfig]:
    """What each member of the chain is asked to be: base is ``cfg``; each child is what
    :func:`backlm.train.branch.plan_branch` makes of the member before (its config, the phase's
    defaults, ``child_sets``; shape and direction inherited)."""
    import copy

    from backlm.config import to_dict
    from backlm.train.branch import child_config

    configs = [copy.deepcopy(cfg)]
    for phase in phases[1:]:
        prev = configs[-1]
        meta = {"model_config": to_dict(prev.model), "direction": prev.data.direction}
        configs.append(child_config(phase, prev, meta, None, list(child_sets), {})[0])
    return configs


def plan_chain(cfg: RunConfig, root: Path, prefix: str, phases: Sequence[str],
               child_sets: Sequence[str], *, world: int = 1,
               explicit: Collection[str] = ()) -> None:
    """Validate the whole chain before its first member trains; nothing is written.

    A member that exists must be the one asked for (:func:`backlm.experiment.identity.differs`:
    direction, parent and its step, shape, data, tokenizer, seed, the defining config), else it
    is refused naming the first field that differs. A member still to make has every input
    checked now (config, dataset and tokenizer, chat data and whether a conversation fits)."""
    from backlm.data.vocab import existing_tokenizer
    from backlm.errors import UserError
    from backlm.experiment.compat import tokenizer_hash
    from backlm.experiment.identity import differs, run_identity
    from backlm.paths import dataset_dir
    from backlm.train.branch import check_chat_data, check_text_data, choose_checkpoint
    from backlm.train.phases import CHAT_PHASES, check_chat_fits
    from backlm.train.plan import check_config, check_device, plan_new_run

    configs = member_configs(cfg, phases, child_sets)
    # the dataset's tokenizer is what a new base gets; the base's own is what children inherit
    tokenizer = existing_tokenizer(dataset_dir(cfg.data.dataset))
    base_exp = xp.Experiment(Path(root) / f"{prefix}-base")
    if tokenizer is None and base_exp.metadata_path.is_file():
        from backlm.tokenizer import Tokenizer

        try:
            tokenizer = Tokenizer.load(base_exp.tokenizer_dir)
        except UserError:
            tokenizer = None
    if tokenizer is not None and "model.vocab_size" not in explicit:
        for member in configs:
            member.model.vocab_size = tokenizer.vocab_size  # a preset's size yields to the data's
    sha = tokenizer_hash(tokenizer) if tokenizer is not None else None
    for i, (phase, member) in enumerate(zip(phases, configs, strict=True)):
        exp_id = f"{prefix}-{phase}"
        member.id = exp_id
        exp = xp.Experiment(Path(root) / exp_id)
        parent = xp.Experiment(Path(root) / f"{prefix}-{phases[i - 1]}") if i else None
        if exp.metadata_path.is_file():
            step = None
            if parent is not None and parent.metadata_path.is_file() and parent.checkpoint_steps():
                step = choose_checkpoint(parent, None)[1]
            asked = run_identity(member, parent_id=parent.id if parent else None,
                                 parent_step=step, tokenizer_sha256=sha)
            diff = differs(exp, asked)
            if diff is not None:
                raise UserError(f"{exp_id} exists but is not the member --phase "
                                f"{','.join(phases)} asks for: {diff}; give another --id (or "
                                f"ask for what {exp_id} is)")
        elif i == 0:
            plan_new_run(copy_of(member), root, world, explicit)
        else:
            check_config(member, world)
            check_text_data(member, phase)
            ready = phase not in CHAT_PHASES or not check_chat_data(member)
            if phase in CHAT_PHASES and ready and tokenizer is not None:
                check_chat_fits(member, tokenizer)
            check_device(member, world)


def copy_of(cfg: RunConfig) -> RunConfig:
    """A deep copy (the plan may resolve fields of what it is given)."""
    import copy

    return copy.deepcopy(cfg)
