"""A sensitivity scan's result: the metric per layer and setting, with JSON and Markdown forms."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from deepzip.errors import ConfigError
from deepzip.limits import MAX_BITS

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
