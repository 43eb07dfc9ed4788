"""Stage 1: magnitude pruning. Pure mask computations plus the in-place `prune_`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from deepzip.errors import ConfigError
from deepzip.train.parametrizations import Masked, SharedWeights, current_mask, current_transform, set_transform
from deepzip.train.registry import per_layer


def sparsity_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the round((1 - sparsity) * numel) largest-magnitude weights among the survivors.

    `sparsity` is the fraction of the whole tensor that ends up zero. Weights already
    pruned by `mask` stay pruned, so asking for less sparsity than the tensor has keeps
    the current mask (pruning never revives a weight).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ConfigError(f"sparsity must be in [0, 1], got {sparsity}")
    alive = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    keep = round((1.0 - sparsity) * weight.numel())
    if keep >= int(alive.sum()):
        return alive.clone()
    # Pruned entries score -1 so that they are never among the kept ones.
    scores = torch.where(alive, weight.detach().abs().float(), torch.tensor(-1.0)).flatten()
    kept = torch.zeros(weight.numel(), dtype=torch.bool)
    if keep > 0:
        kept[torch.topk(scores, keep, sorted=False).indices] = True
    return kept.view_as(weight)


def quality_mask(weight: torch.Tensor, quality: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The papers' rule: prune |w| < quality * std(surviving weights of the layer)."""
    if quality < 0:
        raise ConfigError(f"quality must be >= 0, got {quality}")
    alive = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    survivors = weight.detach()[alive].float()
    if survivors.numel() < 2:
        return alive.clone()
    threshold = quality * survivors.std()
    return alive & (weight.detach().abs() >= threshold)


def prune_(
    model: nn.Module,
    sparsity: float | Mapping[str, float] | None = None,
    *,
    quality: float | Mapping[str, float] | None = None,
    layers: list[str] | None = None,
) -> dict[str, float]:
    """Prune `model` in place by weight magnitude, per layer; return {layer: kept fraction}.

    Give exactly one of `sparsity` (fraction of each layer's weights set to zero) or
    `quality` (threshold = quality x std of the layer's weights, as in Han et al.), each as
    one value for all compressible layers or as {name pattern: value}. `layers` restricts
    the layers touched. Calling it again on a pruned model prunes further (iterative
    pruning); pruned weights stay exactly zero through any later training.

    All masks are computed and checked before any layer is changed, so an error leaves the
    model as it was.
    """
    if (sparsity is None) == (quality is None):
        raise ConfigError("give exactly one of sparsity= or quality=")
    setting, make_mask = (sparsity, sparsity_mask) if quality is None else (quality, quality_mask)
    targets = per_layer(model, setting, "sparsity" if quality is None else "quality", layers)
    modules = dict(model.named_modules())
    new_masks = {}
    for name, value in targets.items():
        module = modules[name]
        if isinstance(current_transform(module), SharedWeights):
            raise ConfigError(f"{name} is already quantized: prune before quantize_")
        new_masks[name] = make_mask(module.weight, float(value), current_mask(module))
    for name, mask in new_masks.items():
        set_transform(modules[name], Masked(mask))
    return {name: float(mask.float().mean()) for name, mask in new_masks.items()}
