"""Missing measurements: a mean over nothing counted is MISSING (NaN in memory, null in JSON),
never 0 and never a best value.

Every mean a metric reports (over tokens, bytes, documents, examples, rewards, gate targets)
goes through :func:`mean_or_missing`; every reader asks :func:`is_missing` before it shows,
compares or picks a value. A zero would read as a perfect loss or a failed accuracy and win
(or lose) every comparison it enters.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = float("nan")


def mean_or_missing(total: Any, count: Any) -> float:
    """``total / count``, or :data:`MISSING` when nothing was counted (``count`` <= 0)."""
    count = float(count)
    return float(total) / count if count > 0 else MISSING


def is_missing(value: Any) -> bool:
    """Whether ``value`` holds no measurement: None, NaN, or not a number at all."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return math.isnan(value)


def json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float as None: JSON has no NaN or infinity (Python's
    ``NaN`` token is not JSON and other readers refuse it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def shown(value: Any, spec: str = ".4f", missing: str = "-") -> str:
    """``value`` formatted with ``spec`` for people, or ``missing`` when it is missing."""
    return missing if is_missing(value) else format(value, spec)
