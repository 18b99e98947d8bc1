"""Language-modelling evaluation: cross-entropy, bits per byte and loss by position.

Held-out text goes through the same :class:`~backlm.data.loader.PackedLoader` as training
(one finite, unshuffled pass), so a model is measured on exactly the rows it would be
validated on. Any concrete order can be asked of any model, which gives the cross-direction
matrix: a backward model read forward, a forward model read backward, and a bidirectional
model with each marker.

Special tokens (BOS) carry no bytes and are left out of both the loss and the bytes, so the
loss is per text token and bits per byte are comparable across tokenizers. Loss by position
groups targets by how far into their document (in the model's order) they sit, in powers of
two: bucket ``k`` holds positions ``2**k .. 2**(k+1) - 1`` after the document's BOS.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.direction import IGNORE_INDEX, Direction, loader_direction

LM_SPLITS = ("val", "ood")


@dataclass
class LossSums:
    """Summed loss over held-out tokens; add several (e.g. across ranks) before dividing."""

    nats: float = 0.0
    bytes: float = 0.0
    tokens: float = 0.0
    pos_nats: list[float] = field(default_factory=list)
    pos_tokens: list[float] = field(default_factory=list)
    max_position: int = 0  # the row length: no document position goes past it

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats per text token."""
        return self.nats / max(self.tokens, 1)

    @property
    def bpb(self) -> float:
        """Bits per UTF-8 byte of text."""
        return self.nats / (math.log(2) * max(self.bytes, 1))

    def by_position(self) -> list[dict[str, Any]]:
        """Mean loss per position bucket (only buckets that hold tokens)."""
        out = []
        for k, (nats, toks) in enumerate(zip(self.pos_nats, self.pos_tokens, strict=True)):
            if toks > 0:
                last = min(2 ** (k + 1) - 1, self.max_position or 2 ** (k + 1) - 1)
                out.append({"first": 2**k, "last": last, "loss": nats / toks,
                            "tokens": int(toks)})
        return out


def accumulate_loss(
    model: Any,
    batches: Iterable[Any],
    token_bytes: Any,
    device: Any,
    max_tokens: int,
    autocast: Any = None,
    bos: int | None = None,
) -> LossSums:
    """Sum the per-token loss of ``model`` over ``batches`` until ``max_tokens`` inputs are seen.

    ``token_bytes`` is a float tensor of UTF-8 bytes per id (0 for special tokens) on
    ``device``; ``autocast`` an optional context manager for the forward passes. With ``bos``
    the sums also hold loss by position (see the module docstring).
    """
    import torch

    sums = LossSums()
    seen = 0
    with torch.no_grad(), autocast if autocast is not None else contextlib.nullcontext():
        for batch in batches:
            x = torch.from_numpy(batch.inputs).to(device)
            y = torch.from_numpy(batch.targets).to(device)
            loss = model(x, y, loss_reduction="none").float()
            valid = y != IGNORE_INDEX
            tb = token_bytes[y.clamp(min=0)] * valid
            counted = tb > 0  # special tokens (BOS) carry no bytes: excluded from bpb
            sums.nats += float((loss * counted).sum())
            sums.bytes += float(tb.sum())
            sums.tokens += float(counted.sum())
            if bos is not None:
                _add_positions(sums, x, loss, counted, bos)
            seen += batch.inputs.size
            if seen >= max_tokens:
                break
    return sums


def _add_positions(sums: LossSums, x: Any, loss: Any, counted: Any, bos: int) -> None:
    import torch

    length = x.size(1)
    buckets = length.bit_length()
    if not sums.pos_nats:
        sums.pos_nats, sums.pos_tokens = [0.0] * buckets, [0.0] * buckets
        sums.max_position = length
    idx = torch.arange(length, device=x.device).expand_as(x)
    # Rows start at a BOS, so the latest BOS at or before each input marks its document.
    start = torch.where(x == bos, idx, torch.zeros_like(idx)).cummax(dim=1).values
    pos = (idx - start + 1).float()  # the target after input t is token number `pos`
    bucket = (torch.frexp(pos).exponent - 1).clamp(0, buckets - 1).flatten()
    w = counted.float().flatten()
    nats = torch.bincount(bucket, weights=loss.flatten() * w, minlength=buckets)
    toks = torch.bincount(bucket, weights=w, minlength=buckets)
    for k in range(buckets):
        sums.pos_nats[k] += float(nats[k])
        sums.pos_tokens[k] += float(toks[k])


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


def evaluate_text(
    loaded: Any, shards: list[Path], order: Direction | str, *, batch_size: int,
    max_tokens: int, threads: int = 2,
) -> LossSums:
    """Loss of a loaded model (:class:`backlm.inference.LoadedModel`) on ``shards`` read in
    the concrete ``order``."""
    import torch

    from backlm.data.loader import PackedLoader

    direction, mix = loader_direction(loaded.direction, order)
    tok = loaded.tokenizer
    loader = PackedLoader(shards, tok, direction, batch_size=batch_size,
                          seq_len=loaded.model.cfg.seq_len, seed=0, mix=mix, loop=False,
                          shuffle=False, threads=threads)
    token_bytes = torch.tensor(tok.token_byte_lengths(), dtype=torch.float32,
                               device=loaded.device)
    return accumulate_loss(loaded.model, loader, token_bytes, loaded.device, max_tokens,
                           bos=tok.special_ids.bos)


def lm_record(split: str, sums: LossSums) -> dict[str, Any]:
    """One split's JSON record: loss, bpb, counts and loss by position."""
    return {"split": split, "loss": sums.loss, "bpb": sums.bpb, "tokens": int(sums.tokens),
            "bytes": int(sums.bytes), "by_position": sums.by_position()}
