"""The training summary: why a run stopped, its best step, what it did and what it cost, plus
the cost of its whole lineage (base → mid → sft …); and a run's summary rebuilt from its
files after a torchrun spawn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backlm.experiment import Experiment

if TYPE_CHECKING:
    from backlm.callbacks import LoopState


@dataclass
class RunSummary:
    """What a finished run reports."""

    exp_id: str
    path: str
    status: str
    steps: int
    tokens: int
    wall_seconds: float
    tokens_per_sec: float
    mfu: float
    val_loss: float | None
    val_bpb: float | None
    first_val_bpb: float | None
    device: str
    nothing_to_do: bool = False  # a --resume of a run that was already over


REASONS = {
    "finished": "max steps", "early stop": "early stop", "target reached": "target reached",
    "diverged": "diverged", "interrupted": "interrupted", "failed": "failed",
    "direction inverted": "direction inverted",
}


def write_training_summary(state: LoopState, summary: RunSummary, gpus: int) -> dict[str, Any]:
    """Write the experiment's training summary at the end of a run (``gpus`` 0 on CPU)."""
    from backlm.train.cost import price

    run = state.run
    cfg = run.cfg
    gpu_hours = summary.wall_seconds * gpus / 3600
    usd_h = price(cfg, run.device_name) if gpus else cfg.cost.usd_per_gpu_hour
    prior = run.exp.training_summary() or {}
    data = {
        "experiment": run.exp.id,
        "phase": cfg.phase,
        "direction": cfg.data.direction,
        "stop_reason": REASONS.get(summary.status, summary.status),
        "best": {"evals": None, **state.best},
        "final_model_step": state.restored_step if state.restored_step is not None
        else state.step,
        "steps": summary.steps,
        "max_steps": cfg.train.max_steps,
        "tokens": summary.tokens,
        "wall_seconds": summary.wall_seconds + prior.get("wall_seconds", 0.0),
        "tokens_per_sec": summary.tokens_per_sec,
        "mfu": summary.mfu,
        "device": run.device_name,
        "gpus": gpus,
        "gpu_hours": gpu_hours + prior.get("gpu_hours", 0.0),
        "usd_per_gpu_hour": usd_h,
        "usd": None,
        "signals": state.signals,
        "val_loss": summary.val_loss,
        "val_bpb": summary.val_bpb,
        "first_val_bpb": summary.first_val_bpb,
        "sessions": prior.get("sessions", 0) + 1,
    }
    if usd_h is not None:
        data["usd"] = data["gpu_hours"] * usd_h
    run.exp.write_training_summary(data)
    return data


def lineage_costs(exp: Experiment) -> list[dict[str, Any]]:
    """One row per experiment of the lineage: phase, steps, tokens, wall time, GPU-hours, USD."""
    rows = []
    for e in exp.lineage():
        s = e.training_summary() or {}
        rows.append({"experiment": e.id, "phase": s.get("phase", "?"),
                     "steps": s.get("steps", 0), "tokens": s.get("tokens", 0),
                     "wall_seconds": s.get("wall_seconds", 0.0),
                     "gpu_hours": s.get("gpu_hours", 0.0), "usd": s.get("usd")})
    return rows


def summary_from_files(exp: Experiment) -> RunSummary:
    """A RunSummary rebuilt from the metadata and metrics of a run torchrun workers did."""
    from backlm.logs.jsonl import read

    meta = exp.metadata()
    res = meta.get("results") or {}
    rows = read(exp.metrics_path)
    steps = [r for r in rows if "dt" in r]
    wall = sum(r["dt"] for r in steps)
    tokens = sum(r["tokens_per_sec"] * r["dt"] for r in steps)
    first = next((r["val_bpb"] for r in rows if r.get("step") == 0 and "val_bpb" in r), None)
    return RunSummary(
        exp_id=exp.id, path=str(exp.path), status=meta.get("status", "?"),
        steps=int(res.get("step", 0)), tokens=int(res.get("tokens", 0)), wall_seconds=wall,
        tokens_per_sec=tokens / wall if wall else 0.0,
        mfu=sum(r["mfu"] for r in steps) / len(steps) if steps else 0.0,
        val_loss=res.get("val_loss"), val_bpb=res.get("val_bpb"), first_val_bpb=first,
        device=str(meta.get("device", "?")),
    )
