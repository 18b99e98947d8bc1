"""Generations sharing one model: the model thread takes turns in arrival order; a
generation's slot is freed exactly once however it ends (done, failed, closed mid-piece, a
client gone while awaiting, a shutdown)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from backlm.serve.model_thread import Generation, ModelThread


def test_a_generation_frees_its_slot_once_even_when_closed_mid_piece():
    release, gate, computing = [], threading.Event(), threading.Event()

    def pieces() -> Iterator[str]:
        yield "a"
        computing.set()
        gate.wait(10)  # a piece that takes a while
        yield "b"
        yield "c"

    gen = Generation(pieces(), ModelThread(threading.Lock()), threading.Event(), lambda: release.append(1))
    gen.start()
    assert next(gen) == "a" and not release
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(next, gen)
        assert computing.wait(10)
        gen.close()  # the client left while "b" is being computed
        assert not release  # not yet: the piece in hand is still running
        gate.set()
        assert second.result(timeout=10) == "b"
    assert release == [1] and list(gen) == []
    gen.close()
    assert release == [1]

    stopping = threading.Event()  # a shutdown cuts a generation at its next piece
    gen = Generation((c for c in "xyz"), ModelThread(threading.Lock()), stopping, lambda: release.append(2))
    gen.start()
    assert next(gen) == "x"
    stopping.set()
    assert list(gen) == [] and gen.cut and release == [1, 2]

    def refused() -> Iterator[str]:
        raise ValueError("the prompt is too long")
        yield ""

    gen = Generation(refused(), ModelThread(threading.Lock()), threading.Event(), lambda: release.append(3))
    with pytest.raises(ValueError):
        gen.start()
    assert release == [1, 2, 3]
    gen = Generation((c for c in ""), ModelThread(threading.Lock()), threading.Event(), lambda: release.append(4))
    gen.start()  # nothing to write: done, the slot freed at once
    assert list(gen) == [] and release == [1, 2, 3, 4]


def test_an_awaited_piece_cancelled_mid_computation_frees_the_slot_after_it():
    release, gate, computing = [], threading.Event(), threading.Event()

    def pieces() -> Iterator[str]:
        yield "a"
        computing.set()
        gate.wait(10)
        yield "b"

    gen = Generation(pieces(), ModelThread(threading.Lock()), threading.Event(),
                     lambda: release.append(1))

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
    a = Generation(pieces("a"), model, threading.Event(), lambda: released.append("a"))
    b = Generation(pieces("b"), model, threading.Event(), lambda: released.append("b"))

    async def drain(gen: Generation) -> list[str]:
        out = []
        while (piece := await gen.anext()) is not None:
            out.append(piece)
        return out

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(drain(a), drain(b)))

    assert asyncio.run(both()) == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]
    assert order[:4] == ["a", "b", "a", "b"]  # interleaved: one piece per turn
    assert sorted(released) == ["a", "b"]
