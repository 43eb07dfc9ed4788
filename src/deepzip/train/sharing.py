"""Weight sharing: cluster a tensor's surviving weights into 2**bits shared values.

The one weight-sharing function of deepzip: `quantize_` (training), `compress`
(post-training) and the sensitivity scans all call it. Only the clustering runs on the
CPU (the survivors travel there as float64 and back as codes); masks and codes stay on the
weight's device.
"""

from __future__ import annotations

import numpy as np
import torch

from deepzip.errors import ConfigError
from deepzip.limits import MAX_BITS
from deepzip.train.kmeans import INIT_METHODS, drop_empty_clusters, kmeans_1d


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
    """Cluster 1-D `values` into at most 2**bits centroids; return (centroids float32, codes uint16).

    Centroids no value uses are dropped (a stored codebook entry costs 4 bytes), so the
    codebook may be shorter than 2**bits; it is sorted ascending. Empty `values` give one
    centroid 0 and no codes.
    """
    bits, init = check_bits(bits), check_init(init)
    if values.size == 0:
        return np.zeros(1, dtype=np.float32), np.zeros(0, dtype=np.uint16)
    centroids, codes = kmeans_1d(values, 2**bits, init=init, seed=seed)
    return drop_empty_clusters(centroids, codes)


def share_weights(
    weight: torch.Tensor, mask: torch.Tensor | None, bits: int, init: str = "linear", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`share_values` on the surviving weights (those `mask` keeps; all if None), in place.

    Returns (centroids float32 [k <= 2**bits] ascending, codes int16 shaped like `weight`),
    both on the weight's device; pruned entries get code 0, which the mask hides. Pruned
    zeros are not clustered: they would drag a centroid to 0 and waste it.
    """
    alive = torch.ones(weight.shape, dtype=torch.bool, device=weight.device) if mask is None else mask.to(torch.bool)
    centroids, survivor_codes = share_values(weight.detach()[alive].double().cpu().numpy(), bits, init, seed)
    codes = torch.zeros(weight.shape, dtype=torch.int16, device=weight.device)
    # int16 holds every code (k <= 4096) at a quarter of int64's memory.
    codes[alive] = torch.from_numpy(survivor_codes.astype(np.int16)).to(weight.device)
    return torch.from_numpy(centroids).to(weight.device), codes
