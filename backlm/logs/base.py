"""The logger interface every metric back end implements."""

from __future__ import annotations

from typing import Any


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
