"""The registry of compressible weights: which tensors of which layer types deepzip compresses.

A registered weight's entries are independent connections (each multiplies one input by
one output), so pruning and weight sharing apply entry by entry. Every other tensor is
stored raw, and `plan` says why, so that nothing is skipped silently.

Registered, with the tensors compressed:
- nn.Linear and its subclasses (nn.MultiheadAttention's out_proj is one): `weight`;
- nn.Conv1d/2d/3d (grouped and depthwise too) and nn.ConvTranspose1d/2d/3d: `weight`;
- nn.Embedding, nn.EmbeddingBag: `weight`;
- transformers' Conv1D (GPT-2's projections; a Linear with a transposed weight): `weight`;
- nn.MultiheadAttention: `in_proj_weight`, or `q_proj_weight`, `k_proj_weight`,
  `v_proj_weight` when the key and value sizes differ;
- nn.RNN, nn.LSTM, nn.GRU: `weight_ih_l*`, `weight_hh_l*` (and LSTM's `weight_hr_l*`).

Left raw on purpose: biases and normalization parameters (1-D: few values, each one
matters), buffers (running statistics, position ids), and parameters of layer types not
listed here (a custom module may use a parameter in a way that entry-wise pruning breaks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip import module_state
from deepzip.train.patterns import Sites, site_names

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_WEIGHT_TYPES = (nn.Linear, *_CONV_TYPES, nn.Embedding, nn.EmbeddingBag)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# Tensors with fewer entries are stored raw: their codebook and code tables would cost
# about as much as the weights, and each weight matters more. The paper's smallest layers
# (LeNet-5 conv1, 500 weights; LeNet-300-100 fc3, 1000) stay above it.
DEFAULT_MIN_SIZE = 256

# Code widths. With retraining, the paper's: 8 bits for convolutions, 5 for the rest
# (fine-tuning the centroids recovers the loss). Without retraining, 5-bit codes on fully
# connected layers lose accuracy nothing wins back, so post-training compression uses 8
# everywhere unless told otherwise.
CONV_BITS = 8
FC_BITS = 5
POST_TRAINING_BITS = 8


def layer_type(module: nn.Module) -> type[nn.Module]:
    """The class of `module` as it was before deepzip (or anyone) parametrized it."""
    return parametrize.type_before_parametrizations(module)


def _is_transformers_conv1d(cls: type) -> bool:
    # Matched by name so that deepzip needs no transformers import (its class moved
    # between transformers.modeling_utils and transformers.pytorch_utils over versions).
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


def weight_names(module: nn.Module) -> tuple[str, ...]:
    """The names of `module`'s own compressible weights; () for a type not registered."""
    cls = layer_type(module)
    if issubclass(cls, _WEIGHT_TYPES) or _is_transformers_conv1d(cls):
        return ("weight",)
    if issubclass(cls, nn.MultiheadAttention):
        if getattr(module, "_qkv_same_embed_dim", True):
            return ("in_proj_weight",)
        return ("q_proj_weight", "k_proj_weight", "v_proj_weight")
    if issubclass(cls, nn.RNNBase):
        return tuple(name for name in module._flat_weights_names if name.startswith("weight_"))
    return ()


def is_conv(module: nn.Module) -> bool:
    """True for convolution layers, which the paper gives wider codes (8 bits) than fc layers."""
    return issubclass(layer_type(module), _CONV_TYPES)


def is_compressible(tensor: torch.Tensor, min_size: int = DEFAULT_MIN_SIZE) -> bool:
    """The rule for a tensor known only by its values (a checkpoint without its model).

    Floating, two or more dimensions and at least `min_size` entries: every registered
    weight is 2-D or more, and biases and norms are 1-D.
    """
    return raw_reason(tensor, min_size) is None


def raw_reason(tensor: torch.Tensor, min_size: int = DEFAULT_MIN_SIZE) -> str | None:
    """Why a tensor's values alone keep it raw, or None if they do not."""
    return raw_reason_for(tensor.dtype, tuple(tensor.shape), min_size)


def raw_reason_for(dtype: torch.dtype, shape: tuple[int, ...], min_size: int = DEFAULT_MIN_SIZE) -> str | None:
    """`raw_reason` from a tensor's dtype and shape alone (a checkpoint's header, say)."""
    numel = math.prod(shape)
    if dtype not in FLOAT_DTYPES:
        return f"not floating point ({str(dtype).removeprefix('torch.')})"
    if len(shape) < 2:
        return f"{len(shape)}-D"
    if numel < min_size:
        return f"too small ({numel} < {min_size} entries)"
    return None


@dataclass(frozen=True)
class Target:
    """One compressible tensor of a model, and every site (module, tensor name) holding it.

    `name` is how settings and summaries call it: its first key without `.weight` (`fc1`,
    `lstm.weight_ih_l0`). Tied sites are one tensor: one mask, one codebook.
    """

    name: str
    sites: tuple[module_state.Site, ...]
    conv: bool

    @property
    def keys(self) -> tuple[str, ...]:
        """The plain state-dict keys of every site."""
        return tuple(site.key for site in self.sites)

    @property
    def names(self) -> Sites:
        """Per site, the names a setting's pattern may match."""
        return [site_names(site.key, site.module_name) for site in self.sites]

    def value(self) -> torch.Tensor:
        """The tensor as the model computes it."""
        return self.sites[0].value()


def plan(
    model: nn.Module, min_size: int = DEFAULT_MIN_SIZE
) -> tuple[dict[str, Target], dict[str, tuple[str, tuple[int, ...]]]]:
    """({target name: Target} for every compressible tensor, {key: (why it stays raw, shape)} for the rest).

    Every parameter and persistent buffer of `model` lands in exactly one of the two.
    """
    groups: dict[int, list[module_state.Site]] = {}
    others: list[tuple[module_state.Site, str]] = []
    for site in module_state.sites(model):
        registered = not site.is_buffer and site.tensor_name in weight_names(site.module)
        reason = raw_reason(site.value(), min_size) if registered else _unregistered_reason(site)
        if reason is None:
            groups.setdefault(site.identity(), []).append(site)
        else:
            others.append((site, reason))
    raw: dict[str, tuple[str, tuple[int, ...]]] = {}
    for site, reason in others:
        # Another module holding a compressed tensor (a tie through any layer type) holds
        # the compressed tensor too, not a raw copy.
        if site.identity() in groups:
            groups[site.identity()].append(site)
        else:
            raw[site.key] = (reason, tuple(site.value().shape))
    targets = {}
    for group in groups.values():
        name = group[0].key.removesuffix(".weight")
        targets[name] = Target(name, tuple(group), is_conv(group[0].module))
    return targets, raw


def _unregistered_reason(site: module_state.Site) -> str:
    tensor = site.value()
    if site.is_buffer:
        return "buffer"
    if tensor.dtype not in FLOAT_DTYPES or tensor.dim() < 2:
        return raw_reason(tensor, 0)
    return f"unsupported layer type ({layer_type(site.module).__name__}.{site.tensor_name})"
