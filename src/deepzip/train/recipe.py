"""Compression recipes: per-layer settings by name pattern, read from YAML and validated.

A recipe file looks like this (patterns are fnmatch-style layer names; first match wins):

    layers:
      features.0:   {sparsity: 0.42, bits: 8}
      classifier.*: {sparsity: 0.96, bits: 5, index_bits: 5}

Each rule may set `sparsity` (fraction of weights set to zero) or `quality` (prune below
quality x std of the layer's weights), `bits` (codebook of 2**bits shared weights) and
`index_bits` (relative-index width; omitted = the width that makes the file smallest).
Shipped recipes: `deepzip.recipe.SHIPPED` (lenet-300-100, lenet-5, alexnet, vgg16).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from deepzip.errors import ConfigError
from deepzip.limits import MAX_BITS, MAX_INDEX_BITS

SHIPPED = ("lenet-300-100", "lenet-5", "alexnet", "vgg16")


@dataclass(frozen=True)
class LayerRule:
    """The settings for the layers one pattern matches; None = not set by this rule."""

    sparsity: float | None = None
    quality: float | None = None
    bits: int | None = None
    index_bits: int | None = None


@dataclass(frozen=True)
class Recipe:
    """An ordered {layer name pattern: LayerRule} mapping."""

    rules: dict[str, LayerRule] = field(default_factory=dict)

    def setting(self, name: str) -> dict[str, float | int]:
        """{pattern: value} of one setting ('sparsity', 'quality', 'bits', 'index_bits') where set."""
        return {p: getattr(r, name) for p, r in self.rules.items() if getattr(r, name) is not None}


def parse_recipe(text: str, source: str = "recipe") -> Recipe:
    """Parse and validate recipe YAML; every problem is one ConfigError naming its place."""
    try:
        document = yaml.safe_load(text)  # safe_load builds plain data only, never objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    if not isinstance(document, dict) or set(document) - {"layers", "description"} or "layers" not in document:
        raise ConfigError(f"{source}: expected a mapping with a 'layers' key (and optionally 'description')")
    layers = document["layers"]
    if not isinstance(layers, dict) or not layers:
        raise ConfigError(f"{source}: 'layers' must map layer name patterns to settings")
    known = {f.name for f in fields(LayerRule)}
    rules = {}
    for pattern, settings in layers.items():
        where = f"{source}: layers.{pattern}"
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: expected a mapping of settings, got {settings!r}")
        unknown = set(settings) - known
        if unknown:
            raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
        rules[str(pattern)] = _validated(LayerRule(**settings), where)
    return Recipe(rules)


def _validated(rule: LayerRule, where: str) -> LayerRule:
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if rule.sparsity is not None and not (number(rule.sparsity) and 0 <= rule.sparsity <= 1):
        raise ConfigError(f"{where}.sparsity: must be a number in [0, 1], got {rule.sparsity!r}")
    if rule.quality is not None and not (number(rule.quality) and rule.quality >= 0):
        raise ConfigError(f"{where}.quality: must be a number >= 0, got {rule.quality!r}")
    if rule.sparsity is not None and rule.quality is not None:
        raise ConfigError(f"{where}: give sparsity or quality, not both")
    for name, top in (("bits", MAX_BITS), ("index_bits", MAX_INDEX_BITS)):
        value = getattr(rule, name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= top):
            raise ConfigError(f"{where}.{name}: must be an integer in 1..{top}, got {value!r}")
    return rule


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name (see SHIPPED) or a recipe YAML file by path."""
    if str(name_or_path) in SHIPPED:
        text = resources.files("deepzip.recipes").joinpath(f"{name_or_path}.yaml").read_text()
        return parse_recipe(text, f"recipe {name_or_path}")
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"recipe {name_or_path}: no such file, and not a shipped recipe ({', '.join(SHIPPED)})")
    return parse_recipe(path.read_text(), str(path))
