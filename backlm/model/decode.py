"""The generation engine every caller uses (chat, serve, RL sampling, 5CAT rollouts, GSM8K,
training samples): one sampler, one prefill, batched decode steps.

A prompt is prefilled once at batch 1 and its KV cache copied into as many rows as samples are
wanted; each step then feeds every row's last token at once (:class:`Decoder`, in
:mod:`backlm.model.decoder`). Rows that come and go at their own lengths (a server's continuous
batching) step through :class:`BatchDecoder` (:mod:`backlm.model.batch`). On a CPU both take the
fused C step (:mod:`backlm.model.fused`) in the run's precision (fp32, or bf16 where the model
was trained in bf16); greedy one-row decoding runs many steps per C call. Elsewhere a step is
the model's own cached forward. Knows no direction, tokenizer or loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from backlm.model.batch import BatchDecoder
from backlm.model.decoder import (
    GREEDY_CHUNK,
    Decoder,
    KVCache,
    decode_dtype,
    fused_usable,
    greedy_tokens,
)
from backlm.model.fused import Threads

# the engine's names, wherever they are defined (BatchDecoder: the server's continuous batching)
__all__ = ["GREEDY", "GREEDY_CHUNK", "BatchDecoder", "Decoder", "KVCache", "SamplingParams",
           "Step", "Threads", "batch_greedy", "decode", "decode_dtype", "draw_step",
           "fused_usable", "generate", "greedy_tokens", "sample", "sample_steps", "scored_steps",
           "stream"]



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


def draw_step(logits: Tensor, sampling: SamplingParams, generator: torch.Generator | None = None,
              counts: Tensor | None = None, top_logprobs: int | None = None) -> Step:
    """One step's draw for rows stepped elsewhere (a server's continuous batching, where each
    request's rows sit in a shared :class:`BatchDecoder`): what :func:`scored_steps` does each
    step — a token per row of ``logits`` ``(rows, V)`` sampled, scored with ``top_logprobs``
    alternatives when not None, and counted into ``counts`` ``(rows, V)`` for the penalties."""
    tokens = sample(logits, sampling, generator, counts)
    step = _scored(logits, tokens, top_logprobs)
    if counts is not None:
        counts[torch.arange(counts.size(0), device=counts.device), tokens] += 1
    return step


def batch_greedy(batch: BatchDecoder, slot: int, token: int, n: int,
                 stop: Iterable[int] = ()) -> list[int] | None:
    """A lone greedy row of a shared batch (a server's only stream) decoded as
    :func:`greedy_tokens` decodes one row: feed ``token`` to ``slot``, then up to ``n`` greedy
    tokens in one fused C call, ending after a ``stop`` token; every token returned but the last
    is fed. None where the batch has no fused step (the caller steps the row itself)."""
    if not batch.fused:
        return None
    pos = batch.positions[slot]
    if pos + n > batch.max_len:
        raise ValueError(f"KV cache full: slot {slot} would pass max_len {batch.max_len}")
    stops = torch.tensor(sorted(set(stop)), dtype=torch.int64)
    drawn = torch.zeros(n, dtype=torch.int64)
    made = batch.kernel.greedy(token, pos, slot, n, stops, drawn, batch.out)
    batch.positions[slot] = pos + made
    return drawn[:made].tolist()


def scored_steps(decoder: Decoder, logits: Tensor, max_new_tokens: int,
                 sampling: SamplingParams, generator: torch.Generator | None = None,
                 top_logprobs: int | None = None, stop: Iterable[int] = ()) -> Iterator[Step]:
    """From ``logits`` ``(rows, V)``: sample a token per row, yield its :class:`Step` (scored
    with ``top_logprobs`` alternatives when not None), feed it, and so on
    ``max_new_tokens`` times (the last token is not fed). Penalties count each row's tokens.
    Greedy unscored steps of one fused row run many per C call (:func:`greedy_tokens`), which
    end early after a ``stop`` token; otherwise ``stop`` changes nothing (the caller stops)."""
    if _plain_greedy(decoder, sampling, top_logprobs):
        for token in greedy_tokens(decoder, logits, max_new_tokens, stop):
            yield Step(torch.tensor([token]))
        return
    counts = (torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
              if sampling.penalized else None)
    for i in range(max_new_tokens):
        tokens = sample(logits, sampling, generator, counts)
        yield _scored(logits, tokens, top_logprobs)
        if counts is not None:
            counts[torch.arange(counts.size(0), device=counts.device), tokens] += 1
        if i + 1 < max_new_tokens:
            logits = decoder.step(tokens)


def _plain_greedy(decoder: Decoder, sampling: SamplingParams, top: int | None) -> bool:
    return (decoder.fused and decoder.rows == 1 and sampling.temperature <= 0
            and not sampling.penalized and top is None)


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
           top_logprobs: int | None = None, score_prompt: bool = False,
           stop: Iterable[int] = ()) -> Iterator[Step]:
    """:class:`Step` after :class:`Step` of ``rows`` samples after ``prompt`` (one prefill
    copied into every row; batch 1 takes the fused C step where it applies). With
    ``score_prompt`` the first item scores the prompt itself: its ``tokens`` are
    ``prompt[1:]``, one entry per position, each with its log-probability given the tokens
    before it (and ``top_logprobs`` alternatives). The caller stops reading where it wants;
    ``stop`` tokens let greedy one-row decoding stop computing there too."""
    if not prompt:
        raise ValueError("decode needs at least one prompt token (e.g. BOS)")
    decoder = Decoder(model, len(prompt) + max_new_tokens, rows=rows)
    if score_prompt:
        ids = torch.tensor([prompt], dtype=torch.long, device=model.lm_head.weight.device)
        cfg, cache = model.cfg, decoder.cache
        one = cache if rows == 1 else KVCache(cfg.depth, 1, cfg.n_heads, cfg.head_dim,
                                              cache.max_len)
        every = decoder.forward(ids, one, every=True)[0]  # (T, V): each position's next token
        yield _scored(every[:-1], ids[0, 1:], 0 if top_logprobs is None else top_logprobs)
        if max_new_tokens <= 0:
            return
        if rows > 1:
            decoder.adopt(one)
        logits = every[-1:].expand(rows, -1)
    else:
        logits = decoder.prefill(prompt)
    yield from scored_steps(decoder, logits, max_new_tokens, sampling,
                            generator_for(model, seed), top_logprobs, stop)


@torch.inference_mode()
def stream(model: Any, prompt: list[int], max_new_tokens: int,
           sampling: SamplingParams = GREEDY, seed: int | None = None,
           stop: Iterable[int] = ()) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids after ``prompt``, one at a time (batch 1: the
    fused C step where it applies; greedy, many steps per C call, which end early after a
    ``stop`` token). The caller stops reading where its turn ends."""
    if not prompt:
        raise ValueError("generate needs at least one prompt token (e.g. BOS)")
    decoder = Decoder(model, len(prompt) + max_new_tokens)
    logits = decoder.prefill(prompt)
    if _plain_greedy(decoder, sampling, None):
        yield from greedy_tokens(decoder, logits, max_new_tokens, stop)
        return
    for tokens in sample_steps(decoder, logits, max_new_tokens, sampling,
                               generator_for(model, seed)):
        yield int(tokens)


@torch.inference_mode()
def generate(model: Any, prompt: list[int], max_new_tokens: int, *, num_samples: int = 1,
             sampling: SamplingParams = GREEDY, seed: int | None = None,
             stop: int | Iterable[int] = ()) -> list[list[int]]:
    """``num_samples`` continuations of ``prompt``: one prefill, the cache copied into every
    row, then batched steps. A row ends at a ``stop`` token (kept) or after ``max_new_tokens``;
    decoding ends when every row has."""
    stops = {stop} if isinstance(stop, int) else set(stop)
    if num_samples == 1:  # greedy: the C loop checks the stops itself
        row: list[int] = []
        for token in stream(model, prompt, max_new_tokens, sampling, seed, stops):
            row.append(token)
            if token in stops:
                break
        return [row]
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
