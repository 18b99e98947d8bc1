"""The generation engine every caller uses (chat, serve, RL sampling, 5CAT rollouts, GSM8K,
training samples): one sampler, one prefill, batched decode steps.

A prompt is prefilled once at batch 1 and its KV cache copied into as many rows as samples are
wanted; each step then feeds every row's last token at once. At batch 1 on an fp32 CPU model
each step is one fused C call (``_native.decode_step``): at one token per step the model is a
chain of matrix–vector products, and PyTorch spends more time dispatching its ~70 small ops
than reading the weights; the C step reads every weight once per token with both cores and no
dispatch. Elsewhere (several rows, GPU, autocast, no C kernels) a step is the model's own
cached forward. Both fill the same :class:`KVCache`. Knows no direction, tokenizer or loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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

    def replicate(self, rows: int) -> KVCache:
        """A cache of ``rows`` rows, each a copy of this batch-1 cache's positions."""
        L, _, H, T, D = self.shape
        out = KVCache(L, rows, H, D, T)
        if self.k is not None and self.v is not None:
            out.k = self.k.expand(-1, rows, -1, -1, -1).contiguous()
            out.v = self.v.expand(-1, rows, -1, -1, -1).contiguous()
        out.pos = self.pos
        return out


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn: temperature 0 takes the argmax; otherwise the logits are
    divided by ``temperature``, cut to the ``top_k`` likeliest, then to the smallest set whose
    probability reaches ``top_p`` (nucleus), and sampled. The presence and frequency
    penalties (OpenAI's formula, before all of that, greedy included) lower the logit of each
    token a row has already generated: by ``presence_penalty`` once, plus
    ``frequency_penalty`` times the number of times it was generated."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")

    @property
    def penalized(self) -> bool:
        """Whether the penalties change anything (the counts need not be kept otherwise)."""
        return bool(self.presence_penalty or self.frequency_penalty)


GREEDY = SamplingParams(temperature=0.0)


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None,
           counts: Tensor | None = None) -> Tensor:
    """One token id per row of ``(B, V)`` logits, as a ``(B,)`` tensor (logits are not changed);
    ``counts`` ``(B, V)``: how often each row generated each token, for the penalties."""
    if counts is not None and params.penalized:
        logits = (logits - params.frequency_penalty * counts
                  - params.presence_penalty * (counts > 0).to(logits.dtype))
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p is not None and params.top_p < 1:
        ranked, order = probs.sort(dim=-1, descending=True)
        # drop a token once the likelier ones already hold top_p (the first is always kept)
        ranked = ranked.masked_fill(ranked.cumsum(-1) - ranked >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, ranked)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def fused_usable(model: Any) -> bool:
    """Whether the fused C step can run this model now."""
    if torch.is_autocast_enabled("cpu"):
        return False
    return native.usable(*model.parameters(), model.cos, model.sin)


class Decoder:
    """Logits for a prompt, then for one token per row at a time, with keys and values cached.

    ``rows`` is the batch: a one-row prompt is prefilled once and its cache copied into every
    row; a prompt of ``rows`` rows (equal lengths) is prefilled as it is. ``fused=None`` picks
    the C step when the batch is one row and :func:`fused_usable`; ``False`` forces the model's
    own forward (the reference the tests compare against).
    """

    def __init__(self, model: Any, max_len: int, fused: bool | None = None, rows: int = 1) -> None:
        cfg = model.cfg
        self.model, self.cfg, self.rows = model, cfg, rows
        self.cache = KVCache(cfg.depth, rows, cfg.n_heads, cfg.head_dim, max_len)
        usable = rows == 1 and fused_usable(model)
        self.fused = usable if fused is None else fused and usable
        if self.fused:
            self._setup_fused()

    def _setup_fused(self) -> None:
        model, cfg, max_len = self.model, self.cfg, self.cache.max_len
        p = model.lm_head.weight
        shape = self.cache.shape
        self.cache.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.cache.v = torch.zeros(shape, dtype=p.dtype, device=p.device)
        weights = [w for b in model.blocks for w in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)]
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

    def _forward(self, ids: Tensor, cache: KVCache) -> Tensor:
        return self.model.logits(self.model.hidden(ids, cache)[:, -1])

    def prefill(self, prompt: list[int] | Tensor) -> Tensor:
        """Logits ``(rows, V)`` after ``prompt``: token ids, or ``(1 or rows, T)`` ids."""
        device = self.model.lm_head.weight.device
        ids = (prompt.to(device) if isinstance(prompt, Tensor)
               else torch.tensor([prompt], dtype=torch.long, device=device))
        if ids.size(0) == self.rows:
            return self._forward(ids, self.cache)
        if ids.size(0) != 1:
            raise ValueError(f"a prompt of {ids.size(0)} rows for a decoder of {self.rows}")
        if self.cache.pos:
            raise ValueError("only the first prefill can be copied into every row")
        one = KVCache(self.cfg.depth, 1, self.cfg.n_heads, self.cfg.head_dim, self.cache.max_len)
        logits = self._forward(ids, one)
        self.cache = one.replicate(self.rows)
        return logits.expand(self.rows, -1)

    def step(self, tokens: int | Tensor) -> Tensor:
        """Logits ``(rows, V)`` after one more token per row (``(rows,)`` ids, or an int at
        one row); the returned tensor may be reused by the next step."""
        if not self.fused:
            device = self.model.lm_head.weight.device
            ids = (tokens.view(self.rows, 1).to(device) if isinstance(tokens, Tensor)
                   else torch.tensor([[tokens]], dtype=torch.long, device=device))
            return self._forward(ids, self.cache)
        cache = self.cache
        pos = cache.pos
        if pos >= cache.max_len:
            raise ValueError(f"KV cache full: {pos + 1} positions > max_len {cache.max_len}")
        cos, sin = self._tables
        row = pos * self._row_bytes
        threads = self.threads.next()
        started = time.perf_counter()
        native.lib.decode_step(int(tokens), pos, *self._fixed, cos.data_ptr() + row,
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


def generator_for(model: Any, seed: int | None) -> torch.Generator | None:
    """A generator on the model's device seeded with ``seed``; None (the global RNG) without."""
    if seed is None:
        return None
    return torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)


@dataclass(frozen=True)
class Step:
    """One decoding step of every row: the tokens drawn ``(rows,)`` and, when asked, each
    token's log-probability under the model ``(rows,)`` and the ``k`` likeliest tokens with
    theirs ``(rows, k)``. Log-probabilities are the model's own distribution (log-softmax of
    its logits), before penalties, temperature and truncation change the draw."""

    tokens: Tensor
    logprobs: Tensor | None = None
    top_ids: Tensor | None = None
    top_logprobs: Tensor | None = None


def _scored(logits: Tensor, tokens: Tensor, top: int | None) -> Step:
    if top is None:
        return Step(tokens)
    logp = torch.log_softmax(logits.float(), dim=-1)
    best = logp.topk(min(top, logp.size(-1)), dim=-1)
    return Step(tokens, logp.gather(-1, tokens[..., None].to(logp.device))[..., 0],
                best.indices, best.values)


def scored_steps(decoder: Decoder, logits: Tensor, max_new_tokens: int,
                 sampling: SamplingParams, generator: torch.Generator | None = None,
                 top_logprobs: int | None = None) -> Iterator[Step]:
    """From ``logits`` ``(rows, V)``: sample a token per row, yield its :class:`Step` (scored
    with ``top_logprobs`` alternatives when not None), feed it, and so on
    ``max_new_tokens`` times (the last token is not fed). Penalties count each row's tokens."""
    counts = (torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
              if sampling.penalized else None)
    for i in range(max_new_tokens):
        tokens = sample(logits, sampling, generator, counts)
        yield _scored(logits, tokens, top_logprobs)
        if counts is not None:
            counts[torch.arange(counts.size(0), device=counts.device), tokens] += 1
        if i + 1 < max_new_tokens:
            logits = decoder.step(tokens)


def sample_steps(decoder: Decoder, logits: Tensor, max_new_tokens: int,
                 sampling: SamplingParams, generator: torch.Generator | None = None
                 ) -> Iterator[Tensor]:
    """From ``logits`` ``(rows, V)``: sample a token per row, yield it ``(rows,)``, feed it, and
    so on ``max_new_tokens`` times (the last token is not fed)."""
    for step in scored_steps(decoder, logits, max_new_tokens, sampling, generator):
        yield step.tokens


def _steps(model: Any, prompt: list[int], max_new_tokens: int, rows: int,
           sampling: SamplingParams, seed: int | None) -> Iterator[Tensor]:
    """The prompt prefilled once (copied into ``rows`` rows), then sampled steps."""
    if not prompt:
        raise ValueError("generate needs at least one prompt token (e.g. BOS)")
    decoder = Decoder(model, len(prompt) + max_new_tokens, rows=rows)
    return sample_steps(decoder, decoder.prefill(prompt), max_new_tokens, sampling,
                        generator_for(model, seed))


@torch.inference_mode()
def decode(model: Any, prompt: list[int], max_new_tokens: int, *, rows: int = 1,
           sampling: SamplingParams = GREEDY, seed: int | None = None,
           top_logprobs: int | None = None, score_prompt: bool = False) -> Iterator[Step]:
    """:class:`Step` after :class:`Step` of ``rows`` samples after ``prompt`` (one prefill
    copied into every row; batch 1 takes the fused C step where it applies). With
    ``score_prompt`` the first item scores the prompt itself: its ``tokens`` are
    ``prompt[1:]``, one entry per position, each with its log-probability given the tokens
    before it (and ``top_logprobs`` alternatives). The caller stops reading where it wants."""
    if not prompt:
        raise ValueError("decode needs at least one prompt token (e.g. BOS)")
    decoder = Decoder(model, len(prompt) + max_new_tokens, rows=rows)
    if score_prompt:
        ids = torch.tensor([prompt], dtype=torch.long, device=model.lm_head.weight.device)
        cfg, cache = model.cfg, decoder.cache
        one = cache if rows == 1 else KVCache(cfg.depth, 1, cfg.n_heads, cfg.head_dim,
                                              cache.max_len)
        every = model.logits(model.hidden(ids, one))[0]  # (T, V): every position's next token
        yield _scored(every[:-1], ids[0, 1:], 0 if top_logprobs is None else top_logprobs)
        if max_new_tokens <= 0:
            return
        if rows > 1:
            decoder.cache = one.replicate(rows)
        logits = every[-1:].expand(rows, -1)
    else:
        logits = decoder.prefill(prompt)
    yield from scored_steps(decoder, logits, max_new_tokens, sampling,
                            generator_for(model, seed), top_logprobs)


@torch.inference_mode()
def stream(model: Any, prompt: list[int], max_new_tokens: int,
           sampling: SamplingParams = GREEDY, seed: int | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids after ``prompt``, one at a time (batch 1: the
    fused C step where it applies). The caller stops reading where its turn ends."""
    for tokens in _steps(model, prompt, max_new_tokens, 1, sampling, seed):
        yield int(tokens)


@torch.inference_mode()
def generate(model: Any, prompt: list[int], max_new_tokens: int, *, num_samples: int = 1,
             sampling: SamplingParams = GREEDY, seed: int | None = None,
             stop: int | Iterable[int] = ()) -> list[list[int]]:
    """``num_samples`` continuations of ``prompt``: one prefill, the cache copied into every
    row, then batched steps. A row ends at a ``stop`` token (kept) or after ``max_new_tokens``;
    decoding ends when every row has."""
    stops = {stop} if isinstance(stop, int) else set(stop)
    steps = _steps(model, prompt, max_new_tokens, num_samples, sampling, seed)
    out: list[list[int]] = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for tokens in steps:
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                out[row].append(token)
                done[row] = token in stops
        if all(done):
            break
    return out
