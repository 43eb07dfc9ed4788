"""Lloyd's algorithm on sorted 1-D values, optionally weighted by counts: the core of `kmeans`.

After one sort every cluster is a contiguous run of the sorted values, so a Lloyd step is
``k - 1`` searches for the cut points plus cluster sums read off running sums. This module
does both without a copy of the values' size: cut points are searched in the sorted values
themselves (float32 stays float32), and above 4M values only every 16th running sum is
stored. Both give bit-identical results to searching a float64 copy of the shifted values
and reading a full ``np.cumsum``, which is what `kmeans_1d` did before.

Pure functions on numpy arrays (a `RunningSums` is a cache that belongs to one Lloyd run).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RunningSums", "cut_points", "lloyd_sorted", "rank_value"]

# Up to this many values the running sums are stored for every cut point (8 bytes a value,
# 32 MiB at most); above it only every _PREFIX_BLOCK-th one is, and a cut's sum is finished
# from the nearest stored one (at most _PREFIX_BLOCK - 1 additions): 0.5 bytes a value
# instead of 8, for a Lloyd step up to twice as slow (measured at k=256).
_FULL_PREFIX = 1 << 22
_PREFIX_BLOCK = 16
# Values widened to float64 at a time while the running sums are built (8 MiB).
_SUM_CHUNK = 1 << 20


def rank_value(x: np.ndarray, cum_weights: np.ndarray | None):
    """A function from ranks in the expanded data (each x[i] repeated weights[i] times) to values.

    Without weights every value counts once and rank i is x[i]; with them, rank r falls on
    the first value whose running count exceeds r. Init and Lloyd read the data through
    this, so a histogram (distinct values and counts) behaves exactly like its expansion.
    """
    if cum_weights is None:
        return lambda ranks: x[ranks]
    return lambda ranks: x[np.searchsorted(cum_weights, ranks, side="right")]


class RunningSums:
    """Left-to-right running sums of ``w * (x - shift)`` (w = 1 without weights) at any cut.

    ``at(cuts)`` gives exactly ``np.cumsum`` of the whole term array read at ``cuts - 1`` (0.0
    at cut 0), without holding that array: every ``block``-th running sum is stored, and a
    cut between two is reached by adding the remaining terms in the same order, so the
    floating-point result is bit-identical to the full cumulative sum.
    """

    def __init__(self, x: np.ndarray, weights: np.ndarray | None, shift: float):
        self.x, self.weights, self.shift = x, weights, shift
        n = x.size
        self.block = 1 if n <= _FULL_PREFIX else _PREFIX_BLOCK
        self.stored = np.empty(n // self.block + 1, dtype=np.float64)
        # -0.0 is the exact identity of IEEE addition (0.0 + -0.0 would be 0.0), so sums
        # started from it equal np.cumsum's, whose first element is the first term itself.
        carry = -0.0
        chunk = self.block * max(1, _SUM_CHUNK // self.block)
        for start in range(0, n, chunk):
            running = np.cumsum(np.concatenate(([carry], self._terms(slice(start, start + chunk)))))
            kept = running[:: self.block]
            self.stored[start // self.block : start // self.block + kept.size] = kept
            carry = float(running[-1])
        self.total = carry
        if self.block == 1:
            self.stored[0] = 0.0  # read directly, never a start: np.cumsum's prefix array has 0.0
        self._last = None  # (cuts, sums) of the last call to at()

    def _terms(self, index) -> np.ndarray:
        # float32 minus a Python float stays float32 under NumPy 2's promotion rules: widen first.
        terms = self.x[index].astype(np.float64) - self.shift
        return terms if self.weights is None else terms * self.weights[index]

    def at(self, cuts: np.ndarray) -> np.ndarray:
        """Running sums of the first ``cuts[j]`` terms, for each j (0.0 for an empty prefix).

        Sums of the cuts that did not move since the last call are reused: late Lloyd steps
        move few cuts.
        """
        if self.block == 1:
            return self.stored[cuts]
        if self._last is not None and self._last[0].shape == cuts.shape:
            sums = self._last[1].copy()
            moved = np.flatnonzero(cuts != self._last[0])
            sums[moved] = self._sums(cuts[moved])
        else:
            sums = self._sums(cuts)
        self._last = (cuts.copy(), sums)
        return sums

    def _sums(self, cuts: np.ndarray) -> np.ndarray:
        j = cuts // self.block
        rest = cuts - j * self.block
        sums = self.stored[j]
        partial = np.flatnonzero(rest)
        if partial.size:
            index = (j[partial] * self.block)[:, None] + np.arange(self.block - 1)[None, :]
            terms = self._terms(np.minimum(index, self.x.size - 1))
            running = np.cumsum(np.concatenate([sums[partial, None], terms], axis=1), axis=1)
            sums[partial] = running[np.arange(partial.size), rest[partial]]
        # np.cumsum's prefix array starts with a real 0.0 (which, unlike -0.0, changes the
        # sign of a zero difference).
        sums[cuts == 0] = 0.0
        return sums


def cut_points(x: np.ndarray, shift: float, mids: np.ndarray) -> np.ndarray:
    """``np.searchsorted(x - shift, mids, side="right")`` in float64, without building ``x - shift``.

    ``v -> fl(v - shift)`` is monotone, so each answer is a plain search of ``x`` (in its own
    dtype) for the largest float ``t`` with ``fl(t - shift) <= mid``: every value up to ``t``
    is at or below the midpoint and every value above it is not. ``t`` is ``mid + shift``
    rounded to that dtype and nudged by an ulp or so; where a few nudges do not reach it
    (``shift`` so far from the values that many floats round alike), bisection over ``x``
    with the rule itself finds the cut.
    """
    n = x.size
    lowest, highest = x.dtype.type(-np.inf), x.dtype.type(np.inf)

    def at_or_below(v, limit):  # fl(v - shift) <= limit, exactly as the float64 search decides
        return v.astype(np.float64, copy=False) - shift <= limit

    with np.errstate(over="ignore"):  # a key past float32's range becomes inf: nudged back below
        key = (mids + shift).astype(x.dtype)
    for _ in range(4):
        fits, up = at_or_below(key, mids), np.nextafter(key, highest)
        up_fits = at_or_below(up, mids)
        exact = fits & ~up_fits
        if exact.all():
            return np.searchsorted(x, key, side="right")
        key = np.where(up_fits, up, np.where(fits, key, np.nextafter(key, lowest)))
    cuts = np.searchsorted(x, key, side="right")
    bad = np.flatnonzero(~exact)
    lo, hi, limit = np.zeros(bad.size, np.intp), np.full(bad.size, n, np.intp), mids[bad]
    while (lo < hi).any():
        middle = (lo + hi) // 2
        below = at_or_below(x[np.minimum(middle, n - 1)], limit)
        lo, hi = np.where((lo < hi) & below, middle + 1, lo), np.where((lo < hi) & ~below, middle, hi)
    cuts[bad] = lo
    return cuts


def lloyd_sorted(x: np.ndarray, c: np.ndarray, max_iter: int, weights: np.ndarray | None = None):
    """Lloyd's algorithm on sorted float32/float64 ``x`` from sorted initial centroids ``c``.

    ``weights`` (integer counts, > 0) make ``x[i]`` count ``weights[i]`` times: a histogram of
    the data clusters like the data itself, to floating-point rounding of the sums.

    Returns ``(centroids float64, iterations, converged)``; ``iterations`` counts assignment
    steps, the last of which found the partition unchanged when ``converged``.

    Assignment rule: nearest centroid; a value exactly on the midpoint of two centroids goes
    to the lower one.  For two equal centroids the midpoint is the centroid itself, so values
    at or below it go to the lower copy and values above it to the upper copy (plain ``argmin``
    would give everything to the first copy, which can leave the centroids unsorted).
    """
    n, k = x.size, c.size
    cum_weights = None if weights is None else np.cumsum(weights, dtype=np.int64)
    total = n if cum_weights is None else int(cum_weights[-1])
    # Cluster sums are differences of running sums of the values shifted by the median:
    # shifting keeps those sums small when the weights sit on a large offset, so the
    # cancellation error stays small.
    shift = float(rank_value(x, cum_weights)(total // 2))
    sums_at = RunningSums(x, None if weights is None else weights.astype(np.float64), shift)
    count_at = None if cum_weights is None else np.concatenate(([0], cum_weights))
    c = c.astype(np.float64) - shift

    bounds = np.empty(k + 1, dtype=np.intp)
    bounds[0], bounds[-1] = 0, n
    running = np.empty(k + 1, dtype=np.float64)
    running[0], running[-1] = 0.0, sums_at.total
    prev_cuts = None
    # Hashes of every partition seen: floating-point rounding can in principle make Lloyd
    # cycle between partitions instead of reaching a fixed point; stop if it does.
    seen = set()
    for it in range(1, max_iter + 1):
        mids = (c[:-1] + c[1:]) * 0.5
        # side="right": a value exactly on a midpoint goes to the lower cluster.
        cuts = cut_points(x, shift, mids)
        if prev_cuts is not None and np.array_equal(cuts, prev_cuts):
            # Same partition as last step, so c (its means) is an exact fixed point.
            return c + shift, it, True
        key = hash(cuts.tobytes())
        if key in seen:
            return c + shift, it, False
        seen.add(key)
        prev_cuts = cuts
        bounds[1:-1] = cuts
        counted = bounds if count_at is None else count_at[bounds]
        counts = counted[1:] - counted[:-1]
        running[1:-1] = sums_at.at(cuts)
        sums = running[1:] - running[:-1]
        # Empty clusters keep their centroid.  That keeps the centroids sorted, which the
        # midpoint search relies on: cluster j is the interval (mids[j-1], mids[j]], so a
        # non-empty cluster's new mean lies inside it, and an empty cluster's old centroid
        # lies inside it too because c[j-1] <= c[j] <= c[j+1].  Intervals are ordered, hence
        # so are the new centroids.  (This needs the positional tie rule above for repeated
        # centroids: giving the whole run to the first copy could move it past the others.)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    return c + shift, max_iter, False
