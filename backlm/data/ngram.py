"""A tiny n-gram model of reading-order text: an independent check of the data direction.

Text has an arrow: a bigram model fitted on token ids in reading order (``tokenizer.encode``
of the raw text, no transform from :mod:`backlm.direction`) gives text in reading order a much lower
cross-entropy than the same tokens reversed. Scoring the bodies of packed rows both ways
therefore tells which way they really read, whatever the pipeline claims: forward documents
must read forward, backward documents backward. A pipeline bug that leaves backward data in
reading order (or reverses forward data) shows up as a signal of the wrong sign, even when the
bug is inside ``backlm.direction`` and its round trip still closes.

The model is a Witten–Bell smoothed bigram over an add-one unigram: tiny, fitted in seconds on
a few million tokens, and well defined on unseen pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from backlm.direction import Direction  # the names only: no transform is shared

# |Δ| below this many nats per token is too weak to say which way a text reads.
MIN_DELTA = 0.05
MIN_DOC_TOKENS = 8  # shorter bodies carry too few pairs to vote on their own


@dataclass
class BigramModel:
    """Witten–Bell bigram over ``vocab_size`` token ids, fitted on reading-order documents."""

    vocab_size: int
    unigram: np.ndarray  # (V,) log-probabilities, add-one smoothed
    pair_keys: np.ndarray  # sorted codes a·V + b of the pairs seen
    pair_counts: np.ndarray  # count of each pair in pair_keys
    context_counts: np.ndarray  # (V,) pairs starting with a
    followers: np.ndarray  # (V,) distinct tokens seen after a
    tokens: int  # tokens fitted on

    @classmethod
    def fit(cls, docs: Iterable[Sequence[int]], vocab_size: int) -> BigramModel:
        """Count unigrams and within-document pairs of ``docs``."""
        uni = np.zeros(vocab_size, dtype=np.float64)
        codes = []
        total = 0
        for doc in docs:
            a = np.asarray(doc, dtype=np.int64)
            if a.size == 0:
                continue
            total += a.size
            uni += np.bincount(a, minlength=vocab_size)[:vocab_size]
            if a.size > 1:
                codes.append(a[:-1] * vocab_size + a[1:])
        all_codes = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
        keys, counts = np.unique(all_codes, return_counts=True)
        firsts = keys // vocab_size
        context = np.bincount(firsts, weights=counts, minlength=vocab_size)
        followers = np.bincount(firsts, minlength=vocab_size).astype(np.float64)
        unigram = np.log((uni + 1.0) / (uni.sum() + vocab_size))
        return cls(vocab_size, unigram, keys, counts.astype(np.float64), context, followers,
                   total)

    def transition_logprobs(self, seq: Sequence[int]) -> np.ndarray:
        """Log-probability of every token of ``seq`` after its predecessor (length n − 1)."""
        a = np.asarray(seq, dtype=np.int64)
        if a.size < 2:
            return np.zeros(0)
        prev, nxt = a[:-1], a[1:]
        codes = prev * self.vocab_size + nxt
        pair = np.zeros(codes.shape)
        if len(self.pair_keys):
            pos = np.minimum(np.searchsorted(self.pair_keys, codes), len(self.pair_keys) - 1)
            pair = np.where(self.pair_keys[pos] == codes, self.pair_counts[pos], 0.0)
        c, t = self.context_counts[prev], self.followers[prev]
        p_uni = np.exp(self.unigram[nxt])
        # Witten–Bell: back off to the unigram in proportion to how many followers a has
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(c > 0, (pair + t * p_uni) / (c + t), p_uni)
        return np.log(p)


@dataclass
class DirectionSignal:
    """How the bodies of one concrete order read under the reading-order bigram."""

    order: Direction  # the order the pipeline says these documents are in
    documents: int
    tokens: int  # scored transitions
    ce_as_is: float  # nats per token, bodies as the model reads them
    ce_reversed: float  # the same bodies reversed
    agree: int  # documents (with MIN_DOC_TOKENS+ tokens) whose own sign matches ``order``
    voters: int  # documents with MIN_DOC_TOKENS+ tokens

    @property
    def delta(self) -> float:
        """CE reversed − CE as is: positive when the bodies read like reading order."""
        return self.ce_reversed - self.ce_as_is

    @property
    def reads(self) -> str:
        """The :class:`~backlm.direction.Direction` the bodies read in, or ``inconclusive``."""
        if abs(self.delta) < MIN_DELTA or self.tokens == 0:
            return "inconclusive"
        return Direction.FORWARD if self.delta > 0 else Direction.BACKWARD

    @property
    def contradicts(self) -> bool:
        """The bodies clearly read the other way than declared."""
        return self.reads not in ("inconclusive", self.order)


def direction_signals(model: BigramModel, bodies: Iterable[tuple[Direction, Sequence[int]]]
                      ) -> list[DirectionSignal]:
    """Score ``(declared order, body in model order)`` pairs, grouped by declared order."""
    acc: dict[Direction, list[float]] = {}
    for order, body in bodies:
        a = np.asarray(body, dtype=np.int64)
        if a.size < 2:
            continue
        as_is = float(-model.transition_logprobs(a).sum())
        # reversed with numpy on purpose: the check must not share code with what it checks
        back = float(-model.transition_logprobs(a[::-1]).sum())
        s = acc.setdefault(order, [0, 0, 0.0, 0.0, 0, 0])
        s[0] += 1
        s[1] += a.size - 1
        s[2] += as_is
        s[3] += back
        if a.size >= MIN_DOC_TOKENS:
            s[5] += 1
            s[4] += (back > as_is) == (order == Direction.FORWARD)
    return [
        DirectionSignal(order, int(d), int(n), a / max(n, 1), b / max(n, 1), int(g), int(v))
        for order, (d, n, a, b, g, v) in sorted(acc.items())
    ]


def fit_dataset(dataset_dir, tokenizer, splits: Sequence[str] = ("train", "val"),
                max_chars: int = 2_000_000) -> BigramModel:
    """Fit on the first ``max_chars`` characters of the first of ``splits`` that has shards,
    tokenized straight from the raw text (reading order by definition)."""
    from pathlib import Path

    from backlm.data.shards import iter_texts
    from backlm.data.vocab import take_chars

    for split in splits:
        shards = sorted(Path(dataset_dir).glob(f"{split}_*.parquet"))
        if shards:
            texts = list(take_chars((t for s in shards for t in iter_texts(s)), max_chars))
            return BigramModel.fit(tokenizer.encode_batch(texts), tokenizer.vocab_size)
    return BigramModel.fit([], tokenizer.vocab_size)
