"""Comparisons across experiments with intervals; knows no server, hub or report.

- ``run``: ``run_compare``, inputs checked before anything is written, pairs and seed groups;
- ``gather``: one experiment's numbers; ``stats``: bootstrap and t-intervals;
- ``output``: COMPARISON.md and the CSV; ``figures``: the comparison's figures.
"""

from __future__ import annotations

from backlm.compare.gather import CompareOptions
from backlm.compare.run import run_compare

__all__ = ["CompareOptions", "run_compare"]
