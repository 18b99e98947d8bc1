"""Language-modelling evaluation: cross-entropy, bits per byte, loss by position and per
document, over the same reading-order windows in every order.

Every held-out document is cut in reading order into windows of at most
:func:`~backlm.direction.body_capacity` tokens (:func:`~backlm.direction.piece_spans`, the
cut training uses); each window is scored on its own, starting at BOS (and the marker of the
order, for a bidirectional model). Every held-out token is therefore a target exactly once in
every order, and the bytes behind bits per byte are the same bytes in every order: a gap
between orders measures direction alone. Any concrete order can be asked of any model, which
gives the cross-direction matrix. Training validation uses the same functions.

By default the whole split is read; a token budget takes whole documents in file order until
it is spent, which is deterministic and the same subset in every order. Per-document sums are
kept (with a hash of each document's text) so two evaluations can be paired document by
document.

Special tokens (BOS, the marker) carry no bytes and are never targets. Loss by position groups
targets by their place in their window in the model's order, in powers of two: bucket ``k``
holds positions ``2**k .. 2**(k+1) - 1`` after BOS.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backlm.direction import (
    Direction,
    SpecialIds,
    body_capacity,
    encode_for,
    model_order,
    piece_spans,
    prefix_length,
)
from backlm.missing import mean_or_missing
from backlm.model import IGNORE_INDEX


@dataclass
class HeldOut:
    """Held-out documents, tokenized in reading order, in file order."""

    docs: list[np.ndarray]
    hashes: list[str]  # sha1 of each document's text, first 16 hex digits

    @property
    def tokens(self) -> int:
        return sum(len(d) for d in self.docs)


def held_out(shards: Sequence[Path], tokenizer: Any, max_tokens: int | None = None,
             threads: int = 2, chunk: int = 256) -> HeldOut:
    """The documents of ``shards`` in file order; with ``max_tokens``, whole documents until
    that many tokens are taken (the same subset for every order and every model)."""
    from backlm.data.shards import iter_texts

    out = HeldOut([], [])
    texts: list[str] = []
    taken = 0

    def flush() -> bool:
        nonlocal taken
        for text, ids in zip(texts, tokenizer.encode_batch(texts, threads), strict=True):
            if max_tokens is not None and taken >= max_tokens:
                return False
            if ids:
                out.docs.append(np.asarray(ids, dtype=np.int64))
                out.hashes.append(hashlib.sha1(text.encode("utf-8")).hexdigest()[:16])
                taken += len(ids)
        texts.clear()
        return True

    for shard in shards:
        for text in iter_texts(shard):
            texts.append(text)
            if len(texts) == chunk and not flush():
                return out
    flush()
    return out


def windows(data: HeldOut, seq_len: int) -> list[tuple[int, int, int]]:
    """``(document, start, end)`` reading-order windows that cover every held-out token once."""
    cap = body_capacity(seq_len)
    return [(i, a, b) for i, doc in enumerate(data.docs) for a, b in piece_spans(len(doc), cap)]


@dataclass
class WindowBatch:
    """Windows as one padded batch in a model's order."""

    inputs: np.ndarray  # (B, T) int64
    targets: np.ndarray  # (B, T) int64, IGNORE_INDEX where nothing is scored
    docs: np.ndarray  # (B,) document of each row
    positions: np.ndarray  # (B, T) reading-order position of each target in its document, -1


def window_batches(data: HeldOut, spans: Sequence[tuple[int, int, int]],
                   model_direction: Direction, order: Direction, ids: SpecialIds,
                   rows: int, cells: int | None = None) -> Iterator[WindowBatch]:
    """``spans`` read by a ``model_direction`` model in the concrete ``order``, longest first
    (similar lengths share a batch, so little is padding), as batches of at most ``cells``
    input tokens (default: ``rows`` of the longest window; a batch holds at least one window).

    A batch of short windows holds more of them, so every forward pass is about as large as
    the first: few passes, each with matmuls big enough to run near the machine's peak, and
    no more memory than ``rows`` full windows. Each window is still its own row, scored on
    its own.
    """
    head = prefix_length(model_direction)
    ranked = sorted(spans, key=lambda s: s[1] - s[2])

    def width(span: tuple[int, int, int]) -> int:  # inputs of one window: BOS [marker] body
        return max(1, head + span[2] - span[1] - 1)

    budget = cells if cells is not None else rows * width(ranked[0]) if ranked else 1
    first = 0
    while first < len(ranked):
        group = ranked[first:first + max(1, budget // width(ranked[first]))]
        first += len(group)
        encoded = [encode_for(data.docs[d][a:b], model_direction, order, ids)
                   for d, a, b in group]
        span = max(len(seq) for seq, _ in encoded) - 1
        x = np.full((len(group), span), ids.bos, dtype=np.int64)
        y = np.full((len(group), span), IGNORE_INDEX, dtype=np.int64)
        pos = np.full((len(group), span), -1, dtype=np.int64)
        for r, ((seq, mask), (_, a, b)) in enumerate(zip(encoded, group, strict=True)):
            x[r, : len(seq) - 1] = seq[:-1]
            y[r, : len(seq) - 1] = np.where(mask[1:], seq[1:], IGNORE_INDEX)
            # the body's targets are its last b - a tokens, in the model's order
            pos[r, len(seq) - 1 - (b - a): len(seq) - 1] = model_order(np.arange(a, b), order)
        yield WindowBatch(x, y, np.asarray([d for d, _, _ in group]), pos)


@dataclass
class LossSums:
    """Summed loss over held-out tokens; add several (e.g. across ranks) before dividing."""

    nats: float = 0.0
    bytes: float = 0.0
    tokens: float = 0.0
    pos_nats: list[float] = field(default_factory=list)
    pos_tokens: list[float] = field(default_factory=list)
    max_position: int = 0  # the longest window: no position goes past it
    doc_nats: np.ndarray | None = None  # per held-out document (None: not kept)
    doc_bytes: np.ndarray | None = None
    doc_tokens: np.ndarray | None = None

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats per text token."""
        return mean_or_missing(self.nats, self.tokens)

    @property
    def bpb(self) -> float:
        """Bits per UTF-8 byte of text."""
        return mean_or_missing(self.nats / math.log(2), self.bytes)

    def by_position(self) -> list[dict[str, Any]]:
        """Mean loss per position bucket (only buckets that hold tokens)."""
        out = []
        for k, (nats, toks) in enumerate(zip(self.pos_nats, self.pos_tokens, strict=True)):
            if toks > 0:
                last = min(2 ** (k + 1) - 1, self.max_position or 2 ** (k + 1) - 1)
                out.append({"first": 2**k, "last": last, "loss": nats / toks,
                            "tokens": int(toks)})
        return out


def score(model: Any, batches: Iterator[WindowBatch], token_bytes: Any, device: Any,
          autocast: Any = None, n_docs: int = 0, max_position: int = 0) -> LossSums:
    """Sum ``model``'s loss over window batches; with ``n_docs``, per document too.

    ``token_bytes`` is a float tensor of UTF-8 bytes per id (0 for special tokens) on
    ``device``; ``autocast`` an optional context manager for the forward passes. The passes
    run in inference mode: no autograd graph, no saved activations, and the loss head
    without gradients never materialises the logits (:func:`backlm.model.kernels.head_loss`).
    """
    import torch

    buckets = max(1, max_position.bit_length())
    sums = LossSums(pos_nats=[0.0] * buckets, pos_tokens=[0.0] * buckets,
                    max_position=max_position)
    per_doc = torch.zeros(3, max(n_docs, 1), dtype=torch.float64, device=device)
    pos_sums = torch.zeros(2, buckets, dtype=torch.float64, device=device)
    total = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.inference_mode(), autocast if autocast is not None else contextlib.nullcontext():
        for batch in batches:
            x = torch.from_numpy(batch.inputs).to(device)
            y = torch.from_numpy(batch.targets).to(device)
            loss = model(x, y, loss_reduction="none").double()
            tb = (token_bytes[y.clamp(min=0)] * (y != IGNORE_INDEX)).double()
            counted = (tb > 0).double()  # special tokens carry no bytes: never scored
            nats = loss * counted
            total += torch.stack([nats.sum(), tb.sum(), counted.sum()])
            pos = torch.arange(1, x.size(1) + 1, device=device).expand_as(x)
            bucket = (torch.frexp(pos.double()).exponent - 1).clamp(0, buckets - 1).flatten()
            pos_sums[0].index_add_(0, bucket, nats.flatten())
            pos_sums[1].index_add_(0, bucket, counted.flatten())
            if n_docs:
                docs = torch.from_numpy(batch.docs).to(device)
                per_doc.index_add_(1, docs, torch.stack([nats.sum(1), tb.sum(1),
                                                         counted.sum(1)]))
    sums.nats, sums.bytes, sums.tokens = total.tolist()
    sums.pos_nats, sums.pos_tokens = pos_sums.tolist()
    if n_docs:
        sums.doc_nats, sums.doc_bytes, sums.doc_tokens = per_doc.cpu().numpy()
    return sums


def lm_shards(data_dir: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Held-out shards per split and notes on what is missing.

    A missing val split is an error (the experiment's data moved); a missing OOD split (usual
    for imported datasets) only adds a note.
    """
    from backlm.data.shards import list_shards

    found = {"val": list_shards(data_dir, "val")}
    notes = []
    ood = sorted(Path(data_dir).glob("ood_*.parquet"))
    if ood:
        found["ood"] = ood
    else:
        notes.append(f"no ood_*.parquet in {data_dir}: OOD language modelling skipped")
    return found, notes


def evaluate_text(loaded: Any, data: HeldOut, order: Direction, *,
                  batch_size: int) -> LossSums:
    """Loss of a loaded model (:class:`backlm.experiment.loading.LoadedModel`) on ``data`` read in the
    concrete ``order``, per document too."""
    import torch

    seq_len = loaded.model.cfg.seq_len
    tok = loaded.tokenizer
    token_bytes = torch.tensor(tok.token_byte_lengths(), dtype=torch.float32,
                               device=loaded.device)
    # batches of batch_size full windows' worth of tokens: short windows go many to a pass
    batches = window_batches(data, windows(data, seq_len), loaded.direction, order,
                             tok.special_ids, batch_size, cells=batch_size * seq_len)
    return score(loaded.model, batches, token_bytes, loaded.device, n_docs=len(data.docs),
                 max_position=seq_len)


def lm_record(split: str, sums: LossSums, data: HeldOut) -> dict[str, Any]:
    """One split's JSON record: loss, bpb, counts, loss by position, and per document the
    text hash, tokens, bytes and nats (what a paired comparison needs)."""
    record: dict[str, Any] = {
        "split": split, "loss": sums.loss, "bpb": sums.bpb, "tokens": int(sums.tokens),
        "bytes": int(sums.bytes), "documents": len(data.docs),
        "by_position": sums.by_position(),
    }
    if sums.doc_nats is not None:
        record["per_document"] = {
            "hash": data.hashes, "tokens": [int(t) for t in sums.doc_tokens],
            "bytes": [int(b) for b in sums.doc_bytes],
            "nats": [round(float(n), 6) for n in sums.doc_nats],
        }
    return record
