"""Tests of deepzip.kmeans against independent references: textbook Lloyd and exhaustive search."""

import itertools

import numpy as np
import pytest
import torch

from deepzip.errors import ConfigError
from deepzip.train import kmeans, lloyd
from deepzip.train.kmeans import (
    INIT_METHODS,
    _assign_nearest,
    apply_table,
    drop_empty_clusters,
    init_centroids,
    kmeans_1d,
)
from deepzip.train.lloyd import RunningSums, cut_points, lloyd_sorted

# --------------------------------------------------------------------------- helpers


def make_values(dist, n, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if dist == "normal":
        v = rng.normal(0.0, 0.05, n)
    elif dist == "bimodal":
        v = np.where(rng.random(n) < 0.4, rng.normal(-0.3, 0.04, n), rng.normal(0.2, 0.08, n))
    elif dist == "duplicates":
        # Few distinct, irregular values: many exact repeats, but no built-in midpoint ties.
        v = rng.choice(rng.normal(0.0, 1.0, 9), size=n)
    elif dist == "offset":
        # Weights sitting far from zero: exercises the cancellation in prefix sums.
        v = 100.0 + rng.normal(0.0, 1e-2, n)
    else:
        raise AssertionError(dist)
    return v.astype(dtype)


def textbook_lloyd(values, c0, max_iter=100_000):
    """Plain Lloyd: full argmin assignment of every point, then means; empty clusters stay."""
    v = values.astype(np.float64)
    c = np.array(c0, dtype=np.float64)
    assign = None
    for _ in range(max_iter):
        new = np.abs(v[:, None] - c[None, :]).argmin(axis=1)
        if assign is not None and np.array_equal(new, assign):
            return c, assign
        assign = new
        for j in range(c.size):
            members = v[assign == j]
            if members.size:
                c[j] = members.mean()
    raise AssertionError("textbook Lloyd did not converge")


def distances(values, centroids):
    """|v - c| in float64 for every value and centroid, the way a user would check it."""
    return np.abs(values.astype(np.float64)[:, None] - centroids.astype(np.float64)[None, :])


def assert_nearest(values, centroids, codes):
    """No centroid is strictly closer to any value than the one its code points at."""
    for i in range(0, values.size, 4096):
        d = distances(values[i : i + 4096], centroids)
        chosen = d[np.arange(d.shape[0]), codes[i : i + 4096].astype(np.intp)]
        assert (chosen <= d.min(axis=1)).all()


def sse(values, centroids, codes):
    v = values.astype(np.float64)
    return float(((v - centroids.astype(np.float64)[codes.astype(np.intp)]) ** 2).sum())


def optimal_sse(values, k):
    """Exhaustive search over contiguous partitions of the sorted values (1-D optimum)."""
    s = np.sort(values.astype(np.float64))
    n = s.size
    best = np.inf
    for cuts in itertools.combinations(range(1, n), k - 1):
        total = sum(((g - g.mean()) ** 2).sum() for g in np.split(s, cuts))
        best = min(best, total)
    return best


# --------------------------------------------------------------------------- vs textbook Lloyd


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("init", INIT_METHODS)
@pytest.mark.parametrize("dist", ["normal", "bimodal", "duplicates", "offset"])
def test_matches_textbook_lloyd(dist, init, dtype):
    compared = 0
    for n, k, seed in itertools.product((50, 301, 2000), (2, 3, 5, 8, 16), (0, 1, 2)):
        v = make_values(dist, n, seed * 7919 + n, dtype)
        c0 = init_centroids(v, k, init, seed=seed)
        if np.any(c0[1:] == c0[:-1]):
            # Repeated initial centroids make every value near them a tie, and argmin's rule
            # (first copy takes all) differs from kmeans_1d's positional one on purpose; see
            # test_repeated_initial_centroids.
            continue
        compared += 1
        ref_c, ref_codes = textbook_lloyd(v, c0)
        c, codes = kmeans_1d(v, k, init=init, seed=seed)
        scale = float(np.abs(v).max())
        np.testing.assert_allclose(
            c, ref_c, rtol=1e-6, atol=1e-9 * scale, err_msg=f"n={n} k={k} seed={seed}"
        )
        differ = codes.astype(np.intp) != ref_codes
        if differ.any():
            # Only (near-)ties may differ: float32 rounding of the centroids can move a value
            # sitting on a midpoint to the other side.
            d = distances(v[differ], c)
            rows = np.arange(d.shape[0])
            mine, theirs = d[rows, codes[differ].astype(np.intp)], d[rows, ref_codes[differ]]
            assert (mine <= theirs).all()
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7 * scale)
    assert compared >= 20


def fixed_point_check(values, c, codes):
    """Each non-empty cluster's centroid is the mean of its members (float32 rounding aside)."""
    v = values.astype(np.float64)
    scale = float(np.abs(v).max())
    for j in np.unique(codes):
        assert c[j] == pytest.approx(v[codes == j].mean(), rel=1e-6, abs=1e-9 * scale)


def test_repeated_initial_centroids():
    # Density init on data with few distinct values repeats centroids.  Plain argmin would hand
    # a whole run to its first copy, whose mean can then pass the other copies (unsorted
    # centroids); the positional tie rule splits the run instead and keeps them sorted.
    hits = 0
    for seed in range(40):
        v = make_values("duplicates", 301, seed)
        c0 = init_centroids(v, 12, "density")
        hits += int(np.any(c0[1:] == c0[:-1]))
        c, codes = kmeans_1d(v, 12, init="density")
        assert np.all(np.diff(c) >= 0)
        assert_nearest(v, c, codes)
        fixed_point_check(v, c, codes)
    assert hits >= 30


def test_converges_to_exact_fixed_point():
    v = make_values("normal", 200_000, 3)
    x = np.sort(v).astype(np.float64)
    c, iterations, converged = lloyd_sorted(x, init_centroids(v, 32), 100_000)
    assert converged and iterations > 1
    # At the fixed point every centroid is the mean of the values nearest to it.
    codes = np.abs(x[:, None] - c[None, :]).argmin(axis=1)
    for j in np.unique(codes):
        assert c[j] == pytest.approx(x[codes == j].mean(), rel=1e-12, abs=1e-15)


def test_max_iter_bounds_the_work():
    v = make_values("normal", 10_000, 4)
    x = np.sort(v).astype(np.float64)
    _, iterations, converged = lloyd_sorted(x, init_centroids(v, 16), 3)
    assert iterations == 3 and not converged
    c, codes = kmeans_1d(v, 16, max_iter=3)
    assert np.all(np.diff(c) >= 0)
    assert_nearest(v, c, codes)


def test_float32_values_cluster_exactly_as_their_float64_copy():
    # share_tensor hands fp32 weights over without widening them: the result must not change.
    for dist, k, init in itertools.product(("normal", "offset", "duplicates"), (2, 16, 300), INIT_METHODS):
        v = make_values(dist, 5000, k)
        c32, codes32 = kmeans_1d(v, k, init=init, seed=1)
        c64, codes64 = kmeans_1d(v.astype(np.float64), k, init=init, seed=1)
        assert c32.tobytes() == c64.tobytes() and np.array_equal(codes32, codes64)


# --------------------------------------------------------------------------- bounded memory, same results


def reference_cuts(x, shift, mids):
    """The search the Lloyd step used to run, on a float64 copy of the shifted values."""
    return np.searchsorted(x.astype(np.float64) - shift, mids, side="right")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cut_points_match_the_search_on_shifted_values(dtype):
    rng = np.random.default_rng(3)
    sets = [
        rng.normal(0.0, 0.05, 5000),
        100.0 + rng.normal(0.0, 1e-2, 5000),
        # Values far from the shift: many floats round to the same difference, where the
        # nudged key misses and the bisection has to find the cut.
        np.concatenate([rng.normal(0.0, 1e-8, 3000), rng.normal(1e12, 1.0, 3000)]),
        np.concatenate([rng.normal(0.0, 1e-30, 3000), [3e29, 1e30]]),
        rng.choice(rng.normal(0.0, 1.0, 7), 4000),
    ]
    for values in sets:
        x = np.sort(values.astype(dtype))
        for shift in (float(x[x.size // 2]), float(x[0]), float(x[-1]), 0.0):
            xs = x.astype(np.float64) - shift
            # Midpoints on, and an ulp around, the shifted values themselves, and random ones.
            on = xs[rng.integers(0, x.size, 200)]
            mids = np.sort(np.concatenate([on, np.nextafter(on, np.inf), np.nextafter(on, -np.inf), rng.uniform(xs[0] - 1, xs[-1] + 1, 200)]))
            assert np.array_equal(cut_points(x, shift, mids), reference_cuts(x, shift, mids))


@pytest.mark.parametrize("weighted", [False, True])
def test_running_sums_are_bit_identical_to_a_full_cumsum(monkeypatch, weighted):
    monkeypatch.setattr(lloyd, "_FULL_PREFIX", 100)  # stored every _PREFIX_BLOCK-th sum
    monkeypatch.setattr(lloyd, "_SUM_CHUNK", 64)  # and built over many chunks
    rng = np.random.default_rng(4)
    x = np.sort(np.concatenate([[-0.0, 0.0, 0.0], rng.normal(0.0, 1.0, 5000)]).astype(np.float32))
    w = rng.integers(1, 50, x.size) if weighted else None
    shift = 0.0
    terms = x.astype(np.float64) - shift
    if weighted:
        terms = terms * w.astype(np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(terms)])
    sums = RunningSums(x, None if w is None else w.astype(np.float64), shift)
    assert sums.block > 1
    assert sums.total == prefix[-1]
    for _ in range(3):  # repeated calls reuse the cuts that did not move
        cuts = np.sort(rng.integers(0, x.size + 1, 300))
        cuts[:3] = 0
        assert sums.at(cuts).tobytes() == prefix[cuts].tobytes()


def test_block_sums_give_the_same_clustering(monkeypatch):
    v = np.concatenate([make_values("bimodal", 30_000, 9), make_values("offset", 3000, 2)])
    expected = [kmeans_1d(v, k, init=init, seed=2) for k, init in ((16, "linear"), (64, "density"), (8, "random"))]
    monkeypatch.setattr(lloyd, "_FULL_PREFIX", 1000)
    for (c, codes), (k, init) in zip(expected, ((16, "linear"), (64, "density"), (8, "random"))):
        c2, codes2 = kmeans_1d(v, k, init=init, seed=2)
        assert c.tobytes() == c2.tobytes() and np.array_equal(codes, codes2)


def half_values(dtype_name, n, seed):
    """Random weights rounded to fp16 or bf16 (numpy lacks bf16), as float64: exact."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, generator=g) * 0.05).to(getattr(torch, dtype_name))
    return w.double().numpy()


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("init", INIT_METHODS)
def test_histogram_clusters_like_the_expanded_values(dtype_name, init):
    for n, k, seed in ((3000, 4, 0), (20_000, 16, 1), (50_000, 64, 2)):
        v = half_values(dtype_name, n, seed)
        distinct, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
        c_hist, codes_hist = kmeans_1d(distinct, k, init=init, seed=seed, weights=counts)
        c_full, codes_full = kmeans_1d(v, k, init=init, seed=seed)
        np.testing.assert_allclose(c_hist, c_full, rtol=1e-6, atol=1e-12)
        # The same partition: every value's code is the code of its distinct value.
        assert np.array_equal(codes_hist[inverse], codes_full)
        # Every code is the nearest centroid in float64, ties to the lower one (argmin's rule).
        d = np.abs(distinct[:, None] - c_hist.astype(np.float64)[None, :])
        assert np.array_equal(codes_hist, d.argmin(axis=1))


def test_weights_count_values_and_zero_counts_only_get_codes():
    v = np.array([0.0, 1.0, 2.0, 10.0, -50.0], dtype=np.float64)
    w = np.array([3, 1, 1, 2, 0])
    c, codes = kmeans_1d(v, 2, weights=w)
    expanded = np.repeat(v[:4], w[:4])
    c_full, _ = kmeans_1d(expanded, 2)
    np.testing.assert_allclose(c, c_full, rtol=1e-7)  # -50 with count 0 moved no centroid
    assert codes.tolist() == [0, 0, 0, 1, 0]


@pytest.mark.parametrize("bad", [np.array([1, 2]), np.array([1.0, 2.0, 3.0]), np.array([1, -1, 2]), np.zeros(3, int)])
def test_bad_weights_raise_config_error(bad):
    with pytest.raises(ConfigError):
        kmeans_1d(np.array([0.1, 0.2, 0.3]), 2, weights=bad)


def test_drop_empty_clusters_renumbers_to_the_narrowest_codes():
    centroids = np.arange(300, dtype=np.float32)
    codes = np.array([299, 5, 5, 17], dtype=np.uint16)
    kept, renumbered = drop_empty_clusters(centroids, codes)
    assert kept.tolist() == [5.0, 17.0, 299.0]
    assert renumbered.dtype == np.uint8 and renumbered.tolist() == [2, 0, 0, 1]
    _, wide = drop_empty_clusters(centroids, np.arange(300, dtype=np.uint16))
    assert wide.dtype == np.uint16 and np.array_equal(wide, np.arange(300))


def test_apply_table_over_many_chunks(monkeypatch):
    monkeypatch.setattr(kmeans, "_TABLE_CHUNK", 7)
    keys = np.random.default_rng(0).integers(0, 1 << 16, 1000).astype(np.uint16)
    table = (np.arange(1 << 16) % 251).astype(np.uint8)
    assert np.array_equal(apply_table(table, keys), table[keys])


# --------------------------------------------------------------------------- vs exhaustive optimum


def test_objective_never_below_optimum():
    rng = np.random.default_rng(11)
    for trial in range(150):
        n = int(rng.integers(3, 13))
        k = int(rng.integers(2, 4))
        v = rng.normal(0.0, 1.0, n).astype(np.float32)
        c, codes = kmeans_1d(v, k, init=INIT_METHODS[trial % 3], seed=trial)
        opt = optimal_sse(v, k)
        assert sse(v, c, codes) >= opt - 1e-9 * max(opt, 1.0)


@pytest.mark.parametrize("init", ["linear", "density"])
def test_reaches_optimum_on_separated_clusters(init):
    rng = np.random.default_rng(5)
    for _ in range(30):
        groups = [rng.normal(center, 0.3, 4) for center in (-10.0, 0.5, 12.0)]
        v = np.concatenate(groups).astype(np.float32)
        rng.shuffle(v)
        c, codes = kmeans_1d(v, 3, init=init)
        opt = optimal_sse(v, 3)
        assert sse(v, c, codes) == pytest.approx(opt, rel=1e-6)
        # The optimal partition is the three groups.
        assert len(set(codes.tolist())) == 3


def test_two_separated_groups():
    v = np.array([0.0, 0.1, 0.2, 0.15, 5.0, 5.2, 5.1], dtype=np.float32)
    c, codes = kmeans_1d(v, 2)
    assert sse(v, c, codes) == pytest.approx(optimal_sse(v, 2), rel=1e-6)
    np.testing.assert_allclose(c, [0.1125, 5.1], rtol=1e-6)
    assert codes.tolist() == [0, 0, 0, 0, 1, 1, 1]


# --------------------------------------------------------------------------- assignment


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 7, 32, 300])
def test_codes_point_at_a_nearest_centroid(k, dtype):
    v = make_values("bimodal", 20_000, k, dtype)
    c, codes = kmeans_1d(v, k)
    assert c.dtype == np.float32 and c.shape == (k,)
    assert np.all(np.diff(c) >= 0)
    assert codes.dtype == (np.uint8 if k <= 256 else np.uint16)
    assert codes.shape == v.shape and int(codes.max()) < k
    assert_nearest(v, c, codes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_assignment_exact_at_midpoints(dtype):
    # Values on and one ulp around the float32 centroids' midpoints: where a rounded midpoint
    # would put values on the wrong side.
    rng = np.random.default_rng(8)
    c = np.sort(rng.normal(0.0, 1.0, 40).astype(np.float32))
    c = np.concatenate([c, c[:3] * np.float32(1e-30), [np.float32(3e38)]])
    c = np.sort(c)
    mids = ((c[:-1].astype(np.float64) + c[1:]) / 2).astype(dtype)
    v = np.concatenate(
        [
            mids,
            np.nextafter(mids, dtype(np.inf)),
            np.nextafter(mids, dtype(-np.inf)),
            c.astype(dtype),
        ]
    )
    codes = _assign_nearest(v, c)
    assert_nearest(v, c, codes)


def test_ties_go_to_lower_centroid():
    c = np.array([0.0, 1.0, 1.0, 3.0], dtype=np.float32)
    v = np.array([0.5, 1.0, 2.0, 2.5, -4.0, 9.0], dtype=np.float32)
    # 0.5 and 2.0 are exact ties; 1.0 equals a repeated centroid (first copy wins).
    assert _assign_nearest(v, c).tolist() == [0, 1, 1, 3, 0, 3]


def test_code_dtype_switches_above_256():
    v = make_values("normal", 5000, 1)
    assert kmeans_1d(v, 256)[1].dtype == np.uint8
    assert kmeans_1d(v, 257)[1].dtype == np.uint16


# --------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("init", INIT_METHODS)
def test_k1_gives_the_mean(init):
    v = make_values("bimodal", 1001, 2, np.float64)
    c, codes = kmeans_1d(v, 1, init=init)
    assert c.shape == (1,) and c[0] == np.float32(v.mean())
    assert (codes == 0).all() and codes.dtype == np.uint8


@pytest.mark.parametrize("init", INIT_METHODS)
def test_all_equal_values(init):
    v = np.full(100, 0.25, dtype=np.float32)
    c, codes = kmeans_1d(v, 4, init=init)
    assert (c == np.float32(0.25)).all()
    assert (c[codes] == v).all()


@pytest.mark.parametrize("init", INIT_METHODS)
def test_fewer_distinct_values_than_k(init):
    rng = np.random.default_rng(0)
    v = rng.choice(np.array([0.0, 1.0, 5.0], dtype=np.float32), size=60)
    c, codes = kmeans_1d(v, 8, init=init, seed=3)
    assert c.shape == (8,) and np.all(np.diff(c) >= 0)
    # Every distinct value ends up in its own cluster, so quantization is lossless.
    assert (c[codes] == v).all()
    assert_nearest(v, c, codes)


def test_single_value_and_integer_input():
    c, codes = kmeans_1d(np.array([3.5]), 4)
    assert c[codes[0]] == np.float32(3.5)
    vi = np.array([1, 2, 3, 10, 11, 12, 30], dtype=np.int32)
    ci, codes_i = kmeans_1d(vi, 3)
    cf, codes_f = kmeans_1d(vi.astype(np.float64), 3)
    assert np.array_equal(ci, cf) and np.array_equal(codes_i, codes_f)
    np.testing.assert_allclose(ci, [2.0, 11.0, 30.0])


# --------------------------------------------------------------------------- initialization


def test_linear_init():
    v = make_values("bimodal", 3000, 6)
    c = init_centroids(v, 16, "linear")
    assert c.dtype == np.float64 and c.shape == (16,)
    assert c[0] == v.min() and c[-1] == v.max()
    np.testing.assert_allclose(np.diff(c), (float(v.max()) - float(v.min())) / 15, rtol=1e-9)


@pytest.mark.parametrize("n", [1, 5, 100, 1001])
@pytest.mark.parametrize("k", [1, 3, 16])
def test_density_init_is_evenly_spaced_in_the_cdf(n, k):
    v = make_values("bimodal", n, n + k)
    c = init_centroids(v, k, "density")
    assert c.shape == (k,) and np.all(np.diff(c) >= 0)
    assert np.isin(c, v.astype(np.float64)).all()
    for i, ci in enumerate(c):
        level = (i + 0.5) / k * n
        # ci is the inverse empirical CDF at level (i + 0.5) / k.
        assert (v < ci).sum() <= level < (v <= ci).sum()


def test_random_init():
    v = make_values("normal", 5000, 9)
    a = init_centroids(v, 32, "random", seed=4)
    assert np.array_equal(a, init_centroids(v, 32, "random", seed=4))
    assert not np.array_equal(a, init_centroids(v, 32, "random", seed=5))
    assert a.dtype == np.float64 and np.all(np.diff(a) > 0)  # sorted and distinct
    assert np.isin(a, v.astype(np.float64)).all()
    # kmeans_1d uses the same initial centroids, so it is reproducible too.
    r1, r2 = kmeans_1d(v, 32, "random", seed=4), kmeans_1d(v, 32, "random", seed=4)
    assert np.array_equal(r1[0], r2[0]) and np.array_equal(r1[1], r2[1])


def test_random_init_on_repetitive_data():
    # One dominant value: the cheap draws do not find k distinct values, the fallback must.
    v = np.zeros(100_000, dtype=np.float32)
    v[:40] = np.arange(1, 41)
    c = init_centroids(v, 32, "random", seed=1)
    assert np.all(np.diff(c) > 0) and np.isin(c, v).all()
    # Fewer distinct values than k: every distinct value appears, some twice.
    c = init_centroids(v[:10], 16, "random", seed=1)
    assert c.shape == (16,) and set(c.tolist()) == set(v[:10].tolist())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_rejected(bad):
    v = np.array([0.1, 0.2, bad, 0.3], dtype=np.float32)
    with pytest.raises(ConfigError, match="finite"):
        kmeans_1d(v, 2)
    with pytest.raises(ConfigError, match="index 2"):
        init_centroids(v, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda v: kmeans_1d(v, 2, init="kmeans++"),
        lambda v: init_centroids(v, 2, method="uniform"),
        lambda v: kmeans_1d(v, 0),
        lambda v: init_centroids(v, 0),
        lambda v: kmeans_1d(v, -3),
        lambda v: kmeans_1d(v, 2.5),
        lambda v: kmeans_1d(v, True),
        lambda v: kmeans_1d(v, 70_000),
        lambda v: kmeans_1d(v, 2, max_iter=0),
        lambda v: kmeans_1d(np.array([], dtype=np.float32), 2),
        lambda v: init_centroids(np.array([]), 2),
        lambda v: kmeans_1d(v.reshape(2, 2), 2),
        lambda v: kmeans_1d(v.astype(np.complex64), 2),
    ],
)
def test_bad_arguments_raise_config_error(call):
    v = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    with pytest.raises(ConfigError):
        call(v)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        kmeans_1d(np.array([np.nan]), 1)
