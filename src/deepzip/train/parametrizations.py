"""The two weight parametrizations deepzip trains through: a pruning mask and shared weights.

`torch.nn.utils.parametrize` makes `module.weight` a function of stored tensors, so the
forward pass, the gradient and the state dict all see the compressed weight:

- `Masked`: weight = original where mask, else exactly 0. The gradient of a pruned entry is
  0, and whatever an optimizer does to `original` there (momentum, weight decay) never
  reaches the weight, so a pruned connection cannot come back.
- `SharedWeights`: weight = centroids[codes] where mask, else 0. The codes (cluster
  assignments) are fixed buffers; the only trainable tensor is `centroids`, whose gradient
  autograd computes as the sum of the gradients of the weights that share it: exactly the
  paper's rule dL/dC_k = sum_ij dL/dW_ij [I_ij == k].
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip.errors import ConfigError


class Masked(nn.Module):
    """Parametrization that zeroes the pruned entries of a weight (mask is a bool buffer)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return `weight` with pruned entries replaced by exact zeros."""
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


class _CodebookLookup(torch.autograd.Function):
    """centroids[codes] whose backward is one bincount: dL/dC_k = sum of dL/dW over code k.

    Autograd's own backward of indexing (index_put_ with accumulate) computes the same sum
    but serializes on the few centroids: 7x slower per training step on LeNet-300-100.
    """

    @staticmethod
    def forward(ctx, centroids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(codes)
        ctx.k = centroids.numel()
        return centroids[codes]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (codes,) = ctx.saved_tensors
        summed = torch.bincount(codes.flatten(), weights=grad.flatten().double(), minlength=ctx.k)
        return summed.to(grad.dtype), None


class SharedWeights(nn.Module):
    """Parametrization that rebuilds a weight from a trainable codebook and fixed codes."""

    def __init__(self, centroids: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.to(torch.float32))
        # int16 holds any codebook index (k <= 2**15 here) at a quarter of int64's memory;
        # forward widens it, because torch treats uint8 index tensors as boolean masks.
        self.register_buffer("codes", codes.to(torch.int16))
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return centroids[codes] in the weight's dtype, zero where pruned (`weight` is unused)."""
        shared = _CodebookLookup.apply(self.centroids, self.codes.long()).to(weight.dtype)
        return torch.where(self.mask, shared, torch.zeros((), dtype=weight.dtype, device=weight.device))


def current_transform(module: nn.Module) -> nn.Module | None:
    """The deepzip parametrization on `module.weight`, or None if it has none."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    transforms = [t for t in module.parametrizations.weight if isinstance(t, (Masked, SharedWeights))]
    return transforms[-1] if transforms else None


def current_mask(module: nn.Module) -> torch.Tensor | None:
    """The bool mask of surviving weights of `module`, or None if it was never pruned."""
    transform = current_transform(module)
    return None if transform is None else transform.mask


def set_transform(module: nn.Module, transform: nn.Module) -> None:
    """Make `transform` the only parametrization of `module.weight`.

    The stored original is first overwritten with the current effective weight, so that
    removing the parametrization later (`strip_`) leaves the compressed values in place.
    """
    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    parametrize.register_parametrization(module, "weight", transform, unsafe=True)
    original = module.parametrizations.weight.original
    with torch.no_grad():
        original.copy_(transform(original))
    # Under weight sharing only the centroids train; a frozen original keeps optimizers
    # from spending memory on it (SGD/Adam skip parameters whose grad stays None).
    original.requires_grad_(not isinstance(transform, SharedWeights))


def strip_(model: nn.Module) -> None:
    """Remove deepzip's parametrizations, leaving plain weights with the compressed values."""
    for module in model.modules():
        if current_transform(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(True)


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict saved from a pruned or quantized model into a fresh `model`.

    The parametrizations (masks, codes, centroids) are recreated from the state dict's keys
    first, so masks survive a `torch.save(model.state_dict())` / load cycle.
    """
    suffix = ".parametrizations.weight."
    modules = dict(model.named_modules())
    for key in state_dict:
        if not key.endswith(suffix + "original"):
            continue
        name = key[: -len(suffix + "original")]
        if name not in modules:
            raise ConfigError(f"state dict has a compressed weight for {name!r}, which the model lacks")
        prefix = name + suffix + "0."
        mask = state_dict.get(prefix + "mask")
        if mask is None:
            raise ConfigError(f"state dict entry {key!r} has no mask beside it")
        module = modules[name]
        if prefix + "centroids" in state_dict:
            transform = SharedWeights(state_dict[prefix + "centroids"], state_dict[prefix + "codes"], mask)
        else:
            transform = Masked(mask)
        if transform.mask.shape != module.weight.shape:
            raise ConfigError(f"{name}: mask shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
        set_transform(module, transform)
    model.load_state_dict(state_dict)
