"""``backlm branch PHASE --parent EXP``: train a mid, SFT or RL child of a parent checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import (
    DESCRIPTION,
    DEVICE,
    EXPERIMENTS_DIR,
    OVERRIDES,
    STEP,
    WANDB,
    config_flags,
    experiments_root,
)
from backlm.ui import console, user_errors


@user_errors
def branch(
    phase: str = typer.Argument(..., help="The child's phase: mid, sft or rl."),
    parent: str = typer.Option(..., "--parent", "-p", help="Parent experiment (id or tag)."),
    step: str = STEP,  # also "best" or "latest" here
    exp_id: str = typer.Option(None, "--id", help="Child id (default: phase_dir_dN_time)."),
    init_lr_frac: float = typer.Option(None, "--init-lr-frac",
                                       help="Learning rates × this (phase default otherwise)."),
    config: str = typer.Option(None, "--config", "-c", help="YAML merged over the phase's."),
    overrides: list[str] = OVERRIDES,
    direction: str = typer.Option(None, "--direction", "-d",
                                  help="Train the child in another direction (needs "
                                       "--allow-direction-change)."),
    allow_direction_change: bool = typer.Option(
        False, "--allow-direction-change", help="Allow a child direction unlike the parent's."),
    description: str = DESCRIPTION,
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps of the child."),
    device: str = DEVICE,
    nproc_per_node: int = typer.Option(None, "--nproc-per-node",
                                       help="Processes per node (spawns torchrun)."),
    experiments: Path = EXPERIMENTS_DIR,
    wandb: str = WANDB,
) -> None:
    """Create a child experiment from a parent checkpoint and train it.

    The child inherits direction, model shape and tokenizer from the parent checkpoint;
    parent_link.json records the checkpoint, its step and sha256, and the chain from the root.
    """
    from backlm.commands.render import finish, render_summary
    from backlm.train import plan_branch
    from backlm.train import train as run_training
    from backlm.train.launch import Processes
    from backlm.ui import TrainDisplay

    root = experiments_root(experiments)
    flags = config_flags(direction=direction, init_lr_frac=init_lr_frac, max_steps=max_steps,
                         device=device, wandb=wandb, description=description)
    plan = Processes(nproc_per_node).plan(device or "auto")
    planned = plan_branch(phase, parent, root, step=step, exp_id=exp_id, preset=config,
                          overrides=overrides, flags=flags,
                          allow_direction_change=allow_direction_change, world=plan.world,
                          given_for=(phase.strip().lower(),))
    render_branch(planned)
    summary = run_training(None, root, branch=planned, plan=plan, observers=[TrainDisplay()],
                           say=lambda text: console.print(text, highlight=False, soft_wrap=True))
    render_summary(summary)
    finish(summary)


def render_branch(planned) -> None:
    """What the child takes from its parent, and what differs from the parent's config."""
    from rich.table import Table

    cfg = planned.cfg
    table = Table(title=f"{cfg.phase} child {cfg.id} of {planned.parent.id} (step "
                        f"{planned.step})", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for what, value in planned.inherited:
        table.add_row(f"inherited {what}", value)
    if planned.link.get("direction_change"):
        change = planned.link["direction_change"]
        table.add_row("direction change", f"{change['from']} → {change['to']} (recorded)")
    for key, old, new in planned.overridden:
        table.add_row(f"set {key}", f"{old!r} → {new!r}")
    console.print(table)
    for warning in planned.warnings:
        console.print(warning, highlight=False)
