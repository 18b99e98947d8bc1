"""What several commands show the same way: a training run's summary and its exit code
(train, branch, quickstart), a cost estimate, and a comparison's gaps (compare, quickstart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from backlm.ui import console


def finish(summary: Any) -> None:
    """Exit 130 for an interrupted run, 1 for a failed one (the summary is shown already)."""
    from backlm.train.plan import FINISHED

    if summary.status == "interrupted":
        raise typer.Exit(130)
    if summary.status not in FINISHED:
        raise typer.Exit(1)


def render_summary(s: Any) -> None:
    """A run's summary panel (stop reason, best step, speed, cost), and the lineage's costs
    when it has a parent."""
    from rich.panel import Panel
    from rich.table import Table

    from backlm.experiment import Experiment
    from backlm.train import lineage_costs

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


def render_estimate(e: Any, cfg: Any) -> None:
    """``--estimate-only``: size, throughput, time, cost and memory of the planned run."""
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


def render_comparison(result: Any) -> None:
    """A comparison's gaps with their intervals, its notes, and where it was written."""
    from rich.table import Table

    table = Table(title="forward − backward gap in bits per byte (95% CI over documents)")
    for col in ("pair", "split", "docs", "gap", "95% CI"):
        table.add_column(col, justify="left" if col in ("pair", "split") else "right")
    for unit in result.units:
        for split, g in unit.gaps.items():
            iv = g.interval
            table.add_row(unit.label, split, str(iv.n), f"{iv.value:+.4f}",
                          f"[{iv.lo:+.4f}, {iv.hi:+.4f}]")
    for grp in result.groups:
        iv = grp.seeds
        table.add_row(f"{grp.label} ({iv.n} seeds)", grp.split, "", f"{iv.value:+.4f}",
                      f"[{iv.lo:+.4f}, {iv.hi:+.4f}] seeds")
    if table.rows:
        console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"wrote {result.output}", highlight=False, soft_wrap=True)


def _money(usd: float | None) -> str:
    return f"${usd:,.2f}" if usd is not None else "- (set cost.usd_per_gpu_hour)"


def _rate(tokens_per_sec: float) -> str:
    # a huge model's rate is a small fraction, not 0
    return f"{tokens_per_sec:,.0f}" if tokens_per_sec >= 10 else f"{tokens_per_sec:.2g}"


def _bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:,.1f} {units[i]}"


def _memory(m: Any) -> str:
    if m is None:
        return "-"
    state = m.weights + m.grads + m.optimizer
    return (f"{_bytes(m.total)} (weights+grads+optimizer {_bytes(state)}, activations "
            f"{_bytes(m.activations)}, scratch {_bytes(m.scratch)}, runtime+margin "
            f"{_bytes(m.runtime + m.margin)})")


def _available(e: Any) -> str:
    if e.available_memory is None:
        return "- (the device is not on this machine)"
    short = e.memory is not None and e.memory.total > e.available_memory
    return _bytes(e.available_memory) + (" - not enough for this run" if short else "")
