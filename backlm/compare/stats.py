"""Intervals for direction comparisons: a paired bootstrap over documents and a seed-level
t-interval (pure numpy, no model code).

The statistic of interest is a gap in bits per byte between two readings of the same
documents: ``bpb(a) − bpb(b)``, each the summed nats over the summed bytes of the documents
drawn (the byte-weighted mean of per-document differences, so it equals the difference of
the two bpb figures an evaluation reports). A bootstrap resample draws documents with
replacement; *paired*, one draw serves both readings, so a document that is hard in both
orders moves both sums together and cancels out of the gap. With several pairs (seeds) over
the same documents, the pooled statistic is the mean gap across pairs under one shared draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backlm.missing import mean_or_missing

LN2 = math.log(2)
# Student t, 97.5 % quantile, by degrees of freedom (beyond 30: a Cornish-Fisher expansion)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
         16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
         23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
         30: 2.042}
Z_975 = 1.959964
DRAWS_PER_CHUNK = 1 << 22  # document indices held at once while resampling (32 MiB)

Pair = tuple[np.ndarray, np.ndarray, np.ndarray]  # (nats a, nats b, bytes), same documents


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % interval; ``lo``/``hi`` None when none can be given."""

    value: float
    lo: float | None
    hi: float | None
    n: int  # documents (bootstrap) or seeds (t-interval)

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None or self.hi is None else (self.hi - self.lo) / 2

    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of zero."""
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a t-interval needs at least one degree of freedom")
    if df in T_975:
        return T_975[df]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def bpb(nats: np.ndarray, nbytes: np.ndarray) -> float:
    """Bits per byte of documents: summed nats over summed bytes."""
    total = float(np.sum(nbytes))
    return mean_or_missing(float(np.sum(nats)) / LN2, total)


def doc_bpb(nats: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """Bits per byte of each document (NaN for a document without bytes)."""
    nbytes = np.asarray(nbytes, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nbytes > 0, np.asarray(nats, dtype=np.float64) / (LN2 * nbytes), np.nan)


def gap(pair: Pair) -> float:
    """``bpb(a) − bpb(b)`` over the pair's documents."""
    a, b, nbytes = pair
    return bpb(a, nbytes) - bpb(b, nbytes)


def paired_documents(a: dict[str, Any], b: dict[str, Any]) -> Pair:
    """Two evaluations' per-document records (``hash``, ``bytes``, ``nats``: what an lm
    evaluation keeps) as one pair; ValueError unless they are the same documents in the same
    order with the same bytes."""
    if list(a["hash"]) != list(b["hash"]) or list(a["bytes"]) != list(b["bytes"]):
        raise ValueError(f"not the same documents ({len(a['hash'])} vs {len(b['hash'])}, or "
                         "different texts or bytes)")
    return (np.asarray(a["nats"], dtype=np.float64), np.asarray(b["nats"], dtype=np.float64),
            np.asarray(a["bytes"], dtype=np.float64))


def _resampled_sums(columns: np.ndarray, resamples: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``(resamples, k)``: each of ``columns``' k rows summed over n documents drawn with
    replacement, one draw per resample shared by every row (vectorised, in chunks)."""
    k, n = columns.shape
    out = np.empty((resamples, k))
    chunk = max(1, DRAWS_PER_CHUNK // max(n, 1))
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        picks = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = columns[:, picks].sum(axis=2).T
    return out


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_gap(pairs: Sequence[Pair], resamples: int = 2000, seed: int = 0,
                  paired: bool = True) -> Interval:
    """Mean gap over ``pairs`` (all over the same documents) with a 95 % percentile interval
    from resampling documents. ``paired`` False draws each reading's documents
    independently (what ignoring the pairing would claim; for comparison only)."""
    if not pairs:
        raise ValueError("no pairs to bootstrap")
    n = len(pairs[0][2])
    if n == 0 or any(len(p[2]) != n or len(p[0]) != n or len(p[1]) != n for p in pairs):
        raise ValueError("every pair must hold the same, non-empty set of documents")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    value = float(np.mean([gap(p) for p in pairs]))
    rng = np.random.default_rng(seed)
    rows = [np.asarray(c, dtype=np.float64) for p in pairs for c in p]  # a, b, bytes per pair
    columns = np.vstack(rows)
    if paired:
        sums = _resampled_sums(columns, resamples, rng)
        a_s, b_s, by_s = sums[:, 0::3], sums[:, 1::3], sums[:, 2::3]
        gaps = (a_s - b_s) / (LN2 * by_s)
    else:
        a_cols = columns[[i for i in range(len(rows)) if i % 3 != 1]]  # a, bytes per pair
        b_cols = columns[[i for i in range(len(rows)) if i % 3 != 0]]  # b, bytes per pair
        sa = _resampled_sums(a_cols, resamples, rng)
        sb = _resampled_sums(b_cols, resamples, rng)
        gaps = sa[:, 0::2] / (LN2 * sa[:, 1::2]) - sb[:, 0::2] / (LN2 * sb[:, 1::2])
    lo, hi = _percentiles(gaps.mean(axis=1))
    return Interval(value, lo, hi, n)


def bootstrap_mean(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> Interval:
    """The mean of ``values`` with a 95 % percentile bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    sums = _resampled_sums(values[None, :], resamples, rng)[:, 0]
    lo, hi = _percentiles(sums / values.size)
    return Interval(float(values.mean()), lo, hi, int(values.size))


def seed_interval(values: Sequence[float]) -> Interval:
    """Mean over seeds with a 95 % t-interval (none from a single seed)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no seeds")
    mean = float(arr.mean())
    if arr.size < 2:
        return Interval(mean, None, None, 1)
    half = t_quantile(arr.size - 1) * float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return Interval(mean, mean - half, mean + half, int(arr.size))
