"""Entropy-constrained scalar quantization (ECSQ) of 1-D values, for entropy-coded codes.

With an entropy coder behind the quantizer the rate is the codes' entropy, not log2 of the
codebook size, so the best quantizer minimises distortion + lambda * rate (Chou,
Lookabaugh & Gray, "Entropy-constrained vector quantization", IEEE Trans. ASSP 37(1),
1989, in one dimension). Their algorithm is Lloyd's with a rate term: each value goes to
the level minimising its squared error plus lambda times the level's code length
-log2 p_j; then each level moves to the mean of its values and p_j becomes its share of
the counts. Both steps lower the objective, so it never rises; empty levels are dropped.

At high rate the optimum is a uniform quantizer: for a Gaussian it needs ~0.47 bit a value
less than the best fixed-rate (Lloyd-Max) quantizer at equal distortion, 2.8 dB (Gish and
Pierce 1968), and it sits 0.254 bit from the rate-distortion bound; at moderate rates the
rate term pulls levels towards the mode, which is where ECSQ gains over a plain grid.

Pure functions on numpy arrays; the hot loops are numba.
"""

from __future__ import annotations

import math
import numbers

import numba
import numpy as np

from deepzip.errors import ConfigError
from deepzip.train.kmeans import _assign_nearest, _check_values
from deepzip.train.lloyd import RunningSums
from deepzip.train.optimal import check_weights

__all__ = ["ecsq_1d"]

# Codes are uint16 at most.
_MAX_LEVELS = 1 << 16


# --------------------------------------------------------------------------- kernels


@numba.njit(cache=True)
def _envelope(c, r):
    """Lower envelope of the costs ``(x - c_j)^2 + r_j`` over x, for ascending ``c``.

    Subtracting x^2 leaves lines ``r_j + c_j^2 - 2 c_j x``, whose lower envelope takes the
    levels in ascending order. Returns ``(hull, t)``: the levels that win somewhere, in
    order, and ``t[m]``, the upper end of ``hull[m]``'s interval ``(t[m-1], t[m]]`` (a tie
    goes to the lower level). O(L).
    """
    hull = np.empty(c.size, np.int64)
    left = np.empty(c.size)  # left[h]: where hull[h] starts to win
    top = 0
    for j in range(c.size):
        bj = r[j] + c[j] * c[j]
        skip, x = False, -np.inf
        while top > 0:
            i = hull[top - 1]
            bi = r[i] + c[i] * c[i]
            if c[j] <= c[i]:  # the same line up to its offset: the lower one wins everywhere
                if bj < bi:
                    top -= 1
                    x = -np.inf
                    continue
                skip = True
                break
            x = (bj - bi) / (2.0 * (c[j] - c[i]))  # j wins strictly above x
            if top > 1 and x <= left[top - 1]:
                top -= 1  # i never wins
                x = -np.inf
                continue
            break
        if not skip:
            hull[top], left[top] = j, x
            top += 1
    return hull[:top].copy(), left[1:top].copy()


@numba.njit(cache=True)
def _count_at_or_below(x, t):
    """For each threshold ``t[m]`` (ascending), how many of the sorted ``x`` are <= it,
    compared in float64 (float32 values are not copied). O(len(t) log n)."""
    out = np.empty(t.size, np.int64)
    lo = 0
    for m in range(t.size):
        hi = x.size
        while lo < hi:
            mid = (lo + hi) // 2
            if np.float64(x[mid]) <= t[m]:
                lo = mid + 1
            else:
                hi = mid
        out[m] = lo
    return out


@numba.njit(cache=True)
def _codes_by_thresholds(v, t, out):
    """``out[i]`` = how many thresholds ``t`` lie strictly below ``v[i]``: the level of
    ``v[i]`` under `_envelope`'s rule, by the same comparisons as `_count_at_or_below`.

    A binary search per value is branch-mispredict bound (~70 ns a value measured), so a
    table over 4 buckets a threshold gives a starting count that a step or two corrects;
    the correction makes the answer exact whatever the bucket arithmetic rounds to.
    """
    if t.size == 0:
        out[:] = 0
        return
    buckets = 4 * t.size + 4
    lo, width = t[0], (t[-1] - t[0]) / (buckets - 1)
    if not width > 0.0:
        width = 1.0
    start = np.searchsorted(t, lo + width * np.arange(buckets), side="left")
    for i in range(v.size):
        xi = np.float64(v[i])
        b = (xi - lo) / width
        code = start[0] if b < 0.0 else start[min(int(b), buckets - 1)]
        while code < t.size and t[code] < xi:
            code += 1
        while code > 0 and t[code - 1] >= xi:
            code -= 1
        out[i] = code


@numba.njit(cache=True)
def _assign_window(x, cnt, imp, c, r, codes):
    """Each value's level minimising ``imp_i (x_i - c_j)^2 + cnt_i r_j`` over ascending ``c``
    (ties to the lower level), scanning out from ``x_i`` both ways until the squared error
    alone exceeds the best cost (r_j >= 0, so no farther level can win). Writes ``codes``
    and returns how many changed. A value of tiny importance scans many levels."""
    changed = 0
    for i in range(x.size):
        xi, wi, hi = x[i], cnt[i], imp[i]
        p, hi_p = 0, c.size  # the first level >= xi (hand-written: numba's searchsorted is slow here)
        while p < hi_p:
            mid = (p + hi_p) // 2
            if c[mid] < xi:
                p = mid + 1
            else:
                hi_p = mid
        best, arg = np.inf, -1
        for j in range(p, c.size):
            d = hi * (c[j] - xi) ** 2
            if d >= best:
                break
            if d + wi * r[j] < best:
                best, arg = d + wi * r[j], j
        for j in range(p - 1, -1, -1):
            d = hi * (xi - c[j]) ** 2
            if d > best:
                break
            if d + wi * r[j] <= best:
                best, arg = d + wi * r[j], j
        if codes[i] != arg:
            changed += 1
            codes[i] = arg
    return changed


# --------------------------------------------------------------------------- the two loops


def _rates(lam: float, counts: np.ndarray) -> np.ndarray:
    """lam * -log2 p_j, with p_j each level's share of the counts (all positive)."""
    return lam * -np.log2(counts / counts.sum())


def _sorted_loop(x, counts, grid, lam, max_iter):
    """ECSQ with importance = counts on sorted ``x``: each level holds an interval of values,
    so an assignment is ``len(grid)`` threshold searches, O(L log n), and level sums are
    read off running sums. Returns ``(centroids, thresholds)`` (thresholds between the
    non-empty levels; value <= t[m] goes to level <= m)."""
    n = x.size
    shift = float(x[n // 2])  # sums about the middle value cancel less
    sums = RunningSums(x, counts, shift)
    cum = None if counts is None else np.concatenate(([0.0], np.cumsum(counts)))
    c, r, kept_t, prev = grid, np.zeros(grid.size), None, None
    for _ in range(max_iter):
        _, t = _envelope(c - shift, r)
        t = t + shift
        cuts = _count_at_or_below(x, t)
        bounds = np.concatenate(([0], cuts, [n]))
        # Compared as the partition of the values: levels that end up empty do not count.
        part = np.unique(bounds)
        if prev is not None and np.array_equal(part, prev):
            break  # c and r already belong to this partition
        prev = part
        w = np.diff(bounds) if cum is None else np.diff(cum[bounds])
        s = np.diff(np.concatenate(([0.0], sums.at(cuts), [sums.total])))
        keep = np.flatnonzero(w > 0)
        c = shift + s[keep] / w[keep]
        r = _rates(lam, w[keep].astype(np.float64))
        kept_t = t[keep[:-1]]  # level keep[m] holds values up to t[keep[m]]
    return c, kept_t


def _general_loop(x, cnt, imp, grid, lam, max_iter):
    """ECSQ with per-value importance: exact per-value search (`_assign_window`), level
    sums by bincount. Levels may then hold interleaved values and their means cross, so
    they are re-sorted every step. Returns ``(centroids ascending, codes int64)``."""
    c, r = grid, np.zeros(grid.size)
    codes = np.full(x.size, -1, np.int64)
    wx = imp * x
    for _ in range(max_iter):
        if _assign_window(x, cnt, imp, c, r, codes) == 0:
            break
        n_levels = c.size
        counts = np.bincount(codes, cnt, n_levels)
        weight = np.bincount(codes, imp, n_levels)
        total = np.bincount(codes, wx, n_levels)
        # A level whose values all have importance 0 keeps its place.
        c = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), c)
        keep = np.flatnonzero(counts > 0)
        order = keep[np.argsort(c[keep], kind="stable")]
        renumber = np.empty(n_levels, np.int64)
        renumber[order] = np.arange(order.size)
        c, r, codes = c[order], _rates(lam, counts[order]), renumber[codes]
    return c, codes


# --------------------------------------------------------------------------- public entry


def _positive_real(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a float, or ConfigError unless it is a finite real > 0 (>= 0 if allowed)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite real number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _check_arguments(values, step, lam, weights, importance, max_iter):
    """The validated ``(values, step, lam, counts, importance)``, or ConfigError."""
    v = _check_values(values)
    step = _positive_real(step, "step")
    lam = None if lam is None else _positive_real(lam, "lam", allow_zero=True)
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer, got {max_iter!r}")
    counts = None if weights is None else check_weights(weights, v.size)
    if importance is None:
        return v, step, lam, counts, None
    imp = np.asarray(importance)
    if imp.shape != v.shape or imp.dtype.kind not in "fiu":
        raise ConfigError(f"importance must be real, one per value ({v.size}), got {imp.dtype} {imp.shape}")
    imp = imp.astype(np.float64, copy=False)
    if not np.isfinite(imp).all() or (imp < 0).any():
        raise ConfigError("importance must be finite and >= 0")
    return v, step, lam, counts, imp


def ecsq_1d(values, step, lam=None, weights=None, importance=None, max_iter=50):
    """Entropy-constrained scalar quantization of 1-D ``values``.

    Minimises ``sum_i imp_i (x_i - c[q_i])^2 + lam * sum_i count_i * -log2 p[q_i]``, with
    ``p_j`` level j's share of the counts: squared error plus lam times the ideal
    entropy-coded size in bits. ``weights`` are the counts (float, >= 0; default 1 a
    value: a histogram passes distinct values and their counts); ``importance`` defaults to
    the counts (plain squared error). A value of count 0 takes no part; its code is its
    nearest centroid's.

    Starts from the grid ``j * step`` (anchored at 0) from the lowest to the highest value,
    every value at its nearest grid point and all code lengths equal, then alternates: each
    value to the level of least cost, each level to the importance-weighted mean of its
    values and its count share, empty levels dropped, until the assignment repeats or
    ``max_iter`` assignments. The objective never rises from one iteration to the next.
    Default ``lam`` is ``ln(2)/6 * step^2`` times the mean importance per count: the slope
    -dD/dR of a uniform quantizer of that step at high rate, so ``step`` alone sets the
    operating point, and the result stays close to a uniform quantizer of that step.

    Returns ``(centroids, codes)``: float32 centroids, ascending, every one used (no empty
    level); codes uint8 for at most 256 levels, else uint16, one per value in input order,
    the chosen level (not necessarily the nearest centroid: a rarer one costs more bits).

    Cost: with ``importance=None`` each level holds an interval of the values, so after one
    sort an iteration is O(L log n) for L levels and the codes one O(n log L) pass; memory
    is the sorted copy (float32 stays float32), its running sums (0.5 bytes a value above
    4M values) and the codes: 10M float32 values in ~0.6 s. With ``importance`` each value
    searches its neighbouring levels every iteration, O(n) and more where importance is
    tiny against lam * count; 65,536 values take milliseconds an iteration.

    Raises ConfigError for non-1-D, empty or non-finite ``values``, ``step`` not > 0, a
    grid of more than 65536 levels, ``lam`` < 0, unusable ``weights`` or ``importance``
    (one finite value >= 0 per value), or ``max_iter`` < 1.
    """
    v, step, lam, counts, imp = _check_arguments(values, step, lam, weights, importance, max_iter)
    present = None if counts is None else np.flatnonzero(counts > 0)
    live = v if present is None else v[present]
    live_counts = None if counts is None else counts[present]
    live_imp = imp if imp is None or present is None else imp[present]
    low, high = float(live.min()) / step, float(live.max()) / step
    # The first test also catches a range that overflows to inf, before floor() sees it.
    if not high - low < _MAX_LEVELS or math.ceil(high) - math.floor(low) + 1 > _MAX_LEVELS:
        raise ConfigError(f"step {step} needs over {_MAX_LEVELS} levels to cover the values")
    grid = np.arange(math.floor(low), math.ceil(high) + 1, dtype=np.float64) * step
    if lam is None:
        total = float(live.size if counts is None else live_counts.sum())
        lam = math.log(2.0) / 6.0 * step * step * (1.0 if imp is None else float(live_imp.sum()) / total)

    if imp is None:
        if present is None:  # float32 is sorted and searched as float32
            x, x_counts = np.sort(v if v.dtype in (np.float32, np.float64) else v.astype(np.float64)), None
        else:
            order = np.argsort(live, kind="stable")
            x, x_counts = live[order].astype(np.float64), live_counts[order]
        c, t = _sorted_loop(x, x_counts, grid, lam, max_iter)
        del x  # as large as the values: gone before the codes are made
    else:
        x = live.astype(np.float64)
        cnt = np.ones(x.size) if live_counts is None else live_counts
        c, live_codes = _general_loop(x, cnt, live_imp, grid, lam, max_iter)
    c32 = c.astype(np.float32)
    codes = np.empty(v.size, np.uint8 if c32.size <= 256 else np.uint16)
    if imp is None and present is None:
        _codes_by_thresholds(v, t, codes)  # straight into the codes: no copy of the values
        return c32, codes
    if imp is None:
        live_codes = np.empty(live.size, codes.dtype)
        _codes_by_thresholds(live, t, live_codes)
    if present is None:
        codes[:] = live_codes
        return c32, codes
    codes[present] = live_codes
    absent = np.ones(v.size, bool)
    absent[present] = False
    codes[absent] = _assign_nearest(v[absent], c32)
    return c32, codes
