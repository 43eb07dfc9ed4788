"""SparseLinear: an inference-only nn.Linear that multiplies straight from the codebook-CSR form.

At batch 1 that reads ~3 bytes per kept weight instead of 4 per weight, kept or not (see
benchmarks/fc_speed.py for the speedups it gives); `deepzip.runtime.kernels` does the work.
"""

from __future__ import annotations

import torch
from torch import nn

from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.runtime import kernels

__all__ = ["SparseLinear"]


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
        self.packed = kernels.pack_linear(weight.shape, weight.codebook, weight.flat_positions(), weight.codes)
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
