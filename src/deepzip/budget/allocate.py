"""Choose each tensor's quantizer step so the whole file fits a byte budget at the least distortion.

Each tensor has a rate-distortion curve: for a grid of uniform steps, the bytes its record
will take (the codes' entropy, which rANS reaches, plus its codebook and tables) and its
squared error. Weighted by the tensor's sensitivity s (output distortion per unit of
squared weight error, `deepzip.budget.sensitivity`; 1 for all when data-free, which gives
every tensor the same step, as NNC does), the total distortion is sum(s * sse). The
Lagrangian choice (Shoham and Gersho 1988) picks, for a slope lambda, each tensor's point
minimising s * sse + lambda * bytes; lambda is bisected until the total fits the budget.
That is optimal on the convex hull of every tensor's curve, and costs a few ms per
tensor: the curves come from a 65,536-bin histogram, not from the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from deepzip.errors import ConfigError
from deepzip.train.uniform import uniform_curve

# Steps tried, relative to the tensor's RMS: 2**(-j/4) for j in this range, from about half a
# bit of entropy a weight to the finest grids a 4096-entry codebook allows.
STEP_EXPONENTS = range(-12, 49)
_BINS = 1 << 16
_CHUNK = 1 << 20
# Bytes a record costs beyond its code stream: header fields, the name, the stream tables.
RECORD_OVERHEAD = 32
# Bytes a codebook level costs: its float32 value and its rANS frequency (about 2 bytes).
LEVEL_BYTES = 6


@dataclass(frozen=True)
class Curve:
    """Rate-distortion points of one tensor: for each step, estimated record bytes and squared error."""

    steps: np.ndarray
    nbytes: np.ndarray
    sse: np.ndarray
    levels: np.ndarray


def histogram(tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean value, count) of each non-empty bin of a 65,536-bin histogram over the tensor's range.

    The bins are 16x finer than the finest grid tried, so a level's error computed from
    bin means is that of the values themselves to well under a percent.
    """
    flat = tensor.detach().reshape(-1).cpu()
    if flat.numel() == 0:
        return np.zeros(1), np.zeros(1)
    low, high = float(flat.min()), float(flat.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError("weights contain NaN or infinity")
    width = (high - low) / _BINS or 1.0
    counts = np.zeros(_BINS, dtype=np.float64)
    sums = np.zeros(_BINS, dtype=np.float64)
    for i in range(0, flat.numel(), _CHUNK):
        chunk = flat[i : i + _CHUNK].numpy().astype(np.float64)
        index = np.minimum(((chunk - low) / width).astype(np.int64), _BINS - 1)
        counts += np.bincount(index, minlength=_BINS)
        sums += np.bincount(index, weights=chunk, minlength=_BINS)
    used = counts > 0
    return sums[used] / counts[used], counts[used]


def tensor_curve(tensor: torch.Tensor, extra_bytes: int = 0) -> Curve:
    """The rate-distortion curve of uniformly quantizing `tensor` over the STEP_EXPONENTS grid.

    `extra_bytes` (per-slice scales, say) are added to every point.
    """
    x, n = histogram(tensor)
    rms = math.sqrt(float(np.sum(n * x * x) / max(n.sum(), 1))) or 1.0
    steps = rms * 2.0 ** (-np.array(STEP_EXPONENTS, dtype=np.float64) / 4)
    sse, bits, levels = uniform_curve(x, n, steps)
    nbytes = np.ceil(bits / 8) + LEVEL_BYTES * levels + RECORD_OVERHEAD + extra_bytes
    ok = np.isfinite(sse)
    return Curve(steps[ok], nbytes[ok], sse[ok], levels[ok])


def choose(curves: Mapping[str, Curve], sensitivity: Mapping[str, float], budget: float) -> dict[str, int]:
    """Each tensor's point (an index into its curve) minimising total s * sse with total bytes <= budget.

    ConfigError if even the smallest point of every curve exceeds the budget. Sensitivities
    are >= 0; a tensor of sensitivity 0 gets its smallest point.
    """
    names = list(curves)
    smallest = sum(float(curves[n].nbytes.min()) for n in names)
    if smallest > budget:
        raise ConfigError(f"the budget leaves {budget:,.0f} bytes for the compressed tensors, which need at least {smallest:,.0f}")

    def pick(lam: float) -> dict[str, int]:
        return {n: int(np.argmin(sensitivity[n] * curves[n].sse + lam * curves[n].nbytes)) for n in names}

    def total(choice: dict[str, int]) -> float:
        return sum(float(curves[n].nbytes[i]) for n, i in choice.items())

    low, high = -60.0, 60.0  # log10 of lambda: the total falls as lambda grows
    if total(pick(10.0**low)) <= budget:
        return pick(10.0**low)
    for _ in range(200):
        mid = (low + high) / 2
        if total(pick(10.0**mid)) <= budget:
            high = mid
        else:
            low = mid
    choice = pick(10.0**high)
    if total(choice) > budget:  # lambda at +inf: every tensor's smallest point
        choice = {n: int(np.argmin(curves[n].nbytes)) for n in names}
    return choice
