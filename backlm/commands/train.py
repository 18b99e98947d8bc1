"""``backlm train``: pretrain a GPT forward, backward or bidirectionally (or resume one)."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import (
    DESCRIPTION,
    DEVICE,
    EXPERIMENTS_DIR,
    OVERRIDES,
    WANDB,
    config_flags,
    experiments_root,
)
from backlm.ui import console, user_errors


@user_errors
def train(
    direction: str = typer.Option(None, "--direction", "-d",
                                  help="forward, backward or bidirectional."),
    depth: int = typer.Option(None, "--depth", help="Transformer layers (width = 64 × depth)."),
    config: str = typer.Option(None, "--config", "-c",
                               help="Preset name or YAML path, e.g. configs/cpu-tiny.yaml."),
    overrides: list[str] = OVERRIDES,
    exp_id: str = typer.Option(None, "--id", help="Experiment id (default: phase_dir_dN_time)."),
    description: str = DESCRIPTION,
    max_steps: int = typer.Option(
        None, "--max-steps", help="Optimizer steps to train; with --resume, extends the run."),
    device: str = DEVICE,
    seed: int = typer.Option(None, "--seed", help="Seed for data order and init."),
    resume: str = typer.Option(None, "--resume", help="Continue this experiment (id or tag)."),
    nproc_per_node: int = typer.Option(
        None, "--nproc-per-node",
        help="Processes per node; given, it always spawns torchrun (1 included). Default: one "
             "per visible GPU, trained in this process when there is one device."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes taking part (torchrun)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank (multi-node)."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Rendezvous host."),
    master_port: int = typer.Option(29500, "--master-port", help="Rendezvous port."),
    experiments: Path = EXPERIMENTS_DIR,
    wandb: str = WANDB,
    stop_on_inversion: bool = typer.Option(
        None, "--stop-on-inversion/--no-stop-on-inversion",
        help="Stop when in-training 5CAT finds the direction inverted."),
    estimate_only: bool = typer.Option(False, "--estimate-only",
                                       help="Print size, time and cost estimates; do not train."),
    phase: str = typer.Option(
        None, "--phase",
        help="base, or a chain such as base,mid,sft: each phase a child of the one before; "
             "rerun with the same --id to continue an interrupted chain."),
) -> None:
    """Train a model; with several GPUs (or --nproc-per-node N) it spawns torchrun."""
    from backlm.commands.render import finish, render_estimate, render_summary
    from backlm.train import estimate_only as run_estimate
    from backlm.train import train_phases
    from backlm.train.launch import Processes
    from backlm.train.plan import plan_train
    from backlm.ui import TrainDisplay

    root = experiments_root(experiments)
    processes = Processes(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    flags = config_flags(direction=direction, depth=depth, max_steps=max_steps, device=device,
                         seed=seed, wandb=wandb, stop_on_inversion=stop_on_inversion,
                         exp_id=exp_id, description=description)
    # with --resume, the other options must say what the run already is (the engine checks
    # them against the experiment); these four cannot come with it at all
    plan = plan_train(
        root, preset=config, overrides=overrides or [], phase=phase, resume=resume,
        flags=flags, resume_changes={"--config": config, "--id": exp_id,
                                     "--description": description, "--phase": phase},
        processes=processes, estimate=estimate_only)
    if estimate_only:
        render_estimate(run_estimate(plan), plan.cfg)
        return
    for summary in train_phases(
            plan.cfg, root, plan.phases, processes=processes, resume=resume,
            max_steps=max_steps, observers=[TrainDisplay()],
            say=lambda text: console.print(text, highlight=False, soft_wrap=True),
            explicit=plan.explicit, overrides=overrides or [], flags=flags):
        if summary.nothing_to_do:
            console.print(f"experiment {summary.exp_id} is already over ({summary.status} at "
                          f"step {summary.steps}): nothing to do. Extend it with `backlm train "
                          f"--resume {summary.exp_id} --max-steps N` (N > {summary.steps}).",
                          highlight=False)
            return
        render_summary(summary)
        finish(summary)
