"""Weight sharing: cluster a tensor's surviving weights into 2**bits shared values.

The one weight-sharing function of deepzip: `quantize_` (training), `compress`
(post-training) and the sensitivity scans all call `share_tensor`. Only the clustering runs
on the CPU (the survivors travel there in their own dtype and back as codes); masks and
codes stay on the weight's device.

fp16 and bf16 weights take at most 65536 distinct values, so they are clustered as a
histogram: the counts of their bit patterns, k-means on the distinct values weighted by
those counts (the same partition and centroids as on the values themselves, to rounding),
then codes through a 65536-entry table. Memory beyond the weights is then the codes alone,
whatever the layer's size.
"""

from __future__ import annotations

import numpy as np
import torch

from deepzip.errors import ConfigError
from deepzip.limits import MAX_BITS
from deepzip.train.kmeans import (
    INIT_METHODS,
    apply_table,
    drop_empty_clusters,
    kmeans_1d,
)

# Bit patterns counted at a time: bincount widens them to intp, 8 bytes each; a 2 MiB copy
# stays in cache (the fastest chunk size, measured).
_COUNT_CHUNK = 1 << 18
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_bits(bits: int) -> int:
    """`bits` as an int, or ConfigError unless it is an integer in 1..MAX_BITS."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
    return int(bits)


def check_init(init: str) -> str:
    """`init`, or ConfigError unless it names a centroid initialization."""
    if init not in INIT_METHODS:
        raise ConfigError(f"init must be one of {', '.join(INIT_METHODS)}, got {init!r}")
    return init


def share_values(values: np.ndarray, bits: int, init: str = "linear", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D `values` into at most 2**bits centroids; return (centroids float32, codes).

    Centroids no value uses are dropped (a stored codebook entry costs 4 bytes), so the
    codebook may be shorter than 2**bits; it is sorted ascending. Codes are uint8 for at
    most 256 centroids, else uint16. Empty `values` give one centroid 0 and no codes.
    NaN or infinite values are a ConfigError.
    """
    bits, init = check_bits(bits), check_init(init)
    if values.size == 0:
        return np.zeros(1, dtype=np.float32), np.zeros(0, dtype=np.uint8)
    centroids, codes = kmeans_1d(values, 2**bits, init=init, seed=seed)
    return drop_empty_clusters(centroids, codes)


def share_tensor(values: torch.Tensor, bits: int, init: str = "linear", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`share_values` on a 1-D CPU float tensor, read in place: fp16/bf16 through its histogram.

    fp32 and fp64 values are clustered as they are (fp32 without a float64 copy). fp16 and
    bf16 ones give the same partition and centroids as their values would (to rounding of
    the cluster sums), with temporaries of a few MiB besides the codes.
    """
    values = values.detach().contiguous()
    if values.dtype in _HALF_DTYPES:
        return _share_patterns(values.view(torch.int16).numpy().view(np.uint16), values.dtype, bits, init, seed)
    return share_values(values.numpy(), bits, init, seed)


def _share_patterns(patterns: np.ndarray, dtype: torch.dtype, bits: int, init: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """share_values for 16-bit floats given as their uint16 bit patterns."""
    bits, init = check_bits(bits), check_init(init)
    if patterns.size == 0:
        return np.zeros(1, dtype=np.float32), np.zeros(0, dtype=np.uint8)
    counts = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, patterns.size, _COUNT_CHUNK):
        counts += np.bincount(patterns[start : start + _COUNT_CHUNK], minlength=1 << 16)
    present = np.flatnonzero(counts)
    # Every bit pattern's value, exactly (16-bit floats widen to float64 without rounding).
    values = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).double().numpy()[present]
    if not np.isfinite(values).all():
        bad = int(counts[present][~np.isfinite(values)].sum())
        raise ConfigError(f"weights must be finite, but {bad} of {patterns.size} are NaN or infinite")
    centroids, codes = kmeans_1d(values, 2**bits, init=init, seed=seed, weights=counts[present])
    codebook, codes = drop_empty_clusters(centroids, codes)
    table = np.zeros(1 << 16, dtype=codes.dtype)
    table[present] = codes
    return codebook, apply_table(table, patterns)


def share_weights(
    weight: torch.Tensor, mask: torch.Tensor | None, bits: int, init: str = "linear", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`share_tensor` on the surviving weights (those `mask` keeps; all if None), in place.

    Returns (centroids float32 [k <= 2**bits] ascending, codes int16 shaped like `weight`),
    both on the weight's device; pruned entries get code 0, which the mask hides. Pruned
    zeros are not clustered: they would drag a centroid to 0 and waste it.
    """
    alive = torch.ones(weight.shape, dtype=torch.bool, device=weight.device) if mask is None else mask.to(torch.bool)
    centroids, survivor_codes = share_tensor(weight.detach()[alive].cpu(), bits, init, seed)
    codes = torch.zeros(weight.shape, dtype=torch.int16, device=weight.device)
    # int16 holds every code (k <= 4096) at a quarter of int64's memory.
    codes[alive] = torch.from_numpy(survivor_codes.astype(np.int16)).to(weight.device)
    return torch.from_numpy(centroids).to(weight.device), codes
