"""Fault injection for crash tests, driven by environment variables (rank-local).

- ``BACKLM_KILL_AT_STEP=N``: SIGKILL this process after step N (a real SIGKILL: nothing is
  flushed or cleaned up), to test exact resume;
- ``BACKLM_INTERRUPT_AT_STEP=N``: raise Ctrl-C's KeyboardInterrupt after step N;
- ``BACKLM_NAN_AT_STEP=N``: poison the weights after step N, so the next loss is NaN.

Each fault fires as step N+1 begins, so step N is complete first: logged, and checkpointed
if one was due, exactly as an outside kill or Ctrl-C between two steps would find it.

- ``BACKLM_INTERRUPT_IN_SAVE=N``: raise KeyboardInterrupt inside the first save of step N's
  checkpoint, once its weights file is written: a Ctrl-C in mid-write. With
  ``BACKLM_INTERRUPT_AT_STEP=N`` too it is a second Ctrl-C, while the first one's checkpoint
  is being saved.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from backlm.callbacks import Callback, LoopState

VARIABLES = ("BACKLM_KILL_AT_STEP", "BACKLM_INTERRUPT_AT_STEP", "BACKLM_NAN_AT_STEP")
IN_SAVE = "BACKLM_INTERRUPT_IN_SAVE"
_fired: set[str] = set()  # the once-per-run faults that have fired in this run


class FaultInjection(Callback):
    """Acts on the step numbers read from the environment when the run started."""

    def __init__(self, kill: int | None, interrupt: int | None, nan: int | None) -> None:
        self.kill, self.interrupt, self.nan = kill, interrupt, nan

    def on_step_start(self, state: LoopState, step: int) -> None:
        step -= 1  # the step just completed
        if step == self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.interrupt:
            raise KeyboardInterrupt
        if step == self.nan:
            import torch

            with torch.no_grad():
                next(state.run.model.parameters()).fill_(float("nan"))


def callbacks() -> list[Callback]:
    """The fault injector when one of :data:`VARIABLES` is set, else nothing (called once
    as a run starts)."""
    _fired.clear()
    steps = [os.environ.get(name) for name in VARIABLES]
    if not any(steps):
        return []
    return [FaultInjection(*(int(s) if s and s.strip().isdigit() else None for s in steps))]


def save_hook(step: int) -> Callable[[], None] | None:
    """What :func:`backlm.experiment.checkpoint.save` runs once the weights of step ``step``'s checkpoint
    are written: a KeyboardInterrupt when :data:`IN_SAVE` names that step (the first time
    only, so the checkpoint Ctrl-C then saves gets written), else None."""
    if os.environ.get(IN_SAVE, "").strip() != str(step) or IN_SAVE in _fired:
        return None

    def interrupt() -> None:
        _fired.add(IN_SAVE)
        raise KeyboardInterrupt

    return interrupt
