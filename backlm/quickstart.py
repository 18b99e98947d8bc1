"""``backlm quickstart``: the whole tool in one command, resumable — a preset sweep.

cpu-tiny forward, backward and bidirectional models at the preset's depth with one seed (so all
three read the same reading-order tokens), 5CAT on each, and their comparison: a sweep
(:mod:`backlm.sweep`) whose grid and settings are fixed here. The sweep engine keeps what the
experiments folder holds, so rerunning the command after Ctrl-C continues where it stopped (the
embedded corpus is prepared on first use by the first member's run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backlm.callbacks import Progress
from backlm.direction import Direction

PRESET = "cpu-tiny"
DIRECTIONS = tuple(Direction)
# 40% of the cpu-tiny preset's steps: three models, their checks and the comparison fit in
# ~13 minutes on 2 cores (BENCHMARKS.md "Quickstart"); evaluation and checkpoints every 40.
STEPS = 80
SETTINGS = ("train.eval_every=40", "train.save_every=40", "log.wandb=off")
# The quickstart's options, named in a refusal of a --set its members would replace.
NAMES = {"id": "--prefix", "directions": "quickstart's per-member direction",
         "depths": "the preset's depth", "seeds": "--seed", "max_steps": "--steps"}


def grid(prefix: str = "quickstart", seed: int = 0, steps: int = STEPS,
         overrides: Sequence[str] = ()) -> Any:
    """The quickstart's sweep: id ``prefix``, the three directions at the preset's depth (or
    the one a ``--set model.depth`` gives), one seed, ``steps`` steps, the quickstart's
    settings then ``overrides``."""
    from backlm.config import RunConfig, load_config
    from backlm.sweep import parse_grid

    sets = [*SETTINGS, *overrides]
    depth = load_config(RunConfig, PRESET, sets).model.depth
    sets = [s for s in sets if s.split("=", 1)[0].strip() != "model.depth"]  # the grid's axis
    return parse_grid(prefix, DIRECTIONS, str(depth), str(seed), preset=PRESET, overrides=sets,
                      max_steps=steps)


def run_quickstart(root: Path, *, prefix: str = "quickstart", seed: int = 0,
                   steps: int = STEPS, overrides: Sequence[str] = (),
                   observers: Sequence[Any] = (),
                   say: Callable[[str], None] = lambda _: None,
                   progress: Progress | None = None, command: str = "") -> Any:
    """Run (or continue) the quickstart's sweep in ``root``: a
    :class:`backlm.sweep.SweepResult` (``stopped`` set when a member did not finish)."""
    from backlm.sweep import plan_sweep, run_sweep

    plan = plan_sweep(grid(prefix, seed, steps, overrides), root, names=NAMES)
    return run_sweep(plan, command=command, observers=observers, say=say, progress=progress)
