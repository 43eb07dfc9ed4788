"""What the peer benchmark measures: a Target (one pretrained model) and a Point (one setting).

A Target knows its original state dict, how to build a module from any state dict with the
same keys, how to score a module against the fp32 original, and what to hand deepzip's CLI.
Each tool turns the Target into Points: bytes on disk (or analytic bytes), the ratio to the
fp32 bytes, the fidelity metrics and the seconds each stage took.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class Metric:
    """A fidelity measure: its key in Point.metrics, a table heading, and its print format."""

    key: str
    heading: str
    fmt: str  # str.format spec, e.g. ".5f"
    higher_is_better: bool = True


@dataclass
class Threshold:
    """A summary criterion: the best ratio among points whose `metric` is >= `at_least`."""

    metric: str
    at_least: float
    label: str


@dataclass
class Target:
    """One pretrained model under test."""

    name: str
    title: str
    state_dict: dict[str, torch.Tensor]  # as the model's file holds it
    build: Callable[[dict[str, torch.Tensor]], nn.Module]  # eval-mode module from a state dict
    evaluate: Callable[[nn.Module], dict[str, float]]  # metrics against the fp32 original
    metrics: list[Metric]
    thresholds: list[Threshold]
    deepzip_input: Path  # the file or directory given to `deepzip compress`
    placeholders: dict[str, str] = field(default_factory=dict)  # {name: path} for --deepzip arguments
    notes: list[str] = field(default_factory=list)  # measured facts printed under the table

    @property
    def fp32_bytes(self) -> int:
        """4 bytes for every element of every tensor of the original state dict."""
        return 4 * sum(t.numel() for t in self.state_dict.values())


@dataclass
class Point:
    """One measured (tool, settings) result. `error` is set instead of the figures on failure."""

    model: str
    tool: str
    settings: str
    bytes: int | None = None
    analytic: bool = False  # bytes computed from a formula, not a file on disk
    ratio: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # compress / decode / eval
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


def raw_bytes(tensor: torch.Tensor) -> int:
    """Bytes to store a tensor as it is (numel x element size)."""
    return tensor.numel() * tensor.element_size()
