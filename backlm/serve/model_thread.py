"""Generations on one model shared by concurrent requests: all model work on one thread
(:class:`ModelThread`: calls in arrival order, generations a turn each), each generation
running ahead of its reader, who takes every piece computed so far at once, and freeing its
slot exactly once however it ends (:class:`Generation`)."""

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

AHEAD = 256  # pieces a generation computes before its reader must take some


class ModelThread:
    """Runs calls and generations on one dedicated thread, under ``lock``.

    One thread because every thread that runs the CPU kernels gets its own OpenMP team, and
    teams of idle threads that must be woken each step cost more than the step's arithmetic.
    Between calls (taken in arrival order) every generation that may run computes one piece,
    in the order they came, so concurrent streams interleave fairly and none waits for its
    reader: the event loop sends what accumulated while the next piece is being computed.
    """

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.cond = threading.Condition()
        self.calls: deque[tuple[Future, Callable[..., Any], tuple]] = deque()
        self.generations: list[Generation] = []
        self.thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` queued for the model thread."""
        future: Future = Future()
        with self.cond:
            self.calls.append((future, fn, args))
            self._wake()
        return future

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the model thread; its result (or exception) here."""
        return self.submit(fn, *args).result()

    def add(self, generation: "Generation") -> None:
        """Run ``generation`` ahead of its reader from now on."""
        with self.cond:
            self.generations.append(generation)
            self._wake()

    def poke(self) -> None:
        """A generation may run again (its reader took pieces, or it was closed)."""
        with self.cond:
            self._wake()

    def _wake(self) -> None:  # under cond
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="backlm-model", daemon=True)
            self.thread.start()
        self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                # a paused generation may be cut by a shutdown, which does not poke
                while not (self.calls or any(g.runnable() for g in self.generations)):
                    self.cond.wait(0.2 if self.generations else None)
            with self.lock:  # one round: the next call, then a piece of each generation
                with self.cond:
                    call = self.calls.popleft() if self.calls else None
                    self.generations = [g for g in self.generations if not g.done]
                    ready = [g for g in self.generations if g.runnable()]
                if call is not None:
                    future, fn, args = call
                    if future.set_running_or_notify_cancel():
                        try:
                            result = fn(*args)
                        except BaseException as exc:  # noqa: BLE001 - handed to the caller
                            future.set_exception(exc)
                        else:
                            future.set_result(result)
                for generation in ready:
                    generation.advance()


class Generation:
    """The pieces of one generation, computed ahead on the model thread into a buffer.

    Its slot is freed exactly once, on the model thread: when the pieces run out or fail, or
    at the model thread's next turn after :meth:`close` (a client gone mid-stream, a response
    never sent) — never while a piece is being computed, never left to the garbage collector.
    ``stopping`` (server shutdown) ends it at its next piece; ``cut`` says so.
    """

    def __init__(self, pieces: Iterator[Any], model: ModelThread, stopping: threading.Event,
                 release: Any, ahead: int = AHEAD) -> None:
        self.pieces, self.model, self.stopping, self.release = (
            pieces, model, stopping, release)
        self.ahead = ahead
        self.guard = threading.Lock()  # over buffer, finished, error, waiter, cancelled, done
        self.buffer: list[Any] = []
        self.taken: deque[Any] = deque()  # taken from the buffer, not yet handed out one by one
        self.finished = self.cancelled = self.done = self.cut = self.handed = False
        self.error: BaseException | None = None
        self.waiter: Callable[[], None] | None = None  # wakes a reader waiting for pieces

    def start(self) -> None:
        """Compute the first piece now: a refused prompt raises before any byte is sent. Then
        the generation runs ahead of its reader on the model thread."""
        with self.guard:
            self.handed = True
        self.model.call(self.advance, True)
        with self.guard:
            if self.error is not None and not self.buffer:
                raise self.error
        self.model.add(self)

    def hand(self) -> None:
        """Give the generation to the model thread (done by :meth:`start`, or by a reader's
        first look)."""
        with self.guard:
            handed, self.handed = self.handed, True
        if not handed:
            self.model.add(self)

    def runnable(self) -> bool:
        """Whether the model thread should advance it (room in the buffer, or an end due)."""
        return not self.done and (self.cancelled or self.stopping.is_set()
                                  or len(self.buffer) < self.ahead)

    def advance(self, first: bool = False) -> None:
        """Compute one piece (on the model thread), or end the generation when it is due
        (never before the ``first``: a generation that started has its replies)."""
        with self.guard:
            if self.done:
                return
            due = not first and (self.cancelled or self.stopping.is_set())
            if due:
                self.cut = True
                self._end()
                wake, self.waiter = self.waiter, None
        if due:
            if wake is not None:
                wake()
            return
        ended, error, piece = False, None, None
        try:
            piece = next(self.pieces)
        except StopIteration:
            ended = True
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            ended, error = True, exc
        with self.guard:
            if ended:
                self.error = error
                self._end()
            else:
                self.buffer.append(piece)
            wake, self.waiter = self.waiter, None
        if wake is not None:
            wake()

    def _end(self) -> None:  # under guard, on the model thread (or before it ever ran)
        if not self.done:
            self.done = self.finished = True
            try:
                getattr(self.pieces, "close", lambda: None)()
            except Exception:  # noqa: BLE001, S110 - a failing clean-up must not stop the thread
                pass
            finally:
                self.release()

    def _grab(self) -> tuple[list[Any] | None, bool]:
        """Under guard: (the buffered pieces, whether the producer was paused), ([], _) when
        none yet, (None, _) at the end; raises the generation's error after its pieces."""
        if self.cancelled:  # the reader is gone: nothing more is handed out
            return None, False
        if self.buffer:
            out, self.buffer = self.buffer, []
            return out, len(out) >= self.ahead
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return (None if self.finished else []), False

    async def take(self) -> list[Any] | None:
        """Every piece computed since the last take (waiting for the first), or None at the
        end; awaited on the event loop, woken once for whatever accumulated meanwhile."""
        if self.taken:
            out = list(self.taken)
            self.taken.clear()
            return out
        self.hand()
        loop = asyncio.get_running_loop()
        while True:
            with self.guard:
                out, paused = self._grab()
                if out != []:
                    break
                ready = loop.create_future()
                self.waiter = functools.partial(loop.call_soon_threadsafe, _settle, ready)
            try:
                await ready
            except asyncio.CancelledError:  # the reader left: end at the next turn
                self.close()
                raise
        if paused:
            self.model.poke()
        return out

    async def anext(self) -> Any:
        """The next piece, or None at the end (one at a time, from :meth:`take`)."""
        if not self.taken:
            out = await self.take()
            if out is None:
                return None
            self.taken.extend(out)
        return self.taken.popleft()

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> Any:
        self.hand()
        while not self.taken:
            ready = threading.Event()
            with self.guard:
                out, paused = self._grab()
                if out == []:
                    self.waiter = ready.set
            if out is None:
                raise StopIteration
            if out:
                self.taken.extend(out)
                if paused:
                    self.model.poke()
            else:
                ready.wait()
        return self.taken.popleft()

    def close(self) -> None:
        """Stop the generation; its slot is freed at the model thread's next turn (at once
        when the model thread never had it)."""
        with self.guard:
            self.cancelled = True
            if not self.handed:
                self._end()
                return
        self.model.poke()


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
