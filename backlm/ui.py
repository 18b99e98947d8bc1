"""Console output shared by the commands: rich consoles, the user-error boundary, progress bars
(one helper makes them all) and the training display."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console

from backlm.callbacks import Callback, LoopState
from backlm.errors import UserError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` as one line on stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


def user_errors(fn: F) -> F:
    """Turn :class:`UserError` raised by a command into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise fail(_escape(str(exc)), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except OSError as exc:  # the backstop for a location or disk the checks did not foresee
            raise fail(_escape(os_error_line(exc))) from None

    return wrapper  # type: ignore[return-value]


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to check."""
    what = exc.strerror or str(exc) or type(exc).__name__
    path = f": {exc.filename}" if exc.filename else ""
    return (f"{what}{path} (check that the location exists, is a writable folder and that "
            "the disk has space)")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text.replace("\n", " "))


# --- progress bars ----------------------------------------------------------------------------


def make_progress(kind: str = "count", transient: bool = True) -> Any:
    """A rich Progress with the columns of ``kind``: ``count`` (n of m), ``bytes`` (downloads:
    size, speed, ETA) or ``train`` (steps, a stats field and ETA)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns: dict[str, tuple[Any, ...]] = {
        "count": (MofNCompleteColumn(), TimeElapsedColumn()),
        "bytes": (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()),
        "train": (MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                  TimeRemainingColumn()),
    }
    return Progress(TextColumn("{task.description}"), BarColumn(), *columns[kind],
                    console=console, transient=transient)


class Bars:
    """A progress reporter: one bar per label, created on first use (thread-safe). The live
    display starts with the first bar, so an error before any progress prints nothing else."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.started = False

    def __call__(self, label: str, done: float, total: float | None, *,
                 description: str | None = None, stats: str = "") -> None:
        """Show ``done`` of ``total`` on the bar named ``label`` (``total`` None: unknown)."""
        with self.lock:
            if not self.started:
                self.progress.start()
                self.started = True
            if label not in self.tasks:
                self.tasks[label] = self.progress.add_task(label, total=total, stats=stats)
        self.progress.update(self.tasks[label], completed=done, total=total, stats=stats,
                             description=description or label)

    def print(self, text: str) -> None:
        """A line above the bars."""
        self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def stop(self) -> None:
        """End the live display (if it started)."""
        if self.started:
            self.progress.stop()
            self.started = False


@contextlib.contextmanager
def progress_bars(kind: str = "count", transient: bool = True) -> Iterator[Bars]:
    """A live display for the duration of the block, yielding its :class:`Bars` reporter."""
    bars = Bars(make_progress(kind, transient))
    try:
        yield bars
    finally:
        bars.stop()


class TrainDisplay(Callback):
    """The training display: a progress bar (loss, lr, tokens/s, MFU, ETA), each validation
    and every message of the run printed above it. Rank 0 only."""

    def __init__(self) -> None:
        self.bars: Bars | None = None
        self.waiting: list[str] = []  # messages from before the display started

    def on_train_start(self, state: LoopState) -> None:
        self.bars = Bars(make_progress("train", transient=False))
        self.bars("train", state.step, state.run.cfg.train.max_steps)
        for text in self.waiting:
            self.bars.print(text)
        self.waiting = []  # one display serves a chain's or quickstart's runs in turn

    def on_eval(self, state: LoopState, step: int, evals: dict[str, float]) -> None:
        if self.bars and step > 0:
            self.bars.print(f"step {step:>6} · " + " · ".join(
                f"{k} {v:.4f}" for k, v in evals.items()))

    def on_step_end(self, state: LoopState, step: int, record: dict[str, Any]) -> None:
        if self.bars and step > 0:
            self.bars("train", step, state.run.cfg.train.max_steps, stats=(
                f"loss {record['loss']:.3f} · lr×{record['lr_mult']:.2f} · "
                f"{record['tokens_per_sec']:,.0f} tok/s · MFU {record['mfu']:.1%}"))

    def on_message(self, state: LoopState, text: str) -> None:
        if self.bars:
            self.bars.print(text)
        else:
            self.waiting.append(text)

    def on_train_end(self, state: LoopState, status: str) -> None:
        if self.bars:
            self.bars.stop()
        self.bars = None  # the next run's early messages wait for its own bar
