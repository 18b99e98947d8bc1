"""The fused C decoding step (``backlm/model/_native_decode.h``) seen from Python: the weights
it reads in the decoding precision, the plan of pointers it takes, and how many threads run it.

At a few rows per step the model is a chain of matrix–vector products, and PyTorch spends more
time dispatching its ~70 small ops than reading the weights; the C step reads every weight once
per step for all rows, with every core and no dispatch. In bf16 it reads a bf16 copy of the
matrices (made once per set of weights) and multiplies with AVX512-BF16 where the CPU has it.
Knows nothing of sampling or of who calls it.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from backlm.model import native

# the plan's fields, in _native_decode.h's order (P_WTE ... P_CHUNKS)
_FIELDS = ("wte", "layers", "head", "kc", "vc", "cos", "sin", "scratch", "C", "H", "D", "L", "V",
           "T", "slots", "bf16", "max_rows", "threads", "chunks")


def usable(model: Any, dtype: torch.dtype) -> bool:
    """Whether the fused C step can run ``model`` in ``dtype`` (fp32 or bf16) now."""
    if torch.is_autocast_enabled("cpu") or dtype not in (torch.float32, torch.bfloat16):
        return False
    return native.usable(*model.parameters(), model.cos, model.sin)


def matrices(model: Any, dtype: torch.dtype) -> list[Tensor]:
    """The 4 matrices of every layer (qkv, proj, fc, mlp proj) then the head, in ``dtype``:
    the parameters themselves in fp32; in bf16 a copy made once and kept on the model until a
    parameter changes (an optimizer step bumps its version)."""
    blocks = [(b.attn.qkv.flatten(0, 1), b.attn.proj, b.mlp.fc, b.mlp.proj) for b in model.blocks]
    mats = [w for ws in blocks for w in ws] + [model.lm_head.weight]
    if dtype == torch.float32:
        return mats
    key = (dtype, tuple((p.data_ptr(), p._version) for p in model.parameters()))
    kept = getattr(model, "_decode_copies", None)
    if kept is None or kept[0] != key:
        with torch.no_grad():
            copies = [w.detach().to(dtype).contiguous() for w in mats]
        # a plain attribute, not a buffer: never saved, never moved with the model
        object.__setattr__(model, "_decode_copies", (key, copies))
        kept = model._decode_copies
    return kept[1]


def mlp_chunks(hidden: int) -> int:
    """How many column chunks the MLP is split into (a thread takes whole chunks); fixed by
    the shape alone so that the thread count never changes the sums."""
    return next(k for k in (8, 4, 2, 1) if hidden % k == 0 and hidden // k >= 16 or k == 1)


class FusedStep:
    """The C step over a ``(L, slots, H, max_len, D)`` cache ``k``/``v`` of ``dtype``: one
    token for each of up to ``max_rows`` rows per call, each at its own position and slot."""

    def __init__(self, model: Any, dtype: torch.dtype, k: Tensor, v: Tensor, max_rows: int):
        cfg = model.cfg
        L, S, H, T, D = k.shape
        self.cfg, self.dtype, self.max_rows = cfg, dtype, max_rows
        self.mats = matrices(model, dtype)
        self.layers = torch.tensor([w.data_ptr() for w in self.mats[:-1]], dtype=torch.int64)
        model._rotary(0, T)  # grow the rotary tables to max_len now
        cos, sin = model.cos, model.sin
        if dtype == torch.bfloat16:  # the forward rotates with tables cast to the compute dtype
            cos, sin = cos.to(dtype).float(), sin.to(dtype).float()
        self._keep = (k, v, cos, sin, model.wte.weight)  # the kernel reads raw pointers
        self.threads = Threads(torch.get_num_threads())
        values = dict(wte=model.wte.weight.data_ptr(), layers=self.layers.data_ptr(),
                      head=self.mats[-1].data_ptr(), kc=k.data_ptr(), vc=v.data_ptr(),
                      cos=cos.data_ptr(), sin=sin.data_ptr(), scratch=0, C=cfg.model_dim, H=H,
                      D=D, L=L, V=cfg.vocab_size, T=T, slots=S, bf16=int(dtype == torch.bfloat16),
                      max_rows=max_rows, threads=max(self.threads.counts),
                      chunks=mlp_chunks(4 * cfg.model_dim))
        self.plan = torch.tensor([values[f] for f in _FIELDS], dtype=torch.int64)
        size = native.lib.decode_scratch(self.plan.data_ptr(), max_rows)
        self.scratch = torch.empty(size, dtype=torch.float32)
        self.plan[_FIELDS.index("scratch")] = self.scratch.data_ptr()
        self._plan = self.plan.data_ptr()
        self._eps = (float(cfg.softcap), torch.finfo(torch.float32).eps, torch.finfo(dtype).eps)

    def rows(self, tokens: Tensor, pos: Tensor, slots: Tensor, out: Tensor) -> None:
        """``out[:B]`` (fp32, contiguous) gets the logits after ``tokens`` (int64, ``(B,)``)
        at positions ``pos`` in cache slots ``slots``; their keys and values are stored."""
        threads = self.threads.next()
        started = time.perf_counter()
        native.lib.decode_rows(self._plan, tokens.data_ptr(), pos.data_ptr(), slots.data_ptr(),
                               tokens.numel(), out.data_ptr(), *self._eps, threads)
        self.threads.took(threads, time.perf_counter() - started)

    def greedy(self, token: int, pos: int, slot: int, n: int, stops: Tensor, out: Tensor,
               logits: Tensor) -> int:
        """Up to ``n`` greedy tokens into ``out`` (int64), feeding ``token`` at ``pos`` first;
        ends after a token in ``stops`` (int64). Returns how many; ``logits`` holds the last
        step's. All in one C call: the argmax and the stop check never return to Python."""
        threads = self.threads.next()
        started = time.perf_counter()
        made = native.lib.decode_greedy(self._plan, token, pos, slot, n, stops.data_ptr(),
                                        stops.numel(), out.data_ptr(), logits.data_ptr(),
                                        *self._eps, threads)
        self.threads.took(threads, (time.perf_counter() - started) / max(made, 1))
        return made


class Threads:
    """How many threads the next fused step uses: all of them, or one when that is faster.

    Each step meets at a barrier twice per layer. On idle cores that costs microseconds, but
    when another process holds a core (a training run next to a chat), every barrier waits
    for a descheduled thread and a step takes ~10x longer than on one thread. So both counts
    are timed (moving averages), the faster is used, and the other is tried at the third step,
    every ``probe_every`` steps after, and at once when a step is far slower than the best
    seen. The count never changes the result: each sum is computed in the same order by
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
