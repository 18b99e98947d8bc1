"""What a training phase gives the loop's one step: the :class:`Phase` interface.

The loop (:mod:`backlm.train.loop`) owns the optimizer update: loader snapshot, learning-rate
schedule, gradient accumulation under DDP's ``no_sync``, clipping, the optimizer step, the
all-reduce and the step's record. A phase supplies only what differs: its loaders, the loss of
one micro-batch (RL samples its group there), the sums it reports per step, and its own
validation. base is :class:`backlm.train.phases.TextPhase`, mid and sft
:class:`~backlm.train.phases.ChatPhase`, rl :class:`backlm.train.rl.RLPhase`;
:func:`backlm.train.phases.phase_for` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from backlm.callbacks import RunInfo
    from backlm.config import RunConfig
    from backlm.direction import Direction
    from backlm.distributed import DistInfo

Orders = Sequence[tuple[str, "Direction"]]


class StepRun(Protocol):
    """What a phase reads of the run (:class:`backlm.train.loop.TrainingRun` is one)."""

    cfg: RunConfig
    dist: DistInfo
    device: torch.device
    info: RunInfo  # the bare model, tokenizer and experiment
    forward: Callable[..., Any]  # the model as trained: DDP-wrapped and compiled if asked
    token_bytes: torch.Tensor  # bytes per token id, for bits per byte

    def autocast(self) -> AbstractContextManager[Any]:
        """The run's precision context."""
        ...


@dataclass
class MicroBatch:
    """One micro-batch's share of a step, as a phase's :meth:`Phase.loss` returns it."""

    loss: Any  # scalar tensor; the step backpropagates loss / micro-batches per rank
    inputs: Any  # (rows, seq_len) tensors the research log slices (LoopState.last_batch)
    targets: Any
    stats: dict[str, float] = field(default_factory=dict)  # summed over the step, all ranks


class Phase:
    """A training phase as the loop's one step sees it (base class: plain text needs nothing
    beyond the defaults except loaders and loss).

    ``stats`` names the sums :meth:`loss` reports per micro-batch; the step adds them up over
    micro-batches and ranks and hands them to :meth:`step_tokens` and :meth:`record`.
    ``record_fields`` names what :meth:`record` adds to the step's record.
    """

    stats: tuple[str, ...] = ()
    record_fields: tuple[str, ...] = ()
    from_parent = False  # True: the first step starts from the parent's weights (a branch)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def streams(self) -> tuple[int, str]:
        """Data streams per step over all ranks, and the key that sets their number: by
        default rows of ``device_batch_size × seq_len`` making up ``total_batch_tokens``."""
        from backlm.errors import UserError

        train = self.cfg.train
        rows = train.device_batch_size * self.cfg.model.seq_len
        if train.total_batch_tokens % rows:
            raise UserError(f"train.total_batch_tokens ({train.total_batch_tokens}) must be a "
                            f"multiple of device_batch_size × seq_len ({rows})")
        return train.total_batch_tokens // rows, "train.total_batch_tokens"

    def loaders(self, tokenizer: Any, data_dir: Path, first: int, count: int,
                streams: int) -> list[Any]:
        """This rank's data streams ``first .. first+count-1`` (of ``streams``); each has
        ``state_dict``/``load_state_dict`` so a checkpoint or a Ctrl-C can rewind it."""
        raise NotImplementedError

    def loss(self, run: StepRun, loader: Any) -> MicroBatch:
        """Read one micro-batch from ``loader`` and compute its loss (under the run's
        autocast, through ``run.forward``); the step runs the backward pass."""
        raise NotImplementedError

    def step_tokens(self, sums: dict[str, float]) -> float:
        """Training tokens of one step over all ranks: the configured global batch."""
        return self.cfg.train.total_batch_tokens

    def record(self, sums: dict[str, float]) -> dict[str, float]:
        """Fields the phase adds to the step's record, from the step's summed ``stats``."""
        return {}

    def evaluate(self, run: StepRun, orders: Orders) -> dict[str, float]:
        """The phase's own validation metrics, beyond the text loss every phase reports."""
        return {}

    @classmethod
    def monitors(cls, direction: Direction) -> list[str]:
        """Validation metrics :meth:`evaluate` adds (what early stopping may watch)."""
        return []

    def scalars(self) -> tuple[str, ...]:
        """Research-log scalars the phase adds to the base ones (known before the first
        step)."""
        return (*self.record_fields, *self.monitors(self.cfg.data.direction))


def per_order(name: str, orders: Orders) -> list[str]:
    """``name`` for each labelled order: ``val_reward_forward``, ``val_reward_backward`` …"""
    return [f"{name}_{label}" for label, _ in orders if label]


def mean_over_orders(out: dict[str, float], name: str, orders: Orders) -> None:
    """Set ``out[name]`` to the mean of its per-order values when there are several orders
    (a single-order run wrote ``out[name]`` itself)."""
    if len(orders) > 1:
        out[name] = sum(out[f"{name}_{label}"] for label, _ in orders) / len(orders)
