"""The conversation engine: turns a model writes in its direction, streamed as text.

A :class:`Chat` keeps its messages in reading order. Forward, the person's turn is a user turn
appended at the end and the model writes the assistant turn after it. Backward, the person
gives the ending — an assistant turn put in front of the conversation — and the model writes
the user turn before it, so a backward chat grows toward its beginning. A bidirectional model
does either, per turn (:meth:`Chat.switch`). A base model continues plain text: forward after
it, backward before it. Prompts come from :func:`backlm.direction.turn_prompt` and
:func:`backlm.direction.encode_document`; text streams out whole characters only
(:class:`TextStream`), each piece marked as going at the ``end`` or the ``start``
(:attr:`backlm.direction.Direction.writes_at`, applied by :func:`place`: the one placement
rule of chat, serve and the chat page).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from backlm.direction import (
    Direction,
    encode_document,
    turn_prompt,
    turn_roles,
)
from backlm.errors import UserError
from backlm.serve.replies import Piece, Replies, TextStream, place

__all__ = ["Chat", "Piece", "Sampling", "Stats", "TextStream", "check_order", "place"]

MAX_TOKENS = 4096


@dataclass(frozen=True)
class Sampling:
    """How a turn is sampled: temperature 0 is greedy; ``seed`` makes it reproducible."""

    temperature: float = 0.8
    top_k: int | None = None
    max_tokens: int = 256
    seed: int | None = None
    top_p: float | None = None  # nucleus sampling: the likeliest tokens holding this much mass
    presence_penalty: float = 0.0  # OpenAI's penalties on tokens already written, -2..2
    frequency_penalty: float = 0.0

    def params(self) -> Any:
        """The engine's :class:`backlm.model.decode.SamplingParams` for this."""
        from backlm.model.decode import SamplingParams

        return SamplingParams(self.temperature, self.top_k, self.top_p, self.presence_penalty,
                              self.frequency_penalty)

    def check(self) -> Sampling:
        """This, or a UserError naming the value out of range."""
        import math

        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)
                and 0 <= self.temperature <= 10):
            raise UserError(f"temperature must be between 0 and 10, got {self.temperature!r}")
        if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise UserError(f"top-k must be a positive whole number, got {self.top_k!r}")
        if self.top_p is not None and not (isinstance(self.top_p, int | float)
                                           and 0 < self.top_p <= 1):
            raise UserError(f"top-p must be in (0, 1], got {self.top_p!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and -2 <= value <= 2):
                raise UserError(f"{name.replace('_', ' ')} must be between -2 and 2, got "
                                f"{value!r}")
        if not (isinstance(self.max_tokens, int) and 1 <= self.max_tokens <= MAX_TOKENS):
            raise UserError(f"max tokens must be between 1 and {MAX_TOKENS}, got "
                            f"{self.max_tokens!r}")
        return self


@dataclass
class Stats:
    """The last turn: tokens written, seconds from the first to the last, first-token latency,
    the prompt's length and why the turn ended (``stop``: the model closed it; ``length``: it
    ran out of tokens)."""

    tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: float = 0.0
    prompt_tokens: int = 0
    finish: str = "stop"

    @property
    def tokens_per_sec(self) -> float:
        return (self.tokens - 1) / self.seconds if self.tokens > 1 and self.seconds > 0 else 0.0


class Chat:
    """A conversation with one model, kept in reading order."""

    def __init__(self, model: Any, tokenizer: Any, direction: Direction, phase: str = "sft",
                 order: Direction | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.direction = direction
        self.plain = phase == "base"  # a base model continues text; it has no turns
        self.messages: list[dict[str, str]] = []
        self.text = ""  # a base model's running text
        self.stats = Stats()
        self.last_turn = ""
        self.replies: Any = None  # the last turn's replies (backlm.serve.replies.Replies)
        self.order = self.direction.orders[0]
        if order is not None:
            self.switch(order)

    def switch(self, order: Direction) -> None:
        """Write the next turns in ``order`` (bidirectional models only)."""
        self.order = check_order(self.direction, order)

    @property
    def position(self) -> str:
        """Where the next turn goes: ``end`` or ``start`` (:attr:`Direction.writes_at`; the
        person's turn and the model's go on the same side)."""
        return self.order.writes_at

    def clear(self) -> None:
        """Forget the conversation."""
        self.messages, self.text = [], ""

    @property
    def writes(self) -> str:
        """The role of the turn the model writes next (``text`` for a base model)."""
        if self.plain:
            return "text"
        return turn_roles(self.order)[1].name.lower()

    def load(self, messages: list[dict[str, str]]) -> str:
        """Take a whole reading-order conversation (an API request) and return the person's
        turn: forward the last message (a user turn), backward the first (an assistant turn,
        the ending). System messages join the first user turn. A base model continues the
        messages' text, joined by blank lines."""
        if self.plain:
            self.messages, self.text = [], ""
            return "\n\n".join(m["content"] for m in messages)
        messages = _merge_system(messages)
        if not messages:
            raise UserError("give at least one message")
        at_end = self.position == "end"
        given = messages[-1] if at_end else messages[0]
        wanted = turn_roles(self.order)[0].name.lower()
        if given["role"] != wanted:
            where = "last" if at_end else "first"
            raise UserError(f"the {where} message must be the {wanted}'s: a {self.order.value} "
                            f"model writes the {self.writes} turn "
                            f"{'after' if at_end else 'before'} it")
        self.messages = messages[:-1] if at_end else messages[1:]
        return given["content"]

    def _render(self, messages: list[dict[str, str]]) -> list[int]:
        return [t for m in messages for t in self.tokenizer.render_turn(m["role"], m["content"])]

    def _prompt(self, text: str) -> tuple[list[int], int | None, Any]:
        """Model-order prompt for the next turn given the person's ``text``, its stop id, and
        the conversation with the person's turn in place (kept only once the turn is done)."""
        ids = self.tokenizer.special_ids
        order = self.order if self.direction is Direction.BIDIRECTIONAL else None
        if self.plain:
            full = place(self.position, self.text, text)
            seq, _ = encode_document(self.tokenizer.encode(full), self.direction, ids, order)
            return seq, None, full
        given, written = turn_roles(self.order)
        mine = {"role": given.name.lower(), "content": text}
        messages = place(self.position, self.messages, [mine])
        return (*turn_prompt(self._render(messages), written, self.direction, ids, order),
                messages)

    def send(self, text: str, sampling: Sampling | None = None, n: int = 1,
             stop: Sequence[str] = (), logprobs: int | None = None) -> Iterator[Piece]:
        """Give the person's ``text`` and stream the model's turn; when the stream ends the turn
        is in :attr:`messages` (or :attr:`text`) in reading order. ``n`` replies are decoded
        together (row 0's is the one the conversation keeps; all are in :attr:`replies`),
        each cut at its first ``stop`` string in reading order
        (:mod:`backlm.serve.replies`), with ``logprobs`` alternatives per token when not
        None."""
        sampling = (sampling or Sampling()).check()
        if not isinstance(text, str) or (not text.strip() and not self.plain):
            raise UserError("say something: an empty turn gives the model nothing to answer")
        prompt, stop_id, given = self._prompt(text)
        context = getattr(getattr(self.model, "cfg", None), "seq_len", None)
        if context is not None and len(prompt) > context:
            raise UserError(f"the conversation is {len(prompt):,} tokens, longer than the "
                            f"model's context of {context:,}: clear it or shorten it")
        where = self.position
        ends = {*self.tokenizer.specials.values(), *([] if stop_id is None else [stop_id])}
        replies = Replies(self.tokenizer, self.order, n, ends, stop, logprobs is not None)
        self.replies = replies
        started = time.perf_counter()
        first = last = started
        steps = self.model.decode(prompt, sampling.max_tokens, rows=n, sampling=sampling.params(),
                                  seed=sampling.seed, top_logprobs=logprobs, stop=ends)
        try:
            for step in steps:
                last = time.perf_counter()
                if first == started:
                    first = last
                yield from replies.push(step)
                if replies.done:
                    break
            yield from replies.end()
        finally:  # a turn cut short still reports what it wrote; the conversation keeps only
            # whole turns
            steps.close()
            written = sum(len(r.tokens) for r in replies.rows)
            self.stats = Stats(written, last - first, first - started, len(prompt),
                               replies.rows[0].finish or "length")
        turn = replies.rows[0].text  # what the model wrote, in reading order
        self.last_turn = turn
        if self.plain:
            self.text = place(where, given, turn)
        else:
            self.messages = place(where, given, [{"role": self.writes, "content": turn}])


def check_order(direction: Direction, order: Direction) -> Direction:
    """``order`` if a model of ``direction`` writes in it (a bidirectional model either order,
    the others their own), else a UserError: the one check of a requested order, for chat,
    serve and the Python API alike."""
    if not isinstance(order, Direction):  # a name is parsed where it comes in (flag, body)
        raise TypeError(f"an order to write in is a Direction, got {order!r}")
    if order not in direction.orders:  # bidirectional itself is no order to write in
        raise UserError(f"this model reads {direction.value} only: it cannot write "
                        f"{order.value}; only a bidirectional model switches direction")
    return order


def _merge_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """System turns joined to the next user turn (the models know user and assistant only)."""
    out, pending = [], []
    for m in messages:
        if m["role"] == "system":
            pending.append(m["content"])
        elif m["role"] == "user" and pending:
            out.append({"role": "user", "content": "\n\n".join([*pending, m["content"]])})
            pending = []
        else:
            out.append(dict(m))
    if pending:
        raise UserError("a system message must come before a user message it can join")
    return out
