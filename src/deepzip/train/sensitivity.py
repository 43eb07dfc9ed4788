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

import json
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import yaml
from torch import nn
from torch.nn.utils import parametrize

from deepzip.errors import ConfigError
from deepzip.train.parametrizations import Masked, SharedWeights, current_transform
from deepzip.train.prune import sparsity_mask
from deepzip.limits import MAX_BITS
from deepzip.train.quantize import share_weights
from deepzip.train.recipe import LayerRule, Recipe
from deepzip.train.registry import per_layer

KINDS = ("sparsity", "bits")
DEFAULT_SPARSITIES = (0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
DEFAULT_BITS = (2, 3, 4, 5, 6, 8)

Evaluate = Callable[[nn.Module], float]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SensitivityTable:
    """The result of one scan: `baseline` metric and, per layer, (setting, metric) pairs.

    `kind` is "sparsity" (setting = fraction of the layer's weights pruned) or "bits"
    (setting = bits per shared weight, a codebook of 2**bits values). `curves` maps each
    layer name to its pairs in ascending order of setting. The metric is the caller's:
    higher is better, and loss = baseline - metric, in the metric's own units.
    """

    kind: str
    baseline: float
    curves: Mapping[str, tuple[tuple[float, float], ...]]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"sensitivity table kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        curves = {}
        for name, pairs in self.curves.items():
            normalized = tuple((_setting(self.kind, s), _metric(m, f"layer {name!r}")) for s, m in _pairs(pairs, name))
            settings = [s for s, _ in normalized]
            if settings != sorted(set(settings)):
                raise ConfigError(f"sensitivity table, layer {name!r}: settings must be distinct and ascending")
            curves[str(name)] = normalized
        # Frozen: normalize through object.__setattr__, once, here.
        object.__setattr__(self, "baseline", _metric(self.baseline, "baseline"))
        object.__setattr__(self, "curves", curves)

    @property
    def settings(self) -> list[float]:
        """Every setting that appears in some layer's curve, ascending."""
        return sorted({s for pairs in self.curves.values() for s, _ in pairs})

    def to_markdown(self, digits: int = 4) -> str:
        """A Markdown table: one row per layer, one column per setting, metric values in cells."""
        settings = self.settings
        what = "sparsity" if self.kind == "sparsity" else "bits"
        head = [f"layer \\ {what}", *(_format_setting(self.kind, s) for s in settings)]
        lines = [
            f"Baseline metric (nothing changed): {self.baseline:.{digits}g}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * len(settings)) + "|",
        ]
        for name, pairs in self.curves.items():
            metric = dict(pairs)
            cells = [f"{metric[s]:.{digits}g}" if s in metric else "" for s in settings]
            lines.append("| " + " | ".join([f"`{name}`", *cells]) + " |")
        return "\n".join(lines)

    def to_json(self) -> str:
        """JSON text: {"kind", "baseline", "layers": {name: [[setting, metric], ...]}}."""
        layers = {name: [list(pair) for pair in pairs] for name, pairs in self.curves.items()}
        return json.dumps({"kind": self.kind, "baseline": self.baseline, "layers": layers}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SensitivityTable:
        """Parse `to_json` output; ConfigError if it is not a sensitivity table."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"sensitivity table: not valid JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(document, dict) or set(document) != {"kind", "baseline", "layers"}:
            raise ConfigError("sensitivity table: expected a JSON object with keys kind, baseline, layers")
        if not isinstance(document["layers"], dict):
            raise ConfigError("sensitivity table: 'layers' must map layer names to [setting, metric] pairs")
        return cls(document["kind"], _metric(document["baseline"], "baseline"), document["layers"])


def _pairs(pairs, name: str) -> list[tuple]:
    """`pairs` as a list of 2-tuples; ConfigError naming the layer otherwise."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise ConfigError(f"sensitivity table, layer {name!r}: expected a list of (setting, metric) pairs")
    result = [tuple(p) if isinstance(p, (list, tuple)) else p for p in pairs]
    if not all(isinstance(p, tuple) and len(p) == 2 for p in result):
        raise ConfigError(f"sensitivity table, layer {name!r}: expected a list of (setting, metric) pairs")
    return result


def _metric(value, where: str) -> float:
    """A metric value as float (NaN allowed: a diverged evaluation is a result too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"sensitivity table, {where}: metric must be a number, got {value!r}")
    return float(value)


def _setting(kind: str, value) -> float | int:
    """A grid value checked for its kind: a sparsity in [0, 1] or integer bits in 1..MAX_BITS."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{kind} values must be numbers, got {value!r}")
    if kind == "sparsity":
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ConfigError(f"sparsity must be in [0, 1], got {value}")
        return float(value)
    if not math.isfinite(value) or value != int(value) or not 1 <= value <= MAX_BITS:
        raise ConfigError(f"bits must be an integer in 1..{MAX_BITS}, got {value}")
    return int(value)


def _format_setting(kind: str, value: float | int) -> str:
    return f"{value:g}" if kind == "sparsity" else str(value)


def _grid(kind: str, values: Iterable) -> list[float | int]:
    values = list(values)
    if not values:
        raise ConfigError(f"the {kind} grid is empty: give at least one value")
    return sorted({_setting(kind, v) for v in values})


# ---------------------------------------------------------------- scans


def prune_sensitivity(
    model: nn.Module,
    evaluate: Evaluate,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: list[str] | None = None,
    progress: Progress | None = None,
) -> SensitivityTable:
    """Prune each compressible layer alone by magnitude to each sparsity and evaluate the model.

    `evaluate(model) -> float` is the caller's metric, higher is better (test accuracy,
    minus a loss...); it runs once with nothing pruned (the baseline), then once per layer
    and sparsity with only that layer pruned, without retraining. Sparsity follows
    `deepzip.prune.sparsity_mask`: the fraction of the layer's whole tensor that is zero;
    weights a layer has already lost stay pruned, so settings below its current sparsity
    measure the layer as it is. `layers` (fnmatch patterns) restricts the scan.
    `progress`, if given, is called with one line of text after every evaluation
    (1 + layers x settings calls in all), e.g. to advance a progress bar.

    Works on plain, pruned and quantized models; the model is restored bit for bit after
    each evaluation, also if `evaluate` raises.
    """
    grid = _grid("sparsity", sparsities)
    names = _layers(model, layers)
    modules = dict(model.named_modules())
    targets = {name: _prune_target(name, modules[name]) for name in names}  # validate all first

    def variants(name: str):
        target, current_mask = targets[name]
        # Masks are computed on the CPU (sparsity_mask builds CPU tensors), then moved.
        weight = modules[name].weight.detach().cpu()
        mask = None if current_mask is None else current_mask.cpu()
        for sparsity in grid:
            keep = sparsity_mask(weight, sparsity, mask).to(target.device)
            if target is current_mask:
                # A quantized layer: its weight is rebuilt from codes, so shrink the mask instead.
                yield sparsity, f"sparsity {sparsity:g}", target, keep
            else:
                zero = torch.zeros((), dtype=target.dtype, device=target.device)
                yield sparsity, f"sparsity {sparsity:g}", target, torch.where(keep, target, zero)

    return _scan("sparsity", model, evaluate, names, variants, progress, "baseline (nothing pruned)")


def quantize_sensitivity(
    model: nn.Module,
    evaluate: Evaluate,
    bits: Sequence[int] = DEFAULT_BITS,
    layers: list[str] | None = None,
    progress: Progress | None = None,
    *,
    init: str = "linear",
    seed: int = 0,
) -> SensitivityTable:
    """Share the weights of each compressible layer alone at each bit width and evaluate.

    Like `prune_sensitivity`, with weight sharing instead of pruning: the layer's weights
    are clustered with `deepzip.quantize.share_weights` (k-means, 2**bits centroids, `init`
    and `seed` as in `quantize_`) and replaced by their centroids, no fine-tuning. The
    weights that are exactly zero count as pruned and are neither clustered nor changed:
    the pruning mask for a pruned model, no weight at all for a trained dense one. Scan
    after pruning to measure the combination the file will hold. A layer that is already
    quantized is a ConfigError (its codebook cannot be swapped for one of another size).
    """
    grid = _grid("bits", bits)
    names = _layers(model, layers)
    modules = dict(model.named_modules())
    targets = {name: _quantize_target(name, modules[name]) for name in names}  # validate all first

    def variants(name: str):
        target, alive = targets[name]
        # k-means runs in numpy: cluster a CPU copy, move the result to the layer's device.
        weight, alive_cpu = modules[name].weight.detach().cpu(), alive.cpu()
        zero = torch.zeros((), dtype=target.dtype, device=target.device)
        for b in grid:
            centroids, codes = share_weights(weight, alive_cpu, b, init, seed)
            shared = centroids[codes.long()].to(device=target.device, dtype=target.dtype)
            yield b, f"{b} bits", target, torch.where(alive, shared, zero)

    return _scan("bits", model, evaluate, names, variants, progress, "baseline (nothing quantized)")


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


def _layers(model: nn.Module, layers: list[str] | None) -> list[str]:
    names = list(per_layer(model, True, "layers", layers))
    if not names:
        raise ConfigError("the model has no compressible layer to scan")
    return names


def _prune_target(name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the stored tensor to overwrite, the layer's current mask or None).

    Plain layer: the weight itself. Pruned layer: the parametrization's `original` (the
    mask keeps hiding what it hid). Quantized layer: the mask buffer itself, since the
    weight is rebuilt from codes and zeroing `original` would change nothing.
    """
    transform = current_transform(module)
    if transform is None:
        if parametrize.is_parametrized(module, "weight"):
            raise ConfigError(f"{name}: its weight has a parametrization deepzip does not know; remove it first")
        return module.weight, None
    if isinstance(transform, SharedWeights):
        return transform.mask, transform.mask
    assert isinstance(transform, Masked)
    return module.parametrizations.weight.original, transform.mask


def _quantize_target(name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(the stored tensor to overwrite, the bool mask of weights to cluster)."""
    transform = current_transform(module)
    if isinstance(transform, SharedWeights):
        raise ConfigError(f"{name} is already quantized: scan bits on the pruned model, before quantize_")
    if transform is None:
        if parametrize.is_parametrized(module, "weight"):
            raise ConfigError(f"{name}: its weight has a parametrization deepzip does not know; remove it first")
        return module.weight, module.weight.detach() != 0
    return module.parametrizations.weight.original, transform.mask.clone()


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


# ---------------------------------------------------------------- recipes


def recipe_from_sensitivity(
    prune_table: SensitivityTable,
    tolerance: float,
    quantize_table: SensitivityTable | None = None,
    default_bits: int | None = None,
) -> Recipe:
    """Per layer, the most compression whose metric loss stays within `tolerance`.

    `tolerance` is absolute, in the metric's units (0.005 = half a point of accuracy in
    [0, 1]); loss = baseline - metric, compared with `tolerance` up to float rounding
    (1e-9 relative to the baseline). Sparsity: the largest grid value reached before the
    first one whose loss exceeds `tolerance` (the curve is walked from the smallest
    sparsity up). A later value that happens to pass again is ignored: on a noisy metric
    such a pass is luck, and a one-shot curve that recovers says nothing good about
    retraining from there. If even the smallest sparsity fails, the layer gets sparsity 0
    (kept dense): pruning it at all already costs more than allowed.

    Bits, with `quantize_table`: the smallest width reached walking down from the largest
    before the first failure; if even the largest width fails, the layer gets that
    largest width (the most precise one measured; the table cannot justify more).
    Layers missing from `quantize_table`, or all layers without one, get `default_bits`
    (None = no bits in the recipe, so `quantize_` uses the paper's 8 conv / 5 fc).
    """
    if not isinstance(tolerance, numbers.Real) or isinstance(tolerance, bool) or not tolerance >= 0:
        raise ConfigError(f"tolerance must be a number >= 0, got {tolerance!r}")
    if not math.isfinite(tolerance):
        raise ConfigError(f"tolerance must be finite, got {tolerance}")
    if prune_table.kind != "sparsity":
        raise ConfigError(f"prune_table must be a sparsity scan, got a {prune_table.kind} scan")
    if quantize_table is not None and quantize_table.kind != "bits":
        raise ConfigError(f"quantize_table must be a bits scan, got a {quantize_table.kind} scan")
    if default_bits is not None:
        default_bits = _setting("bits", default_bits)
    curves_bits = quantize_table.curves if quantize_table is not None else {}
    names = list(prune_table.curves) + [n for n in curves_bits if n not in prune_table.curves]
    if not names:
        raise ConfigError("the sensitivity tables have no layers")
    rules = {}
    for name in names:
        sparsity = None
        if name in prune_table.curves:
            sparsity = _last_within(prune_table.curves[name], prune_table.baseline, tolerance, ascending=True)
            sparsity = 0.0 if sparsity is None else sparsity
        bits = default_bits
        if name in curves_bits and curves_bits[name]:
            bits = _last_within(curves_bits[name], quantize_table.baseline, tolerance, ascending=False)
            bits = max(s for s, _ in curves_bits[name]) if bits is None else bits
        rules[name] = LayerRule(sparsity=sparsity, bits=bits)
    return Recipe(rules)


def _last_within(pairs, baseline: float, tolerance: float, ascending: bool):
    """The last setting, walking in the given direction, before the first loss > tolerance."""
    # Slack for rounding: 0.90 - 0.85 is 0.05000000000000004 in floats, and a user who
    # allows a loss of 0.05 means to accept it.
    limit = tolerance + 1e-9 * max(1.0, abs(baseline))
    chosen = None
    for setting, metric in sorted(pairs, reverse=not ascending):
        if not baseline - metric <= limit:  # NaN metric counts as a failure
            break
        chosen = setting
    return chosen


def recipe_yaml(recipe: Recipe, comment: str | None = None) -> str:
    """The recipe as YAML in the shipped recipes' style, one flow mapping per layer.

    `deepzip.recipe.parse_recipe` reads it back to an equal Recipe. `comment`, if given,
    becomes leading `#` lines.
    """
    layers = {}
    for pattern, rule in recipe.rules.items():
        settings = {k: getattr(rule, k) for k in ("sparsity", "quality", "bits", "index_bits") if getattr(rule, k) is not None}
        layers[pattern] = settings
    # safe_dump quotes keys that YAML would read as numbers ('0' for nn.Sequential layers)
    # and writes floats with repr precision, so the text parses back to the same values.
    text = yaml.safe_dump({"layers": layers}, sort_keys=False, default_flow_style=None)
    if comment:
        text = "".join(f"# {line}\n" for line in comment.splitlines()) + text
    return text


__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_SPARSITIES",
    "SensitivityTable",
    "prune_sensitivity",
    "quantize_sensitivity",
    "recipe_from_sensitivity",
    "recipe_yaml",
]
