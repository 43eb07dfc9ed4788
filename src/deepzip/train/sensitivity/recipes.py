"""From sensitivity tables to a recipe: per layer, the most compression within a tolerance."""

from __future__ import annotations

import math
import numbers

import yaml

from deepzip.errors import ConfigError
from deepzip.train.recipe import LayerRule, Recipe
from deepzip.train.sensitivity.table import SensitivityTable, _setting


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
