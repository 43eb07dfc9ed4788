"""Stage 2: trained quantization. Per-layer k-means weight sharing and the in-place `quantize_`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from deepzip.errors import ConfigError
from deepzip.limits import MAX_BITS
from deepzip.train.kmeans import INIT_METHODS, kmeans_1d
from deepzip.train.parametrizations import SharedWeights, current_mask, set_transform
from deepzip.train.registry import is_conv, per_layer

# The paper's defaults: 8-bit codes for conv layers, 5-bit for fully connected ones.
CONV_BITS = 8
FC_BITS = 5


def share_weights(
    weight: torch.Tensor, mask: torch.Tensor | None, bits: int, init: str = "linear", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the surviving weights into 2**bits shared values.

    Returns (centroids float32 [k] ascending, codes int16 shaped like `weight`); pruned
    entries get code 0, which the mask hides. Pruned zeros are not clustered: they would
    drag a centroid to 0 and waste it.
    """
    if not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    alive = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask
    values = weight.detach()[alive].double().numpy()
    codes = torch.zeros(weight.shape, dtype=torch.int16)
    if values.size == 0:
        return torch.zeros(1), codes
    centroids, survivor_codes = kmeans_1d(values, 2**bits, init=init, seed=seed)
    codes[alive] = torch.from_numpy(survivor_codes.astype(np.int16))
    return torch.from_numpy(centroids), codes


def quantize_(
    model: nn.Module,
    bits: int | Mapping[str, int] | None = None,
    *,
    init: str = "linear",
    layers: list[str] | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """Replace each selected layer's weights by 2**bits shared centroids, in place.

    `bits` is one value for all compressible layers or {name pattern: bits}; by default the
    paper's 8 bits for conv layers and 5 for the others. `init` picks the centroid
    initialization ("linear", the paper's best, "density" or "random"). Assignments are
    fixed from here on; only the centroids train (`module.parametrizations.weight[0]
    .centroids`), each by the summed gradient of its weights. Pruned weights stay zero.
    Returns {layer: bits}.
    """
    if init not in INIT_METHODS:
        raise ConfigError(f"init must be one of {', '.join(INIT_METHODS)}, got {init!r}")
    modules = dict(model.named_modules())
    if bits is None:
        names = per_layer(model, True, "layers", layers)
        chosen = {name: CONV_BITS if is_conv(modules[name]) else FC_BITS for name in names}
    else:
        chosen = per_layer(model, bits, "bits", layers)
    transforms = {}
    for name, layer_bits in chosen.items():
        module = modules[name]
        mask = current_mask(module)
        mask = torch.ones_like(module.weight, dtype=torch.bool) if mask is None else mask.clone()
        centroids, codes = share_weights(module.weight, mask, int(layer_bits), init, seed)
        transforms[name] = SharedWeights(centroids, codes, mask)
    for name, transform in transforms.items():
        set_transform(modules[name], transform)
    return {name: int(b) for name, b in chosen.items()}
