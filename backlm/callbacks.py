"""Training-loop callbacks: research logging, in-training 5CAT and early stopping plug in here.

The loop in :mod:`backlm.trainer` calls every hook on every rank, in the order the callbacks
were built; a callback that writes files checks ``run.dist.main`` itself. A callback stops the
run by setting ``run.stop_reason`` and asks for a checkpoint at the current step by setting
``run.save_requested``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# "module:function" factories; each takes the run and returns a list of callbacks (possibly
# empty, depending on the run's config). Missing modules are skipped. Loggers come last so
# they see what the others add to a step's record.
FACTORIES = [
    "backlm.early_stop:callbacks",
    "backlm.fivecat:training_callbacks",
    "backlm.logs:callbacks",
]


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, run: Any) -> None:
        """After model, optimizer and data are ready (and a resume restored)."""

    def on_step_start(self, run: Any, step: int) -> None:
        """Before the forward passes of step ``step`` (1-based number of the coming update)."""

    def on_after_backward(self, run: Any, step: int) -> None:
        """After all micro-steps' backward passes, before clipping and the optimizer step."""

    def on_eval(self, run: Any, step: int, evals: dict[str, float]) -> None:
        """After a validation evaluation at ``step`` (step 0: before training)."""

    def on_step_end(self, run: Any, step: int, record: dict[str, Any]) -> None:
        """After the update; ``record`` holds the step's metrics and may be extended."""

    def on_checkpoint(self, run: Any, step: int, folder: Path | None) -> None:
        """After a checkpoint was written (``folder`` is None on ranks other than 0)."""

    def on_train_end(self, run: Any, status: str) -> None:
        """Once, when the loop ends for any reason (also on errors)."""


def build(run: Any, factories: list[str] | None = None) -> list[Callback]:
    """Instantiate the callbacks every factory returns for ``run``."""
    out: list[Callback] = []
    for spec in FACTORIES if factories is None else factories:
        module_name, _, func = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        out.extend(getattr(module, func)(run))
    return out


class CallbackList:
    """Calls one hook on every callback."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks

    def __getattr__(self, hook: str):
        def call(*args: Any, **kwargs: Any) -> None:
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)

        return call
