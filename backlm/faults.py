"""Fault injection for crash tests, driven by environment variables (rank-local).

- ``BACKLM_KILL_AT_STEP=N``: SIGKILL this process after step N (a real SIGKILL: nothing is
  flushed or cleaned up), to test exact resume;
- ``BACKLM_INTERRUPT_AT_STEP=N``: raise Ctrl-C's KeyboardInterrupt after step N;
- ``BACKLM_NAN_AT_STEP=N``: poison the weights after step N, so the next loss is NaN.

Each fault fires as step N+1 begins, so step N is complete first: logged, and checkpointed
if one was due, exactly as an outside kill or Ctrl-C between two steps would find it.
"""

from __future__ import annotations

import os
import signal

from backlm.callbacks import Callback, LoopState

VARIABLES = ("BACKLM_KILL_AT_STEP", "BACKLM_INTERRUPT_AT_STEP", "BACKLM_NAN_AT_STEP")


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
    """The fault injector when one of :data:`VARIABLES` is set, else nothing."""
    steps = [os.environ.get(name) for name in VARIABLES]
    if not any(steps):
        return []
    return [FaultInjection(*(int(s) if s and s.strip().isdigit() else None for s in steps))]
