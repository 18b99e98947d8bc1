"""Console output shared by the commands: rich consoles, the user-error boundary, progress bars
(one helper makes them all) and the training display."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console

from backlm.callbacks import Callback, LoopState
from backlm.errors import UserError
from backlm.missing import shown

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


def duration(seconds: float) -> str:
    """``2m31s``, ``1h04m``, ``45s``: a short duration for an ETA."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def step_line(step: int, total: int, record: dict[str, Any], eta: float | None) -> str:
    """One plain progress line, after nanochat's step lines::

        step 00012/00200 (6.00%) | loss: 5.1234 | lrm: 0.85 | dt: 812ms | tok/sec: 10,050 |
        mfu: 12.3% | eta: 2m31s

    (one line; ``lrm`` is the schedule's multiplier of the base learning rates)."""
    width = max(5, len(str(total)))
    return (f"step {step:0{width}d}/{total:0{width}d} ({100 * step / max(total, 1):.2f}%) | "
            f"loss: {record['loss']:.4f} | lrm: {record['lr_mult']:.2f} | "
            f"dt: {record['dt'] * 1000:,.0f}ms | tok/sec: {record['tokens_per_sec']:,.0f} | "
            f"mfu: {100 * record['mfu']:.1f}% | eta: {'?' if eta is None else duration(eta)}")


class TrainDisplay(Callback):
    """The training display, rank 0 only. On a terminal: a progress bar (loss, lr, tokens/s,
    MFU, ETA), each validation and every message of the run printed above it. Without one
    (stdout to a file, nohup, SLURM, CI), where a bar shows nothing until it ends: a plain
    :func:`step_line` at the first step, then every ``log.print_every`` steps or
    ``log.print_seconds`` seconds, whichever comes first, and at the last step; validations
    and messages as plain lines. ``plain`` forces the mode (default: stdout not a terminal);
    ``clock`` is for tests."""

    def __init__(self, plain: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bars: Bars | None = None
        self.waiting: list[str] = []  # messages from before the display started
        self.force_plain, self.clock = plain, clock
        self.plain: _PlainLines | None = None

    def on_train_start(self, state: LoopState) -> None:
        plain = self.force_plain if self.force_plain is not None else not console.is_terminal
        if plain:
            self.plain = _PlainLines(state, self.clock)
        else:
            self.bars = Bars(make_progress("train", transient=False))
            self.bars("train", state.step, state.run.cfg.train.max_steps)
        for text in self.waiting:
            self._print(text)
        self.waiting = []  # one display serves a chain's or quickstart's runs in turn

    def on_eval(self, state: LoopState, step: int, evals: dict[str, float]) -> None:
        if step > 0:
            self._print(f"step {step:>6} · " + " · ".join(
                f"{k} {shown(v)}" for k, v in evals.items()))

    def on_step_end(self, state: LoopState, step: int, record: dict[str, Any]) -> None:
        if step <= 0 or "loss" not in record:
            return
        total = state.run.cfg.train.max_steps
        if self.plain is not None:
            line = self.plain.line(step, total, record)
            if line:
                self._print(line)
        elif self.bars:
            self.bars("train", step, total, stats=(
                f"loss {record['loss']:.3f} · lr×{record['lr_mult']:.2f} · "
                f"{record['tokens_per_sec']:,.0f} tok/s · MFU {record['mfu']:.1%}"))

    def on_message(self, state: LoopState, text: str) -> None:
        if self.bars or self.plain:
            self._print(text)
        else:
            self.waiting.append(text)

    def on_train_end(self, state: LoopState, status: str) -> None:
        if self.bars:
            self.bars.stop()
        self.bars = self.plain = None  # the next run's early messages wait for its own display

    def _print(self, text: str) -> None:
        if self.bars:
            self.bars.print(text)
        else:
            console.print(text, highlight=False, markup=False, soft_wrap=True)
            console.file.flush()  # a log file someone tails sees the line now


class _PlainLines:
    """When a plain progress line is due, and the ETA from the pace since the first step (whose
    time includes start-up costs; evaluations and checkpoints since count, as they will)."""

    def __init__(self, state: LoopState, clock: Callable[[], float]) -> None:
        log = state.run.cfg.log
        self.every, self.seconds, self.clock = log.print_every, log.print_seconds, clock
        self.first: tuple[int, float] | None = None  # (step, time) of this session's first step
        self.last: tuple[int, float] = (state.step, clock())

    def line(self, step: int, total: int, record: dict[str, Any]) -> str | None:
        now = self.clock()
        if self.first is None:
            self.first = (step, now)
        elif not (step >= total or (self.every and step - self.last[0] >= self.every)
                  or (self.seconds and now - self.last[1] >= self.seconds)):
            return None
        self.last = (step, now)
        done = step - self.first[0]
        per_step = (now - self.first[1]) / done if done else record.get("dt")
        eta = per_step * (total - step) if per_step is not None else None
        return step_line(step, total, record, eta)
