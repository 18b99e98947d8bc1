"""Metric loggers behind one interface; know no training loop (only the callbacks seam).

JSONL always; HDF5 and wandb by config.

Training code talks to the callbacks :func:`callbacks` builds only; it never branches on
which loggers are on. Only rank 0 logs. Modules: ``jsonl`` (metrics.jsonl), ``hdf5`` (the
``{phase}.h5`` research log and its schema), ``research`` (per-token slices, gradient and
activation statistics), ``wandb_log`` (live view), ``samples`` (generation samples),
``reader`` (what ``backlm log`` shows).
"""

from __future__ import annotations

from typing import Any

from backlm.callbacks import Callback, LoopState, RunInfo
from backlm.logs.base import MetricLogger

__all__ = ["LoggingCallback", "MetricLogger", "build_loggers", "callbacks", "file_attrs",
           "group_attrs", "schema_for"]


class LoggingCallback(Callback):
    """Feeds every step's record to the configured loggers (rank 0 only)."""

    def __init__(self, loggers: list[MetricLogger]) -> None:
        self.loggers = loggers

    def on_step_end(self, state: LoopState, step: int, record: dict[str, Any]) -> None:
        log_every = state.run.cfg.train.log_every
        if step % log_every == 0 or any(k.startswith("val_") for k in record):
            for logger in self.loggers:
                logger.log(step, record)

    def on_before_checkpoint(self, state: LoopState, step: int) -> None:
        # A kill between the checkpoint and a later flush would lose these rows for good: the
        # resumed run starts after them.
        for logger in self.loggers:
            logger.flush()

    def on_train_end(self, state: LoopState, status: str) -> None:
        for logger in self.loggers:
            logger.close()


def build_loggers(state: LoopState) -> list[MetricLogger]:
    """The loggers the run's ``log`` config asks for: metrics.jsonl always, then HDF5 and
    wandb. A resumed run's loggers drop what was logged after its checkpoint."""
    from backlm.logs.jsonl import JsonlLogger
    from backlm.logs.wandb_log import open_wandb

    run = state.run
    loggers: list[MetricLogger] = [JsonlLogger(run.exp.metrics_path, state.step)]
    if run.cfg.log.hdf5:
        from backlm.logs.hdf5 import Hdf5Logger

        loggers.append(Hdf5Logger(run.exp.research_log(run.cfg.phase), schema_for(run),
                                  file_attrs(run), group_attrs(run), state.step,
                                  run.cfg.log.flush_every, warn=state.say))
    loggers.append(open_wandb(run, warn=state.say))
    return loggers


def schema_for(run: RunInfo) -> Any:
    """The research-log layout of ``run``: names known before the first step."""
    from backlm.direction import eval_orders
    from backlm.logs.hdf5 import BASE_SCALARS, Schema

    per_direction = [f"val_{m}_{name}" for name, _ in eval_orders(run.cfg.data.direction)
                     if name for m in ("loss", "bpb")]
    params = tuple(n for n, p in run.model.named_parameters() if p.requires_grad)
    return Schema(scalars=(*BASE_SCALARS, *per_direction, *run.phase_scalars), params=params,
                  layers=tuple(f"blocks.{i}" for i in range(len(run.model.blocks))),
                  rows=min(run.cfg.log.per_token_rows, run.cfg.train.device_batch_size),
                  seq_len=run.cfg.model.seq_len, heads=run.cfg.model.n_heads)


def file_attrs(run: RunInfo) -> dict[str, Any]:
    """File attributes of ``{phase}.h5`` (see backlm.logs.hdf5)."""
    from backlm import __version__
    from backlm.config import to_yaml
    from backlm.experiment.folder import utcnow
    from backlm.logs.hdf5 import SCHEMA_VERSION

    cfg = run.cfg
    return {"schema_version": SCHEMA_VERSION, "experiment_id": run.exp.id, "phase": cfg.phase,
            "direction": str(cfg.data.direction), "config": to_yaml(cfg), "created": utcnow(),
            "backlm_version": __version__, "resumed_at": ""}


def group_attrs(run: RunInfo) -> dict[str, dict[str, Any]]:
    """Cadences stored beside the data they describe."""
    log = run.cfg.log
    return {"scalars": {"every": run.cfg.train.log_every},
            "per_token": {"every": log.per_token_every, "rows": log.per_token_rows,
                          "seq_len": run.cfg.model.seq_len},
            "gradients": {"every": log.stats_every}, "activations": {"every": log.stats_every},
            "attention": {"every": log.attention_every, "rows": log.per_token_rows,
                          "layers": run.cfg.model.depth, "heads": run.cfg.model.n_heads}}


def callbacks(state: LoopState) -> list[Callback]:
    """The run's loggers, research records and generation samples; nothing on ranks other
    than 0."""
    run = state.run
    if not run.dist.main:
        return []
    loggers = build_loggers(state)
    out: list[Callback] = [LoggingCallback(loggers)]
    if run.cfg.log.hdf5:
        from backlm.logs.hdf5 import Hdf5Logger
        from backlm.logs.research import ResearchCallback

        h5 = next(lg for lg in loggers if isinstance(lg, Hdf5Logger))
        out.append(ResearchCallback(state, h5))
    if run.cfg.log.sample_every > 0:
        from backlm.logs.samples import SampleCallback

        out.append(SampleCallback(state))
    return out
