"""Which weights deepzip compresses, and how per-layer settings are picked by name pattern."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from typing import TypeVar

from torch import nn
from torch.nn.utils import parametrize

from deepzip.errors import ConfigError

# The registry of compressible layer types: each stores a dense `weight` whose entries are
# independent connections, so pruning and weight sharing apply entry by entry.
COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Embedding,
)
# Left out on purpose (their tensors are stored raw):
# - biases and normalization layers (BatchNorm, LayerNorm): few values, each one matters;
# - nn.MultiheadAttention: its in_proj_weight is used through F.multi_head_attention_forward,
#   which bypasses parametrizations on some code paths.

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

T = TypeVar("T")


def layer_type(module: nn.Module) -> type[nn.Module]:
    """The class of `module` as it was before deepzip (or anyone) parametrized it."""
    return parametrize.type_before_parametrizations(module)


def is_conv(module: nn.Module) -> bool:
    """True for convolution layers, which the paper gives wider codes (8 bits) than fc layers."""
    return issubclass(layer_type(module), _CONV_TYPES)


def compressible_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield (name, module) for every layer whose weight deepzip can prune and quantize."""
    for name, module in model.named_modules():
        if issubclass(layer_type(module), COMPRESSIBLE_TYPES):
            yield name, module


def per_layer(
    model: nn.Module, setting: T | Mapping[str, T] | None, what: str, layers: list[str] | None = None
) -> dict[str, T]:
    """Resolve a setting to {layer name: value} over the compressible layers of `model`.

    `setting` is one value for every selected layer, or a mapping from fnmatch-style name
    patterns (``"fc*"``, ``"features.0"``) to values; a layer takes the value of the first
    pattern that matches it and is left alone if none does. `layers`, if given, restricts
    the selection to layers matching one of its patterns. A pattern that matches no
    compressible layer is an error: it is almost always a typo.
    """
    names = [name for name, _ in compressible_layers(model)]
    if layers is not None:
        _check_patterns(layers, names, "layers")
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in layers)]
    if setting is None:
        return {}
    if not isinstance(setting, Mapping):
        return {name: setting for name in names}
    _check_patterns(list(setting), names, what)
    resolved = {}
    for name in names:
        for pattern, value in setting.items():
            if fnmatch.fnmatchcase(name, pattern):
                resolved[name] = value
                break
    return resolved


def _check_patterns(patterns: list[str], names: list[str], what: str) -> None:
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            known = ", ".join(names) or "none"
            raise ConfigError(f"{what}: pattern {pattern!r} matches no compressible layer (layers: {known})")
