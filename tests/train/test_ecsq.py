"""Tests of deepzip.train.ecsq against a textbook ECSQ (dense cost matrix, numpy), the
objective computed from scratch, and the high-rate theory of Gaussian and Laplacian sources."""

import itertools
import math

import numpy as np
import pytest

from deepzip.errors import ConfigError
from deepzip.train import ecsq, lloyd
from deepzip.train.ecsq import ecsq_1d
from deepzip.train.optimal import optimal_kmeans_1d

LN2_6 = math.log(2.0) / 6.0

# --------------------------------------------------------------------------- references


def objective(x, counts, imp, lam, c, codes):
    """sum imp (x - c[q])^2 + lam sum count * -log2 p[q], p from the codes' counts."""
    x = np.asarray(x, np.float64)
    counts = np.ones(x.size) if counts is None else np.asarray(counts, np.float64)
    imp = counts if imp is None else np.asarray(imp, np.float64)
    q = codes.astype(np.intp)
    per_level = np.bincount(q, counts, len(c))
    bits = -np.log2(per_level[q] / counts.sum(), where=counts > 0, out=np.zeros(x.size))
    return float((imp * (x - c.astype(np.float64)[q]) ** 2).sum() + lam * (counts * bits).sum())


def entropy(codes, counts=None):
    p = np.bincount(codes.astype(np.intp), weights=counts)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def textbook_ecsq(x, counts, imp, step, lam, max_iter):
    """Chou-Lookabaugh-Gray in one dimension with the whole cost matrix: argmin over all levels."""
    c = np.arange(math.floor(x.min() / step), math.ceil(x.max() / step) + 1) * step
    r = np.zeros(c.size)
    codes = None
    for _ in range(max_iter):
        new = (imp[:, None] * (x[:, None] - c[None, :]) ** 2 + counts[:, None] * r[None, :]).argmin(axis=1)
        if codes is not None and np.array_equal(new, codes):
            break
        codes = new
        n_levels = c.size
        per_level = np.bincount(codes, counts, n_levels)
        weight = np.bincount(codes, imp, n_levels)
        mean = np.bincount(codes, imp * x, n_levels) / np.where(weight > 0, weight, 1.0)
        c = np.where(weight > 0, mean, c)
        keep = np.flatnonzero(per_level > 0)
        keep = keep[np.argsort(c[keep], kind="stable")]
        renumber = np.zeros(n_levels, np.intp)
        renumber[keep] = np.arange(keep.size)
        c, codes = c[keep], renumber[codes]
        r = lam * -np.log2(per_level[keep] / per_level.sum())
    return c, codes


def source(dist, n, seed):
    rng = np.random.default_rng(seed)
    if dist == "gauss":
        return rng.normal(0.0, 1.0, n).astype(np.float32)
    return rng.laplace(0.0, 1.0 / math.sqrt(2.0), n).astype(np.float32)  # unit variance


def check_result(x, c, codes):
    assert c.dtype == np.float32 and np.all(np.diff(c) >= 0)
    assert codes.shape == x.shape and codes.dtype == (np.uint8 if len(c) <= 256 else np.uint16)
    assert int(codes.max()) < len(c)
    assert np.array_equal(np.unique(codes), np.arange(len(c)))  # no empty level


# --------------------------------------------------------------------------- vs the textbook


@pytest.mark.parametrize("kind", ["plain", "counts", "importance"])
def test_matches_textbook_ecsq(kind):
    rng = np.random.default_rng(5)
    for trial in range(30):
        n = int(rng.integers(1, 300))
        x = (rng.normal(0.0, 1.0, n) if trial % 2 else rng.laplace(0.0, 1.0, n)).astype(np.float32)
        step = float(rng.choice([0.05, 0.3, 1.0, 2.5]))
        lam = None if trial % 3 else float(rng.uniform(0.0, 2.0)) * step**2
        counts = imp = None
        if kind == "counts":
            counts = rng.integers(1, 6, n).astype(np.float64)
        elif kind == "importance":
            imp = rng.exponential(1.0, n)
        c, codes = ecsq_1d(x, step, lam=lam, weights=counts, importance=imp, max_iter=40)
        check_result(x, c, codes)
        cnt = np.ones(n) if counts is None else counts
        weight = cnt if imp is None else imp
        lam_used = LN2_6 * step**2 * weight.sum() / cnt.sum() if lam is None else lam
        c_ref, codes_ref = textbook_ecsq(x.astype(np.float64), cnt, weight, step, lam_used, 40)
        np.testing.assert_allclose(c, c_ref, rtol=1e-6, atol=1e-6 * step)
        assert np.array_equal(codes, codes_ref), trial


def test_objective_never_rises_across_iterations():
    for dist, imp_kind, step in (("gauss", None, 0.3), ("laplace", None, 0.1), ("gauss", "random", 0.2), ("laplace", "random", 0.5)):
        x = source(dist, 20_000, 6)
        imp = None if imp_kind is None else np.random.default_rng(1).exponential(1.0, x.size)
        lam = LN2_6 * step**2 * (1.0 if imp is None else imp.mean())
        values = [objective(x, None, imp, lam, *ecsq_1d(x, step, importance=imp, max_iter=t)) for t in range(1, 16)]
        assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(values)), values
        assert values[-1] < values[0]  # and the iterations do lower it


# --------------------------------------------------------------------------- vs fixed-rate k-means


def rate_at(x, step, target_d):
    """ECSQ's entropy at distortion ``target_d``: step tuned by the high-rate D ~ step^2 law,
    the last small mismatch closed with the high-rate slope (1/2 bit per factor 4 in D)."""
    x64 = x.astype(np.float64)
    for _ in range(3):
        c, codes = ecsq_1d(x, step)
        d = float(np.mean((x64 - c[codes]) ** 2))
        step *= math.sqrt(target_d / d)
    assert d == pytest.approx(target_d, rel=0.02)
    return entropy(codes) + 0.5 * math.log2(d / target_d)


@pytest.mark.parametrize(
    ("dist", "bits", "low", "high"),
    [
        # High-rate gaps at equal distortion, uniform + entropy coding vs Lloyd-Max fixed
        # rate: 1/2 log2(3 sqrt(3) / e) = 0.467 bit (Gaussian), 1/2 log2(27 / e^2) = 0.935 bit
        # (Laplacian). Measured on these samples: 0.31 / 0.41 and 0.78 / 0.87 bit.
        ("gauss", 3, 0.25, 0.467),
        ("gauss", 5, 0.38, 0.50),
        ("laplace", 3, 0.65, 0.935),
        ("laplace", 5, 0.80, 0.97),
    ],
)
def test_beats_fixed_rate_kmeans_at_equal_distortion(dist, bits, low, high):
    x = source(dist, 65_536, 9)
    c, codes = optimal_kmeans_1d(x, 2**bits)
    d_km = float(np.mean((x.astype(np.float64) - c[codes]) ** 2))
    rate = rate_at(x, math.sqrt(12.0 * d_km), d_km)
    assert rate < entropy(codes) - 0.05  # below even entropy-coded k-means codes
    assert low <= bits - rate <= high


def test_gap_grows_towards_the_high_rate_value():
    x = source("gauss", 65_536, 10)
    gaps = []
    for bits in (2, 4, 6):
        c, codes = optimal_kmeans_1d(x, 2**bits)
        d = float(np.mean((x.astype(np.float64) - c[codes]) ** 2))
        gaps.append(bits - rate_at(x, math.sqrt(12.0 * d), d))
    assert gaps[0] < gaps[1] < gaps[2] < 0.467 + 0.02


# --------------------------------------------------------------------------- conventions


def test_default_lam_is_the_uniform_slope_and_importance_scale_is_neutral():
    x = source("gauss", 5000, 11)
    c, codes = ecsq_1d(x, 0.2)
    c2, codes2 = ecsq_1d(x, 0.2, lam=LN2_6 * 0.04)
    assert c.tobytes() == c2.tobytes() and np.array_equal(codes, codes2)
    # Importance 3x the counts scales the whole objective, default lam included.
    c3, codes3 = ecsq_1d(x, 0.2, importance=np.full(x.size, 3.0))
    np.testing.assert_allclose(c3, c, rtol=1e-6)
    assert np.array_equal(codes3, codes)


def test_histogram_quantizes_like_its_expansion_and_zero_counts_get_the_nearest_code():
    rng = np.random.default_rng(12)
    distinct = np.unique(rng.normal(0.0, 1.0, 3000).astype(np.float32))
    counts = rng.integers(0, 7, distinct.size).astype(np.float64)
    c_h, codes_h = ecsq_1d(distinct, 0.25, weights=counts)
    expanded = np.repeat(distinct, counts.astype(int))
    c_f, codes_f = ecsq_1d(expanded, 0.25)
    np.testing.assert_allclose(c_h, c_f, rtol=1e-6)
    assert np.array_equal(np.repeat(codes_h, counts.astype(int)), codes_f)
    zero = counts == 0
    d = np.abs(distinct[zero, None].astype(np.float64) - c_h[None, :].astype(np.float64))
    assert np.array_equal(codes_h[zero], d.argmin(axis=1))


def test_deterministic_wide_codes_and_block_sums(monkeypatch):
    x = source("laplace", 200_000, 13)
    c, codes = ecsq_1d(x, 0.01)
    assert len(c) > 256 and codes.dtype == np.uint16
    check_result(x, c, codes)
    again = ecsq_1d(x, 0.01)
    assert c.tobytes() == again[0].tobytes() and np.array_equal(codes, again[1])
    monkeypatch.setattr(lloyd, "_FULL_PREFIX", 1000)  # running sums kept every 16th value
    blocked = ecsq_1d(x, 0.01)
    assert c.tobytes() == blocked[0].tobytes() and np.array_equal(codes, blocked[1])


def test_codes_by_thresholds_is_an_exact_search():
    rng = np.random.default_rng(14)
    for t in (np.sort(rng.normal(0, 1, 50)), np.array([0.5]), np.array([-1.0, 0.0, 0.0, 2.0]), np.zeros(0),
              np.sort(np.concatenate([rng.normal(0, 1e-6, 20), [1e3]]))):  # fmt: skip
        v = np.concatenate([rng.normal(0, 2, 5000), t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)]).astype(np.float32)
        out = np.empty(v.size, np.uint16)
        ecsq._codes_by_thresholds(v, t, out)
        assert np.array_equal(out, np.searchsorted(t, v.astype(np.float64), side="left"))


def test_envelope_is_the_argmin_of_the_costs():
    rng = np.random.default_rng(15)
    for _ in range(50):
        c = np.sort(rng.normal(0, 1, int(rng.integers(1, 30))))
        c[rng.random(c.size) < 0.1] = c[0]  # repeated centroids
        c = np.sort(c)
        r = rng.exponential(0.5, c.size)
        hull, t = ecsq._envelope(c, r)
        xs = rng.uniform(-4, 4, 2000)
        cost = (xs[:, None] - c[None, :]) ** 2 + r[None, :]
        chosen = hull[np.searchsorted(t, xs, side="left")]
        np.testing.assert_allclose(cost[np.arange(xs.size), chosen], cost.min(axis=1), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call",
    [
        lambda v: ecsq_1d(v.reshape(2, 2), 0.1),
        lambda v: ecsq_1d(np.array([], np.float32), 0.1),
        lambda v: ecsq_1d(np.array([0.0, np.nan]), 0.1),
        lambda v: ecsq_1d(v, 0.0),
        lambda v: ecsq_1d(v, -1.0),
        lambda v: ecsq_1d(v, float("nan")),
        lambda v: ecsq_1d(v, True),
        lambda v: ecsq_1d(v, "0.1"),
        lambda v: ecsq_1d(v, 1e-9),  # 4e8 levels
        lambda v: ecsq_1d(v, 0.1, lam=-1.0),
        lambda v: ecsq_1d(v, 0.1, lam=float("inf")),
        lambda v: ecsq_1d(v, 0.1, weights=np.ones(3)),
        lambda v: ecsq_1d(v, 0.1, weights=np.zeros(4)),
        lambda v: ecsq_1d(v, 0.1, importance=np.ones(3)),
        lambda v: ecsq_1d(v, 0.1, importance=-np.ones(4)),
        lambda v: ecsq_1d(v, 0.1, importance=np.array([1.0, np.inf, 1.0, 1.0])),
        lambda v: ecsq_1d(v, 0.1, max_iter=0),
        lambda v: ecsq_1d(v, 0.1, max_iter=2.0),
    ],
)
def test_bad_arguments_raise_config_error(call):
    with pytest.raises(ConfigError):
        call(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
