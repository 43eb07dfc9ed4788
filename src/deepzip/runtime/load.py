"""Running a compressed model: load a .dzip into a module, dense or with sparse Linear layers.

`load_into(model, path, layout="dense")` decodes every tensor and loads it as usual.
`layout="sparse"` keeps each weight-shared Linear weight in codebook-CSR form
(`deepzip.kernels`) and replaces the layer by a `SparseLinear`, which multiplies without
ever building the dense matrix: at batch 1 that reads ~3 bytes per kept weight instead of
4 per weight, kept or not (see benchmarks/fc_speed.py for the speedups it gives).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from deepzip.container import fileformat
from deepzip.runtime import kernels
from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError

__all__ = ["LAYOUTS", "SparseLinear", "load_into"]

LAYOUTS = ("dense", "sparse")


class SparseLinear(nn.Module):
    """An inference-only nn.Linear whose weight stays pruned and weight-shared.

    Built from a 2-D `CodebookTensor` (out x in) and an optional bias of shape (out,).
    `forward` takes a float32 CPU tensor of shape (..., in) and returns (..., out) float32;
    it runs `deepzip.kernels.matmul` on `torch.get_num_threads()` threads. It never
    densifies the weight, and it has no autograd: the output carries no gradient, so an
    input that requires grad while grad mode is on raises ConfigError rather than silently
    cutting the graph (run it under `torch.no_grad()` / `torch.inference_mode()`).
    The bias is a buffer (no Parameter at all), so optimizers see nothing to train.
    """

    def __init__(self, weight: CodebookTensor, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(weight, CodebookTensor):
            raise ConfigError(f"SparseLinear needs a CodebookTensor weight, got {type(weight).__name__}")
        if len(weight.shape) != 2:
            raise ConfigError(f"SparseLinear needs a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = (int(d) for d in weight.shape)
        self.packed = kernels.pack_linear(weight.shape, weight.codebook, weight.positions, weight.codes)
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (self.out_features,):
                got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
                raise ConfigError(f"SparseLinear bias must be a tensor of shape ({self.out_features},), got {got}")
            bias = bias.detach().to(device="cpu", dtype=torch.float32).contiguous()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32 -> x @ W.T + bias, shape (..., out), float32."""
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"SparseLinear input must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise ConfigError(f"SparseLinear input must be float32, got {x.dtype}")
        if x.device.type != "cpu":
            raise ConfigError(f"SparseLinear runs on the CPU, got an input on {x.device}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ConfigError(f"SparseLinear input must have shape (..., {self.in_features}), got {tuple(x.shape)}")
        if x.requires_grad and torch.is_grad_enabled():
            raise ConfigError(
                "SparseLinear is inference-only and passes no gradient; "
                "call it under torch.no_grad() or on a detached input"
            )
        leading = x.shape[:-1]
        x2d = x.detach().reshape(-1, self.in_features).contiguous().numpy()
        bias = None if self.bias is None else self.bias.detach().numpy()
        y = kernels.matmul(self.packed, x2d, bias, num_threads=torch.get_num_threads())
        return torch.from_numpy(y).reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        """in/out features, kept fraction of the weights, codebook size, bias."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"kept={100 * self.packed.density:.2f}%, k={len(self.packed.codebook)}, bias={self.bias is not None}"
        )


def load_into(model: nn.Module, path: str | os.PathLike, layout: str = "dense", strict: bool = True) -> nn.Module:
    """Load the .dzip at `path` into `model` (a plain, uncompressed module) and return it.

    layout="dense": every tensor is decoded and loaded with `load_state_dict`.
    layout="sparse": every nn.Linear whose weight the file stores as a codebook tensor is
    replaced, in its parent module, by a `SparseLinear` holding that weight in codebook-CSR
    form and the bias from the file; everything else is decoded and loaded dense. That
    includes convolution weights: a conv layer reuses each weight at every output position,
    so it is compute-bound rather than bound by reading its weights, and the paper keeps
    30-80% of conv weights, where a gather-based sparse kernel has little work to save
    against dense im2col GEMM (reasoning, not measured here; fc_speed.py covers fc layers).
    Subclasses of nn.Linear stay dense too (nn.MultiheadAttention's out_proj is one: its
    parent reads `.weight` directly, which a SparseLinear does not have); so must any layer
    whose weight other code reads, e.g. a tied embedding: use layout="dense" for those.

    Before anything changes, the file is checked against the model: a tensor the model
    lacks, or one the file lacks (with strict=True), or a shape that differs (always)
    raises ConfigError naming the keys, and the model is left as it was. With
    strict=False, tensors only one side has are skipped. A damaged file raises
    deepzip.FormatError; an unknown layout raises ConfigError.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"load_into needs an nn.Module, got {type(model).__name__}")
    compressed = fileformat.read(path)
    records = compressed.tensors
    current = model.state_dict()
    _check_keys(model, records, current, strict)
    loadable = {name: record for name, record in records.items() if name in current}

    sparse_names = _sparse_layers(model, loadable) if layout == "sparse" else []
    if "" in sparse_names:
        raise ConfigError("the model itself is an nn.Linear; load_into can only replace layers inside a model")
    replaced = {f"{name}.weight" for name in sparse_names} | {f"{name}.bias" for name in sparse_names}
    # Decode before mutating, so a decode failure leaves the model untouched.
    dense = {name: record.to_dense() for name, record in loadable.items() if name not in replaced}
    modules = dict(model.named_modules())
    for name in sparse_names:
        bias_record = loadable.get(f"{name}.bias")
        if bias_record is not None:
            bias = bias_record.to_dense()
        else:  # strict=False and the file has no bias: keep the layer's own
            bias = modules[name].bias
        _set_submodule(model, name, SparseLinear(loadable[f"{name}.weight"], bias))
    model.load_state_dict(dense, strict=False)
    return model


def _check_keys(model: nn.Module, records: dict, current: dict[str, torch.Tensor], strict: bool) -> None:
    """Raise ConfigError for keys only one side has (strict) and for shape mismatches."""
    unexpected = sorted(set(records) - set(current))
    missing = sorted(set(current) - set(records))
    problems = []
    if strict and unexpected:
        problems.append(f"the model has no {_names(unexpected)}")
        if any(".parametrizations." in key for key in current):
            problems[-1] += " (it is pruned/quantized: load into a plain model, or call deepzip.strip_ first)"
    if strict and missing:
        problems.append(f"the file has no {_names(missing)}")
    mismatched = [
        f"{name} (file {tuple(record.shape)}, model {tuple(current[name].shape)})"
        for name, record in records.items()
        if name in current and tuple(record.shape) != tuple(current[name].shape)
    ]
    if mismatched:
        problems.append(f"shapes differ for {', '.join(mismatched)}")
    if problems:
        raise ConfigError("cannot load the file into this model: " + "; ".join(problems))


def _sparse_layers(model: nn.Module, records: dict) -> list[str]:
    """Names of the plain nn.Linear modules whose weight the file holds as a codebook tensor."""
    return [
        name
        for name, module in model.named_modules()
        # Exact type: a subclass may have its own forward, or a parent that reads .weight.
        if type(module) is nn.Linear and isinstance(records.get(f"{name}.weight" if name else "weight"), CodebookTensor)
    ]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{'key' if len(keys) == 1 else 'keys'} {shown}{more}"
