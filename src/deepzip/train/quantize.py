"""Stage 2: trained quantization in place, `quantize_`: per-tensor k-means weight sharing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from deepzip.errors import ConfigError
from deepzip.summary import Summary
from deepzip.train.distributed import agree, refuse_sharded
from deepzip.train.parametrizations import (
    SharedWeights,
    Variational,
    mask_of,
    originals,
    set_transform,
    transform_of,
)
from deepzip.train.registry import CONV_BITS, DEFAULT_MIN_SIZE, FC_BITS
from deepzip.train.selection import select
from deepzip.train.sharing import check_bits, check_init, share_weights

__all__ = ["quantize_"]


def quantize_(
    model: nn.Module,
    bits: int | Mapping[str, int] | None = None,
    *,
    init: str = "linear",
    layers: Sequence[str] | None = None,
    seed: int = 0,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Summary:
    """Replace each selected tensor's weights by 2**bits shared centroids, in place.

    `bits` is one value for every compressible tensor or {name pattern: bits}; by default
    the paper's 8 bits for convolutions and 5 for the others. `init` picks the centroid
    initialization ("linear", the paper's best, "density" or "random"). Assignments are
    fixed from here on; only the centroids train (`module.parametrizations.weight[-1]
    .centroids`), each by the summed gradient of its weights; they require grad as the
    weight did. Pruned weights stay zero. A tied tensor gets one codebook. Clustering runs
    on the CPU; codes and centroids live on the model's device. Under a process group every
    rank gets rank 0's codes and centroids (`deepzip.train.distributed`). Returns a Summary mapping
    each quantized target to its bits.
    """
    check_init(init)
    refuse_sharded(model)
    selection = select(model, True if bits is None else bits, "bits", layers, min_size)
    chosen = {
        name: check_bits((CONV_BITS if selection.targets[name].conv else FC_BITS) if bits is None else value)
        for name, value in selection.chosen.items()
    }
    transforms = {}
    for name, layer_bits in chosen.items():
        site = selection.targets[name].sites[0]
        if isinstance(transform_of(site.module, site.tensor_name), Variational):
            raise ConfigError(f"{name} is still under variational dropout: harden_ it before quantize_")
        weight = site.value()
        mask = mask_of(site.module, site.tensor_name)
        mask = torch.ones(weight.shape, dtype=torch.bool, device=weight.device) if mask is None else mask.clone()
        centroids, codes = share_weights(weight, mask, layer_bits, init, seed)
        transforms[name] = SharedWeights(centroids, codes, mask, requires_grad=_trainable(site))
    # Under a process group, rank 0's codebooks and codes on every rank.
    agree(tensor for t in transforms.values() for tensor in (t.centroids, t.codes, t.mask))
    for name, transform in transforms.items():
        set_transform(selection.targets[name].sites, transform)
    return selection.summary(
        "quantize_", lambda target, _: f"{chosen[target.name]} bits, {len(transforms[target.name].centroids)} centroids", chosen
    )


def _trainable(site) -> bool:
    """Whether the user trains this weight: then its centroids train too."""
    if site.parametrized:
        return any(t.requires_grad for t in originals(site.module.parametrizations[site.tensor_name]))
    return site.value().requires_grad
