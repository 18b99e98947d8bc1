"""Replies decoded together: each row's whole characters in reading order, where it ends (an
end token, a stop string, the token limit), its tokens and their log-probabilities; the one
placement rule of written text (:func:`place`, :class:`Piece`) and whole-character streaming
(:class:`TextStream`) that chat, serve and the chat page share.

Stop strings are looked for in the reply's reading-order text, as it grows. Forward, text grows
at its end: the first occurrence ends the reply, which keeps what comes before it. Backward,
text grows at its start (the model writes the earlier part last): the first occurrence to
appear ends the reply, which keeps what follows it — the mirror image, so the reply is always
the part on the model's side of the stop string that the model wrote before reaching it. The
stop string itself is never part of the reply. While a reply streams, text that could still
turn out to be part of a stop string is held back, so nothing sent is ever taken back.

The tokens and log-probabilities of a reply are every token the model wrote for it up to its
end token (those that formed a stop string included: the text is cut, the tokens are not).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backlm.direction import Direction, model_order


class TextStream:
    """Token bytes arriving in model order turned into whole characters.

    Forward, bytes arrive in reading order: an incremental UTF-8 decoder holds back a split
    character. Backward, each token comes before the text already shown: its bytes go in front
    of what is held, and only what starts at a character's first byte is released.
    """

    def __init__(self, order: Direction) -> None:
        self.backward = order is Direction.BACKWARD
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = b""

    def push(self, data: bytes) -> str:
        """The text that ``data`` completes ('' while a character is still split)."""
        if not self.backward:
            return self.decoder.decode(data)
        self.held = data + self.held
        start = next((i for i, b in enumerate(self.held) if b & 0xC0 != 0x80), None)
        if start is None:
            return ""
        text, self.held = self.held[start:].decode("utf-8", errors="replace"), self.held[:start]
        return text

    def flush(self) -> str:
        """Whatever is still held (a broken character shows as U+FFFD)."""
        if not self.backward:
            return self.decoder.decode(b"", final=True)
        text, self.held = self.held.decode("utf-8", errors="replace"), b""
        return text


def place(where: str, existing: Any, new: Any) -> Any:
    """``new`` put at ``where`` (``end`` or ``start``: :attr:`Direction.writes_at`) of
    ``existing``: text, or lists of turns."""
    return existing + new if where == "end" else new + existing


@dataclass(frozen=True)
class Piece:
    """Streamed text and where it goes: after the text so far (``end``) or before (``start``);
    ``row``: which of the replies decoded together it belongs to."""

    text: str
    where: str
    row: int = 0

    def place(self, shown: str) -> str:
        """``shown`` with this piece in its place."""
        return place(self.where, shown, self.text)


def merged(pieces: Iterable[Piece]) -> list[Piece]:
    """``pieces`` joined per row, rows in the order they first appear: what several pieces of
    a row say at once (each placed by the placement rule after those before it)."""
    rows: dict[int, Piece] = {}
    for piece in pieces:
        before = rows.get(piece.row)
        rows[piece.row] = piece if before is None else Piece(piece.place(before.text),
                                                             piece.where, piece.row)
    return list(rows.values())


class StopText:
    """The reading-order text of one reply, cut at its first stop string; what may be sent."""

    def __init__(self, stops: Sequence[str], where: str) -> None:
        self.stops = [s for s in stops if s]
        self.at_end = where == "end"
        self.text, self.sent, self.stopped = "", 0, False  # sent: characters on `where`'s side

    def _held(self) -> int:
        """How many unsent characters could still begin (forward) or end (backward) a stop."""
        most = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), most, -1):
                if (self.text.endswith(s[:k]) if self.at_end else self.text.startswith(s[-k:])):
                    most = k
                    break
        return most

    def _release(self, hold: int) -> str:
        free = len(self.text) - self.sent - hold
        if free <= 0:
            return ""
        if self.at_end:
            out = self.text[self.sent:self.sent + free]
        else:
            out = self.text[hold:hold + free]
        self.sent += free
        return out

    def add(self, piece: str) -> str:
        """Take ``piece`` (placed at the reply's growing side); the text now safe to send, to
        be placed on that side of what was sent before. Sets :attr:`stopped` at a stop."""
        if self.stopped or not piece:
            return ""
        before = len(self.text)
        self.text = self.text + piece if self.at_end else piece + self.text
        if self.at_end:  # only occurrences that reach into the new piece are new
            found = [i for s in self.stops
                     if (i := self.text.find(s, max(0, before - len(s) + 1))) >= 0]
            if found:
                self.text, self.stopped = self.text[:min(found)], True
        else:
            found = [i + len(s) for s in self.stops
                     if (i := self.text.rfind(s, 0, len(piece) + len(s) - 1)) >= 0]
            if found:
                self.text, self.stopped = self.text[max(found):], True
        return self._release(0 if self.stopped else self._held())

    def flush(self) -> str:
        """Whatever was held back (the reply has ended without a stop string)."""
        return self._release(0)


@dataclass
class Logprob:
    """One written token, its log-probability and the likeliest alternatives ``(id, logp)``."""

    token: int
    logprob: float | None  # None: no context to predict it from (OpenAI's null)
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Reply:
    """One row: its text in reading order, tokens in the model's order, why it ended."""

    cut: StopText
    stream: TextStream
    tokens: list[int] = field(default_factory=list)
    logprobs: list[Logprob] = field(default_factory=list)
    finish: str | None = None  # stop | length, once it has ended

    @property
    def text(self) -> str:
        return self.cut.text


def scored(step: Any, row: int) -> Logprob:
    """Row ``row`` of a scored engine step (:class:`backlm.model.decode.Step`)."""
    top = []
    if step.top_ids is not None:
        top = list(zip(step.top_ids[row].tolist(), step.top_logprobs[row].tolist(), strict=True))
    return Logprob(int(step.tokens[row]), float(step.logprobs[row]), top)


class Replies:
    """``n`` rows of one generation turned into pieces of text as their tokens come."""

    def __init__(self, tokenizer: Any, order: Direction, n: int, ends: Iterable[int],
                 stops: Sequence[str] = (), logprobs: bool = False,
                 ends_scored: bool = False) -> None:
        self.ranks, self.order, self.where = tokenizer.ranks, order, order.writes_at
        # ends_scored: an end token's log-probability is listed too (text completions)
        self.ends, self.logprobs, self.ends_scored = set(ends), logprobs, ends_scored
        self.rows = [Reply(StopText(stops, self.where), TextStream(order)) for _ in range(n)]

    @property
    def done(self) -> bool:
        return all(r.finish is not None for r in self.rows)

    def push(self, step: Any) -> list[Any]:
        """The pieces (:class:`Piece`, with their row) that one
        engine step completes."""
        out = []
        for i, token in enumerate(step.tokens.tolist()):
            reply = self.rows[i]
            if reply.finish is not None:
                continue
            if token in self.ends:  # the turn (or the document) ends here
                if self.logprobs and self.ends_scored:
                    reply.logprobs.append(scored(step, i))
                out += self._end(i, "stop")
                continue
            reply.tokens.append(token)
            if self.logprobs:
                reply.logprobs.append(scored(step, i))
            text = reply.cut.add(reply.stream.push(self.ranks[token]))
            if text:
                out.append(Piece(text, self.where, i))
            if reply.cut.stopped:
                reply.finish = "stop"
        return out

    def _end(self, i: int, finish: str) -> list[Any]:
        reply = self.rows[i]
        texts = [reply.cut.add(reply.stream.flush())]
        texts.append(reply.cut.flush())
        reply.finish = "stop" if reply.cut.stopped else finish
        return [Piece(t, self.where, i) for t in texts if t]

    def end(self) -> list[Any]:
        """The last pieces of rows still open: they ran out of tokens."""
        return [p for i, r in enumerate(self.rows) if r.finish is None
                for p in self._end(i, "length")]

    def reading_logprobs(self, i: int) -> list[Logprob]:
        """Row ``i``'s log-probabilities in reading order (backward: the model's reversed)."""
        return model_order(self.rows[i].logprobs, self.order)
