"""``backlm train``: pretrain a GPT forward, backward or bidirectionally (or resume one)."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import DEVICE, EXPERIMENTS_DIR, experiments_root
from backlm.ui import console, user_errors


@user_errors
def train(
    direction: str = typer.Option(None, "--direction", "-d",
                                  help="forward, backward or bidirectional."),
    depth: int = typer.Option(None, "--depth", help="Transformer layers (width = 64 × depth)."),
    config: str = typer.Option(None, "--config", "-c",
                               help="Preset name or YAML path, e.g. configs/cpu-tiny.yaml."),
    overrides: list[str] = typer.Option(None, "--set", help="Override a config key: a.b=value."),
    exp_id: str = typer.Option(None, "--id", help="Experiment id (default: phase_dir_dN_time)."),
    description: str = typer.Option(None, "--description", help="Free text for metadata."),
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
    wandb: str = typer.Option(None, "--wandb",
                              help="auto (offline without an API key), online, offline or off."),
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
    import os

    from backlm.config import RunConfig, explicit_keys, load_config
    from backlm.errors import UserError
    from backlm.train.launch import plan_launch
    from backlm.train.launch import train as run_training
    from backlm.train.phases import parse_chain
    from backlm.train.plan import FINISHED
    from backlm.ui import TrainDisplay

    root = experiments_root(experiments)
    cfg, explicit = None, set()
    if resume is not None and not resume.strip():
        raise UserError("--resume needs an experiment id, tag or path (see `backlm ls`)")
    if resume:
        fixed = {"--direction": direction, "--depth": depth, "--config": config,
                 "--set": overrides, "--id": exp_id, "--description": description,
                 "--device": device, "--seed": seed, "--wandb": wandb,
                 "--stop-on-inversion": stop_on_inversion, "--phase": phase}
        given = [flag for flag, value in fixed.items() if value is not None]
        if given:
            raise UserError(f"--resume continues an experiment as it was configured; {given[0]} "
                            "cannot change it (only --max-steps can): drop it, or start a new "
                            "run with --id")
    else:
        flags: dict = {}
        for section, key, value in (
            ("data", "direction", direction), ("model", "depth", depth),
            ("train", "max_steps", max_steps), ("train", "device", device),
            ("train", "seed", seed), ("log", "wandb", wandb),
            ("fivecat", "stop_on_inversion", stop_on_inversion),
        ):
            if value is not None:
                flags.setdefault(section, {})[key] = value
        for key, value in (("id", exp_id), ("description", description)):
            if value is not None:
                flags[key] = value
        cfg = load_config(RunConfig, preset=config, overrides=overrides, flags=flags)
        explicit = explicit_keys(overrides, flags)
    if estimate_only:
        from backlm.train.launch import estimate_only as run_estimate

        if cfg is None:
            raise UserError("--estimate-only plans a new run; it cannot be combined with --resume")
        _render_estimate(run_estimate(cfg), cfg)
        return
    import torch

    plan = plan_launch(nproc_per_node, nnodes, cfg.train.device if cfg else "auto",
                       torch.cuda.device_count(), "LOCAL_RANK" in os.environ, node_rank,
                       master_addr, master_port)
    say = lambda text: console.print(text, highlight=False)  # noqa: E731
    chain = parse_chain(phase) if phase else ["base"]
    if len(chain) > 1:
        from backlm.train.chain import run_chain

        for summary in run_chain(cfg, root, chain, plan, observers=[TrainDisplay()], say=say,
                                 explicit=explicit, overrides=overrides or []):
            render_summary(summary)
            if summary.status not in FINISHED:
                finish(summary)
        return
    summary = run_training(cfg, root, resume=resume, plan=plan, observers=[TrainDisplay()],
                           say=say, explicit=explicit, max_steps=max_steps if resume else None)
    if summary.nothing_to_do:
        console.print(f"experiment {summary.exp_id} is already over ({summary.status} at step "
                      f"{summary.steps}): nothing to do. Extend it with `backlm train --resume "
                      f"{summary.exp_id} --max-steps N` (N > {summary.steps}).", highlight=False)
        return
    render_summary(summary)
    finish(summary)


def finish(summary) -> None:
    """Exit 130 for an interrupted run, 1 for a failed one (the summary is shown already)."""
    from backlm.train.plan import FINISHED

    if summary.status == "interrupted":
        raise typer.Exit(130)
    if summary.status not in FINISHED:
        raise typer.Exit(1)


def _money(usd) -> str:
    return f"${usd:,.2f}" if usd is not None else "- (set cost.usd_per_gpu_hour)"


def render_summary(s) -> None:
    from rich.panel import Panel
    from rich.table import Table

    from backlm.experiment.folder import Experiment
    from backlm.train.summary import lineage_costs

    info = Experiment(Path(s.path)).training_summary() or {}
    best = info.get("best") or {}
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    bpb = f"{s.val_bpb:.4f}" if s.val_bpb is not None else "-"
    if s.first_val_bpb is not None and s.val_bpb is not None:
        bpb = f"{s.first_val_bpb:.4f} → {s.val_bpb:.4f}"
    best_line = "-"
    if best.get("step") is not None:
        best_line = f"step {best['step']} · {best['monitor']} {best['value']:.4f}"
    plateau = (info.get("signals") or {}).get("plateau_at")
    for k, v in (
        ("stop reason", info.get("stop_reason", s.status)), ("best", best_line),
        ("final model", f"step {info.get('final_model_step', s.steps)}"),
        ("steps", f"{s.steps:,} / {info.get('max_steps', s.steps):,}"),
        ("tokens", f"{s.tokens:,}"), ("val bpb", bpb),
        ("plateau", f"from step {plateau}" if plateau else "no"),
        ("wall time", f"{info.get('wall_seconds', s.wall_seconds):,.1f} s"),
        ("tokens/s", f"{s.tokens_per_sec:,.0f}"), ("MFU", f"{s.mfu:.1%}"),
        ("GPU-hours", f"{info.get('gpu_hours', 0.0):.3f}"), ("cost", _money(info.get("usd"))),
        ("device", s.device), ("folder", s.path),
    ):
        table.add_row(k, v)
    console.print(Panel(table, title=f"run {s.exp_id}", expand=False))
    rows = lineage_costs(Experiment(Path(s.path)))
    if len(rows) > 1:
        lt = Table(title="cost across the lineage")
        for col in ("experiment", "phase", "steps", "tokens", "wall", "GPU-hours", "USD"):
            lt.add_column(col)
        for r in rows:
            lt.add_row(r["experiment"], r["phase"], f"{r['steps']:,}", f"{r['tokens']:,}",
                       f"{r['wall_seconds']:.0f} s", f"{r['gpu_hours']:.3f}", _money(r["usd"]))
        console.print(lt)


def _render_estimate(e, cfg) -> None:
    from rich.table import Table

    table = Table(title=f"estimate · {cfg.data.direction} · depth {cfg.model.depth}",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for k, v in (
        ("parameters", f"{e.params:,}"), ("FLOPs per token", f"{e.flops_per_token:,}"),
        ("planned tokens", f"{e.planned_tokens:,} ({cfg.train.max_steps:,} steps)"),
        ("validation tokens", f"{e.eval_tokens:,}"), ("device", e.device),
        ("throughput", f"{_rate(e.tokens_per_sec)} tok/s ({e.tokens_per_sec_source})"),
        ("wall time", f"{e.wall_seconds:,.0f} s ({e.wall_seconds / 3600:.2f} h)"),
        ("GPU-hours", f"{e.gpu_hours:,.2f} on {e.gpus} GPU(s)"),
        ("cost", _money(e.usd)),
        ("memory per device", _memory(e.memory)),
        ("available", _available(e)),
    ):
        table.add_row(k, v)
    console.print(table)


def _rate(tokens_per_sec: float) -> str:
    # a huge model's rate is a small fraction, not 0
    return f"{tokens_per_sec:,.0f}" if tokens_per_sec >= 10 else f"{tokens_per_sec:.2g}"


def _bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:,.1f} {units[i]}"


def _memory(m) -> str:
    if m is None:
        return "-"
    state = m.weights + m.grads + m.optimizer
    return (f"{_bytes(m.total)} (weights+grads+optimizer {_bytes(state)}, activations "
            f"{_bytes(m.activations)}, scratch {_bytes(m.scratch)}, runtime+margin "
            f"{_bytes(m.runtime + m.margin)})")


def _available(e) -> str:
    if e.available_memory is None:
        return "- (the device is not on this machine)"
    short = e.memory is not None and e.memory.total > e.available_memory
    return _bytes(e.available_memory) + (" - not enough for this run" if short else "")
