"""Starting a training run: ``train(cfg) -> RunSummary``.

:func:`train` validates the config, makes sure the data and tokenizer exist, creates (or
finds, for ``--resume``) the experiment, takes its lock, and then either calls
:func:`backlm.train.loop.run` in this process with the config object (one device), or spawns
``torchrun`` running ``python -m backlm.train.worker`` on every rank; workers read the same resolved
config from the experiment folder, the one place it is written.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backlm import atomic
from backlm.config import RunConfig, to_yaml
from backlm.errors import UserError
from backlm.experiment import folder as xp
from backlm.experiment import provenance
from backlm.train.plan import (
    NewRun,
    Resume,
    TrainPlan,
    check_resume_asked,
    plan_new_run,
    plan_resume,
)

if TYPE_CHECKING:
    from backlm.callbacks import Callback
    from backlm.train.branch import Branch
    from backlm.train.summary import RunSummary


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes train, on how many nodes, and whether torchrun starts them."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    torchrun: bool = False  # False: one process, trained in this one

    @property
    def distributed(self) -> bool:
        """Whether the run is spawned through torchrun (possibly as a single process)."""
        return self.torchrun or self.world > 1

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes


def plan_launch(
    nproc_per_node: int | None, nnodes: int, device: str, cuda_devices: int,
    under_torchrun: bool, node_rank: int = 0, master_addr: str = "127.0.0.1",
    master_port: int = 29500,
) -> LaunchPlan:
    """Decide the process layout: explicit flags win (``--nproc-per-node`` always goes through
    torchrun, even for one process); else one process per visible GPU."""
    if nproc_per_node is not None and nproc_per_node < 1:
        raise UserError("--nproc-per-node must be at least 1")
    if nnodes < 1:
        raise UserError("--nnodes must be at least 1")
    if not 0 <= node_rank < nnodes:
        raise UserError(f"--node-rank must be between 0 and --nnodes - 1 ({nnodes - 1}), got "
                        f"{node_rank}")
    if not 1 <= master_port <= 65535:
        raise UserError(f"--master-port must be a TCP port (1-65535), got {master_port}")
    if under_torchrun:
        return LaunchPlan()
    explicit = nproc_per_node is not None or nnodes > 1
    if nproc_per_node is None:
        use_gpus = device in ("auto", "cuda") and cuda_devices > 1
        nproc_per_node = cuda_devices if use_gpus else 1
    return LaunchPlan(nproc_per_node, nnodes, node_rank, master_addr, master_port, explicit)


@dataclass(frozen=True)
class Processes:
    """The process options of ``backlm train`` and ``branch`` as given; None processes per node:
    one per visible GPU."""

    nproc_per_node: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def plan(self, device: str) -> LaunchPlan:
        """:func:`plan_launch` on this machine: the GPUs it shows, and whether this process is
        already one of torchrun's ranks (then it trains itself: torchrun started it)."""
        import torch

        return plan_launch(self.nproc_per_node, self.nnodes, device, torch.cuda.device_count(),
                           "LOCAL_RANK" in os.environ, self.node_rank, self.master_addr,
                           self.master_port)


def torchrun_argv(plan: LaunchPlan, exp_path: Path, resume: bool, python: str = sys.executable,
                  ) -> list[str]:
    """The torchrun command line that trains ``exp_path`` on every rank (pure function)."""
    argv = [python, "-m", "torch.distributed.run", f"--nproc-per-node={plan.nproc_per_node}"]
    if plan.nnodes == 1:
        argv += ["--standalone", "--nnodes=1"]
    else:
        argv += [f"--nnodes={plan.nnodes}", f"--node-rank={plan.node_rank}",
                 f"--master-addr={plan.master_addr}", f"--master-port={plan.master_port}"]
    argv += ["-m", "backlm.train.worker", "--experiment", str(exp_path)]
    if resume:
        argv.append("--resume")
    return argv


def prepare_data(new: NewRun, cfg: RunConfig, say: Callable[[str], None]) -> None:
    """Build the embedded default corpus when the plan says it is missing."""
    if new.prepare_data:
        from backlm.data.corpus import prepare_corpus

        say(f"no data yet: preparing the embedded corpus in {new.data_dir}")
        prepare_corpus(new.data_dir, vocab_size=cfg.model.vocab_size, force=True)


def _quiet(text: str) -> None:
    """The default listener: the engine itself never prints."""


def create_experiment(cfg: RunConfig, root: Path, world: int = 1,
                      say: Callable[[str], None] = _quiet,
                      explicit: Collection[str] = ()) -> xp.Experiment:
    """Validate ``cfg`` (:func:`backlm.train.plan.plan_new_run`), prepare data and tokenizer, and
    create the experiment folder."""
    from backlm.data.vocab import dataset_tokenizer, tokenizer_dir

    new = plan_new_run(cfg, root, world, explicit)
    for warning in new.warnings:
        say(warning)
    prepare_data(new, cfg, say)
    tokenizer = dataset_tokenizer(new.data_dir, vocab_size=cfg.model.vocab_size)
    cfg.model.vocab_size = tokenizer.vocab_size  # the model's vocabulary is the tokenizer's
    cfg.id = new.exp_id
    metadata = {
        "id": new.exp_id, "name": new.exp_id, "description": cfg.description,
        "phase": cfg.phase, "direction": cfg.data.direction, "depth": cfg.model.depth,
        "created": xp.utcnow(), "finished": None, "status": "created",
        "git_commit": provenance.git_commit(), "command": provenance.command_line(),
        "data_dir": str(new.data_dir.resolve()), **provenance.environment(), "results": None,
    }
    return xp.create(root, new.exp_id, config_yaml=to_yaml(cfg), metadata=metadata,
                     parent_link=None, tokenizer_dir=tokenizer_dir(new.data_dir))


def _extend(resume: Resume) -> None:
    """Write a --max-steps extension into the config (workers read it) and the metadata."""
    cfg, exp = resume.cfg, resume.exp
    old = cfg.train.max_steps
    cfg.train.max_steps = resume.extend_to
    atomic.write_text(exp.config_path, to_yaml(cfg))
    history = list(exp.metadata().get("max_steps_changes") or [])
    history.append({"from": old, "to": resume.extend_to, "at_step": resume.step,
                    "time": xp.utcnow()})
    exp.update_metadata(max_steps_changes=history)


def _discard_failed(exp: xp.Experiment) -> None:
    """A new run that failed before its first checkpoint cannot be resumed: remove its folder
    so the corrected command can use the same id."""
    import shutil

    if not exp.checkpoint_steps():
        shutil.rmtree(exp.path, ignore_errors=True)


def train(cfg: RunConfig | None, root: Path, *, resume: str | None = None,
          plan: LaunchPlan | None = None, observers: Sequence[Callback] = (),
          say: Callable[[str], None] = _quiet, explicit: Collection[str] = (),
          max_steps: int | None = None, branch: Branch | None = None,
          asked: tuple[Sequence[str], dict] | None = None) -> RunSummary:
    """Create (or, with ``resume``, continue) an experiment and train it.

    Everything is validated first (:mod:`backlm.train.plan`); a new run that fails before its first
    checkpoint leaves nothing behind. A resumed run that is already over changes nothing and
    returns its stored summary (``nothing_to_do``); ``max_steps`` extends it. One process trains
    in this one with ``cfg`` itself; a torchrun plan spawns the workers, which read the resolved
    config from the experiment folder. ``observers`` (e.g. the command's display) see the
    in-process loop; torchrun's rank 0 makes its own display. ``say`` tells the user about work
    before training (e.g. preparing the default data). ``branch`` (a validated
    :class:`backlm.train.branch.Branch`) creates a child experiment instead of a base run.
    ``asked`` (a resume's ``--set`` overrides and nested flags) must match the run's config.
    """
    from backlm.train import loop
    from backlm.train.summary import summary_from_files

    plan = plan or LaunchPlan()
    if resume:
        state = plan_resume(resume, root, max_steps)
        if asked is not None:
            check_resume_asked(state, *asked)
        exp, cfg = state.exp, state.cfg
        if state.finished:
            return dataclasses.replace(summary_from_files(exp), nothing_to_do=True)
    elif branch is not None:
        from backlm.train.branch import create_child

        cfg = branch.cfg
        exp = create_child(branch, root, say)
    else:
        if cfg is None:
            raise UserError("a new run needs a config")
        exp = create_experiment(cfg, root, plan.world, say, explicit)
    cache_tokens(exp, cfg, say)
    try:
        with exp.lock():
            if resume and state.extend_to is not None:
                _extend(state)
            if not plan.distributed:
                return loop.run(exp, cfg, resume=bool(resume), observers=observers)
            argv = torchrun_argv(plan, exp.path, bool(resume))
            env = dict(os.environ, BACKLM_DISPLAY="1" if observers else "0")
            proc = subprocess.run(argv, env=env)
            if proc.returncode != 0:
                raise UserError(f"torchrun exited with code {proc.returncode}; see the log above")
            return summary_from_files(exp)
    except (Exception, SystemExit):
        if not resume:
            _discard_failed(exp)
        raise


def cache_tokens(exp: xp.Experiment, cfg: RunConfig, say: Callable[[str], None]) -> None:
    """Tokenize a small dataset's train shards once into the token cache before the loaders
    read them; phases without a text stream skip it."""
    from backlm.data.shards import list_shards
    from backlm.data.token_cache import cache_for_training
    from backlm.tokenizer import Tokenizer

    if cfg.phase in ("sft", "rl"):
        return
    try:
        shards, tokenizer = list_shards(exp.data_dir(), "train"), Tokenizer.load(exp.tokenizer_dir)
    except UserError:
        return  # the run itself reports missing data or tokenizer
    cache_for_training(shards, tokenizer, cfg.data.tokenizer_threads, say)


def estimate_only(plan: TrainPlan):
    """Estimate a run :func:`backlm.train.plan.plan_train` planned (with ``estimate=True``: it
    refused what the run refuses, and the model's vocabulary is the dataset tokenizer's when
    there is one) without creating anything."""
    from backlm.train.cost import estimate, target_gpu

    name, gpus, peak = target_gpu(plan.cfg)
    return estimate(plan.cfg, name, gpus, peak)
