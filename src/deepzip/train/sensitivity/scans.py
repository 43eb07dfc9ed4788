"""Sensitivity scans: how much a metric drops when ONE layer is pruned or quantized, no retraining.

Han et al. choose each layer's pruning threshold from such a scan (NIPS 2015, Figure 5):
prune one layer at a time to growing sparsities, evaluate, and see where accuracy starts
to fall; first conv layers are the most sensitive, fully connected layers tolerate 90%+.
`prune_sensitivity` and `quantize_sensitivity` run these scans against a user-supplied
`evaluate(model) -> float`; `recipe_from_sensitivity` turns the tables into a recipe
(per-layer sparsity and bits) that `deepzip.recipe.parse_recipe` reads back.

The model is modified only temporarily and restored bit for bit after every evaluation,
even when `evaluate` raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from deepzip.errors import ConfigError
from deepzip.train.masks import sparsity_mask
from deepzip.train.parametrizations import Masked, SharedWeights, transform_of
from deepzip.train.registry import DEFAULT_MIN_SIZE, Target
from deepzip.train.selection import select
from deepzip.train.sensitivity.table import (
    DEFAULT_BITS,
    DEFAULT_SPARSITIES,
    Evaluate,
    Progress,
    SensitivityTable,
    _grid,
)
from deepzip.train.sharing import share_weights


def prune_sensitivity(
    model: nn.Module,
    evaluate: Evaluate,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: list[str] | None = None,
    progress: Progress | None = None,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
) -> SensitivityTable:
    """Prune each compressible layer alone by magnitude to each sparsity and evaluate the model.

    `evaluate(model) -> float` is the caller's metric, higher is better (test accuracy,
    minus a loss...); it runs once with nothing pruned (the baseline), then once per layer
    and sparsity with only that layer pruned, without retraining. Sparsity follows
    `deepzip.train.masks.sparsity_mask`: the fraction of the layer's whole tensor that is zero;
    weights a layer has already lost stay pruned, so settings below its current sparsity
    measure the layer as it is. `layers` (fnmatch patterns) restricts the scan, and
    tensors with fewer than `min_size` entries are not scanned, as `prune_` leaves them.
    `progress`, if given, is called with one line of text after every evaluation
    (1 + layers x settings calls in all), e.g. to advance a progress bar.

    Works on plain, pruned and quantized models; the model is restored bit for bit after
    each evaluation, also if `evaluate` raises.
    """
    grid = _grid("sparsity", sparsities)
    found = _layers(model, layers, min_size)
    targets = {name: _prune_target(target) for name, target in found.items()}  # validate all first

    def variants(name: str):
        target, current_mask = targets[name]
        weight = found[name].value().detach()
        for sparsity in grid:
            keep = sparsity_mask(weight, sparsity, current_mask)
            if target is current_mask:
                # A quantized layer: its weight is rebuilt from codes, so shrink the mask instead.
                yield sparsity, f"sparsity {sparsity:g}", target, keep
            else:
                zero = torch.zeros((), dtype=target.dtype, device=target.device)
                yield sparsity, f"sparsity {sparsity:g}", target, torch.where(keep, target, zero)

    return _scan("sparsity", model, evaluate, list(found), variants, progress, "baseline (nothing pruned)")


def quantize_sensitivity(
    model: nn.Module,
    evaluate: Evaluate,
    bits: Sequence[int] = DEFAULT_BITS,
    layers: list[str] | None = None,
    progress: Progress | None = None,
    *,
    init: str = "linear",
    seed: int = 0,
    min_size: int = DEFAULT_MIN_SIZE,
) -> SensitivityTable:
    """Share the weights of each compressible layer alone at each bit width and evaluate.

    Like `prune_sensitivity`, with weight sharing instead of pruning: the layer's weights
    are clustered with `deepzip.train.sharing.share_weights` (k-means, 2**bits centroids, `init`
    and `seed` as in `quantize_`) and replaced by their centroids, no fine-tuning. The
    weights that are exactly zero count as pruned and are neither clustered nor changed:
    the pruning mask for a pruned model, no weight at all for a trained dense one. Scan
    after pruning to measure the combination the file will hold. A layer that is already
    quantized is a ConfigError (its codebook cannot be swapped for one of another size).
    """
    grid = _grid("bits", bits)
    found = _layers(model, layers, min_size)
    targets = {name: _quantize_target(target) for name, target in found.items()}  # validate all first

    def variants(name: str):
        target, alive = targets[name]
        weight = found[name].value().detach()
        zero = torch.zeros((), dtype=target.dtype, device=target.device)
        for b in grid:
            centroids, codes = share_weights(weight, alive, b, init, seed)
            shared = centroids[codes.long()].to(dtype=target.dtype)
            yield b, f"{b} bits", target, torch.where(alive, shared, zero)

    return _scan("bits", model, evaluate, list(found), variants, progress, "baseline (nothing quantized)")


def _scan(kind, model, evaluate, names, variants, progress, baseline_label) -> SensitivityTable:
    """Evaluate the baseline, then every (setting, replacement) that `variants(layer)` yields,
    each with only that one tensor replaced, restoring it after each evaluation."""
    baseline = _evaluate(evaluate, model, progress, baseline_label)
    curves = {}
    for name in names:
        pairs = []
        for setting, label, target, replacement in variants(name):
            with _replaced(target, replacement):
                pairs.append((setting, _evaluate(evaluate, model, progress, f"{name} {label}")))
        curves[name] = tuple(pairs)
    return SensitivityTable(kind, baseline, curves)


def _layers(model: nn.Module, layers: list[str] | None, min_size: int) -> dict[str, Target]:
    selection = select(model, True, "layers", layers, min_size)
    if not selection.chosen:
        raise ConfigError("the model has no compressible layer to scan")
    return {name: selection.targets[name] for name in selection.chosen}


def _prune_target(target: Target) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the stored tensor to overwrite, the layer's current mask or None).

    Plain layer: the weight itself. Pruned layer: the parametrization's `original` (the
    mask keeps hiding what it hid). Quantized layer: the mask buffer itself, since the
    weight is rebuilt from codes and zeroing `original` would change nothing.
    """
    module, tensor_name = target.sites[0].module, target.sites[0].tensor_name
    transform = _known_transform(target)
    if transform is None:
        return getattr(module, tensor_name), None
    if isinstance(transform, SharedWeights):
        return transform.mask, transform.mask
    assert isinstance(transform, Masked)
    return module.parametrizations[tensor_name].original, transform.mask


def _quantize_target(target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """(the stored tensor to overwrite, the bool mask of weights to cluster)."""
    module, tensor_name = target.sites[0].module, target.sites[0].tensor_name
    transform = _known_transform(target)
    if isinstance(transform, SharedWeights):
        raise ConfigError(f"{target.name} is already quantized: scan bits on the pruned model, before quantize_")
    if transform is None:
        weight = getattr(module, tensor_name)
        return weight, weight.detach() != 0
    return module.parametrizations[tensor_name].original, transform.mask.clone()


def _known_transform(target: Target) -> nn.Module | None:
    """deepzip's transform of `target`, or None; ConfigError when another parametrization computes it.

    The scans overwrite the stored tensor in place, which only deepzip's own transforms
    (and no parametrization at all) make the same as changing the weight.
    """
    site = target.sites[0]
    transform = transform_of(site.module, site.tensor_name)
    plist = site.module.parametrizations[site.tensor_name] if site.parametrized else ()
    if len(plist) > (transform is not None):
        raise ConfigError(f"{target.name}: its weight has a parametrization deepzip does not know; remove it first")
    return transform


@contextmanager
def _replaced(target: torch.Tensor, value: torch.Tensor) -> Iterator[None]:
    """Overwrite `target` in place with `value` for the duration of the block, then restore it.

    In place, so that every reference to the tensor (optimizers, hooks, tied weights) sees
    the change and the restore; copy_ of the saved clone restores the exact bits.
    """
    saved = target.detach().clone()
    with torch.no_grad():
        target.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            target.copy_(saved)


def _evaluate(evaluate: Evaluate, model: nn.Module, progress: Progress | None, what: str) -> float:
    result = evaluate(model)
    try:
        metric = float(result)
    except (TypeError, ValueError):
        raise ConfigError(f"evaluate(model) must return a number, got {type(result).__name__}") from None
    if progress is not None:
        progress(f"{what}: {metric:.6g}")
    return metric
