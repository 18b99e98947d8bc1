"""``training_summary.json``: why a run stopped, its best step, what it did and what it cost,
plus the cost of its whole lineage (base → mid → sft …)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backlm import atomic
from backlm.experiment import Experiment, read_json

REASONS = {
    "finished": "max steps", "early stop": "early stop", "target reached": "target reached",
    "diverged": "diverged", "interrupted": "interrupted", "failed": "failed",
    "direction inverted": "direction inverted",
}


def write_training_summary(run: Any, summary: Any) -> dict[str, Any]:
    """Write the experiment's training_summary.json from a finished TrainingRun."""
    from backlm.cost import price

    gpus = run.dist.world if run.dev.is_cuda else 0
    gpu_hours = summary.wall_seconds * gpus / 3600
    usd_h = price(run.cfg, run.dev.name) if gpus else run.cfg.cost.usd_per_gpu_hour
    prior = _prior(run.exp)
    data = {
        "experiment": run.exp.id,
        "phase": run.cfg.phase,
        "direction": run.cfg.data.direction,
        "stop_reason": REASONS.get(summary.status, summary.status),
        "best": {"evals": None, **run.best},
        "final_model_step": run.restored_step if run.restored_step is not None else run.step,
        "steps": summary.steps,
        "max_steps": run.cfg.train.max_steps,
        "tokens": summary.tokens,
        "wall_seconds": summary.wall_seconds + prior.get("wall_seconds", 0.0),
        "tokens_per_sec": summary.tokens_per_sec,
        "mfu": summary.mfu,
        "device": run.dev.name,
        "gpus": gpus,
        "gpu_hours": gpu_hours + prior.get("gpu_hours", 0.0),
        "usd_per_gpu_hour": usd_h,
        "usd": None,
        "signals": run.signals,
        "val_loss": summary.val_loss,
        "val_bpb": summary.val_bpb,
        "first_val_bpb": summary.first_val_bpb,
        "sessions": prior.get("sessions", 0) + 1,
    }
    if usd_h is not None:
        data["usd"] = data["gpu_hours"] * usd_h
    atomic.write_json(run.exp.path / "training_summary.json", data)
    return data


def _prior(exp: Experiment) -> dict[str, Any]:
    """Totals of earlier sessions of a resumed run (wall time and GPU-hours add up)."""
    path = exp.path / "training_summary.json"
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except Exception:  # noqa: BLE001 - a torn summary only loses the earlier totals
        return {}


def lineage(exp: Experiment) -> list[Experiment]:
    """The experiment's ancestors, root first, then the experiment itself."""
    link = read_json(exp.path / "parent_link.json") if (exp.path / "parent_link.json").is_file() \
        else None
    chain = [Path(p) for p in (link or {}).get("chain", [])]
    return [Experiment(p) for p in chain if (p / "metadata.json").is_file()] + [exp]


def lineage_costs(exp: Experiment) -> list[dict[str, Any]]:
    """One row per experiment of the lineage: phase, steps, tokens, wall time, GPU-hours, USD."""
    rows = []
    for e in lineage(exp):
        s = _prior(e)
        rows.append({"experiment": e.id, "phase": s.get("phase", "?"),
                     "steps": s.get("steps", 0), "tokens": s.get("tokens", 0),
                     "wall_seconds": s.get("wall_seconds", 0.0),
                     "gpu_hours": s.get("gpu_hours", 0.0), "usd": s.get("usd")})
    return rows
