"""Which tensors of a model one step touches, with which value, and a summary row for each.

`prune_`, `quantize_` and the sensitivity scans pick their targets here: the registry says
what is compressible, the pattern resolver what the settings reach.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from deepzip.summary import Row, Summary
from deepzip.train import patterns
from deepzip.train.registry import DEFAULT_MIN_SIZE, Target, plan

T = TypeVar("T")


@dataclass(frozen=True)
class Selection:
    """The targets a setting reaches (`chosen`, with their values) and what it leaves (`reasons`)."""

    targets: dict[str, Target]
    chosen: dict[str, object]
    reasons: dict[str, str]  # target name or plain key -> why it is left raw or untouched
    shapes: dict[str, tuple[int, ...]]  # plain key -> shape, for the tensors that are not targets

    def summary(self, step: str, describe: Callable[[Target, object], str], values: Mapping[str, float | int]) -> Summary:
        """A Summary whose compressed rows `describe(target, value)` and whose other rows give the reason."""
        rows = []
        for name, target in self.targets.items():
            shape = tuple(target.value().shape)
            label = " = ".join(target.keys)
            if name in self.chosen:
                rows.append(Row(label, shape, True, describe(target, self.chosen[name])))
            else:
                rows.append(Row(label, shape, False, self.reasons[name]))
        for key, reason in self.reasons.items():
            if key not in self.targets:
                rows.append(Row(key, self.shapes[key], False, reason))
        return Summary(step, tuple(rows), dict(values))


def select(
    model: nn.Module,
    setting: T | Mapping[str, T] | None,
    what: str,
    layers: Sequence[str] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Selection:
    """Resolve `setting` over `model`'s compressible tensors (restricted to `layers` patterns).

    A pattern that matches nothing is a ConfigError; so is a `layers` pattern.
    """
    targets, raw = plan(model, min_size)
    names = {name: target.names for name, target in targets.items()}
    allowed = patterns.select(names, None if layers is None else list(layers), "layers")
    chosen = patterns.resolve(allowed, setting, what)
    reasons: dict[str, str] = {}
    for name in targets:
        if name not in allowed:
            reasons[name] = "not in layers="
        elif name not in chosen:
            reasons[name] = f"no {what} pattern matches"
    reasons.update({key: reason for key, (reason, _) in raw.items()})
    return Selection(targets, chosen, reasons, {key: shape for key, (_, shape) in raw.items()})


def kept_fraction(mask: torch.Tensor) -> float:
    """Fraction of True entries of a bool mask."""
    return float(mask.float().mean()) if mask.numel() else 1.0
