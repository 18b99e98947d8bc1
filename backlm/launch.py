"""Starting a training run: experiment setup, then in-process training or a torchrun spawn.

``backlm train`` resolves the config, makes sure the data and tokenizer exist, creates (or
finds, for ``--resume``) the experiment, takes its lock, and then either calls
:func:`backlm.trainer.run` in this process or spawns ``torchrun`` running ``python -m
backlm.worker`` on every rank with the same experiment folder (hence the same resolved config).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from backlm import experiment as xp
from backlm.config import RunConfig, to_yaml
from backlm.errors import UserError
from backlm.paths import DEFAULT_DATASET, dataset_dir


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes train, on how many nodes."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node * self.nnodes > 1


def plan_launch(
    nproc_per_node: int | None, nnodes: int, device: str, cuda_devices: int,
    under_torchrun: bool, node_rank: int = 0, master_addr: str = "127.0.0.1",
    master_port: int = 29500,
) -> LaunchPlan:
    """Decide the process layout: explicit flags win; else one process per visible GPU."""
    if nproc_per_node is not None and nproc_per_node < 1:
        raise UserError("--nproc-per-node must be at least 1")
    if nnodes < 1:
        raise UserError("--nnodes must be at least 1")
    if under_torchrun:
        return LaunchPlan()
    if nproc_per_node is None:
        use_gpus = device in ("auto", "cuda") and cuda_devices > 1
        nproc_per_node = cuda_devices if use_gpus else 1
    return LaunchPlan(nproc_per_node, nnodes, node_rank, master_addr, master_port)


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


def ensure_data(cfg: RunConfig, vocab_size: int) -> Path:
    """Dataset folder of ``cfg``; the embedded default is prepared when missing."""
    folder = dataset_dir(cfg.data.dataset)
    if not any(folder.glob("train_*.parquet")):
        if cfg.data.dataset != DEFAULT_DATASET:
            raise UserError(
                f"dataset {cfg.data.dataset!r} has no train shards in {folder}: fetch it with "
                f"`backlm data download` or `backlm data import`"
            )
        from backlm.data.corpus import prepare_corpus
        from backlm.ui import console

        console.print(f"[bold]no data yet[/]: preparing the embedded corpus in {folder}")
        prepare_corpus(folder, vocab_size=vocab_size, force=True)
    return folder


def create_experiment(cfg: RunConfig, root: Path) -> xp.Experiment:
    """Validate ``cfg``, prepare data and tokenizer, and create the experiment folder."""
    from backlm.direction import Direction
    from backlm.tokenizer import dataset_tokenizer

    cfg.data.direction = Direction.parse(cfg.data.direction).value
    if cfg.model.depth < 1:
        raise UserError(f"--depth must be at least 1, got {cfg.model.depth}")
    if cfg.train.max_steps < 1:
        raise UserError("train.max_steps must be at least 1")
    folder = ensure_data(cfg, cfg.model.vocab_size)
    tokenizer = dataset_tokenizer(folder, vocab_size=cfg.model.vocab_size)
    cfg.model.vocab_size = tokenizer.vocab_size  # the model's vocabulary is the tokenizer's
    exp_id = cfg.id or xp.new_id(cfg.phase, cfg.data.direction, cfg.model.depth)
    cfg.id = xp.check_id(exp_id)
    metadata = {
        "id": exp_id, "name": exp_id, "description": cfg.description, "phase": cfg.phase,
        "direction": cfg.data.direction, "depth": cfg.model.depth, "created": xp.utcnow(),
        "finished": None, "status": "created", "git_commit": xp.git_commit(),
        "command": xp.command_line(), "data_dir": str(folder.resolve()),
        **xp.environment(), "results": None,
    }
    return xp.create(root, exp_id, config_yaml=to_yaml(cfg), metadata=metadata,
                     parent_link=None, tokenizer_dir=folder / "tokenizer")


def check_resumable(exp: xp.Experiment) -> None:
    """Fail early (before any lock or write) if ``exp`` cannot be resumed."""
    from backlm import checkpoint as ckpt

    exp.metadata()
    folder = ckpt.latest(exp.checkpoints)
    if folder is None:
        return  # nothing saved yet: the run starts over from step 0
    ckpt.load(folder, with_optimizer=False)  # raises UserError when corrupt


def start(cfg: RunConfig | None, root: Path, resume: str | None, plan: LaunchPlan,
          display: bool = True):
    """Create or resume an experiment and train it; returns the trainer's RunSummary."""
    from backlm import trainer

    if resume:
        exp = xp.find(resume, root)
        check_resumable(exp)
    else:
        assert cfg is not None
        exp = create_experiment(cfg, root)
    with exp.lock():
        if not plan.distributed:
            return trainer.run(exp.path, resume=bool(resume), display=display)
        argv = torchrun_argv(plan, exp.path, bool(resume))
        env = dict(os.environ, BACKLM_DISPLAY="1" if display else "0")
        proc = subprocess.run(argv, env=env)
        if proc.returncode != 0:
            raise UserError(f"torchrun exited with code {proc.returncode}; see the log above")
        return trainer.summary_from_metadata(exp)


def estimate_only(cfg: RunConfig):
    """Estimate ``cfg`` without creating anything (uses the dataset's tokenizer if present)."""
    from backlm.cost import estimate, target_gpu
    from backlm.direction import Direction

    cfg.data.direction = Direction.parse(cfg.data.direction).value
    if cfg.model.depth < 1:
        raise UserError(f"--depth must be at least 1, got {cfg.model.depth}")
    tok = dataset_dir(cfg.data.dataset) / "tokenizer" / "tokenizer.json"
    if tok.is_file():
        from backlm.tokenizer import Tokenizer

        cfg.model.vocab_size = Tokenizer.load(tok.parent).vocab_size
    name, gpus, peak = target_gpu(cfg)
    return estimate(cfg, name, gpus, peak)
