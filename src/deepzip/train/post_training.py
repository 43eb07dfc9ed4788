"""Post-training compression of tensors: the training side's own functions, without retraining.

Pure functions from tensors to a CompressedModel: `sparsity_mask` prunes, `share_values`
clusters, exactly as `prune_` and `quantize_` do on a model, but with no parametrizations,
so it needs little memory beyond the tensors themselves. This is the path for large models
and for `deepzip compress`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import ConfigError
from deepzip.limits import MAX_BITS, MAX_INDEX_BITS
from deepzip.summary import Row, Summary
from deepzip.train import patterns
from deepzip.train.masks import sparsity_mask
from deepzip.train.registry import (
    DEFAULT_MIN_SIZE,
    FLOAT_DTYPES,
    POST_TRAINING_BITS,
    raw_reason,
)
from deepzip.train.sharing import check_bits, check_init, share_values
from deepzip.train.ties import group_tied

__all__ = ["compress_state_dict", "compress_tensor"]


def compress_tensor(
    weight: torch.Tensor,
    sparsity: float = 0.0,
    bits: int = POST_TRAINING_BITS,
    init: str = "linear",
    seed: int = 0,
    index_bits: int | None = None,
) -> CodebookTensor:
    """Prune `weight` to `sparsity` by magnitude and share the survivors among 2**bits centroids.

    The result decodes to the original dtype (fp32, fp16, bf16 or fp64); centroids are
    stored as float32, so an fp16/bf16 tensor decodes to its centroids rounded to its dtype.
    """
    if weight.dtype not in FLOAT_DTYPES:
        raise ConfigError(f"only floating tensors can be quantized, got {weight.dtype}")
    bits = check_bits(bits)
    mask = sparsity_mask(weight, sparsity).flatten()
    positions = torch.nonzero(mask).flatten().cpu().numpy().astype(np.int64)
    values = weight.detach().flatten()[mask].double().cpu().numpy()
    del mask
    if not np.isfinite(values).all():
        raise ConfigError("weights contain NaN or infinity")
    codebook, codes = share_values(values, bits, init, seed)
    return CodebookTensor(tuple(weight.shape), weight.dtype, codebook, positions, codes, index_bits)


def compress_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float] = 0.0,
    bits: int | Mapping[str, int] = POST_TRAINING_BITS,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    index_bits: int | Mapping[str, int] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    init: str = "linear",
    progress: Callable[[str], None] | None = None,
) -> CompressedModel:
    """Compress every compressible tensor of `state_dict`; keep the rest raw. See `registry.is_compressible`.

    `sparsity`, `bits` and `index_bits` are one value or {name pattern: value} (first match
    wins; patterns match a tensor's name or its layer's, `fc1` for `fc1.weight`); tensors
    matching no pattern get sparsity 0, 8 bits and the smallest-file index width.
    `include` limits compression to names matching one of its patterns, `exclude` stores
    matching names raw. A pattern that matches no tensor is an error: it is almost always a
    typo. All values are checked before the first tensor is compressed.

    Tied tensors (entries sharing memory, see `group_tied`) are compressed once and stay one
    record under all their names; a pattern reaching one of the names reaches the tensor
    (so excluding one name excludes it), and different values for one tensor are an error. `progress(name)` is called before each
    distinct tensor. The result's `summary` lists every tensor and what became of it.
    """
    check_init(init)
    _check_values(sparsity, bits, index_bits)
    canonical = group_tied(state_dict)
    groups: dict[str, list[str]] = {}
    for name, first in canonical.items():
        groups.setdefault(first, []).append(name)
    targets = {first: [patterns.site_names(n) for n in names] for first, names in groups.items()}
    included = patterns.select(targets, None if include is None else list(include), "include")
    excluded = patterns.select(targets, list(exclude), "exclude") if exclude else {}
    settings = {
        "sparsity": (patterns.resolve(targets, sparsity, "sparsity"), 0.0),
        "bits": (patterns.resolve(targets, bits, "bits"), POST_TRAINING_BITS),
        "index_bits": (patterns.resolve(targets, index_bits, "index_bits"), None),
    }
    reasons: dict[str, str] = {}
    for first in targets:
        reason = raw_reason(state_dict[first], min_size)
        if reason is None and first not in included:
            reason = "not included (--include)"
        if reason is None and first in excluded:
            reason = "excluded by pattern"
        if reason is not None:
            reasons[first] = reason
    chosen = {
        first: {what: values.get(first, default) for what, (values, default) in settings.items()}
        for first in targets
        if first not in reasons
    }

    records: dict[str, CodebookTensor | RawTensor] = {}
    rows = []
    for first, names in groups.items():
        tensor = state_dict[first]
        label = " = ".join(names)
        if progress is not None:
            progress(first)
        if first in chosen:
            s = chosen[first]
            record = compress_tensor(tensor, s["sparsity"], s["bits"], init, index_bits=s["index_bits"])
            kept = record.kept / max(record.numel, 1)
            rows.append(Row(label, tuple(tensor.shape), True, f"kept {100 * kept:.2f}%, {s['bits']} bits, {len(record.codebook)} centroids"))
        else:
            record = RawTensor(tensor.detach().contiguous())
            rows.append(Row(label, tuple(tensor.shape), False, reasons[first]))
        for name in names:
            records[name] = record
    values = {first: s["bits"] for first, s in chosen.items()}
    return CompressedModel({name: records[name] for name in state_dict}, summary=Summary("compress", tuple(rows), values))


def _check_values(sparsity, bits, index_bits) -> None:
    """Validate every value, pattern by pattern, before the first tensor is compressed."""

    def values(setting):
        return setting.items() if isinstance(setting, Mapping) else [(None, setting)]

    def where(what, pattern):
        return what if pattern is None else f"{what}[{pattern!r}]"

    for pattern, value in values(sparsity):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where('sparsity', pattern)}: must be a number in [0, 1], got {value!r}")
    for what, setting, top in (("bits", bits, MAX_BITS), ("index_bits", index_bits, MAX_INDEX_BITS)):
        for pattern, value in values(setting) if setting is not None else ():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ConfigError(f"{where(what, pattern)}: must be an integer in 1..{top}, got {value!r}")
