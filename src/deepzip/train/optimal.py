"""Exact weighted 1-D k-means for squared error: the global optimum, not a Lloyd fixed point.

In 1-D every optimal cluster is a contiguous run of the sorted values, so the optimum is a
dynamic programme over the sorted distinct values: ``D[j][i]``, the least cost of ``i``
values in ``j`` clusters, is ``min_m D[j-1][m] + cost(m, i)``, each cluster's cost read in
O(1) off running sums of w, w*x and w*x^2. Squared error satisfies the quadrangle
inequality, so the best split ``m`` is monotone in ``i`` (divide and conquer: O(n log n) a
layer) and in ``j`` (Knuth: ``opt[j-1][i] <= opt[j][i] <= opt[j][i+1]``). The first layers
are divided and conquered, with Knuth's lower bound narrowing each search; from
``j^2 ~ n / 16`` on, a sweep over i inside Knuth's window is cheaper, ~3n a layer.

Backtracking needs every layer's split points; a full k x n table is 1 GiB at k=4096,
n=65536, so layers are processed in segments of at least sqrt(k) layers whose split points
fit `_SPLIT_BYTES` where they can: a first pass keeps only the cost and split rows at each
segment start (12 bytes a distinct value each), then each segment, last first, is
recomputed from its start with its split points kept. That costs at most one extra pass;
up to k x n <= 16M (k=256 at n=65536) there is one segment and no extra pass.

Pure functions on numpy arrays; the shared helpers (`distinct_weighted`, `prefix_sums`,
`check_weights`) are also used by `deepzip.train.lloyd_repair`.
"""

from __future__ import annotations

import numba
import numpy as np

from deepzip.errors import ConfigError
from deepzip.train.kmeans import (
    _assign_nearest,
    _check_k,
    _check_values,
    drop_empty_clusters,
)

__all__ = ["MAX_DISTINCT", "check_weights", "distinct_weighted", "optimal_kmeans_1d", "prefix_sums"]

MAX_DISTINCT = 1 << 17
"""Most distinct (positive-weight) values `optimal_kmeans_1d` accepts: the DP is O(k n log n)
time and the running sums 24 bytes a value, so a layer of 10M distinct fp32 weights would
take hours; cluster such a layer's histogram (e.g. its values rounded to bf16, counts as
weights) instead."""

# Bytes of split points held at a time (int32, one row of n + 1 per layer of a segment).
_SPLIT_BYTES = 64 << 20


# --------------------------------------------------------------------------- shared helpers


def check_weights(weights, n: int) -> np.ndarray:
    """``weights`` as float64, one per value, or ConfigError unless all are finite, >= 0 and
    at least one is positive. Unlike `kmeans_1d`'s counts they need not be integers."""
    w = np.asarray(weights)
    if w.shape != (n,):
        raise ConfigError(f"need one weight per value ({n}), got shape {w.shape}")
    if w.dtype.kind not in "fiu":
        raise ConfigError(f"weights must be real numbers, got dtype {w.dtype}")
    w = w.astype(np.float64, copy=False)
    if not np.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise ConfigError("weights must be finite and >= 0, with at least one positive")
    return w


def distinct_weighted(v: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``v`` that have positive weight, ascending, as float64, with the
    sum of their weights (counts without ``weights``). Equal values must share a cluster, so
    the DP and Lloyd work on these. Costs one sort of ``v``."""
    if weights is None:
        x, w = np.unique(v, return_counts=True)
        return x.astype(np.float64), w.astype(np.float64)
    present = weights > 0
    x, inverse = np.unique(v[present], return_inverse=True)
    return x.astype(np.float64), np.bincount(inverse, weights=weights[present], minlength=x.size)


def prefix_sums(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Running sums ``(s0, s1, s2, shift)`` of w, w*(x - shift), w*(x - shift)^2, each of
    length ``n + 1`` starting at 0, so a run ``[a, b)`` has weight ``s0[b] - s0[a]`` etc.

    ``shift`` is the weighted mean: centring keeps the sums small for values far from zero,
    so ``S2 - S1^2 / S0`` (a cluster's squared error) cancels less.
    """
    shift = float(np.dot(w, x) / w.sum())
    d = x - shift
    zero = np.zeros(1)
    return (np.concatenate([zero, np.cumsum(w)]), np.concatenate([zero, np.cumsum(w * d)]),
            np.concatenate([zero, np.cumsum(w * d * d)]), shift)  # fmt: skip


@numba.njit(cache=True)
def _cost(s0, s1, s2, a, b):
    """Weighted squared error of the run ``[a, b)`` about its mean (0 for an empty run)."""
    w = s0[b] - s0[a]
    if w <= 0.0:
        return 0.0
    t = s1[b] - s1[a]
    c = (s2[b] - s2[a]) - t * t / w
    # Rounding can leave a tiny negative cost on a run of one value; it is exactly 0.
    return max(0.0, c)


# --------------------------------------------------------------------------- the DP


@numba.njit(cache=True)
def _layer_split(prev, prev_split, cur, cur_split, s0, s1, s2, j):
    """Layer j by divide and conquer: ``cur[i] = min_m prev[m] + cost(m, i)``, i in [j, n].

    ``m`` ranges over ``[j - 1, i - 1]`` (every cluster non-empty), narrowed by the best
    split of the middle ``i`` (it bounds those on either side) and by Knuth's bound
    ``prev_split[i]``. Ties go to the smallest ``m``. The recursion runs on an explicit
    stack (depth log2 n). O(n log n) evaluations.
    """
    n = s0.size - 1
    stack = np.empty((128, 4), np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = j, n, j - 1, n - 1
    top = 1
    while top > 0:
        top -= 1
        lo, hi, opt_lo, opt_hi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        mid = (lo + hi) // 2
        last = min(opt_hi, mid - 1)
        # Clamped so that rounding (a near-tie read the other way) never empties the range.
        first = max(opt_lo, min(prev_split[mid], last))
        best, arg = np.inf, first
        for m in range(first, last + 1):
            c = prev[m] + _cost(s0, s1, s2, m, mid)
            if c < best:
                best, arg = c, m
        cur[mid], cur_split[mid] = best, arg
        if lo < mid:
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = lo, mid - 1, opt_lo, arg
            top += 1
        if mid < hi:
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = mid + 1, hi, arg, opt_hi
            top += 1


@numba.njit(cache=True)
def _layer_knuth(prev, prev_split, cur, cur_split, s0, s1, s2, j):
    """Layer j like `_layer_split`, sweeping i down from n with Knuth's window
    ``prev_split[i] <= m <= cur_split[i + 1]``: about ``n + n^2 / (2 j^2)`` evaluations, far
    fewer than divide and conquer once ``j^2`` is large against ``n / log2 n``."""
    n = s0.size - 1
    upper = n - 1
    for i in range(n, j - 1, -1):
        last = min(upper, i - 1)
        first = max(j - 1, min(prev_split[i], last))
        best, arg = np.inf, first
        for m in range(first, last + 1):
            c = prev[m] + _cost(s0, s1, s2, m, i)
            if c < best:
                best, arg = c, m
        cur[i], cur_split[i] = best, arg
        upper = arg


def _knuth_from(n: int) -> int:
    """The first layer swept with Knuth's window rather than divided and conquered.

    The sweep costs ~n (2 + n / (2 j^2)) evaluations a layer, divide and conquer (helped by
    Knuth's lower bound) about 8-10 n at n = 65536 (measured): the sweep wins from j^2 ~ n / 16.
    """
    return int(np.ceil(np.sqrt(n / 16.0)))


def _optimal_bounds(s0: np.ndarray, s1: np.ndarray, s2: np.ndarray, k: int) -> np.ndarray:
    """Boundaries ``b[0] = 0 < b[1] < ... < b[k] = n`` of an optimal partition into k runs
    (1 <= k <= n). Every layer is computed for all i in [j, n], so that Knuth's bound of
    the next layer is defined everywhere; the few unneeded i cost next to nothing."""
    n = s0.size - 1
    # sqrt(k) layers a segment at least: then the checkpoints cannot outgrow the segment.
    seg = min(k, max(_SPLIT_BYTES // (4 * (n + 1)), int(np.sqrt(k)), 1))
    starts = range(1, k, seg)  # segment from `start` holds layers start + 1 .. start + seg
    knuth_from = _knuth_from(n)

    def run(j, prev, prev_split, cur, cur_split):
        layer = _layer_knuth if j >= knuth_from else _layer_split
        layer(prev, prev_split, cur, cur_split, s0, s1, s2, j)

    # Layer 1 is one cluster [0, i): its cost is read off directly.
    w = np.where(s0 > 0, s0, 1.0)
    row1 = np.maximum(s2 - s1 * s1 / w, 0.0)
    row1[0] = np.inf
    # First pass: the cost and split rows at the start of every segment (layer `start`).
    checkpoints = {1: (row1, np.zeros(n + 1, np.int32))}
    prev, prev_split = row1.copy(), np.zeros(n + 1, np.int32)
    cur, cur_split = np.full(n + 1, np.inf), np.zeros(n + 1, np.int32)
    for j in range(2, starts[-1] + 1 if starts else 0):
        run(j, prev, prev_split, cur, cur_split)
        prev, cur, prev_split, cur_split = cur, prev, cur_split, prev_split
        if (j - 1) % seg == 0:  # j is a segment start
            checkpoints[j] = (prev.copy(), prev_split.copy())
    bounds = np.zeros(k + 1, np.int64)
    bounds[k] = n
    table = np.zeros((seg, n + 1), np.int32)
    # Then each segment from its checkpoint, last first, backtracking through its splits.
    for start in reversed(starts):
        prev, prev_split = (a.copy() for a in checkpoints.pop(start))
        stop = min(k, start + seg)
        for j in range(start + 1, stop + 1):
            run(j, prev, prev_split, cur, table[j - start - 1])
            prev, cur, prev_split = cur, prev, table[j - start - 1]
        for j in range(stop, start, -1):
            bounds[j - 1] = table[j - start - 1][bounds[j]]
    return bounds


# --------------------------------------------------------------------------- public entry


def optimal_kmeans_1d(values, k, weights=None):
    """Globally optimal 1-D k-means: minimises ``sum_i w_i (x_i - c[code_i])^2`` exactly.

    Returns ``(centroids, codes)`` like `kmeans_1d`: ``centroids`` float32, sorted ascending,
    each the weighted mean of its cluster; ``codes`` (uint8 for at most 256 centroids, else
    uint16) holds, per value in input order, the index of its nearest float32 centroid (ties
    to the lower), so ``centroids[codes]`` is the quantized array. At the optimum every
    value is nearest to its own cluster's mean, so these codes are the optimal partition.

    ``weights`` (float, >= 0, one per value; default 1 each) are importances or histogram
    counts. A value of weight 0 takes no part in the clustering but gets a code. Equal
    values always share a cluster. With at least ``k`` distinct positive-weight values the
    result has exactly ``k`` clusters (splitting a cluster of two distinct values always
    lowers the cost); with fewer, one cluster per distinct value. No centroid is ever left
    unused: where float32 rounding makes two centroids equal, the unused copy is dropped.

    Cost: a sort of the values, then at most O(k n log n) cost evaluations on the n distinct
    values, about 3n for each layer j with j^2 > n / 16 (Knuth), memory 24 bytes a distinct
    value of running sums, up to 64 MiB of split points and 12 bytes a distinct value per
    segment of layers (16 segments, 12 MiB, at k=4096, n=65,536). Measured on a 2-core
    machine for 65,536 distinct Gaussian values: k=256 in 0.6-0.8 s, k=4096 in 8-13 s.

    Raises ConfigError for non-1-D, empty or non-finite ``values``, ``k`` outside 1..65536,
    unusable ``weights``, or more than `MAX_DISTINCT` distinct positive-weight values (the
    DP would take minutes: cluster a histogram of the values instead, or use `kmeans_1d`).
    """
    v = _check_values(values)
    k = _check_k(k)
    w = None if weights is None else check_weights(weights, v.size)
    x, xw = distinct_weighted(v, w)
    n = x.size
    if n > MAX_DISTINCT:
        raise ConfigError(
            f"exact k-means takes at most {MAX_DISTINCT} distinct values, got {n}: cluster a "
            "histogram of the values (e.g. rounded to bf16, counts as weights) or use kmeans_1d"
        )
    if n <= k:
        centroids = x
    else:
        s0, s1, s2, shift = prefix_sums(x, xw)
        b = _optimal_bounds(s0, s1, s2, k)
        centroids = shift + (s1[b[1:]] - s1[b[:-1]]) / (s0[b[1:]] - s0[b[:-1]])
    c32 = centroids.astype(np.float32)
    return drop_empty_clusters(c32, _assign_nearest(v, c32))
