"""Post-training compression of tensors: the training side's own functions, without retraining.

Pure functions from tensors to a CompressedModel: `sparsity_positions` prunes (the
selection of `sparsity_mask`), `share_tensor` clusters, exactly as `prune_` and `quantize_`
do on a model, but with no parametrizations, so it needs little memory beyond the tensors
themselves. This is the path for large models and for `deepzip compress`.

Memory per tensor beyond the tensor itself, on the CPU: the codes (1 byte a kept weight for
at most 256 centroids), the kept positions of a pruned tensor (8 bytes a kept weight; none
for a dense one), and a few MiB of chunk-sized temporaries for fp16/bf16; fp32 and fp64 add
a sorted copy of the kept values (4 or 8 bytes each) while they are clustered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import ConfigError
from deepzip.limits import MAX_BITS, MAX_INDEX_BITS
from deepzip.summary import Row, Summary
from deepzip.train import patterns
from deepzip.train.gptq import compensated_levels, grid_of
from deepzip.train.masks import sparsity_positions
from deepzip.train.registry import (
    DEFAULT_MIN_SIZE,
    FLOAT_DTYPES,
    POST_TRAINING_BITS,
    raw_reason_for,
)
from deepzip.train.sharing import check_bits, check_init, share_tensor
from deepzip.train.ties import group_tied
from deepzip.train.uniform import grid_quantize, uniform_quantize

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
    When every weight is kept (sparsity 0, or one that rounds to keeping all), the record
    is dense: `positions` is None. NaN or infinite weights are a ConfigError (they rank
    above every finite magnitude, so pruning never hides them).
    """
    if weight.dtype not in FLOAT_DTYPES:
        raise ConfigError(f"only floating tensors can be quantized, got {weight.dtype}")
    bits, init = check_bits(bits), check_init(init)
    weight = weight.detach()
    if weight.device.type != "cpu" and not bool(torch.isfinite(weight).all()):
        # torch's selection on a device never keeps a NaN, so the check cannot wait for the survivors.
        raise ConfigError("weights contain NaN or infinity")
    positions = sparsity_positions(weight, sparsity)
    kept = weight.reshape(-1)  # a view of a contiguous tensor: a dense one is never copied
    if positions is not None:
        kept = kept[torch.from_numpy(positions).to(kept.device)]
    codebook, codes = share_tensor(kept.cpu(), bits, init, seed)
    if positions is not None and weight.numel() < 1 << 31:
        positions = positions.astype(np.int32)  # half the memory of the records a model holds
    return CodebookTensor(tuple(weight.shape), weight.dtype, codebook, positions, codes, index_bits)


@dataclass(frozen=True)
class Plan:
    """What post-training compression does to each distinct tensor, decided from names, dtypes and shapes.

    `groups` maps each stored name to all its names (tied tensors: several); `chosen` the
    names to compress to their {"sparsity", "bits", "index_bits"}; `reasons` the others to
    why they stay raw.
    """

    groups: dict[str, list[str]]
    chosen: dict[str, dict]
    reasons: dict[str, str]

    def row(self, first: str, shape: tuple[int, ...], kept: int | None = None, centroids: int | None = None) -> Row:
        """The summary row of the stored tensor `first`: raw, or compressed keeping `kept` weights."""
        label = " = ".join(self.groups[first])
        if first not in self.chosen:
            return Row(label, shape, False, self.reasons[first])
        fraction = kept / max(math.prod(shape), 1)
        setting = self.chosen[first]
        if setting.get("step") is not None:
            return Row(label, shape, True, f"step {setting['step']:.3g}, {centroids} levels")
        return Row(label, shape, True, f"kept {100 * fraction:.2f}%, {setting['bits']} bits, {centroids} centroids")

    def summary(self, rows: Iterable[Row]) -> Summary:
        """The Summary of a run that produced `rows`."""
        return Summary("compress", tuple(rows), {first: s["bits"] for first, s in self.chosen.items()})


def plan(
    metas: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    canonical: Mapping[str, str],
    sparsity: float | Mapping[str, float] = 0.0,
    bits: int | Mapping[str, int] = POST_TRAINING_BITS,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    index_bits: int | Mapping[str, int] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Plan:
    """Resolve every setting for tensors known by {name: (dtype, shape)} and {name: canonical name}.

    No tensor is read: a checkpoint of any size is planned from its header, and every value
    and pattern is checked before the first tensor is compressed (see `compress_state_dict`).
    """
    _check_values(sparsity, bits, index_bits)
    groups: dict[str, list[str]] = {}
    for name in metas:
        groups.setdefault(canonical.get(name, name), []).append(name)
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
        reason = raw_reason_for(*metas[first], min_size)
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
    return Plan(groups, chosen, reasons)


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
    (so excluding one name excludes it), and different values for one tensor are an error.
    `progress(name)` is called before each distinct tensor. The result's `summary` lists
    every tensor and what became of it.
    """
    check_init(init)
    metas = {name: (t.dtype, tuple(t.shape)) for name, t in state_dict.items()}
    decided = plan(metas, group_tied(state_dict), sparsity, bits, include=include, exclude=exclude, index_bits=index_bits, min_size=min_size)
    records: dict[str, CodebookTensor | RawTensor] = {}
    rows = []
    for first, names in decided.groups.items():
        if progress is not None:
            progress(first)
        record = compress_planned(state_dict[first], decided.chosen.get(first), init)
        if isinstance(record, CodebookTensor):
            rows.append(decided.row(first, metas[first][1], record.kept, len(record.codebook)))
        else:
            rows.append(decided.row(first, metas[first][1]))
        for name in names:
            records[name] = record
    return CompressedModel({name: records[name] for name in state_dict}, summary=decided.summary(rows))


def compress_planned(tensor: torch.Tensor, setting: dict | None, init: str = "linear") -> CodebookTensor | RawTensor:
    """One tensor as its plan says: compressed with `setting`, or raw where it has none.

    A setting with a "step" (from a size budget, `deepzip.budget`) quantizes the tensor
    uniformly with that step, every weight kept; otherwise it is pruned and clustered.
    """
    if setting is None:
        return RawTensor(tensor.detach().contiguous())
    if setting.get("step") is not None:
        return quantize_uniform(tensor, setting["step"], setting.get("scale"), setting.get("scale_axis"), setting.get("hessian"))
    return compress_tensor(tensor, setting["sparsity"], setting["bits"], init, index_bits=setting["index_bits"])


def divide_slices(tensor: torch.Tensor, scale: np.ndarray, axis: int) -> torch.Tensor:
    """`tensor` as float32 with slice j along `axis` divided by scale[j]: what a scaled quantizer sees."""
    view = [1] * tensor.dim()
    view[axis] = -1
    return tensor.float() / torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32)).view(view)


def quantize_uniform(
    weight: torch.Tensor,
    step: float,
    scale: np.ndarray | None = None,
    scale_axis: int | None = None,
    hessian: torch.Tensor | None = None,
) -> CodebookTensor:
    """`weight` quantized on a uniform grid of `step` (`deepzip.train.uniform`), every weight kept (dense).

    With `scale` (float32 [shape[scale_axis]]), slice j along `scale_axis` is divided by
    scale[j] before quantization and the record keeps the scales: slice j's effective step
    is step * scale[j]. With `hessian` (the [in, in] second moment of a Linear's inputs,
    from calibration) a 2-D weight's levels are chosen by error compensation
    (`deepzip.train.gptq`) and decode to their grid points; without, each weight goes to its
    nearest level and levels decode to their centroids.
    """
    if weight.dtype not in FLOAT_DTYPES:
        raise ConfigError(f"only floating tensors can be quantized, got {weight.dtype}")
    dtype, weight = weight.dtype, weight.detach().cpu()
    if scale is not None:
        scale = np.ascontiguousarray(scale, dtype=np.float32)
    if hessian is not None:
        levels = compensated_levels(weight, grid_of(tuple(weight.shape), step, scale, scale_axis), hessian)
        codebook, codes = grid_quantize(levels.numpy(), step)
        return CodebookTensor(tuple(weight.shape), dtype, codebook, None, codes, None, scale, scale_axis)
    if scale is not None:
        weight = divide_slices(weight, scale, scale_axis)
    flat = weight.reshape(-1)
    values = flat.numpy() if flat.dtype in (torch.float32, torch.float64) else flat.float().numpy()
    codebook, codes = uniform_quantize(values, step)
    return CodebookTensor(tuple(weight.shape), dtype, codebook, None, codes, None, scale, scale_axis)


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
