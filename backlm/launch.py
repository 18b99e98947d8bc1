"""Starting a training run: ``train(cfg) -> RunSummary``.

:func:`train` validates the config, makes sure the data and tokenizer exist, creates (or
finds, for ``--resume``) the experiment, takes its lock, and then either calls
:func:`backlm.trainer.run` in this process with the config object (one device), or spawns
``torchrun`` running ``python -m backlm.worker`` on every rank; workers read the same resolved
config from the experiment folder, the one place it is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backlm import experiment as xp
from backlm import provenance
from backlm.config import RunConfig, to_yaml
from backlm.errors import UserError
from backlm.paths import DEFAULT_DATASET, dataset_dir

if TYPE_CHECKING:
    from backlm.callbacks import Callback
    from backlm.summary import RunSummary


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
    if under_torchrun:
        return LaunchPlan()
    explicit = nproc_per_node is not None or nnodes > 1
    if nproc_per_node is None:
        use_gpus = device in ("auto", "cuda") and cuda_devices > 1
        nproc_per_node = cuda_devices if use_gpus else 1
    return LaunchPlan(nproc_per_node, nnodes, node_rank, master_addr, master_port, explicit)


def torchrun_argv(plan: LaunchPlan, exp_path: Path, resume: bool, python: str = sys.executable,
                  ) -> list[str]:
    """The torchrun command line that trains ``exp_path`` on every rank (pure function)."""
    argv = [python, "-m", "torch.distributed.run", f"--nproc-per-node={plan.nproc_per_node}"]
    if plan.nnodes == 1:
        argv += ["--standalone", "--nnodes=1"]
    else:
        argv += [f"--nnodes={plan.nnodes}", f"--node-rank={plan.node_rank}",
                 f"--master-addr={plan.master_addr}", f"--master-port={plan.master_port}"]
    argv += ["-m", "backlm.worker", "--experiment", str(exp_path)]
    if resume:
        argv.append("--resume")
    return argv


def ensure_data(cfg: RunConfig, vocab_size: int, say: Callable[[str], None]) -> Path:
    """Dataset folder of ``cfg``; the embedded default is prepared when missing."""
    folder = dataset_dir(cfg.data.dataset)
    if not any(folder.glob("train_*.parquet")):
        if cfg.data.dataset != DEFAULT_DATASET:
            raise UserError(
                f"dataset {cfg.data.dataset!r} has no train shards in {folder}: fetch it with "
                f"`backlm data download` or `backlm data import`"
            )
        from backlm.data.corpus import prepare_corpus

        say(f"no data yet: preparing the embedded corpus in {folder}")
        prepare_corpus(folder, vocab_size=vocab_size, force=True)
    return folder


def validate(cfg: RunConfig, world: int = 1) -> None:
    """Check what can be checked of a new run before anything is written."""
    from backlm.direction import Direction
    from backlm.trainer import plan_streams

    cfg.data.direction = Direction.parse(cfg.data.direction).value
    if cfg.model.depth < 1:
        raise UserError(f"--depth must be at least 1, got {cfg.model.depth}")
    if cfg.train.max_steps < 1:
        raise UserError("train.max_steps must be at least 1")
    plan_streams(cfg, world)


def _quiet(text: str) -> None:
    """The default listener: the engine itself never prints."""


def create_experiment(cfg: RunConfig, root: Path, world: int = 1,
                      say: Callable[[str], None] = _quiet) -> xp.Experiment:
    """Validate ``cfg``, prepare data and tokenizer, and create the experiment folder."""
    from backlm.data.vocab import dataset_tokenizer, tokenizer_dir

    validate(cfg, world)
    folder = ensure_data(cfg, cfg.model.vocab_size, say)
    tokenizer = dataset_tokenizer(folder, vocab_size=cfg.model.vocab_size)
    cfg.model.vocab_size = tokenizer.vocab_size  # the model's vocabulary is the tokenizer's
    exp_id = cfg.id or xp.new_id(cfg.phase, cfg.data.direction, cfg.model.depth)
    cfg.id = xp.check_id(exp_id)
    metadata = {
        "id": exp_id, "name": exp_id, "description": cfg.description, "phase": cfg.phase,
        "direction": cfg.data.direction, "depth": cfg.model.depth, "created": xp.utcnow(),
        "finished": None, "status": "created", "git_commit": provenance.git_commit(),
        "command": provenance.command_line(), "data_dir": str(folder.resolve()),
        **provenance.environment(), "results": None,
    }
    return xp.create(root, exp_id, config_yaml=to_yaml(cfg), metadata=metadata,
                     parent_link=None, tokenizer_dir=tokenizer_dir(folder))


def check_resumable(exp: xp.Experiment) -> RunConfig:
    """Fail early (before any lock or write) if ``exp`` cannot be resumed; its config."""
    from backlm import checkpoint as ckpt

    exp.metadata()
    cfg = exp.config()
    folder = exp.latest_checkpoint()
    if folder is not None:  # with none saved yet, the run starts over from step 0
        ckpt.load(folder, with_optimizer=False)  # raises UserError when corrupt
    return cfg


def train(cfg: RunConfig | None, root: Path, *, resume: str | None = None,
          plan: LaunchPlan | None = None, observers: Sequence[Callback] = (),
          say: Callable[[str], None] = _quiet) -> RunSummary:
    """Create (or, with ``resume``, continue) an experiment and train it.

    One process trains in this one with ``cfg`` itself; a torchrun plan spawns the workers,
    which read the resolved config from the experiment folder. ``observers`` (e.g. the
    command's display) see the in-process loop; torchrun's rank 0 makes its own display.
    ``say`` tells the user about work before training (e.g. preparing the default data).
    """
    from backlm import trainer

    plan = plan or LaunchPlan()
    if resume:
        exp = xp.find(resume, root)
        cfg = check_resumable(exp)
    else:
        if cfg is None:
            raise UserError("a new run needs a config")
        exp = create_experiment(cfg, root, plan.world, say)
    with exp.lock():
        if not plan.distributed:
            return trainer.run(exp, cfg, resume=bool(resume), observers=observers)
        argv = torchrun_argv(plan, exp.path, bool(resume))
        env = dict(os.environ, BACKLM_DISPLAY="1" if observers else "0")
        proc = subprocess.run(argv, env=env)
        if proc.returncode != 0:
            raise UserError(f"torchrun exited with code {proc.returncode}; see the log above")
        from backlm.summary import summary_from_files

        return summary_from_files(exp)


def estimate_only(cfg: RunConfig):
    """Estimate ``cfg`` without creating anything (uses the dataset's tokenizer if present)."""
    from backlm.cost import estimate, target_gpu
    from backlm.data.vocab import existing_tokenizer

    validate(cfg)
    tokenizer = existing_tokenizer(dataset_dir(cfg.data.dataset))
    if tokenizer is not None:
        cfg.model.vocab_size = tokenizer.vocab_size
    name, gpus, peak = target_gpu(cfg)
    return estimate(cfg, name, gpus, peak)
