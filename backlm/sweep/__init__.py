"""A grid of training runs as one resumable unit; knows no torch, model, data loader or
training loop (members train through ``backlm.train``'s one entry, and are compared through
``backlm.compare``).

- ``grid``: the axes parsed and checked, member ids and run order, ``sweep.json`` and its
  identity check;
- ``run``: the plan (everything validated before anything is written) and the run: members
  trained, continued or skipped, 5CAT on each;
- ``compare``: the comparison of the members (gap per size, the bidirectional model's cost per
  order, 5CAT); ``figure``: the scaling figure; ``summary``: ``SWEEP.md``.
"""

from __future__ import annotations

from backlm.sweep.compare import SweepComparison, compare_sweep
from backlm.sweep.grid import Grid, Member, parse_grid
from backlm.sweep.run import SweepPlan, SweepResult, open_sweep, plan_sweep, run_sweep

__all__ = ["Grid", "Member", "SweepComparison", "SweepPlan", "SweepResult", "compare_sweep",
           "open_sweep", "parse_grid", "plan_sweep", "run_sweep"]
