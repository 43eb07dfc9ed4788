"""Tests of deepzip.train.optimal against independent references: exhaustive search over
contiguous partitions and over all assignments, and a plain O(k n^2) dynamic programme."""

import itertools

import numpy as np
import pytest

from deepzip.errors import ConfigError
from deepzip.train import optimal
from deepzip.train.kmeans import kmeans_1d
from deepzip.train.optimal import optimal_kmeans_1d

# --------------------------------------------------------------------------- references


def weighted_sse(values, weights, centroids, codes):
    """sum w (x - c[code])^2 in float64, the objective as a user would compute it."""
    x = np.asarray(values, np.float64)
    w = np.ones(x.size) if weights is None else np.asarray(weights, np.float64)
    return float((w * (x - centroids.astype(np.float64)[codes.astype(np.intp)]) ** 2).sum())


def run_cost(x, w):
    """Weighted squared error of one group about its weighted mean (0 for no weight)."""
    total = w.sum()
    if total <= 0:
        return 0.0
    return float((w * (x - (w * x).sum() / total) ** 2).sum())


def best_contiguous(x, w, k):
    """Least cost over all partitions of the sorted values (ties not merged) into at most k runs."""
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    best = np.inf
    for m in range(1, min(k, x.size) + 1):
        for cuts in itertools.combinations(range(1, x.size), m - 1):
            bounds = (0, *cuts, x.size)
            best = min(best, sum(run_cost(x[a:b], w[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


def best_assignment(x, w, k):
    """Least cost over all k**n labellings: makes no contiguity assumption at all."""
    best = np.inf
    for labels in itertools.product(range(k), repeat=x.size):
        labels = np.array(labels)
        best = min(best, sum(run_cost(x[labels == j], w[labels == j]) for j in range(k)))
    return best


def plain_dp(x, w, k):
    """Textbook O(k n^2) DP over the sorted distinct values, each run's cost from scratch."""
    n = x.size
    cost = np.full((n + 1, n + 1), np.inf)
    for a in range(n):
        # Every run starting at a, about its own first value (no shared running sums).
        d, ww = x[a:] - x[a], w[a:]
        s0, s1, s2 = np.cumsum(ww), np.cumsum(ww * d), np.cumsum(ww * d * d)
        cost[a, a + 1 :] = np.maximum(s2 - s1 * s1 / s0, 0.0)
    d = cost[0].copy()
    for _ in range(2, k + 1):
        d = np.min(d[:, None] + cost, axis=0)
    return float(d[n])


def random_case(rng, n, ties, weighting):
    pool = rng.normal(0.0, 1.0, 4)
    x = rng.choice(pool, n) if ties else rng.normal(0.0, 1.0, n)
    if rng.random() < 0.2:
        x = 100.0 + 1e-2 * x  # far from zero: exercises the centring of the running sums
    x = x.astype(np.float32)
    if weighting == "none":
        return x, None
    if weighting == "counts":
        return x, rng.integers(0, 4, n).astype(np.int64)
    w = rng.exponential(1.0, n)
    w[rng.random(n) < 0.2] = 0.0
    return x, w


def check_partition(x, w, k, c, codes):
    """Sorted centroids, one per non-empty cluster, codes pointing at a nearest centroid."""
    positive = np.ones(x.size, bool) if w is None else np.asarray(w) > 0
    distinct = np.unique(x[positive]).size
    assert c.dtype == np.float32 and np.all(np.diff(c) > 0)
    assert len(c) == min(k, distinct)
    assert codes.shape == x.shape and codes.dtype == (np.uint8 if len(c) <= 256 else np.uint16)
    # No empty cluster: every centroid holds a value of positive weight.
    assert np.array_equal(np.unique(codes[positive]), np.arange(len(c)))
    d = np.abs(x.astype(np.float64)[:, None] - c.astype(np.float64)[None, :])
    assert (d[np.arange(x.size), codes.astype(np.intp)] <= d.min(axis=1)).all()


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("weighting", ["none", "counts", "float"])
def test_equals_exhaustive_search_over_contiguous_partitions(weighting):
    rng = np.random.default_rng(1)
    for trial in range(120):
        n, k = int(rng.integers(1, 10)), int(rng.integers(1, 5))
        x, w = random_case(rng, n, ties=trial % 3 == 0, weighting=weighting)
        if w is not None and not (w > 0).any():
            continue
        c, codes = optimal_kmeans_1d(x, k, weights=w)
        check_partition(x, w, k, c, codes)
        ww = np.ones(n) if w is None else w.astype(np.float64)
        best = best_contiguous(x.astype(np.float64), ww, k)
        got = weighted_sse(x, w, c, codes)
        scale = float(np.abs(x).max()) ** 2 * ww.sum()
        assert got == pytest.approx(best, rel=1e-6, abs=1e-12 * scale), (trial, x, w, k)


@pytest.mark.parametrize("weighting", ["none", "float"])
def test_equals_exhaustive_search_over_all_assignments(weighting):
    rng = np.random.default_rng(2)
    for trial in range(40):
        n, k = int(rng.integers(2, 8)), int(rng.integers(2, 4))
        x, w = random_case(rng, n, ties=trial % 4 == 0, weighting=weighting)
        if w is not None and not (w > 0).any():
            continue
        ww = np.ones(n) if w is None else w
        c, codes = optimal_kmeans_1d(x, k, weights=w)
        best = best_assignment(x.astype(np.float64), ww, k)
        scale = float(np.abs(x).max()) ** 2 * ww.sum()
        assert weighted_sse(x, w, c, codes) == pytest.approx(best, rel=1e-6, abs=1e-12 * scale)


@pytest.mark.parametrize("mode", ["default", "divide_and_conquer", "knuth", "segments"])
def test_equals_a_plain_dp_on_medium_inputs(monkeypatch, mode):
    # Each speed-up on its own: both layer kernels everywhere, and backtracking over many
    # recomputed segments.
    if mode == "divide_and_conquer":
        monkeypatch.setattr(optimal, "_knuth_from", lambda n: 1 << 30)
    elif mode == "knuth":
        monkeypatch.setattr(optimal, "_knuth_from", lambda n: 2)
    elif mode == "segments":
        monkeypatch.setattr(optimal, "_SPLIT_BYTES", 3 * 4 * 400)
    rng = np.random.default_rng(3)
    for n, k, dist in ((150, 2, "normal"), (200, 7, "bimodal"), (300, 31, "laplace"), (120, 119, "normal")):
        if dist == "normal":
            x = rng.normal(0.0, 1.0, n)
        elif dist == "laplace":
            x = rng.laplace(0.0, 1.0, n)
        else:
            x = np.where(rng.random(n) < 0.3, rng.normal(-2, 0.3, n), rng.normal(1, 0.5, n))
        w = rng.exponential(1.0, n)
        c, codes = optimal_kmeans_1d(x, k, weights=w)
        assert len(c) == k
        order = np.argsort(x)
        expected = plain_dp(x[order], w[order], k)
        assert weighted_sse(x, w, c, codes) == pytest.approx(expected, rel=1e-6)


def test_weights_act_as_counts():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, 400).astype(np.float32)
    counts = rng.integers(0, 5, 400)
    c_hist, codes_hist = optimal_kmeans_1d(x, 12, weights=counts)
    expanded = np.repeat(x, counts)
    c_full, codes_full = optimal_kmeans_1d(expanded, 12)
    np.testing.assert_allclose(c_hist, c_full, rtol=1e-6)
    assert np.array_equal(np.repeat(codes_hist, counts), codes_full)


def test_zero_weight_values_take_no_part_but_get_the_nearest_code():
    x = np.array([0.0, 1.0, 2.0, 10.0, 11.0, -50.0, 5.9])
    w = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    c, codes = optimal_kmeans_1d(x, 2, weights=w)
    np.testing.assert_allclose(c, [1.0, 10.5])
    assert codes.tolist() == [0, 0, 0, 1, 1, 0, 1]


def test_fewer_distinct_values_than_k_gives_one_cluster_each():
    x = np.array([3.0, 1.0, 3.0, 2.0, 1.0, 7.0], np.float32)
    c, codes = optimal_kmeans_1d(x, 16)
    assert c.tolist() == [1.0, 2.0, 3.0, 7.0]
    assert np.array_equal(c[codes], x)
    c1, codes1 = optimal_kmeans_1d(x, 1)
    assert c1.tolist() == [pytest.approx(17.0 / 6.0)] and not codes1.any()


# --------------------------------------------------------------------------- against theory


def test_gaussian_at_8_bits_is_within_2_percent_of_lloyd_max():
    sigma = 0.05
    x = np.random.default_rng(0).normal(0.0, sigma, 65_536).astype(np.float32)
    c, codes = optimal_kmeans_1d(x, 256)
    rms = np.sqrt(weighted_sse(x, None, c, codes) / x.size)
    # Panter-Dite: D = (sqrt(3) pi / 2) sigma^2 4^-R, RMS 0.00644 sigma at R = 8.
    lloyd_max = sigma * np.sqrt(np.sqrt(3.0) * np.pi / 2.0 * 4.0**-8)
    assert rms <= 1.02 * lloyd_max
    assert len(c) == 256 and np.bincount(codes, minlength=256).min() > 0
    c_lloyd, codes_lloyd = kmeans_1d(x, 256)  # plain Lloyd from linear init: empty clusters
    assert rms < np.sqrt(weighted_sse(x, None, c_lloyd, codes_lloyd) / x.size)


# --------------------------------------------------------------------------- bad input


def test_too_many_distinct_values_raise(monkeypatch):
    monkeypatch.setattr(optimal, "MAX_DISTINCT", 100)
    x = np.arange(101, dtype=np.float32)
    with pytest.raises(ConfigError, match="histogram"):
        optimal_kmeans_1d(x, 4)
    optimal_kmeans_1d(x, 4, weights=(x < 100).astype(float))  # 100 with positive weight


@pytest.mark.parametrize(
    "call",
    [
        lambda v: optimal_kmeans_1d(v.reshape(2, 2), 2),
        lambda v: optimal_kmeans_1d(np.array([], np.float32), 2),
        lambda v: optimal_kmeans_1d(np.array([0.1, np.nan]), 2),
        lambda v: optimal_kmeans_1d(np.array([0.1, np.inf]), 2),
        lambda v: optimal_kmeans_1d(v.astype(np.complex64), 2),
        lambda v: optimal_kmeans_1d(v, 0),
        lambda v: optimal_kmeans_1d(v, 2.5),
        lambda v: optimal_kmeans_1d(v, True),
        lambda v: optimal_kmeans_1d(v, 70_000),
        lambda v: optimal_kmeans_1d(v, 2, weights=np.ones(3)),
        lambda v: optimal_kmeans_1d(v, 2, weights=np.array([1.0, -1.0, 1.0, 1.0])),
        lambda v: optimal_kmeans_1d(v, 2, weights=np.zeros(4)),
        lambda v: optimal_kmeans_1d(v, 2, weights=np.array([1.0, np.nan, 1.0, 1.0])),
        lambda v: optimal_kmeans_1d(v, 2, weights=np.array(["a", "b", "c", "d"])),
    ],
)
def test_bad_arguments_raise_config_error(call):
    with pytest.raises(ConfigError):
        call(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
