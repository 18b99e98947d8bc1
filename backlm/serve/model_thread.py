"""Generations on one model shared by concurrent requests: all model work on one thread in
arrival order (:class:`ModelThread`), and each generation's pieces with its slot freed exactly
once however it ends (:class:`Generation`)."""

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class ModelThread:
    """Runs calls on one dedicated thread, under ``lock``, in the order they come.

    One thread because every thread that runs the CPU kernels gets its own OpenMP team, and
    teams of idle threads that must be woken each step cost more than the step's arithmetic.
    """

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="backlm-model")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` queued for the model thread."""
        def locked() -> Any:
            with self.lock:
                return fn(*args)

        return self.pool.submit(locked)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the model thread; its result (or exception) here."""
        return self.submit(fn, *args).result()


class Generation:
    """The pieces of one generation, each computed on the model thread.

    Its slot is freed exactly once: when the pieces run out or fail, or on :meth:`close` (a
    client gone mid-stream, a response never sent) — at once, or, when a worker thread is
    computing a piece right then, as soon as that piece is done. Never left to the garbage
    collector. ``stopping`` (server shutdown) ends it at its next piece; ``cut`` says so.
    """

    def __init__(self, pieces: Iterator[Any], model: ModelThread, stopping: threading.Event,
                 release: Any) -> None:
        self.pieces, self.model, self.stopping, self.release = (
            pieces, model, stopping, release)
        self.guard = threading.Lock()  # over running, cancelled, done
        self.running = self.cancelled = self.done = self.cut = False
        self.ahead: list[Any] = []

    def start(self) -> None:
        """Compute the first piece now: a refused prompt raises before any byte is sent."""
        self.ahead = [piece for piece in [next(self, None)] if piece is not None]

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> Any:
        if self.ahead:
            return self.ahead.pop()
        self._begin()
        ended = True
        try:
            piece = self.model.call(next, self.pieces)
            ended = False
            return piece
        finally:
            self._after(ended)

    async def anext(self) -> Any:
        """The next piece, or None at the end, awaited on the event loop: no worker thread
        sits waiting for the model thread (one hand-off per piece instead of two)."""
        if self.ahead:
            return self.ahead.pop()
        try:
            self._begin()
        except StopIteration:
            return None
        end = object()
        job = self.model.submit(next, self.pieces, end)
        try:
            piece = await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:  # the client left: end once the model thread is done
            job.add_done_callback(lambda _: self._after(True))
            raise
        except BaseException:
            self._after(True)
            raise
        self._after(piece is end)
        return None if piece is end else piece

    def _begin(self) -> None:
        with self.guard:
            if not self.done and (self.cancelled or self.stopping.is_set()):
                self.cut = True
                self._end()
            if self.done:
                raise StopIteration
            self.running = True

    def _after(self, ended: bool) -> None:
        with self.guard:
            self.running = False
            if ended or self.cancelled:
                self._end()

    def close(self) -> None:
        """Stop the generation and free its slot (now, or once the piece in hand is done)."""
        with self.guard:
            self.cancelled = True
            if not self.running:
                self._end()

    def _end(self) -> None:  # under guard, with no piece being computed
        if not self.done:
            self.done = True
            try:
                self.pieces.close()
            finally:
                self.release()
