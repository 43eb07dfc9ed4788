"""SparseLinear: an inference-only nn.Linear that multiplies straight from the compressed (codebook, sliced) form.

At batch 1 that reads ~2 bytes per kept weight instead of 4 per weight, kept or not (see
benchmarks/fc_speed.py for the speedups it gives); `deepzip.runtime.kernels` does the work.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.runtime import kernels

__all__ = ["ACTIVATION_DTYPES", "SparseLinear", "check_input"]

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_NO_BIAS = np.zeros(0, dtype=np.float32)


class SparseLinear(nn.Module):
    """An inference-only nn.Linear whose weight stays pruned and weight-shared.

    Built from a 2-D `CodebookTensor` (out x in) and an optional bias of shape (out,), or,
    with `SparseLinear.from_conv1d`, from the [in, out] weight of transformers' `Conv1D`.
    `forward` takes a CPU tensor of shape (..., in) in float32, float16 or bfloat16 and
    returns (..., out) in the same dtype: the input is widened to float32 (exactly), the
    kernel accumulates in float32 against the float32 codebook, and the result is rounded
    to the input's dtype once, at the end. It runs `deepzip.kernels.matmul` on
    `torch.get_num_threads()` threads and never densifies the weight.

    The weights are those the dense model decodes to: a float16/bfloat16 record's codebook
    is rounded to that dtype first, as `CodebookTensor.to_dense` does. A record with
    per-slice scales multiplies the input columns (scales along `in`) or the output rows
    (scales along `out`) by them, in float32; the dense weight rounds each product
    codebook*scale to the record's dtype instead, so for a float16/bfloat16 record the two
    differ by the rounding of that product (at most half a unit in its last place).

    It has no autograd: the output carries no gradient, so an input that requires grad
    while grad mode is on raises ConfigError rather than silently cutting the graph (run
    it under `torch.no_grad()` / `torch.inference_mode()`). The bias (and the scales) are
    buffers, not Parameters, so optimizers see nothing to train; there is no `.weight`,
    so code that reads a layer's `.weight` cannot use it (see `deepzip.load_into`).
    """

    def __init__(self, weight: CodebookTensor, bias: torch.Tensor | None = None):
        super().__init__()
        _check_weight(weight, "(out, in)")
        self.out_features, self.in_features = (int(d) for d in weight.shape)
        codebook = np.array(weight.codebook, dtype=np.float32)  # a copy: packing may freeze what it is given
        if weight.dtype in _HALF_DTYPES and weight.scale is None:
            codebook = torch.from_numpy(codebook).to(weight.dtype).float().numpy()
        self.packed = kernels.pack_linear(weight.shape, codebook, weight.flat_positions(), weight.codes)
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (self.out_features,):
                got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
                raise ConfigError(f"SparseLinear bias must be a tensor of shape ({self.out_features},), got {got}")
            bias = bias.detach().to(device="cpu", dtype=torch.float32).contiguous()
        self.register_buffer("bias", bias)
        self.scale_axis = weight.scale_axis  # 0: scales multiply output rows, 1: input columns
        scale = None if weight.scale is None else torch.tensor(np.asarray(weight.scale, dtype=np.float32))
        self.register_buffer("scale", scale)

    @classmethod
    def from_conv1d(cls, weight: CodebookTensor, bias: torch.Tensor | None = None) -> SparseLinear:
        """A SparseLinear computing transformers' `Conv1D`: y = x @ weight + bias.

        `weight` is the Conv1D's weight as a 2-D `CodebookTensor` of shape [in, out]
        ([nx, nf]: the transpose of nn.Linear's); its kept entries are moved to their
        (out, in) places (codes and scales with them), so the layer holds the same values
        and never builds the dense matrix. `bias` is (out,) or None. Bad input raises
        ConfigError, as for the constructor.
        """
        _check_weight(weight, "[in, out]")
        n_in, out = (int(d) for d in weight.shape)
        axis = None if weight.scale_axis is None else 1 - weight.scale_axis
        if weight.positions is None:  # every entry kept: the codes, read column by column
            codes = np.ascontiguousarray(np.asarray(weight.codes).reshape(n_in, out).T).reshape(-1)
            positions = None
        else:
            flat = weight.flat_positions()
            row, col = np.divmod(flat, max(out, 1))
            transposed = col * n_in + row
            order = np.argsort(transposed, kind="stable")
            positions, codes = transposed[order], np.asarray(weight.codes)[order]
        record = CodebookTensor((out, n_in), weight.dtype, weight.codebook, positions, codes, None, weight.scale, axis)
        return cls(record, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32/float16/bfloat16 -> x @ W.T + bias, shape (..., out), x's dtype."""
        n_in = self.in_features
        check_input(x, "SparseLinear", lambda: x.ndim > 0 and x.shape[-1] == n_in, f"(..., {n_in})")
        # Each torch call costs about a microsecond here, and nn.Module's attribute lookup
        # more, so this path makes none it does not need (measured: 63 us of overhead per
        # call at first, against 0.2 ms for AlexNet's fc8); buffers are read from _buffers.
        buffers = self._buffers
        leading = x.shape[:-1]
        x2d = x if x.ndim == 2 else x.reshape(-1, self.in_features)
        if x.requires_grad:
            x2d = x2d.detach()
        if x.dtype != torch.float32:
            x2d = x2d.to(torch.float32)  # exact for float16/bfloat16
        scale = None if self.scale_axis is None else _float32(buffers["scale"])
        if self.scale_axis == 1:
            x2d = x2d * scale
        bias = buffers["bias"]
        bias = None if bias is None else _float32(bias)
        late_bias = bias is not None and self.scale_axis == 0  # added after the row scales
        kernel_bias = _NO_BIAS if bias is None or late_bias else bias.numpy()
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        kernels.use_threads(torch.get_num_threads())
        y = torch.from_numpy(kernels.checked_matmul(self.packed, x2d.numpy(), kernel_bias))
        if self.scale_axis == 0:
            y = y * scale
            if late_bias:
                y = y + bias
        if x.ndim != 2:
            y = y.reshape(*leading, self.out_features)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        """in/out features, kept fraction of the weights, codebook size, bias."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"kept={100 * self.packed.density:.2f}%, k={len(self.packed.codebook)}, bias={self.bias is not None}"
        )


def check_input(x, layer: str, shape_fits, shape: str) -> None:
    """ConfigError unless `x` is a CPU tensor of an ACTIVATION_DTYPES dtype whose shape
    `shape_fits()` accepts (`shape` says which, for the message) and that, with grad mode
    on, needs no gradient: the checks of every sparse layer's input, `layer` its name."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{layer} input must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise ConfigError(f"{layer} input must be float32, float16 or bfloat16, got {x.dtype}")
    if x.device.type != "cpu":
        raise ConfigError(f"{layer} runs on the CPU, got an input on {x.device}")
    if not shape_fits():
        raise ConfigError(f"{layer} input must have shape {shape}, got {tuple(x.shape)}")
    if x.requires_grad and torch.is_grad_enabled():
        raise ConfigError(f"{layer} is inference-only and passes no gradient; call it under torch.no_grad() or on a detached input")


def _check_weight(weight, layout: str) -> None:
    """ConfigError unless `weight` is a 2-D CodebookTensor (`layout` names its axes)."""
    if not isinstance(weight, CodebookTensor):
        raise ConfigError(f"SparseLinear needs a CodebookTensor weight, got {type(weight).__name__}")
    if len(weight.shape) != 2:
        raise ConfigError(f"SparseLinear needs a 2-D {layout} weight, got shape {tuple(weight.shape)}")


def _float32(t: torch.Tensor) -> torch.Tensor:
    """A buffer as float32 on the CPU (a user's model.half() or .to() may have moved it)."""
    if t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous():
        return t
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()
