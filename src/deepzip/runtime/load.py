"""Running a compressed model: load a .dzip into a module, dense or with sparse layers.

`load(path)` decodes a file to a dense state dict. `load_into(model, path, layout="dense")`
decodes every tensor into the model. `layout="sparse"` keeps each weight-shared Linear
(or transformers Conv1D) weight in its sliced codebook form (runtime.packing) and replaces the layer by a
`SparseLinear`, which multiplies without ever building the dense matrix, and each
weight-shared Conv2d by a `SparseConv2d` (a direct sparse convolution).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip import container, module_state
from deepzip.container.spec import ENCODING_CODEBOOK
from deepzip.errors import ConfigError
from deepzip.limits import DEFAULT_MAX_DECODED_SIZE
from deepzip.runtime.sparse_conv import SparseConv2d, conv2d_settings
from deepzip.runtime.sparse_linear import ACTIVATION_DTYPES, SparseLinear

__all__ = ["CONV1D", "CONV2D", "LAYOUTS", "LINEAR", "SparseConv2d", "SparseLinear", "layer_kind", "load", "load_into"]

LAYOUTS = ("dense", "sparse")
# The layers layout="sparse" can replace, as `layer_kind` names them.
LINEAR, CONV1D, CONV2D = "linear", "conv1d", "conv2d"


def load(path: str | os.PathLike, max_decoded_size: int | None = DEFAULT_MAX_DECODED_SIZE) -> dict[str, torch.Tensor]:
    """Read a .dzip file into a dense state dict with the model's plain keys (`fc1.weight`).

    The decoded weights are bit-identical to those of the quantized model that was saved;
    tied names share one tensor. Reading never executes code; a damaged file raises
    deepzip.FormatError, and so does a file that would decode to more than
    `max_decoded_size` bytes (64 GiB by default; None for no limit), before anything
    is allocated.
    """
    return container.read(path, max_decoded_size).state_dict()


def load_into(
    model: nn.Module,
    path: str | os.PathLike,
    layout: str = "dense",
    strict: bool = True,
    max_decoded_size: int | None = DEFAULT_MAX_DECODED_SIZE,
) -> nn.Module:
    """Load the .dzip at `path` into `model` and return it.

    The file is memory-mapped and every checksum checked before the model changes; then
    tensors are decoded and loaded one at a time, so memory holds the model and one
    tensor. (A crafted file whose checksums hold but whose streams are broken raises
    FormatError part way, with the tensors before it loaded.) The file's keys are the model's plain keys (`fc1.weight`, `lstm.weight_ih_l0`), on any
    device the model is on. A tensor of the model that is computed by a parametrization
    (a user's weight_norm, or deepzip's own on a model still being compressed) becomes a
    plain tensor holding the file's values: the file stores values, not a
    parametrization's inputs. Tensors the file stores once under several names (tied
    weights) are one Parameter again after loading, even if the model had them apart.

    layout="dense": every tensor is decoded and loaded. layout="sparse" (CPU models only):
    a layer whose weight the file stores as an untied codebook tensor is replaced, in its
    parent module, by a sparse layer holding that weight and the bias from the file, when
    the sparse layer computes what the layer's forward did:
    - nn.Linear, and subclasses of it that keep nn.Linear.forward: a `SparseLinear`
      (sliced codebook form, `deepzip.runtime.packing`);
    - transformers' `Conv1D` (GPT-2's attention and MLP layers: y = x @ W + b with W
      stored [in, out]), and subclasses that keep its forward: a SparseLinear, the weight
      transposed to (out, in) as it is built (`SparseLinear.from_conv1d`);
    - nn.Conv2d with groups=1, dilation 1 and padding_mode "zeros" (padding an int, a
      pair, "valid", or "same" with odd kernel sizes), and subclasses that keep its
      forward and _conv_forward: a `SparseConv2d`, the direct sparse convolution of Park
      et al. (2017). At the paper's conv densities (29-53% kept) it runs 1.08-1.75x faster
      than dense F.conv2d on 1 and 2 threads of a 2-core Zen 3 machine, batch 1
      (benchmarks/conv_speed.py).
    Sparse layers pay off when they keep few weights. On that machine, a 4096x4096
    SparseLinear at batch 1 against F.linear (1 thread, weights from DRAM): 3.7x faster
    at 25% kept, 1.4x at 50%, even from about 75% to 100% (a post-training file keeps
    all); the direct convolution's lead is 1.08x at 53% kept. layout="sparse" replaces
    what it can whatever the density.
    Everything else is loaded dense, and in particular:
    - a subclass with its own forward (it may compute anything);
    - a child of an nn.MultiheadAttention (its out_proj): the attention's forward reads
      the child's `.weight` and `.bias` itself, and a SparseLinear has no `.weight`;
    - a tied weight (wte and lm_head in GPT-2): its other holders read it as a tensor;
    - a layer whose weight is float64 in the model: the sparse layers take float32,
      float16 and bfloat16 activations only;
    - a Conv2d that is grouped or depthwise, dilated, padded by reflection, replication
      or circularly, or padded "same" with an even kernel (torch pads one side more), and
      Conv1d, Conv3d and transposed convolutions: the direct sparse kernel computes only
      the plain 2-D case (see `SparseConv2d`).
    A parent that reads a replaced layer's `.weight` in its own forward breaks (with an
    AttributeError); the rules above know only nn.MultiheadAttention among such parents.

    Before anything changes, the file is checked against the model: a tensor the model
    lacks, or one the file lacks (with strict=True), or a shape that differs (always)
    raises ConfigError naming the keys, and the model is left as it was. With
    strict=False, tensors only one side has are skipped. A damaged file raises
    deepzip.FormatError, as does one that decodes to more than `max_decoded_size` bytes
    (see `load`); an unknown layout raises ConfigError.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"load_into needs an nn.Module, got {type(model).__name__}")
    source = container.open_file(path, max_decoded_size)
    shapes = {name: source.record(name).shape for name in source.tensor_names}
    sites = {site.key: site for site in module_state.sites(model)}
    _check_keys(shapes, {key: tuple(site.value().shape) for key, site in sites.items()}, strict)
    tie_groups: dict[str, list[str]] = {}  # stored name -> every name of it the model has
    for name in source.tensor_names:
        if name in sites:
            tie_groups.setdefault(source.stored_name(name), []).append(name)

    def untied_codebook(key: str) -> bool:
        stored = source.stored_name(key)
        return key in shapes and source.record(key).encoding == ENCODING_CODEBOOK and len(tie_groups.get(stored, ())) == 1

    sparse = _sparse_layers(model, untied_codebook) if layout == "sparse" else {}
    if sparse and any(t.device.type != "cpu" for t in model.parameters()):
        raise ConfigError("layout='sparse' runs on the CPU: move the model there first, or use layout='dense'")
    if "" in sparse:
        raise ConfigError(f"the model itself is a {sparse['']} layer; load_into can only replace layers inside a model")
    replaced = {f"{name}.weight" for name in sparse} | {f"{name}.bias" for name in sparse}
    # Every checksum before the model changes; then one tensor decoded and in memory at a time.
    source.verify()
    modules = dict(model.named_modules())
    for name, kind in sparse.items():
        bias = source.decode(f"{name}.bias").to_dense() if f"{name}.bias" in shapes else modules[name].bias
        _set_submodule(model, name, _sparse_layer(kind, modules[name], source.decode(f"{name}.weight"), bias))
    for stored, names in tie_groups.items():
        names = [n for n in names if n not in replaced]
        if not names:
            continue
        value = source.decode(stored).to_dense()
        for name in names:
            if sites[name].parametrized:
                parametrize.remove_parametrizations(sites[name].module, sites[name].tensor_name, leave_parametrized=True)
        model.load_state_dict(dict.fromkeys(names, value), strict=False)
        del value
    _tie(sites, [names for names in tie_groups.values() if len(names) > 1 and names[0] not in replaced])
    return model


def _tie(sites: dict[str, module_state.Site], groups: list[list[str]]) -> None:
    """Make every name of a group hold the first name's Parameter (or buffer)."""
    for names in groups:
        first = sites[names[0]]
        shared = getattr(first.module, first.tensor_name)
        for name in names[1:]:
            site = sites[name]
            if getattr(site.module, site.tensor_name) is not shared:
                setattr(site.module, site.tensor_name, shared)


def _check_keys(records: dict[str, tuple[int, ...]], current: dict[str, tuple[int, ...]], strict: bool) -> None:
    """Raise ConfigError for keys only one side has (strict) and for shape mismatches."""
    unexpected = sorted(set(records) - set(current))
    missing = sorted(set(current) - set(records))
    problems = []
    if strict and unexpected:
        problems.append(f"the model has no {_names(unexpected)}")
    if strict and missing:
        problems.append(f"the file has no {_names(missing)}")
    mismatched = [
        f"{name} (file {shape}, model {current[name]})"
        for name, shape in records.items()
        if name in current and shape != current[name]
    ]
    if mismatched:
        problems.append(f"shapes differ for {', '.join(mismatched)}")
    if problems:
        raise ConfigError("cannot load the file into this model: " + "; ".join(problems))


def _sparse_layers(model: nn.Module, eligible: Callable[[str], bool]) -> dict[str, str]:
    """{name: LINEAR, CONV1D or CONV2D} of the layers layout="sparse" replaces (see `load_into` for the rules).

    `eligible(key)` says whether the file holds the weight `key` as an untied codebook tensor.
    """
    modules = dict(model.named_modules())
    layers = {}
    for name, module in modules.items():
        kind = layer_kind(module)
        if kind is None or not eligible(f"{name}.weight" if name else "weight") or module.weight.dtype not in ACTIVATION_DTYPES:
            continue
        # nn.MultiheadAttention's forward reads its out_proj's .weight (and bias) itself.
        if name and isinstance(modules[name.rpartition(".")[0]], nn.MultiheadAttention):
            continue
        layers[name] = kind
    return layers


def layer_kind(module: nn.Module) -> str | None:
    """LINEAR, CONV1D, CONV2D or None: which sparse layer can compute `module` from its weight alone.

    LINEAR: an nn.Linear, or a subclass that keeps nn.Linear.forward (SparseLinear).
    CONV1D: transformers' `Conv1D` (GPT-2's linear layer, weight [in, out]) or a subclass
    that keeps its forward (SparseLinear.from_conv1d). CONV2D: an nn.Conv2d, or a subclass
    that keeps its forward and _conv_forward, with settings SparseConv2d computes (see
    `conv2d_settings`). A class with its own forward may compute anything, so it is None;
    so is everything else.
    """
    if isinstance(module, nn.Linear):
        return LINEAR if type(module).forward is nn.Linear.forward else None
    if isinstance(module, nn.Conv2d):
        return CONV2D if _plain_conv2d(module) else None
    return CONV1D if _is_transformers_conv1d(module) else None


def _plain_conv2d(module: nn.Conv2d) -> bool:
    """Whether `module` computes nn.Conv2d's forward with settings SparseConv2d supports."""
    cls = type(module)
    if cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward:
        return False
    try:
        conv2d_settings(module.kernel_size, module.stride, module.padding, module.dilation, module.groups, module.padding_mode)
    except ConfigError:
        return False
    return True


def _is_transformers_conv1d(module: nn.Module) -> bool:
    """Whether `module` is transformers' Conv1D, or a subclass that keeps its forward,
    recognised by class name and module without importing transformers."""
    cls = type(module)
    conv1d = next((c for c in cls.__mro__ if c.__name__ == "Conv1D" and c.__module__.startswith("transformers")), None)
    weight = getattr(module, "weight", None)
    return (
        conv1d is not None
        and cls.forward is conv1d.forward
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and weight.shape[1] == module.nf
    )


def _sparse_layer(kind: str, module: nn.Module, weight, bias: torch.Tensor | None) -> nn.Module:
    """The sparse layer of `kind` computing `module`, from the file's weight record and the bias."""
    if kind == CONV2D:
        return SparseConv2d(weight, bias, module.stride, module.padding, module.dilation, module.groups, module.padding_mode)
    if kind == CONV1D:
        return SparseLinear.from_conv1d(weight, bias)
    return SparseLinear(weight, bias)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{'key' if len(keys) == 1 else 'keys'} {shown}{more}"
