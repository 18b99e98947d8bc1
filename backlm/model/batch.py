"""Rows that join and leave while others decode (a server's continuous batching):
:class:`BatchDecoder` keeps a ``(L, slots, H, max_len, D)`` KV cache, each slot at its own
position, and steps any set of its slots at once.

A new row is prefilled alone through the model's forward, straight into its slot's rows of the
cache. On a CPU a step is one fused C call for all the rows it names (every weight read once
for all of them, each row attending to its own positions); elsewhere (GPU, no C kernels) each
row takes the model's cached forward over its slot, one after the other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backlm.model.decoder import KVCache, decode_dtype, forward, fused_usable
from backlm.model.fused import FusedStep


class BatchDecoder:
    """``slots`` rows of up to ``max_len`` positions each (prompt and generated tokens).

    :meth:`add` prefills a prompt into a free slot, :meth:`step` feeds one token to each listed
    slot and returns their logits, :meth:`release` frees a slot for a later :meth:`add`.
    ``fused=None`` takes the C step where it can run (``False`` forces the model's forward);
    the precision is the model's decoding precision (:func:`backlm.model.decode.decode_dtype`),
    or ``dtype``.
    """

    def __init__(self, model: Any, max_len: int, slots: int, fused: bool | None = None,
                 dtype: torch.dtype | None = None) -> None:
        cfg = model.cfg
        self.model, self.cfg, self.max_len, self.slots = model, cfg, max_len, slots
        self.dtype = decode_dtype(model) if dtype is None else dtype
        usable = fused_usable(model, self.dtype)
        self.fused = usable if fused is None else fused and usable
        device = model.lm_head.weight.device
        shape = (cfg.depth, slots, cfg.n_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=device)
        self.positions = [0] * slots
        self._free = list(range(slots - 1, -1, -1))  # pop() hands out slot 0 first
        if self.fused:
            self.kernel = FusedStep(model, self.dtype, self.k, self.v, slots)
            self.out = torch.empty(slots, cfg.vocab_size)

    @property
    def free(self) -> int:
        """How many slots :meth:`add` can still fill."""
        return len(self._free)

    def _view(self, slot: int) -> KVCache:
        """A batch-1 cache whose tensors are the slot's rows of the shared cache."""
        cfg = self.cfg
        view = KVCache(cfg.depth, 1, cfg.n_heads, cfg.head_dim, self.max_len)
        view.k, view.v = self.k[:, slot:slot + 1], self.v[:, slot:slot + 1]
        view.pos = self.positions[slot]
        return view

    @torch.inference_mode()
    def add(self, prompt: list[int]) -> tuple[int, Tensor]:
        """Prefill ``prompt`` into a free slot: the slot and the logits ``(V,)`` after it."""
        if not prompt:
            raise ValueError("a row needs at least one prompt token (e.g. BOS)")
        if not self._free:
            raise ValueError(f"all {self.slots} slots are taken: release one first")
        if len(prompt) > self.max_len:
            raise ValueError(f"a prompt of {len(prompt)} tokens > max_len {self.max_len}")
        slot = self._free.pop()
        self.positions[slot] = 0
        ids = torch.tensor([prompt], dtype=torch.long, device=self.k.device)
        try:
            logits = forward(self.model, self.dtype, ids, self._view(slot))[0]
        except BaseException:
            self._free.append(slot)
            raise
        self.positions[slot] = len(prompt)
        return slot, logits

    @torch.inference_mode()
    def step(self, slots: list[int], tokens: list[int] | Tensor) -> Tensor:
        """Logits ``(len(slots), V)`` after one more token for each listed slot (in that order;
        ``tokens[i]`` goes to ``slots[i]``). The returned tensor may be reused by the next
        step."""
        tokens = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        if len(tokens) != len(slots) or len(set(slots)) != len(slots):
            raise ValueError(f"{len(tokens)} tokens for slots {slots}: one per distinct slot")
        for slot in slots:
            if not 0 <= slot < self.slots or slot in self._free:
                raise ValueError(f"slot {slot} holds no row: add() one first")
            if self.positions[slot] >= self.max_len:
                raise ValueError(f"KV cache full: slot {slot} would pass max_len {self.max_len}")
        if not self.fused:
            out = []
            for slot, token in zip(slots, tokens, strict=True):
                ids = torch.tensor([[token]], dtype=torch.long, device=self.k.device)
                out.append(forward(self.model, self.dtype, ids, self._view(slot))[0])
                self.positions[slot] += 1
            return torch.stack(out)
        # one (3, n) tensor per step: tokens, positions, slots (each row contiguous)
        rows = torch.tensor([tokens, [self.positions[s] for s in slots], slots],
                            dtype=torch.int64)
        self.kernel.rows(rows[0], rows[1], rows[2], self.out)
        for slot in slots:
            self.positions[slot] += 1
        return self.out[:len(slots)]

    def release(self, slot: int) -> None:
        """Free ``slot`` for a later :meth:`add` (its cache rows are overwritten then)."""
        if not 0 <= slot < self.slots or slot in self._free:
            raise ValueError(f"slot {slot} holds no row to release")
        self.positions[slot] = 0
        self._free.append(slot)
