"""Post-training compression of a state dict: prune by magnitude and share weights, no retraining.

Pure functions from tensors to a CompressedModel. This is the path for large models and
for `deepzip compress`: it never builds parametrizations, so it needs little memory beyond
the tensors themselves (the training path is prune_ / quantize_ on an nn.Module).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import numpy as np
import torch

from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import ConfigError
from deepzip.train.kmeans import drop_empty_clusters, kmeans_1d
from deepzip.limits import MAX_BITS

T = TypeVar("T")

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DEFAULT_MIN_SIZE = 1024  # smaller tensors gain little and their codebook would dominate
_CHUNK = 1 << 22  # elements per chunk when scanning a large tensor, to bound temporaries


def magnitude_positions(weight: torch.Tensor, sparsity: float) -> np.ndarray:
    """Flat positions (sorted int64) of the round((1 - sparsity) * numel) largest |weights|.

    Ties at the threshold are broken by position, so the count is exact.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ConfigError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = weight.detach().reshape(-1).float().numpy()
    n = flat.size
    keep = round((1.0 - sparsity) * n)
    if keep >= n:
        return np.arange(n, dtype=np.int64)
    if keep == 0:
        return np.zeros(0, dtype=np.int64)
    magnitudes = np.abs(flat)
    magnitudes.partition(n - keep)  # in place: the one large temporary of this function
    threshold = magnitudes[n - keep]
    del magnitudes
    above, ties = [], []
    for start in range(0, n, _CHUNK):
        chunk = np.abs(flat[start : start + _CHUNK])
        above.append(np.flatnonzero(chunk > threshold) + start)
        ties.append(np.flatnonzero(chunk == threshold) + start)
    above_all = np.concatenate(above)
    tied = np.concatenate(ties)[: keep - above_all.size]
    return np.sort(np.concatenate([above_all, tied])).astype(np.int64)


def compress_tensor(
    weight: torch.Tensor, sparsity: float = 0.0, bits: int = 8, init: str = "linear", seed: int = 0
) -> CodebookTensor:
    """Prune `weight` to `sparsity` by magnitude and share the survivors among 2**bits centroids.

    The result decodes to the original dtype (fp32, fp16, bf16 or fp64); centroids are
    stored as float32, so an fp16/bf16 tensor decodes to its centroids rounded to its dtype.
    """
    if weight.dtype not in FLOAT_DTYPES:
        raise ConfigError(f"only floating tensors can be quantized, got {weight.dtype}")
    if not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    positions = magnitude_positions(weight, sparsity)
    values = weight.detach().reshape(-1)[torch.from_numpy(positions)].double().numpy()
    if values.size == 0:
        codebook, codes = np.zeros(1, dtype=np.float32), np.zeros(0, dtype=np.uint16)
    else:
        if not np.isfinite(values).all():
            raise ConfigError("weights contain NaN or infinity")
        codebook, codes = drop_empty_clusters(*kmeans_1d(values, 2**bits, init=init, seed=seed))
    return CodebookTensor(tuple(weight.shape), weight.dtype, codebook, positions, codes.astype(np.uint16))


def is_compressible(name: str, tensor: torch.Tensor, min_size: int = DEFAULT_MIN_SIZE) -> bool:
    """Default rule: floating weights with 2 or more dimensions and at least `min_size` elements."""
    return tensor.dtype in FLOAT_DTYPES and tensor.dim() >= 2 and tensor.numel() >= min_size


def setting_for(name: str, setting: T | Mapping[str, T], default: T) -> T:
    """The value of `setting` for tensor `name`: one value, or the first {pattern: value} match.

    Patterns are fnmatch-style and match the tensor name or its layer name (the name
    without a trailing ".weight"), so {"fc*": 5} and {"fc*.weight": 5} both work.
    """
    if not isinstance(setting, Mapping):
        return setting
    layer = name[: -len(".weight")] if name.endswith(".weight") else name
    for pattern, value in setting.items():
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(layer, pattern):
            return value
    return default


def compress_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float] = 0.0,
    bits: int | Mapping[str, int] = 8,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    min_size: int = DEFAULT_MIN_SIZE,
    init: str = "linear",
    progress: Callable[[str], None] | None = None,
) -> CompressedModel:
    """Compress every compressible tensor of `state_dict` (see `is_compressible`); keep the rest raw.

    `sparsity` and `bits` are one value or {name pattern: value} (first match wins; tensors
    matching no pattern get sparsity 0 and 8 bits). `include` limits compression to names
    matching one of its patterns, `exclude` stores matching names raw. A pattern in
    `sparsity`, `bits`, `include` or `exclude` that matches no tensor is an error: it is
    almost always a typo. `progress(name)` is called before each tensor.
    """
    include = list(include) if include is not None else None
    exclude = list(exclude)
    names = list(state_dict)
    for what, patterns in (("sparsity", sparsity), ("bits", bits), ("include", include), ("exclude", exclude)):
        if isinstance(patterns, (Mapping, list)):
            for pattern in patterns:
                if not any(setting_for(n, {pattern: True}, False) for n in names):
                    raise ConfigError(f"{what}: pattern {pattern!r} matches no tensor")
    tensors: dict[str, CodebookTensor | RawTensor] = {}
    for name, tensor in state_dict.items():
        if progress is not None:
            progress(name)
        selected = is_compressible(name, tensor, min_size)
        if include is not None:
            selected = selected and setting_for(name, {p: True for p in include}, False)
        if exclude and setting_for(name, {p: True for p in exclude}, False):
            selected = False
        if selected:
            tensors[name] = compress_tensor(
                tensor, float(setting_for(name, sparsity, 0.0)), int(setting_for(name, bits, 8)), init
            )
        else:
            tensors[name] = RawTensor(tensor.detach().contiguous())
    return CompressedModel(tensors)
