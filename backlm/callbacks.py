"""The training loop's seam: what callbacks are told, what they may read and what they may set.

The loop in :mod:`backlm.train.loop` calls every hook on every rank, in list order, with a
:class:`LoopState`. A callback reads the run (``state.run``: experiment, config, model, …)
and the loop's position (``state.step``, ``state.tokens``, ``state.last_batch``, read-only),
and may set only:

- ``state.stop_reason``: end the run after this step (``"early stop"``, ``"diverged"`` …);
- ``state.save_requested``: checkpoint this step (e.g. the best step must be restorable);
- ``state.best``, ``state.signals``, ``state.restored_step``: the best evaluation, convergence
  signals and the step whose weights became the final model, for the run's summary.

A callback that writes files checks ``state.run.dist.main`` itself. Messages for the user go
through ``state.say(text)``, which reaches every callback's :meth:`Callback.on_message`: the
command's progress display prints them; nothing in the engine prints.

Callbacks are plain objects handed to the loop; :func:`backlm.train.loop.default_callbacks`
imports the built-in ones (early stopping, 5CAT, loggers).

Outside the loop, every long engine task (data preparation, evaluation, 5CAT, a comparison)
reports how far it has got through one callback type, :class:`Progress`, which the commands
fill with rich progress bars (:class:`backlm.ui.Bars`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from backlm.config import RunConfig
    from backlm.distributed import DistInfo
    from backlm.experiment import Experiment
    from backlm.model.gpt import GPT
    from backlm.tokenizer import Tokenizer


class Progress(Protocol):
    """How far a long task has got: ``done`` of ``total`` units of its part named ``label``
    (one bar per label; ``total`` None while unknown, as for a download without a length)."""

    def __call__(self, label: str, done: int, total: int | None, /) -> None: ...


@dataclass(frozen=True)
class RunInfo:
    """What stays fixed for a whole run."""

    exp: Experiment
    cfg: RunConfig
    dist: DistInfo
    model: GPT  # the bare model: not wrapped in DDP, not compiled
    tokenizer: Tokenizer
    device: torch.device
    device_name: str  # e.g. "cpu" or "NVIDIA H200"
    is_cuda: bool
    data_dir: Path
    autocast: Callable[[], AbstractContextManager[Any]]  # the run's precision context
    phase_scalars: tuple[str, ...] = ()  # what the phase logs beyond the base scalars


@dataclass
class LoopState:
    """The loop's state as callbacks see it (see the module docstring for the rules)."""

    run: RunInfo
    stop_reason: str | None = None
    save_requested: bool = False
    best: dict[str, Any] = field(default_factory=dict)
    signals: dict[str, Any] = field(default_factory=dict)
    restored_step: int | None = None
    _step: int = 0
    _tokens: int = 0
    _last_batch: tuple[Any, Any] | None = None
    _say: Callable[[str], None] = lambda text: None

    @property
    def step(self) -> int:
        """Optimizer steps done so far (0 before the first update)."""
        return self._step

    @property
    def tokens(self) -> int:
        """Training tokens consumed so far, over all ranks."""
        return self._tokens

    @property
    def last_batch(self) -> tuple[Any, Any] | None:
        """This rank's last micro-batch as ``(inputs, targets)`` tensors, model order."""
        return self._last_batch

    def say(self, text: str) -> None:
        """Tell the user something (shown by the command's display, if any)."""
        self._say(text)

    # --- the loop's own updates (callbacks never call these) ---------------------------------

    def advance(self, step: int, tokens: int) -> None:
        """After each optimizer step: the new position."""
        self._step, self._tokens = step, tokens

    def batch_seen(self, inputs: Any, targets: Any) -> None:
        """After each micro-batch's backward pass."""
        self._last_batch = (inputs, targets)

    def listen(self, listener: Callable[[str], None]) -> None:
        """Where :meth:`say` sends its text from now on."""
        self._say = listener


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, state: LoopState) -> None:
        """After model, optimizer and data are ready (and a resume restored)."""

    def on_step_start(self, state: LoopState, step: int) -> None:
        """Before the forward passes of step ``step`` (1-based number of the coming update)."""

    def on_after_backward(self, state: LoopState, step: int) -> None:
        """After all micro-steps' backward passes, before clipping and the optimizer step."""

    def on_eval(self, state: LoopState, step: int, evals: dict[str, float]) -> None:
        """After a validation evaluation at ``step`` (step 0: before training)."""

    def on_step_end(self, state: LoopState, step: int, record: dict[str, Any]) -> None:
        """After the update; ``record`` holds the step's metrics and may be extended."""

    def on_before_checkpoint(self, state: LoopState, step: int) -> None:
        """Before the checkpoint of ``step`` is written: once it exists a resume starts after
        ``step``, so what a resume needs of steps up to it (logged rows) goes to disk now."""

    def on_checkpoint(self, state: LoopState, step: int, folder: Path | None) -> None:
        """After a checkpoint was written (``folder`` is None on ranks other than 0)."""

    def on_message(self, state: LoopState, text: str) -> None:
        """A line for the user, from the loop or another callback."""

    def on_train_end(self, state: LoopState, status: str) -> None:
        """Once, when the loop ends for any reason (also on errors)."""


class CallbackList(Callback):
    """Calls each hook on every callback, in list order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _each(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_train_start(self, state: LoopState) -> None:
        self._each("on_train_start", state)

    def on_step_start(self, state: LoopState, step: int) -> None:
        self._each("on_step_start", state, step)

    def on_after_backward(self, state: LoopState, step: int) -> None:
        self._each("on_after_backward", state, step)

    def on_eval(self, state: LoopState, step: int, evals: dict[str, float]) -> None:
        self._each("on_eval", state, step, evals)

    def on_step_end(self, state: LoopState, step: int, record: dict[str, Any]) -> None:
        self._each("on_step_end", state, step, record)

    def on_before_checkpoint(self, state: LoopState, step: int) -> None:
        self._each("on_before_checkpoint", state, step)

    def on_checkpoint(self, state: LoopState, step: int, folder: Path | None) -> None:
        self._each("on_checkpoint", state, step, folder)

    def on_message(self, state: LoopState, text: str) -> None:
        self._each("on_message", state, text)

    def on_train_end(self, state: LoopState, status: str) -> None:
        self._each("on_train_end", state, status)
