"""The decoders the generation engine (:mod:`backlm.model.decode`) steps: :class:`KVCache`,
and :class:`Decoder`, one prompt's logits then one token per row at a time.

At a few rows on an fp32 or bf16 CPU model a step is one fused C call
(:class:`backlm.model.fused.FusedStep`); greedy decoding of one row runs many steps per call
(:func:`greedy_tokens`). Elsewhere (GPU, caller's autocast, no C kernels) a step is the model's
own cached forward, under bf16 autocast when the decoder's precision is bf16. Both fill the
same :class:`KVCache`. Knows no direction, tokenizer or loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from backlm.model import fused
from backlm.model.fused import FusedStep, Threads


class KVCache:
    """Per-layer keys and values for incremental decoding, preallocated to ``max_len``.

    ``pos`` is the number of positions already stored; it advances once the last layer has
    inserted, so every layer of one forward pass sees the same offset.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int):
        self.n_layers, self.max_len = n_layers, max_len
        self.shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.pos = 0

    def insert(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``/``v`` of shape ``(B, H, T, D)`` at ``pos``; return all keys/values so far."""
        if self.k is None or self.k.dtype != k.dtype:
            # allocated lazily so the cache follows whatever dtype autocast produces
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        t0, t1 = self.pos, self.pos + k.size(2)
        if t1 > self.max_len:
            raise ValueError(f"KV cache full: {t1} positions > max_len {self.max_len}")
        self.k[layer, :, :, t0:t1] = k
        self.v[layer, :, :, t0:t1] = v
        if layer == self.n_layers - 1:
            self.pos = t1
        return self.k[layer, :, :, :t1], self.v[layer, :, :, :t1]

    def replicate(self, rows: int) -> KVCache:
        """A cache of ``rows`` rows, each a copy of this batch-1 cache's positions."""
        L, _, H, T, D = self.shape
        out = KVCache(L, rows, H, D, T)
        if self.k is not None and self.v is not None:
            out.k = self.k.expand(-1, rows, -1, -1, -1).contiguous()
            out.v = self.v.expand(-1, rows, -1, -1, -1).contiguous()
        out.pos = self.pos
        return out


def decode_dtype(model: Any) -> torch.dtype:
    """The precision ``model`` decodes in: its ``decode_dtype`` attribute where set (the loader
    sets the run's precision there), else its parameters' dtype."""
    return getattr(model, "decode_dtype", None) or model.lm_head.weight.dtype


def fused_usable(model: Any, dtype: torch.dtype | None = None) -> bool:
    """Whether the fused C step can run this model now (in ``dtype``, default its own)."""
    return fused.usable(model, decode_dtype(model) if dtype is None else dtype)


def forward(model: Any, dtype: torch.dtype, ids: Tensor, cache: KVCache,
            every: bool = False) -> Tensor:
    """The model's cached forward in ``dtype``: logits after ``ids`` ``(B, T)``, the last
    position's ``(B, V)`` or ``every`` position's ``(B, T, V)``. A precision other than the
    parameters' runs under autocast (unless the caller has autocast on already)."""
    device = model.lm_head.weight.device.type
    own = dtype == model.lm_head.weight.dtype or torch.is_autocast_enabled(device)
    with contextlib.nullcontext() if own else torch.autocast(device, dtype=dtype):
        h = model.hidden(ids, cache)
        return model.logits(h if every else h[:, -1])


class Decoder:
    """Logits for a prompt, then for one token per row at a time, with keys and values cached.

    ``rows`` is the batch: a one-row prompt is prefilled once and its cache copied into every
    row; a prompt of ``rows`` rows (equal lengths) is prefilled as it is. ``dtype`` is the
    precision (fp32 or bf16; default :func:`decode_dtype`, the run's): bf16 runs the model's
    forward under bf16 autocast, and the C step on bf16 copies of the weights with a bf16 KV
    cache. ``fused=None`` picks the C step (every row count) when :func:`fused_usable`;
    ``False`` forces the model's own forward (the reference the tests compare against).
    """

    def __init__(self, model: Any, max_len: int, fused: bool | None = None, rows: int = 1,
                 dtype: torch.dtype | None = None) -> None:
        cfg = model.cfg
        self.model, self.cfg, self.rows = model, cfg, rows
        self.dtype = decode_dtype(model) if dtype is None else dtype
        self.cache = KVCache(cfg.depth, rows, cfg.n_heads, cfg.head_dim, max_len)
        usable = fused_usable(model, self.dtype)
        self.fused = usable if fused is None else fused and usable
        if self.fused:
            self.cache.k = torch.zeros(self.cache.shape, dtype=self.dtype)
            self.cache.v = torch.zeros(self.cache.shape, dtype=self.dtype)
            self.kernel = FusedStep(model, self.dtype, self.cache.k, self.cache.v, rows)
            self.out = torch.empty(rows, cfg.vocab_size)
            self._tokens = torch.zeros(rows, dtype=torch.int64)
            self._pos = torch.zeros(rows, dtype=torch.int64)
            self._slots = torch.arange(rows, dtype=torch.int64)
            self._drawn = torch.zeros(GREEDY_CHUNK, dtype=torch.int64)
            self._no_stop = torch.zeros(0, dtype=torch.int64)

    @property
    def threads(self) -> Threads:
        """The fused step's thread-count chooser."""
        return self.kernel.threads

    @threads.setter
    def threads(self, value: Threads) -> None:
        self.kernel.threads = value

    def forward(self, ids: Tensor, cache: KVCache, every: bool = False) -> Tensor:
        """The model's logits after ``ids`` ``(B, T)`` with ``cache``, in this decoder's
        precision: :func:`forward`."""
        return forward(self.model, self.dtype, ids, cache, every)

    def adopt(self, one: KVCache) -> None:
        """Take a batch-1 cache's positions into every row."""
        if not self.fused:
            self.cache = one.replicate(self.rows)
            return
        if one.k is not None and one.v is not None and one.k is not self.cache.k:
            self.cache.k[:, :, :, :one.pos] = one.k[:, :, :, :one.pos]
            self.cache.v[:, :, :, :one.pos] = one.v[:, :, :, :one.pos]
        self.cache.pos = one.pos

    def prefill(self, prompt: list[int] | Tensor) -> Tensor:
        """Logits ``(rows, V)`` after ``prompt``: token ids, or ``(1 or rows, T)`` ids."""
        device = self.model.lm_head.weight.device
        ids = (prompt.to(device) if isinstance(prompt, Tensor)
               else torch.tensor([prompt], dtype=torch.long, device=device))
        if ids.size(0) == self.rows:
            return self.forward(ids, self.cache)
        if ids.size(0) != 1:
            raise ValueError(f"a prompt of {ids.size(0)} rows for a decoder of {self.rows}")
        if self.cache.pos:
            raise ValueError("only the first prefill can be copied into every row")
        one = KVCache(self.cfg.depth, 1, self.cfg.n_heads, self.cfg.head_dim, self.cache.max_len)
        logits = self.forward(ids, one)
        self.adopt(one)
        return logits.expand(self.rows, -1)

    def _room(self, n: int = 1) -> int:
        pos = self.cache.pos
        if pos + n > self.cache.max_len:
            raise ValueError(f"KV cache full: {pos + n} positions > max_len {self.cache.max_len}")
        return pos

    def step(self, tokens: int | Tensor) -> Tensor:
        """Logits ``(rows, V)`` after one more token per row (``(rows,)`` ids, or an int at
        one row); the returned tensor may be reused by the next step."""
        if not self.fused:
            device = self.model.lm_head.weight.device
            ids = (tokens.view(self.rows, 1).to(device) if isinstance(tokens, Tensor)
                   else torch.tensor([[tokens]], dtype=torch.long, device=device))
            return self.forward(ids, self.cache)
        pos = self._room()
        if self.rows == 1:  # one token as a plain int: no tensor written per step
            self.kernel.greedy(int(tokens), pos, 0, 1, self._no_stop, self._drawn, self.out)
        else:
            self._tokens.copy_(tokens)
            self._pos.fill_(pos)
            self.kernel.rows(self._tokens, self._pos, self._slots, self.out)
        self.cache.pos = pos + 1
        return self.out

    def greedy(self, token: int, n: int, stops: Tensor) -> list[int]:
        """Feed ``token``, then up to ``n`` greedy tokens in one C call (fused, one row); ends
        after a token in ``stops`` (int64). Every token returned but the last is fed."""
        pos = self._room(n)
        made = self.kernel.greedy(token, pos, 0, n, stops, self._drawn, self.out)
        self.cache.pos = pos + made
        return self._drawn[:made].tolist()


# a greedy C call draws at most this many tokens before the caller sees them; the first calls
# draw 1, 2, 4, ... so that a stream's first tokens come as soon as they are made
GREEDY_CHUNK = 32


def greedy_tokens(decoder: Decoder, logits: Tensor, max_new_tokens: int,
                  stop: Iterable[int] = ()) -> Iterator[int]:
    """Greedy token ids from ``logits`` (one row) on: the argmax, fed, and so on (the last
    token is not fed); on a fused one-row decoder the steps run in C, many per call."""
    stop_set = set(stop)
    stops = torch.tensor(sorted(stop_set), dtype=torch.int64)
    token, left, chunk = int(logits.reshape(-1, logits.size(-1))[0].argmax()), max_new_tokens, 1
    while left > 0:
        yield token
        left -= 1
        if left <= 0 or token in stop_set:
            return
        if not (decoder.fused and decoder.rows == 1):
            token = int(decoder.step(token)[0].argmax())
            continue
        drawn = decoder.greedy(token, min(chunk, left), stops)
        chunk = min(2 * chunk, GREEDY_CHUNK)
        for token in drawn[:-1]:
            yield token
        left -= len(drawn) - 1
        token = drawn[-1]
