"""Generations sharing one model: the model thread takes turns in arrival order and runs each
generation ahead of its reader, who takes what accumulated at once; a generation's slot is
freed exactly once however it ends (done, failed, closed mid-piece, a client gone while
awaiting, a shutdown)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from backlm.serve.model_thread import Generation, ModelThread


def wait_for(check, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def make(pieces: Iterator[str], released: list, tag: object = 1, model=None,
         stopping=None, ahead: int = 256) -> Generation:
    return Generation(pieces, model or ModelThread(threading.Lock()),
                      stopping or threading.Event(), lambda: released.append(tag), ahead)


def test_a_generation_frees_its_slot_once_even_when_closed_mid_piece():
    release, gate, computing = [], threading.Event(), threading.Event()

    def pieces() -> Iterator[str]:
        yield "a"
        computing.set()
        gate.wait(10)  # a piece that takes a while
        yield "b"
        yield "c"

    gen = make(pieces(), release)
    gen.start()  # the first piece is computed before start returns
    assert next(gen) == "a" and not release
    assert computing.wait(10)  # running ahead: "b" is computed without a reader asking
    gen.close()  # the client left while "b" is being computed
    time.sleep(0.05)
    assert not release  # not yet: the piece in hand is still running
    gate.set()
    wait_for(lambda: release)
    assert release == [1] and list(gen) == []
    gen.close()
    assert release == [1]

    stopping = threading.Event()  # a shutdown cuts a generation at its next piece
    gen = make((x for x in iter(lambda: "x", None)), release, 2, stopping=stopping, ahead=4)
    gen.start()
    assert next(gen) == "x"
    stopping.set()
    wait_for(lambda: 2 in release)
    assert len(list(gen)) <= 4 and gen.cut and release == [1, 2]

    def refused() -> Iterator[str]:
        raise ValueError("the prompt is too long")
        yield ""

    gen = make(refused(), release, 3)
    with pytest.raises(ValueError):
        gen.start()
    assert release == [1, 2, 3]
    gen = make((c for c in ""), release, 4)
    gen.start()  # nothing to write: done, the slot freed at once
    assert release == [1, 2, 3, 4] and list(gen) == []
    gen = make((c for c in "never"), release, 5)
    gen.close()  # a response never sent: the model thread never had it
    assert release == [1, 2, 3, 4, 5]


def test_the_reader_takes_what_accumulated_at_once_and_a_slow_reader_pauses_it():
    release, computed = [], []

    def pieces() -> Iterator[int]:
        for i in range(100):
            computed.append(i)
            yield i

    gen = make(pieces(), release, ahead=8)
    gen.start()
    wait_for(lambda: len(computed) >= 8)
    time.sleep(0.05)
    assert len(computed) == 8  # paused: nobody took the pieces

    async def first_take() -> list[int]:
        return await gen.take()

    assert asyncio.run(first_take()) == list(range(8))  # one wake-up, eight pieces
    assert list(gen) == list(range(8, 100)) and release == [1]


def test_a_failure_reaches_the_reader_after_the_pieces_before_it():
    release = []

    def pieces() -> Iterator[str]:
        yield "a"
        yield "b"
        raise RuntimeError("broken")

    gen = make(pieces(), release)
    gen.start()
    wait_for(lambda: release)

    async def read() -> list:
        out = [await gen.take()]
        with pytest.raises(RuntimeError):
            await gen.take()
        return out

    assert asyncio.run(read()) == [["a", "b"]] and release == [1]


def test_an_awaited_take_cancelled_mid_computation_frees_the_slot_after_it():
    release, gate, computing = [], threading.Event(), threading.Event()

    def pieces() -> Iterator[str]:
        yield "a"
        computing.set()
        gate.wait(10)
        yield "b"

    gen = make(pieces(), release)

    async def scenario() -> None:
        assert await gen.anext() == "a"
        task = asyncio.ensure_future(gen.anext())
        while not computing.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # the client left while "b" is being computed
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not release  # the model thread is still inside the generator
        gate.set()
        for _ in range(500):
            if release:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert release == [1]
    gen.close()
    assert release == [1] and list(gen) == []


def test_awaited_pieces_run_to_the_end_and_turns_are_taken_in_order():
    model, order = ModelThread(threading.Lock()), []

    def pieces(name: str) -> Iterator[str]:
        for i in range(3):
            order.append(name)
            yield f"{name}{i}"

    released = []
    a = make(pieces("a"), released, "a", model)
    b = make(pieces("b"), released, "b", model)

    async def drain(gen: Generation) -> list[str]:
        out = []
        while (piece := await gen.anext()) is not None:
            out.append(piece)
        return out

    async def both() -> list[list[str]]:
        with model.lock:  # both handed over before either computes
            a.hand()
            b.hand()
        return list(await asyncio.gather(drain(a), drain(b)))

    assert asyncio.run(both()) == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]
    assert order[:4] == ["a", "b", "a", "b"]  # interleaved: one piece per turn
    assert sorted(released) == ["a", "b"]
