"""Magnitude pruning masks: pure functions from a weight (and its current mask) to a new mask.

The one magnitude selection of deepzip: the training path (`prune_`), the post-training path
(`compress`) and the sensitivity scans all call `sparsity_mask`. It runs on the weight's
device and breaks ties at the threshold by position (lowest flat index first), so the kept
count is exact and the mask is the same on every device and every run.
"""

from __future__ import annotations

import torch

from deepzip.errors import ConfigError


def _alive(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConfigError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    return mask.to(device=weight.device, dtype=torch.bool)


def _kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    try:
        return torch.kthvalue(scores, scores.numel() - k + 1).values
    except (NotImplementedError, RuntimeError):  # kthvalue is missing on some backends (MPS)
        return torch.topk(scores, k, sorted=False).values.min()


def sparsity_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the round((1 - sparsity) * numel) largest-magnitude weights among the survivors.

    `sparsity` is the fraction of the whole tensor that ends up zero. Weights already
    pruned by `mask` stay pruned, so asking for less sparsity than the tensor has keeps the
    current mask (pruning never revives a weight). Among weights of equal magnitude at the
    threshold, the lowest flat positions are kept. Returns a bool tensor on the weight's
    device.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ConfigError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    alive = _alive(weight, mask)
    keep = round((1.0 - sparsity) * weight.numel())
    if keep >= int(alive.sum()):
        return alive.clone()
    if keep == 0:
        return torch.zeros_like(alive)
    # Pruned entries score -1, below every real magnitude, so they are never kept.
    scores = weight.detach().abs().float().masked_fill_(~alive, -1.0).flatten()
    threshold = _kth_largest(scores, keep)
    above = scores > threshold
    ties = scores == threshold
    del scores
    needed = keep - int(above.sum())
    # The first `needed` ties in position order: a running count over the tie flags.
    rank_dtype = torch.int32 if ties.numel() < 2**31 else torch.int64
    kept = above | (ties & (torch.cumsum(ties, 0, dtype=rank_dtype) <= needed))
    return kept.view(weight.shape)


def quality_mask(weight: torch.Tensor, quality: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The papers' rule: prune |w| < quality * std(surviving weights of the layer)."""
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or quality < 0:
        raise ConfigError(f"quality must be a number >= 0, got {quality!r}")
    alive = _alive(weight, mask)
    survivors = weight.detach()[alive].float()
    if survivors.numel() < 2:
        return alive.clone()
    threshold = quality * survivors.std()
    return alive & (weight.detach().abs() >= threshold)
