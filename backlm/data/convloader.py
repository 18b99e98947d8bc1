"""Conversations to masked training rows: the SFT loader, and mid's mix of chat and text.

Each conversation is rendered in reading order (:meth:`Tokenizer.render_conversation`), cut to
the longest prefix of whole user/assistant pairs that fits a row, and only then put into the
model's order with its loss mask (:func:`backlm.direction.encode_conversation`): every
direction trains on the same reading-order turns, and only the mask differs (forward writes
assistant turns, backward user turns by default). Rows are packed greedily in stream order and
cost the same in every direction (body plus :data:`~backlm.direction.HEAD_SLOTS`), so forward,
backward and bidirectional runs with one seed put the same conversations into the same rows.

Streams follow :class:`backlm.data.loader.PackedLoader`: an epoch's seeded permutation is dealt
to ``world_size`` streams, and the state (epoch, position) resumes exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from backlm.data.loader import Batch
from backlm.direction import (
    HEAD_SLOTS,
    Direction,
    Part,
    body_capacity,
    document_order,
    encode_conversation,
    prefix_length,
)
from backlm.errors import UserError
from backlm.model import IGNORE_INDEX

STATE_VERSION = 1


def fit_turns(ids: list[int], roles: list[int], parts: list[int], capacity: int
              ) -> tuple[list[int], list[int], list[int]] | None:
    """The longest reading-order prefix of whole user/assistant pairs within ``capacity``
    tokens (None when not even the first pair fits). The cut is the same in every direction."""
    opens = [i for i, p in enumerate(parts) if p == Part.OPEN] + [len(ids)]
    keep = 0
    for pair_end in opens[2::2]:  # each pair ends where the next user turn opens
        if pair_end > capacity:
            break
        keep = pair_end
    if keep == 0:
        return None
    return ids[:keep], roles[:keep], parts[:keep]


class ConversationLoader:
    """Packed (B, T) batches of conversations with the direction's loss mask, resumable."""

    def __init__(self, conversations: Sequence[Any], tokenizer: Any, direction: Direction, *,
                 batch_size: int, seq_len: int, seed: int = 0, mix: float = 0.5, rank: int = 0,
                 world_size: int = 1, train_on: str | None = None) -> None:
        if not conversations:
            raise UserError("the chat dataset has no conversations: build it with "
                            "`backlm data prepare --chat` or `backlm data import --chat`")
        self.conversations = conversations
        self.tokenizer = tokenizer
        self.direction = direction
        self.batch_size, self.seq_len = batch_size, seq_len
        self.seed, self.mix, self.train_on = seed, mix, train_on or None
        self.rank, self.world_size = rank, world_size
        self.epoch, self.pos = 0, 0
        self.skipped: set[int] = set()  # conversations that cannot be rendered or do not fit
        self._order: list[int] = []
        self._cache: dict[int, tuple[list[int], list[bool]] | None] = {}
        self._set_epoch(0)

    def _set_epoch(self, epoch: int) -> None:
        perm = list(range(len(self.conversations)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(perm)
        self.epoch, self._order = epoch, perm[self.rank::self.world_size]

    def encoded(self, index: int, epoch: int, order: Direction | None = None
                ) -> tuple[list[int], list[bool]] | None:
        """Model-order tokens (BOS first) and target mask of conversation ``index`` (in
        ``order``, else the stream's seeded choice), or None when it cannot be used."""
        key = index if self.direction is not Direction.BIDIRECTIONAL else None
        if key is not None and key in self._cache:
            return self._cache[key]
        try:
            rendered = self.tokenizer.render_conversation(self.conversations[index])
        except UserError:
            rendered = None
        fitted = rendered and fit_turns(*map(list, rendered), body_capacity(self.seq_len))
        if not fitted:
            self.skipped.add(index)
            out = None
        else:
            order = order or document_order(self.direction, epoch * 1_000_003 + index,
                                            self.seed, self.mix)
            out = encode_conversation(*fitted, self.direction, self.tokenizer.special_ids,
                                      order=order, train_on=self.train_on)
        if key is not None:
            self._cache[key] = out
        return out

    def _next_conversation(self, peek: bool) -> tuple[list[int], list[bool]]:
        tried = 0
        while True:
            if self.pos >= len(self._order):
                self._set_epoch(self.epoch + 1)
                self.pos = 0
            out = self.encoded(self._order[self.pos], self.epoch)
            if out is not None:
                if not peek:
                    self.pos += 1
                return out
            self.pos += 1
            tried += 1
            if tried > 2 * len(self.conversations) + 2:
                raise UserError(f"no conversation of the chat dataset fits a {self.seq_len}-token "
                                "row or renders as alternating user/assistant turns: check the "
                                "data or raise model.seq_len")

    def _row(self) -> tuple[np.ndarray, np.ndarray]:
        width = self.seq_len + 1
        tokens = np.full(width, self.tokenizer.special_ids.bos, dtype=np.int64)
        mask = np.zeros(width, dtype=bool)
        used = cost = 0
        while True:
            seq, seq_mask = self._next_conversation(peek=True)
            body = len(seq) - prefix_length(self.direction)
            if cost + body + HEAD_SLOTS > width and used:
                break
            self._next_conversation(peek=False)
            tokens[used:used + len(seq)] = seq
            mask[used:used + len(seq)] = seq_mask
            used += len(seq)
            cost += body + HEAD_SLOTS
        return tokens, mask

    def next_batch(self) -> Batch:
        """The next (B, T) batch: targets outside the trained turns are ``IGNORE_INDEX``."""
        rows = [self._row() for _ in range(self.batch_size)]
        tokens = np.stack([r for r, _ in rows])
        mask = np.stack([m for _, m in rows])
        targets = np.where(mask[:, 1:], tokens[:, 1:], IGNORE_INDEX)
        return Batch(inputs=tokens[:, :-1].copy(), targets=targets.astype(np.int64))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "chat", "version": STATE_VERSION, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "chat" or state.get("version") != STATE_VERSION:
            raise ValueError("not a conversation-loader state of this version")
        self._set_epoch(int(state["epoch"]))
        self.pos = int(state["pos"])


class MixedLoader:
    """Mid-training batches: each batch is plain text with probability ``text_frac``, else
    conversations (trained on every turn); the choice is seeded by stream and batch number."""

    def __init__(self, chat: ConversationLoader, text: Any, text_frac: float, seed: int,
                 stream: int) -> None:
        self.chat, self.text, self.text_frac = chat, text, text_frac
        self.seed, self.stream, self.count = seed, stream, 0

    def next_batch(self) -> Batch:
        u = random.Random(f"{self.seed}:{self.stream}:{self.count}").random()
        self.count += 1
        return self.text.next_batch() if u < self.text_frac else self.chat.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "mix", "count": self.count, "chat": self.chat.state_dict(),
                "text": self.text.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "mix":
            raise ValueError("not a mixed-loader state")
        self.chat.load_state_dict(state["chat"])
        self.text.load_state_dict(state["text"])
        self.count = int(state["count"])


def chat_windows(conversations: Sequence[Any], tokenizer: Any, direction: Direction,
                 order: Direction, train_on: str | None, batch_size: int, seq_len: int,
                 max_rows: int) -> list[Batch]:
    """Validation batches of held-out conversations in one concrete order: one conversation
    per row, the first ``max_rows`` that fit, the same ones in every order (only the mask
    follows the order)."""
    loader = ConversationLoader(conversations, tokenizer, direction, batch_size=1,
                                seq_len=seq_len, train_on=train_on)
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for index in range(len(conversations)):
        if len(rows) == max_rows:
            break
        out = loader.encoded(index, 0, order=order)
        if out is None:
            continue
        tokens = np.full(seq_len + 1, tokenizer.special_ids.bos, dtype=np.int64)
        mask = np.zeros(seq_len + 1, dtype=bool)
        tokens[:len(out[0])], mask[:len(out[1])] = out
        rows.append((tokens, mask))
    batches = []
    for i in range(0, len(rows), batch_size):
        tokens = np.stack([t for t, _ in rows[i:i + batch_size]])
        mask = np.stack([m for _, m in rows[i:i + batch_size]])
        batches.append(Batch(tokens[:, :-1].copy(),
                             np.where(mask[:, 1:], tokens[:, 1:], IGNORE_INDEX)))
    return batches
