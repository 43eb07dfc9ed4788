"""Stage 1: magnitude pruning in place, `prune_`, over every registered weight type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from deepzip.errors import ConfigError
from deepzip.summary import Summary
from deepzip.train.distributed import agree, refuse_sharded
from deepzip.train.masks import quality_mask, sparsity_mask
from deepzip.train.parametrizations import (
    Masked,
    SharedWeights,
    Variational,
    mask_of,
    set_transform,
    transform_of,
)
from deepzip.train.registry import DEFAULT_MIN_SIZE
from deepzip.train.selection import kept_fraction, select

__all__ = ["prune_", "quality_mask", "sparsity_mask"]


def prune_(
    model: nn.Module,
    sparsity: float | Mapping[str, float] | None = None,
    *,
    quality: float | Mapping[str, float] | None = None,
    layers: Sequence[str] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Summary:
    """Prune `model` in place by weight magnitude, per tensor; return a Summary.

    Give exactly one of `sparsity` (fraction of each tensor's weights set to zero) or
    `quality` (threshold = quality x std of the tensor's weights, as in Han et al.), each
    as one value for every compressible tensor or as {name pattern: value}. Compressible
    tensors are those of `deepzip.train.registry` (Linear, convolutions, embeddings,
    transformers' Conv1D, attention and recurrent weights) with at least `min_size`
    entries; patterns match a tensor's key (`lstm.weight_ih_l0`), its layer (`fc1`) or its
    module. `layers` restricts the tensors touched. Calling it again prunes further
    (iterative pruning); pruned weights stay exactly zero through any later training. A
    tied tensor gets one mask. Masks are computed on the model's device.

    The Summary maps each pruned target to its kept fraction, and lists every other
    tensor with the reason it was left alone. All masks are computed and checked before
    any layer is changed, so an error leaves the model as it was.
    """
    if (sparsity is None) == (quality is None):
        raise ConfigError("give exactly one of sparsity= or quality=")
    what = "sparsity" if quality is None else "quality"
    make_mask = sparsity_mask if quality is None else quality_mask
    refuse_sharded(model)
    selection = select(model, sparsity if quality is None else quality, what, layers, min_size)
    new_masks = {}
    for name, value in selection.chosen.items():
        site = selection.targets[name].sites[0]
        if isinstance(transform_of(site.module, site.tensor_name), SharedWeights):
            raise ConfigError(f"{name} is already quantized: prune before quantize_")
        if isinstance(transform_of(site.module, site.tensor_name), Variational):
            raise ConfigError(f"{name} is under variational dropout: harden_ it, then prune further")
        new_masks[name] = make_mask(site.value(), value, mask_of(site.module, site.tensor_name))
    agree(new_masks.values())  # under a process group, rank 0's masks on every rank
    for name, mask in new_masks.items():
        set_transform(selection.targets[name].sites, Masked(mask))
    kept = {name: kept_fraction(mask) for name, mask in new_masks.items()}
    return selection.summary(
        "prune_", lambda target, value: f"pruned to {what} {value:g}: kept {100 * kept[target.name]:.2f}%", kept
    )
