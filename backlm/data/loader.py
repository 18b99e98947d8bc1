"""From parquet shards to direction-correct, BOS-aligned training batches.

Pipeline, per rank: a seeded stream of documents (row groups shuffled per epoch and split
across ranks, rows shuffled within a row group) → reading-order token ids (from the shard's
token cache, :mod:`backlm.data.token_cache`, when valid; else batched tiktoken on several
threads: the same ids) → reading-order pieces → per-piece order transform (:mod:`backlm.direction`) →
best-fit packing into rows of ``seq_len + 1`` tokens that each start at a piece's BOS.

Pieces (DESIGN.md §1): a document longer than a row is cut in reading order into pieces of at
most :func:`~backlm.direction.body_capacity` tokens before any order is applied, and every
piece costs its body plus :data:`~backlm.direction.HEAD_SLOTS` (BOS and the marker's slot) in
every direction. Best-fit packing then takes, over and over, the longest buffered piece that
still fits whole; when none fits, the shortest is cut at the same reading-order point to fill
the row, and its remainder goes back into the buffer as a piece of its own. Nothing is
dropped, and forward, backward and bidirectional runs with one seed put the same reading-order
spans into the same rows: forward and backward rows end with the unused marker slots as
padding (no loss). Differences between directions come from direction alone.

The loader's :meth:`PackedLoader.state_dict` names the stream position and the pieces held in
the packing buffer, so :meth:`PackedLoader.load_state_dict` resumes at the exact next batch.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from backlm.data.shards import open_shard, read_row_group
from backlm.data.token_cache import open_all
from backlm.direction import (
    HEAD_SLOTS,
    Direction,
    SpecialIds,
    body_capacity,
    document_order,
    encode_document_array,
    piece_spans,
)
from backlm.errors import UserError
from backlm.model import IGNORE_INDEX

STATE_VERSION = 2  # 2: reading-order pieces (1 cropped in model order and dropped the rest)


class TokenizerLike(Protocol):
    """What the loader needs of a tokenizer."""

    special_ids: SpecialIds

    def encode_batch(self, texts: list[str], num_threads: int = ...) -> list[list[int]]: ...


@dataclass(frozen=True)
class Batch:
    """One packed batch: ``inputs`` and ``targets`` are int64 arrays of shape (B, T)."""

    inputs: np.ndarray
    targets: np.ndarray

    @property
    def num_targets(self) -> int:
        """Number of targets that carry loss."""
        return int((self.targets != IGNORE_INDEX).sum())


@dataclass
class _Piece:
    """A reading-order span of one document, waiting to be packed."""

    key: tuple[int, int, int]  # (epoch, unit position, row): where the stream found its document
    start: int  # where the span starts in the document (reading order)
    body: np.ndarray  # the span's tokens, reading order
    order: Direction  # the concrete order its document was drawn

    @property
    def end(self) -> int:
        return self.start + len(self.body)

    @property
    def cost(self) -> int:
        """Row tokens the piece takes in packing: the same in every direction."""
        return len(self.body) + HEAD_SLOTS


def doc_id(key: tuple[int, int, int]) -> int:
    """A stable integer for a stream position (seeds the bidirectional order choice)."""
    epoch, unit, row = key
    return ((epoch * 1_000_003 + unit) * 1_000_000_007 + row) & ((1 << 63) - 1)


class PackedLoader:
    """Packed (B, T) batches from parquet shards, in one direction, resumable exactly."""

    def __init__(
        self,
        shards: Sequence[Path],
        tokenizer: TokenizerLike,
        direction: Direction,
        *,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        mix: float = 0.5,
        rank: int = 0,
        world_size: int = 1,
        docs_per_batch: int = 256,
        buffer_docs: int = 512,
        threads: int = 2,
        loop: bool = True,
        shuffle: bool = True,
        track: bool = False,
        token_cache: bool = True,
    ) -> None:
        if batch_size < 1 or seq_len < HEAD_SLOTS:
            raise UserError(f"batch size must be at least 1 and sequence length at least "
                            f"{HEAD_SLOTS}")
        if not shards:
            raise UserError("no shards to read: run `backlm data prepare` first")
        self.direction = direction
        self.tokenizer = tokenizer
        self.ids = tokenizer.special_ids
        self.batch_size, self.seq_len = batch_size, seq_len
        self.capacity = body_capacity(seq_len)  # the longest piece body
        self.seed, self.mix = seed, mix
        self.rank, self.world_size = rank, world_size
        self.docs_per_batch, self.buffer_docs = docs_per_batch, max(1, buffer_docs)
        self.threads, self.loop, self.shuffle = threads, loop, shuffle
        # With track=True each batch records, per row and piece: (stream key, reading-order
        # start, end, tokens the piece takes in the row).
        self.track = track
        self.provenance: list[list[tuple[tuple[int, int, int], int, int, int]]] = []
        self.shards = [Path(p) for p in shards]
        self._files = [open_shard(p) for p in self.shards]
        self._units = [(s, g) for s, pf in enumerate(self._files)
                       for g in range(pf.num_row_groups)]
        if not self._units:
            raise UserError(f"the shards hold no documents: {self.shards[0].parent}")
        # Fewer row groups than ranks: every rank reads every row group, taking its own rows.
        self._row_stride = len(self._units) < world_size
        self._units_cache: tuple[int, list[tuple[int, int]]] = (-1, [])
        self._order_cache: tuple[Any, tuple[int, int, list[int]]] = (None, (0, 0, []))
        self._texts: dict[tuple[int, int], list[str]] = {}  # a few row groups' texts
        # Per shard its valid token cache (backlm.data.token_cache) or None: read and tokenize.
        # cache_notes: one line per cache file found unusable.
        self._cache, self.cache_notes = ([None] * len(self.shards), []) if not token_cache else \
            open_all(self.shards, self._files, tokenizer)
        self._cursor = (0, 0, 0)  # next (epoch, unit position, row) not yet tokenized
        self._skip = 0  # pieces of the document at the cursor that start before this are done
        self._buffer: list[tuple[int, int]] = []  # sorted (cost, seq) of buffered pieces
        self._pieces: dict[int, _Piece] = {}
        self._seq = 0
        self._pending: deque[_Piece] = deque()
        self._exhausted = False
        self._row_prov: list[list[tuple[tuple[int, int, int], int, int, int]]] = []

    # --- document stream ---------------------------------------------------------------

    def _epoch_units(self, epoch: int) -> list[tuple[int, int]]:
        if self._units_cache[0] == epoch:
            return self._units_cache[1]
        units = list(self._units)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(units)
        if not self._row_stride:
            units = units[self.rank :: self.world_size]
        self._units_cache = (epoch, units)
        return units

    def _unit_order(self, epoch: int, pos: int) -> tuple[int, int, list[int]]:
        """(shard, row group, the rows this rank takes in stream order) of a stream unit."""
        if self._order_cache[0] == (epoch, pos):
            return self._order_cache[1]  # read-aheads often take a row group in several bites
        shard, group = self._epoch_units(epoch)[pos]
        order = list(range(self._files[shard].metadata.row_group(group).num_rows))
        if self.shuffle:
            seed = (self.seed * 7919 + epoch) * 1_000_003 + shard * 65_537 + group
            random.Random(seed).shuffle(order)
        if self._row_stride:
            order = order[self.rank :: self.world_size]
        self._order_cache = ((epoch, pos), (shard, group, order))
        return shard, group, order

    def _group_texts(self, shard: int, group: int) -> list[str]:
        if (shard, group) not in self._texts:
            if len(self._texts) >= 8:
                self._texts.clear()
            self._texts[shard, group] = read_row_group(self._files[shard], group,
                                                       self.shards[shard])
        return self._texts[shard, group]

    def _bodies(self, refs: Sequence[tuple[int, int, int]]) -> list[np.ndarray]:
        """Reading-order token ids of documents named by (shard, row group, row): from the
        token cache where valid, else read and tokenized in one batch."""
        out: list[Any] = [None] * len(refs)
        todo, texts = [], []
        for i, (shard, group, row) in enumerate(refs):
            cache = self._cache[shard]
            if cache is not None:
                out[i] = cache.doc(group, row)
            else:
                todo.append(i)
                texts.append(self._group_texts(shard, group)[row])
        for i, body in zip(todo, self._tokenize(texts) if texts else [], strict=True):
            out[i] = body
        return out

    def _refs(self, keys: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """(shard, row group, row) of documents named by their stream keys."""
        units = [self._unit_order(epoch, pos) for epoch, pos, _ in keys]
        return [(s, g, order[r]) for (s, g, order), (*_, r) in zip(units, keys, strict=True)]

    def _read_ahead(self) -> None:
        """Tokenize the next ``docs_per_batch`` documents of the stream into ``_pending``."""
        keys: list[tuple[int, int, int]] = []
        epoch, pos, row = self._cursor
        empty_epochs = 0
        while len(keys) < self.docs_per_batch:
            units = self._epoch_units(epoch)
            if pos >= len(units):
                if not self.loop or empty_epochs > 1:
                    self._exhausted = True
                    break
                epoch, pos, row = epoch + 1, 0, 0
                empty_epochs += 1
                continue
            order = self._unit_order(epoch, pos)[2]
            take = order[row : row + self.docs_per_batch - len(keys)]
            keys += ((epoch, pos, row + r_i) for r_i in range(len(take)))
            row += len(take)
            if row >= len(order):
                pos, row = pos + 1, 0
            if take:
                empty_epochs = 0
        self._cursor = (epoch, pos, row)
        self._pending.extend(self._encode(keys, self._bodies(self._refs(keys)), self._skip))
        self._skip = 0

    def _tokenize(self, texts: list[str]) -> list[np.ndarray]:
        token_lists = self.tokenizer.encode_batch(texts, self.threads)
        lengths = [len(t) for t in token_lists]
        # One C-level pass into a flat array; documents become views into it.
        flat = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int64,
                           count=sum(lengths))
        bounds = np.cumsum([0, *lengths])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _encode(self, keys: list[tuple[int, int, int]], bodies: list[np.ndarray],
                skip: int = 0) -> list[_Piece]:
        """The reading-order pieces of these documents (of the first, those from ``skip``)."""
        pieces = []
        for i, (key, body) in enumerate(zip(keys, bodies, strict=True)):
            order = document_order(self.direction, doc_id(key), self.seed, self.mix)
            # an empty document has no spans (it would only add a stray BOS)
            pieces.extend(_Piece(key, a, body[a:b], order)
                          for a, b in piece_spans(len(body), self.capacity)
                          if i or a >= skip)
        return pieces

    # --- packing ----------------------------------------------------------------------

    def _fill_buffer(self) -> None:
        while len(self._pieces) < self.buffer_docs:
            if not self._pending:
                if self._exhausted:
                    return
                self._read_ahead()
                continue
            self._push(self._pending.popleft())

    def _push(self, piece: _Piece) -> None:
        bisect.insort(self._buffer, (piece.cost, self._seq))
        self._pieces[self._seq] = piece
        self._seq += 1

    def _pop(self, index: int) -> _Piece:
        _, seq = self._buffer.pop(index)
        return self._pieces.pop(seq)

    def _take(self, space: int) -> _Piece | None:
        """The longest buffered piece that fits in ``space``; else the shortest cut to fill it
        (its reading-order remainder goes back into the buffer); None when no body fits."""
        i = bisect.bisect_right(self._buffer, (space, float("inf"))) - 1
        if i >= 0:
            # Among pieces of this cost take the one buffered first, so order stays stable.
            j = bisect.bisect_left(self._buffer, (self._buffer[i][0], -1))
            return self._pop(j)
        keep = space - HEAD_SLOTS
        if keep < 1:
            return None
        piece = self._pop(0)
        self._push(_Piece(piece.key, piece.start + keep, piece.body[keep:], piece.order))
        return _Piece(piece.key, piece.start, piece.body[:keep], piece.order)

    def _pack_row(self) -> tuple[np.ndarray, np.ndarray] | None:
        cap = self.seq_len + 1
        toks, masks, reserved, filled, prov = [], [], 0, 0, []
        while reserved < cap:
            self._fill_buffer()
            if not self._buffer:
                break
            piece = self._take(cap - reserved)
            if piece is None:
                break
            seq, mask = encode_document_array(piece.body, self.direction, self.ids, piece.order)
            toks.append(seq)
            masks.append(mask)
            reserved += piece.cost
            filled += len(seq)
            prov.append((piece.key, piece.start, piece.end, len(seq)))
        if not filled:
            return None
        if filled < cap:
            # unused marker slots (forward, backward), a gap too small for a piece, or the end
            # of a finite pass: padding with ignored targets
            toks.append(np.full(cap - filled, self.ids.bos, dtype=np.int64))
            masks.append(np.zeros(cap - filled, dtype=bool))
        if self.track:
            self._row_prov.append(prov)
        return np.concatenate(toks), np.concatenate(masks)

    def next_batch(self) -> Batch:
        """The next (B, T) batch; raises StopIteration after a finite (``loop=False``) pass."""
        rows, self._row_prov = [], []
        for _ in range(self.batch_size):
            row = self._pack_row()
            if row is None:
                break
            rows.append(row)
        if not rows:
            raise StopIteration
        self.provenance = self._row_prov
        toks = np.stack([r[0] for r in rows])
        masks = np.stack([r[1] for r in rows])
        inputs = toks[:, :-1].copy()
        targets = np.where(masks[:, 1:], toks[:, 1:], IGNORE_INDEX)
        return Batch(inputs, targets)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    # --- exact resume -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: the stream cursor of the first piece not in the buffer (its
        document's key and reading-order start), and the buffered pieces in buffering order
        (key, start, end)."""
        held = [self._pieces[s] for _, s in sorted(self._buffer, key=lambda b: b[1])]
        first = self._pending[0] if self._pending else None
        cursor = [*first.key, first.start] if first else [*self._cursor, self._skip]
        return {
            "version": STATE_VERSION,
            "direction": self.direction.value,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "cursor": cursor,
            "exhausted": self._exhausted and not self._pending,
            "buffer": [[*p.key, p.start, p.end] for p in held],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict` (same shards, seed and direction)."""
        if state.get("version") != STATE_VERSION:
            raise UserError(f"dataloader state version {state.get('version')!r} is not "
                            f"{STATE_VERSION}: it was saved by a backlm that packed data "
                            "differently; finish that run with the version that started it")
        for key in ("direction", "seed", "rank", "world_size"):
            mine = getattr(self, key)
            if state.get(key) != mine:  # a saved direction's name equals the Direction
                raise UserError(f"dataloader state was saved with {key}={state.get(key)!r}, "
                                f"this run has {mine!r}")
        self._buffer, self._pieces, self._seq = [], {}, 0
        self._pending.clear()
        *cursor, self._skip = state["cursor"]
        self._cursor = tuple(cursor)  # type: ignore[assignment]
        self._exhausted = bool(state["exhausted"])
        held = [(tuple(h[:3]), h[3], h[4]) for h in state["buffer"]]
        keys = [k for k, _, _ in held]
        for (key, start, end), body in zip(held, self._bodies(self._refs(keys)), strict=True):
            order = document_order(self.direction, doc_id(key), self.seed, self.mix)
            self._push(_Piece(key, start, body[start:end], order))  # type: ignore[arg-type]

    def texts_for(self, keys: Sequence[tuple[int, int, int]]) -> list[str]:
        """Source texts of documents named by their stream keys."""
        return [self._group_texts(shard, group)[row] for shard, group, row in self._refs(keys)]
