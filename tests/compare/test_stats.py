"""Intervals for direction comparisons: the paired bootstrap over documents and the seed-level
t-interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backlm.compare import stats


def _pair(rng: np.random.Generator, n: int, gap_bpb: float, shared: float = 0.0,
          noise: float = 0.2) -> stats.Pair:
    """Documents of 100 bytes whose forward and backward bits per byte differ by ``gap_bpb``
    on average; ``shared`` is the spread of per-document difficulty both readings share."""
    nbytes = np.full(n, 100.0)
    difficulty = 1.5 + shared * rng.standard_normal(n)
    a_bpb = difficulty + gap_bpb + noise * rng.standard_normal(n)
    b_bpb = difficulty + noise * rng.standard_normal(n)
    return a_bpb * stats.LN2 * nbytes, b_bpb * stats.LN2 * nbytes, nbytes


def test_the_gap_is_the_difference_of_the_two_bits_per_byte():
    a, b, nbytes = np.array([10.0, 30.0]), np.array([20.0, 10.0]), np.array([5.0, 15.0])
    assert stats.bpb(a, nbytes) == pytest.approx(40 / (math.log(2) * 20))
    assert stats.gap((a, b, nbytes)) == pytest.approx((40 - 30) / (math.log(2) * 20))
    per_doc = stats.doc_bpb(a, nbytes) - stats.doc_bpb(b, nbytes)
    # the gap is the byte-weighted mean of the per-document differences
    assert np.average(per_doc, weights=nbytes) == pytest.approx(stats.gap((a, b, nbytes)))
    assert math.isnan(stats.doc_bpb(np.array([1.0]), np.array([0.0]))[0])


def test_the_interval_covers_the_true_gap_at_about_its_level():
    """95 % intervals from 60 independent samples of a known distribution: nearly all cover
    the true gap, and not trivially (they are narrow)."""
    true_gap, covered, widths = 0.05, 0, []
    for seed in range(60):
        pair = _pair(np.random.default_rng(seed), 200, true_gap, shared=0.5)
        iv = stats.bootstrap_gap([pair], resamples=400, seed=seed)
        covered += iv.lo <= true_gap <= iv.hi
        widths.append(iv.hi - iv.lo)
    assert 51 <= covered <= 60  # 95 % nominal: 57 expected, binomial sd ≈ 1.7
    assert 0.02 < float(np.mean(widths)) < 0.1  # ≈ 2·1.96·0.2·√2/√200


def test_pairing_removes_the_difficulty_both_readings_share():
    pair = _pair(np.random.default_rng(0), 300, 0.05, shared=1.0, noise=0.05)
    paired = stats.bootstrap_gap([pair], 1000, seed=1)
    unpaired = stats.bootstrap_gap([pair], 1000, seed=1, paired=False)
    assert paired.value == unpaired.value  # the same estimate, different uncertainty
    assert paired.half_width < unpaired.half_width / 5
    assert paired.excludes_zero() and not unpaired.excludes_zero()


def test_the_draws_are_seeded_and_do_not_depend_on_the_chunk_size(monkeypatch):
    pair = _pair(np.random.default_rng(3), 50, 0.0)
    first = stats.bootstrap_gap([pair], 300, seed=7)
    assert stats.bootstrap_gap([pair], 300, seed=7) == first
    assert stats.bootstrap_gap([pair], 300, seed=8) != first
    monkeypatch.setattr(stats, "DRAWS_PER_CHUNK", 50 * 7)  # 7 resamples a chunk
    assert stats.bootstrap_gap([pair], 300, seed=7) == first


def test_degenerate_inputs_give_zero_width_intervals():
    one = (np.array([7.0]), np.array([5.0]), np.array([3.0]))
    iv = stats.bootstrap_gap([one], 200)
    assert iv.n == 1 and iv.lo == pytest.approx(iv.value) and iv.hi == pytest.approx(iv.value)
    nats = np.array([3.0, 9.0, 4.0, 12.0])
    same = stats.bootstrap_gap([(nats, nats.copy(), np.array([2.0, 5.0, 3.0, 8.0]))], 200)
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        stats.bootstrap_gap([(np.array([]), np.array([]), np.array([]))])
    with pytest.raises(ValueError):
        stats.bootstrap_gap([one, (nats, nats, nats)])  # pooled pairs must share documents
    with pytest.raises(ValueError):
        stats.bootstrap_gap([])


def test_pooled_pairs_share_one_draw():
    rng = np.random.default_rng(5)
    p1, p2 = _pair(rng, 100, 0.04, shared=0.5), _pair(rng, 100, 0.02, shared=0.5)
    pooled = stats.bootstrap_gap([p1, p2], 500)
    assert pooled.value == pytest.approx((stats.gap(p1) + stats.gap(p2)) / 2)
    assert pooled.lo < pooled.value < pooled.hi
    twice = stats.bootstrap_gap([p1, p1], 500)
    alone = stats.bootstrap_gap([p1], 500)
    # one shared draw: the same pair twice is the pair alone
    assert (twice.lo, twice.hi) == pytest.approx((alone.lo, alone.hi))


def test_paired_documents_refuses_different_texts():
    a = {"hash": ["h1", "h2"], "bytes": [3, 4], "nats": [1.0, 2.0]}
    b = {"hash": ["h1", "h2"], "bytes": [3, 4], "nats": [1.5, 2.5]}
    fa, fb, nbytes = stats.paired_documents(a, b)
    assert fa.tolist() == [1.0, 2.0] and fb.tolist() == [1.5, 2.5] and nbytes.tolist() == [3, 4]
    for other in ({**b, "hash": ["h1", "h3"]}, {**b, "bytes": [3, 5]},
                  {**b, "hash": ["h1"], "bytes": [3]}):
        with pytest.raises(ValueError, match="not the same documents"):
            stats.paired_documents(a, other)


def test_bootstrap_mean_covers_a_known_mean():
    covered = sum(
        (iv := stats.bootstrap_mean(np.random.default_rng(s).normal(3.0, 1.0, 100), 400,
                                    seed=s)).lo <= 3.0 <= iv.hi for s in range(40))
    assert 34 <= covered <= 40


def test_seed_interval_is_a_t_interval():
    iv = stats.seed_interval([1.0, 2.0, 3.0])
    assert iv.value == 2.0 and iv.n == 3
    assert iv.half_width == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    single = stats.seed_interval([0.5])
    assert (single.value, single.lo, single.hi, single.half_width) == (0.5, None, None, None)
    flat = stats.seed_interval([0.2, 0.2, 0.2, 0.2])
    assert flat.lo == pytest.approx(0.2) and flat.hi == pytest.approx(0.2)
    with pytest.raises(ValueError):
        stats.seed_interval([])


def test_t_quantiles_approach_the_normal():
    assert stats.t_quantile(1) == 12.706 and stats.t_quantile(30) == 2.042
    assert stats.t_quantile(31) == pytest.approx(2.040, abs=2e-3)
    assert stats.t_quantile(120) == pytest.approx(1.980, abs=2e-3)
    assert stats.t_quantile(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        stats.t_quantile(0)
