"""Batch-1 incremental decoding: the prompt through the model's KV-cache forward, then each new
token through one fused C call when the model is fp32 on CPU (``_native.decode_step``).

At one token per step the model is a chain of matrix–vector products, and PyTorch spends more
time dispatching its ~70 small ops than reading the weights; the C step reads every weight
once per token with both cores and no dispatch. Elsewhere (GPU, autocast, no C kernels) each
step is the model's own cached forward. Both fill the same :class:`backlm.model.gpt.KVCache`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from backlm.model import native


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


def fused_usable(model: Any) -> bool:
    """Whether the fused C step can run this model now."""
    if torch.is_autocast_enabled("cpu"):
        return False
    return native.usable(*model.parameters(), model.cos, model.sin)


class Decoder:
    """Logits for a prompt, then for one token at a time, with keys and values cached.

    ``fused=None`` picks the C step when :func:`fused_usable`; ``False`` forces the model's
    own forward (the reference the tests compare against).
    """

    def __init__(self, model: Any, max_len: int, fused: bool | None = None) -> None:
        cfg = model.cfg
        self.model, self.cfg = model, cfg
        self.cache = KVCache(cfg.depth, 1, cfg.n_heads, cfg.head_dim, max_len)
        self.fused = fused_usable(model) if fused is None else fused and fused_usable(model)
        if self.fused:
            p = model.lm_head.weight
            shape = self.cache.shape
            self.cache.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
            self.cache.v = torch.zeros(shape, dtype=p.dtype, device=p.device)
            weights = [w for b in model.blocks
                       for w in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)]
            # the kernel reads raw pointers: keep the tensors alive as long as they are used
            self._weights = weights
            self.layers = torch.tensor([w.data_ptr() for w in weights], dtype=torch.int64)
            C, inner = cfg.model_dim, cfg.n_heads * cfg.head_dim
            self.scratch = torch.empty(C + 4 * inner + 4 * C + cfg.n_heads * max_len)
            self.out = torch.empty(1, cfg.vocab_size)
            self.threads = Threads(torch.get_num_threads())
            # the pointers a step passes never change: read them once (a step is ~1 ms, and
            # Python attribute and data_ptr lookups cost tens of microseconds); the rotary
            # tables are grown to max_len now and kept alive here
            model._rotary(0, max_len)
            self._tables = (model.cos, model.sin)
            self._row_bytes = (cfg.head_dim // 2) * model.cos.element_size()
            self._fixed = (model.wte.weight.data_ptr(), self.layers.data_ptr(),
                           model.lm_head.weight.data_ptr(), self.cache.k.data_ptr(),
                           self.cache.v.data_ptr(), max_len)
            self._sizes = (self.out.data_ptr(), self.scratch.data_ptr(), cfg.model_dim,
                           cfg.n_heads, cfg.head_dim, cfg.depth, cfg.vocab_size,
                           float(cfg.softcap), float(torch.finfo(torch.float32).eps))

    def prefill(self, tokens: list[int]) -> Tensor:
        """Logits ``(1, V)`` after the prompt ``tokens``."""
        device = self.model.lm_head.weight.device
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        return self.model.logits(self.model.hidden(ids, self.cache)[:, -1])

    def step(self, token: int) -> Tensor:
        """Logits ``(1, V)`` after one more token (the returned tensor is reused next step)."""
        if not self.fused:
            return self.prefill([token])
        cache = self.cache
        pos = cache.pos
        if pos >= cache.max_len:
            raise ValueError(f"KV cache full: {pos + 1} positions > max_len {cache.max_len}")
        cos, sin = self._tables
        row = pos * self._row_bytes
        threads = self.threads.next()
        started = time.perf_counter()
        native.lib.decode_step(token, pos, *self._fixed, cos.data_ptr() + row,
                               sin.data_ptr() + row, *self._sizes, threads)
        self.threads.took(threads, time.perf_counter() - started)
        cache.pos = pos + 1
        return self.out


class Threads:
    """How many threads the next fused step uses: all of them, or one when that is faster.

    Each step meets at a barrier about 20 times. On idle cores that costs microseconds, but
    when another process holds a core (a training run next to a chat), every barrier waits
    for a descheduled thread and a step takes ~10x longer than on one thread. So both counts
    are timed (moving averages), the faster is used, and the other is tried at the third step,
    every ``probe_every`` steps after, and at once when a step is far slower than the best
    seen. The count never changes the result: each output row is computed the same way by
    whichever thread.
    """

    def __init__(self, most: int, probe_every: int = 64) -> None:
        self.counts = [most, 1] if most > 1 else [1]
        self.avg: dict[int, float] = {}
        self.best: dict[int, float] = {}
        self.current, self.steps, self.probe_every, self.probe = self.counts[0], 0, probe_every, False

    def next(self) -> int:
        """The thread count for the coming step."""
        self.steps += 1
        if len(self.counts) > 1 and (self.probe or self.steps % self.probe_every == 3):
            self.probe = False
            return next(c for c in self.counts if c != self.current)
        return self.current

    def took(self, count: int, seconds: float) -> None:
        """Record a step's time; switch counts when the other is faster."""
        if self.steps <= 1:  # the first step pays for waking the threads up
            return
        prev = self.avg.get(count)
        self.avg[count] = seconds if prev is None else 0.7 * prev + 0.3 * seconds
        self.best[count] = min(seconds, self.best.get(count, seconds))
        if len(self.avg) == len(self.counts):
            self.current = min(self.avg, key=self.avg.__getitem__)
        if count == self.current and seconds > 4 * self.best[count]:
            self.probe = True


def stepper(model: Any, prompt: list[int], max_len: int,
            fused: bool | None = None) -> tuple[Tensor, Callable[[int], Tensor]]:
    """The prompt's logits and the function that feeds one token and returns the next logits."""
    decoder = Decoder(model, max_len, fused)
    return decoder.prefill(prompt), decoder.step
