"""A module's tensors as a user sees them: plain keys, parametrized ones computed, ties grouped.

`model.state_dict()` spells a parametrized weight as `fc1.parametrizations.weight.original`
(plus whatever the parametrizations store), which no other model has. The training side
exports, and the runtime loads, under the plain keys instead (`fc1.weight`), the key any
unparametrized copy of the model uses. Both sides walk a model through this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass(frozen=True)
class Site:
    """One place a tensor lives: `module.<tensor_name>`, reached as state-dict `key`."""

    key: str
    module_name: str
    module: nn.Module
    tensor_name: str
    is_buffer: bool

    @property
    def parametrized(self) -> bool:
        """Whether `module.<tensor_name>` is computed by parametrizations."""
        return parametrize.is_parametrized(self.module, self.tensor_name)

    def value(self) -> torch.Tensor:
        """The tensor as the module's forward sees it (computed if parametrized)."""
        return getattr(self.module, self.tensor_name)

    def identity(self) -> int:
        """id() of the stored object behind the site; equal for tied sites.

        A parametrized tensor is stored as its parametrization list's `original` (the very
        Parameter the module held before), so tied sites stay equal after parametrizing.
        """
        if self.parametrized:
            plist = self.module.parametrizations[self.tensor_name]
            return id(plist.original) if plist.is_tensor else id(plist)
        store = self.module._buffers if self.is_buffer else self.module._parameters
        return id(store[self.tensor_name])


def sites(model: nn.Module) -> Iterator[Site]:
    """Every parameter and persistent buffer of `model`, in state-dict order, under plain keys.

    A module reachable under several names yields its tensors under each of them, as
    `state_dict()` does; the internals of parametrizations (original, masks...) are not
    sites of their own.
    """
    yield from _walk(model, "")


def _walk(module: nn.Module, prefix: str) -> Iterator[Site]:
    module_name = prefix[:-1]
    # A list, not a set: the order of the tensors decides which name a tied group goes by.
    parametrized = list(module.parametrizations) if parametrize.is_parametrized(module) else []
    for name, param in module._parameters.items():
        if param is not None and name not in parametrized:
            yield Site(prefix + name, module_name, module, name, False)
    for name in parametrized:
        plist = module.parametrizations[name]
        is_buffer = plist.is_tensor and not isinstance(plist.original, nn.Parameter)
        yield Site(prefix + name, module_name, module, name, is_buffer)
    non_persistent = getattr(module, "_non_persistent_buffers_set", set())
    for name, buffer in module._buffers.items():
        if buffer is not None and name not in non_persistent and name not in parametrized:
            yield Site(prefix + name, module_name, module, name, True)
    for child_name, child in module._modules.items():
        if child is not None and not (child_name == "parametrizations" and parametrized):
            yield from _walk(child, f"{prefix}{child_name}.")


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{plain key: tensor as computed}; tied keys map to one tensor object."""
    computed: dict[int, torch.Tensor] = {}
    state = {}
    for site in sites(model):
        identity = site.identity()
        if identity not in computed:
            computed[identity] = site.value()
        state[site.key] = computed[identity]
    return state
