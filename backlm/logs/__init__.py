"""Metric loggers: one interface, several back ends (JSONL always; HDF5, wandb by config).

Training code talks to :class:`LoggingCallback` only; it never branches on which loggers are
on. Only rank 0 logs.
"""

from __future__ import annotations

from typing import Any

from backlm.callbacks import Callback


class MetricLogger:
    """Interface: receives one record (a flat dict of numbers) per logged step."""

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Record the metrics of ``step``."""

    def flush(self) -> None:
        """Make everything logged so far durable."""

    def close(self) -> None:
        """Flush and release resources."""


class NullLogger(MetricLogger):
    """Logs nothing."""


class LoggingCallback(Callback):
    """Feeds every step's record to the configured loggers (rank 0 only)."""

    def __init__(self, loggers: list[MetricLogger]) -> None:
        self.loggers = loggers

    def on_step_end(self, run: Any, step: int, record: dict[str, Any]) -> None:
        log_every = run.cfg.train.log_every
        if step % log_every == 0 or any(k.startswith("val_") for k in record):
            for logger in self.loggers:
                logger.log(step, record)

    def on_checkpoint(self, run: Any, step: int, folder: Any) -> None:
        for logger in self.loggers:
            logger.flush()

    def on_train_end(self, run: Any, status: str) -> None:
        for logger in self.loggers:
            logger.close()


def build_loggers(run: Any, resume_step: int) -> list[MetricLogger]:
    """The loggers the run's config asks for (metrics.jsonl is always written)."""
    from backlm.logs.jsonl import JsonlLogger

    return [JsonlLogger(run.exp.path / "metrics.jsonl", resume_step)]


def callbacks(run: Any) -> list[Callback]:
    """Training-loop factory (see backlm.callbacks.FACTORIES)."""
    if not run.dist.main:
        return []
    return [LoggingCallback(build_loggers(run, run.step))]
