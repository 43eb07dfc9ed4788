"""1-D k-means for weight sharing (Deep Compression, stage 2).

Each layer's surviving weights are clustered into ``k = 2**b`` shared values; every weight is
then stored as the b-bit index of its cluster plus one fp32 codebook per layer.

Clustering is 1-D, which makes exact Lloyd iterations cheap: after one sort of the weights,
every cluster is a contiguous run of the sorted values, so one Lloyd step is ``k - 1`` binary
searches for the cut points plus cluster sums read off prefix sums -- O(k log n) instead of
O(n) per step.  That lets us run Lloyd to its exact fixed point (thousands of steps cost a few
tens of milliseconds) instead of stopping after a handful of O(n) steps far from convergence.
Measured on 10M weights and 32 clusters (2-core machine): plain O(n) Lloyd costs 0.23 s per
step and is still 4.4x off the optimum after 20 steps; sorted with prefix sums, 0.35 s for
the sort, then ~60 us per step, to the exact fixed point in under 0.5 s.

All functions are pure: they take numpy arrays and return new numpy arrays.
"""

from __future__ import annotations

import numbers

import numpy as np

from deepzip.errors import ConfigError

__all__ = ["INIT_METHODS", "init_centroids", "kmeans_1d"]

INIT_METHODS = ("linear", "density", "random")

# Codes are stored as uint16 at most; a larger codebook would not be weight *sharing* any more.
_MAX_K = 1 << 16

# Keys per np.searchsorted call in the final assignment: keeps the intp temporary small
# (8 MiB) instead of 8 bytes per weight for the whole layer.
_ASSIGN_CHUNK = 1 << 20


# --------------------------------------------------------------------------- validation


def _check_values(values) -> np.ndarray:
    """Return ``values`` as a 1-D real numpy array, raising ConfigError if it is unusable."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise ConfigError(f"k-means expects a 1-D array of weights, got shape {v.shape}")
    if v.dtype.kind not in "fiu":
        raise ConfigError(f"k-means expects real numeric weights, got dtype {v.dtype}")
    if v.size == 0:
        raise ConfigError("k-means needs at least one value, got an empty array")
    if v.dtype.kind == "f":
        finite = np.isfinite(v)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ConfigError(
                f"k-means needs finite weights, but {bad.size} of {v.size} values are NaN or "
                f"infinite (first at index {bad[0]}: {v[bad[0]]})"
            )
    return v


def _check_k(k) -> int:
    """Return ``k`` as an int, raising ConfigError unless 1 <= k <= 65536."""
    # bool is an Integral too, but k=True is surely a mistake.
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ConfigError(f"number of clusters k must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise ConfigError(f"number of clusters k must be >= 1, got {k}")
    if k > _MAX_K:
        raise ConfigError(f"number of clusters k must be <= {_MAX_K} (16-bit codes), got {k}")
    return k


def _check_method(method) -> str:
    if method not in INIT_METHODS:
        raise ConfigError(
            f"unknown centroid initialization {method!r}; choose one of {', '.join(INIT_METHODS)}"
        )
    return method


# --------------------------------------------------------------------------- initialization


def init_centroids(values, k, method="linear", seed=0) -> np.ndarray:
    """Initial centroids for 1-D k-means, as a sorted float64 array of length ``k``.

    ``method`` is one of :data:`INIT_METHODS`:

    * ``"linear"``: ``k`` points evenly spaced from ``min(values)`` to ``max(values)``
      (the paper's recommendation: it keeps centroids out at the rare large weights).
    * ``"density"``: evenly spaced in the empirical CDF: centroid ``i`` is the data value at
      CDF level ``(i + 0.5) / k`` (``sorted[floor((i + 0.5) * n / k)]``).
    * ``"random"`` (Forgy): ``k`` distinct values drawn from the data with
      ``np.random.default_rng(seed)``; reproducible for a given ``seed``.

    Fewer distinct values than ``k`` is allowed; the result then repeats values (the
    corresponding clusters simply stay empty).  Raises ConfigError for an unknown method,
    ``k < 1``, empty or non-finite ``values``.
    """
    v = _check_values(values)
    k = _check_k(k)
    _check_method(method)
    if method == "linear":
        # Only the extremes are needed; skip the O(n log n) sort.
        return np.linspace(float(v.min()), float(v.max()), k)
    # kmeans_1d initializes from the same sorted array, so both paths give identical centroids.
    return _init_sorted(np.sort(v), k, method, seed)


def _init_sorted(x: np.ndarray, k: int, method: str, seed) -> np.ndarray:
    """init_centroids on already sorted, validated values ``x``."""
    n = x.size
    if method == "linear":
        return np.linspace(float(x[0]), float(x[-1]), k)
    if method == "density":
        # floor((i + 0.5) * n / k) is the inverse empirical CDF at level (i + 0.5) / k: at most
        # that many values lie strictly below the centroid and more lie at or below it.
        idx = ((2 * np.arange(k, dtype=np.int64) + 1) * n) // (2 * k)
        return x[np.minimum(idx, n - 1)].astype(np.float64)
    return np.sort(_forgy(x, k, np.random.default_rng(seed))).astype(np.float64)


def _forgy(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The first ``k`` distinct values in a random sequence of draws from ``x``.

    Drawing observations (not distinct values) keeps Forgy's weighting by frequency.
    """
    n = x.size
    drawn = np.empty(0, dtype=x.dtype)
    # Usually one batch of draws with replacement holds k distinct values; a few rounds cover
    # moderately repetitive data without touching all n values.
    for _ in range(8):
        drawn = np.concatenate([drawn, x[rng.integers(0, n, size=2 * k + 16)]])
        first = np.unique(drawn, return_index=True)[1]
        if first.size >= k:
            return drawn[np.sort(first)[:k]]
    # Very repetitive data (or fewer than k distinct values): a full random permutation gives
    # the same "first k distinct in random order" rule exactly.
    perm = x[rng.permutation(n)]
    first = np.sort(np.unique(perm, return_index=True)[1])
    chosen = perm[first[:k]]
    if chosen.size < k:
        # Fewer distinct values than k: repeat some; the repeats become empty clusters.
        chosen = np.concatenate([chosen, rng.choice(chosen, size=k - chosen.size)])
    return chosen


# --------------------------------------------------------------------------- Lloyd


def _lloyd_sorted(x: np.ndarray, c: np.ndarray, max_iter: int):
    """Lloyd's algorithm on sorted float64 ``x`` from sorted initial centroids ``c``.

    Returns ``(centroids float64, iterations, converged)``; ``iterations`` counts assignment
    steps, the last of which found the partition unchanged when ``converged``.

    Assignment rule: nearest centroid; a value exactly on the midpoint of two centroids goes
    to the lower one.  For two equal centroids the midpoint is the centroid itself, so values
    at or below it go to the lower copy and values above it to the upper copy (plain ``argmin``
    would give everything to the first copy, which can leave the centroids unsorted).
    """
    n, k = x.size, c.size
    # Prefix sums of values shifted by the median: cluster sums are differences of prefix
    # sums, and shifting keeps those sums small when the weights sit on a large offset, so
    # the cancellation error stays small.
    shift = float(x[n // 2])
    xs = x - shift
    prefix = np.empty(n + 1, dtype=np.float64)
    prefix[0] = 0.0
    np.cumsum(xs, out=prefix[1:])
    c = c.astype(np.float64) - shift

    bounds = np.empty(k + 1, dtype=np.intp)
    bounds[0], bounds[-1] = 0, n
    prev_cuts = None
    # Hashes of every partition seen: floating-point rounding can in principle make Lloyd
    # cycle between partitions instead of reaching a fixed point; stop if it does.
    seen = set()
    for it in range(1, max_iter + 1):
        mids = (c[:-1] + c[1:]) * 0.5
        # side="right": a value exactly on a midpoint goes to the lower cluster.
        cuts = np.searchsorted(xs, mids, side="right")
        if prev_cuts is not None and np.array_equal(cuts, prev_cuts):
            # Same partition as last step, so c (its means) is an exact fixed point.
            return c + shift, it, True
        key = hash(cuts.tobytes())
        if key in seen:
            return c + shift, it, False
        seen.add(key)
        prev_cuts = cuts
        bounds[1:-1] = cuts
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        # Empty clusters keep their centroid.  That keeps the centroids sorted, which the
        # midpoint search relies on: cluster j is the interval (mids[j-1], mids[j]], so a
        # non-empty cluster's new mean lies inside it, and an empty cluster's old centroid
        # lies inside it too because c[j-1] <= c[j] <= c[j+1].  Intervals are ordered, hence
        # so are the new centroids.  (This needs the positional tie rule above for repeated
        # centroids: giving the whole run to the first copy could move it past the others.)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    return c + shift, max_iter, False


# --------------------------------------------------------------------------- assignment


def _thresholds(c32: np.ndarray, dtype) -> np.ndarray:
    """Per adjacent centroid pair, the smallest value of ``dtype`` nearer the upper centroid.

    "Nearer" is decided as ``|v - c|`` in float64, the way a caller would check it.  The
    plain midpoint, rounded to ``dtype``, can sit an ulp or two on the wrong side, so each
    threshold is nudged with nextafter until it is exact.  Doing this on k - 1 thresholds
    instead of fixing up n codes costs nothing.  Ties stay with the lower centroid.
    """
    a = c32[:-1].astype(np.float64)
    b = c32[1:].astype(np.float64)
    distinct = a != b
    t = ((a + b) * 0.5).astype(dtype)

    def upper_wins(v):
        v64 = v.astype(np.float64)
        return np.abs(v64 - b) < np.abs(v64 - a)

    # The search is sound: ``upper_wins`` is false below the threshold and
    # true from it on, since fl(v - a) grows and fl(b - v) shrinks with v.  The rounded
    # midpoint is within a few ulps, so a handful of steps suffice; 64 is a safe bound.
    for _ in range(64):
        low = distinct & ~upper_wins(t)
        if not low.any():
            break
        t[low] = np.nextafter(t[low], dtype.type(np.inf))
    for _ in range(64):
        down = np.nextafter(t, dtype.type(-np.inf))
        high = distinct & upper_wins(down)
        if not high.any():
            break
        t[high] = down[high]
    # A repeated centroid never wins (ties go to the first copy): its threshold is the next
    # real one, which also keeps the thresholds sorted for searchsorted.
    t[~distinct] = np.inf
    return np.minimum.accumulate(t[::-1])[::-1]


def _assign_nearest(v: np.ndarray, c32: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid in sorted ``c32`` for each value of ``v`` (ties: lower)."""
    k = c32.size
    code_dtype = np.uint8 if k <= 256 else np.uint16
    codes = np.zeros(v.size, dtype=code_dtype)
    if k == 1:
        return codes
    # float32 weights are searched as float32 (no n-sized float64 copy); anything else as
    # float64.  The thresholds are exact in that dtype, so the search needs no fix-up.
    dtype = np.dtype(np.float32) if v.dtype == np.float32 else np.dtype(np.float64)
    vw = v.astype(dtype, copy=False)
    t = _thresholds(c32, dtype)
    for i in range(0, v.size, _ASSIGN_CHUNK):
        # side="right": a value equal to a threshold is already nearer the upper centroid.
        codes[i : i + _ASSIGN_CHUNK] = np.searchsorted(t, vw[i : i + _ASSIGN_CHUNK], side="right")
    return codes


# --------------------------------------------------------------------------- public entry


def kmeans_1d(values, k, init="linear", seed=0, max_iter=100_000):
    """Cluster 1-D ``values`` into ``k`` shared values with Lloyd's algorithm.

    Returns ``(centroids, codes)``: ``centroids`` is float32 of length ``k``, sorted ascending;
    ``codes`` (uint8 if ``k <= 256``, else uint16) holds, for each value, the index of its
    nearest float32 centroid (no other centroid is strictly closer; ties go to the lower
    index), so ``centroids[codes]`` is the quantized array.

    Lloyd runs to its exact fixed point (the partition stops changing), or ``max_iter``
    assignment steps.  ``init`` and ``seed`` pick the initial centroids as in
    :func:`init_centroids`.  A cluster that becomes empty keeps its centroid; with fewer
    distinct values than ``k`` some clusters stay empty.  Raises ConfigError for non-1-D,
    empty or non-finite ``values``, ``k`` outside 1..65536, an unknown ``init`` or
    ``max_iter < 1``.
    """
    v = _check_values(values)
    k = _check_k(k)
    _check_method(init)
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer, got {max_iter!r}")
    # Sort in the input dtype (float32 sorts ~4x faster than float64), then widen: the cast
    # is monotone, so the result is still sorted.
    x = np.sort(v).astype(np.float64)
    c0 = _init_sorted(x, k, init, seed)
    c, _, _ = _lloyd_sorted(x, c0, int(max_iter))
    c32 = c.astype(np.float32)
    # Casting is monotone, so the float32 centroids are still sorted (maybe with new ties).
    return c32, _assign_nearest(v, c32)


def drop_empty_clusters(centroids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the centroids some value uses, and renumber the codes to match (order kept).

    k-means on a small or pruned layer leaves clusters empty (LeNet-5's conv1: 330 weights
    for 256 clusters; pruned layers: the centroids initialized in the pruned gap around 0),
    and a stored codebook entry costs 4 bytes each.
    """
    codes = np.asarray(codes)
    counts = np.bincount(codes, minlength=len(centroids)) if codes.size else np.zeros(len(centroids), np.int64)
    used = np.flatnonzero(counts)
    if used.size == 0:  # nothing kept: one centroid keeps the codebook non-empty
        return np.asarray(centroids[:1], dtype=np.float32), codes.astype(np.uint16)
    renumber = np.zeros(len(centroids), dtype=np.uint16)
    renumber[used] = np.arange(used.size, dtype=np.uint16)
    return np.asarray(centroids[used], dtype=np.float32), renumber[codes]
