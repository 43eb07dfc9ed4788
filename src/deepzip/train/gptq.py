"""Error-compensated rounding of a Linear weight onto a uniform grid (GPTQ / OPTQ).

Rounding each weight to its nearest level (what `uniform.uniform_quantize` does) minimises
the weights' squared error, but what matters is the layer's output error on the inputs it
sees, ||(W - Q) X||^2 = trace((W - Q) H (W - Q)^T) with H = X X^T (the inputs' second
moment, from calibration). Optimal Brain Quantization (Frantar and Alistarh 2022) rounds
one input column at a time and moves the columns not yet rounded to cancel the error just
made, as far as H's correlations allow; GPTQ (Frantar, Ashkboos, Hoefler and Alistarh,
ICLR 2023) does the same in a fixed column order, with every update read off one Cholesky
factor of H^-1. Each weight still lands on a point of its grid, so the codes and their
entropy are those of plain rounding (within a fraction of a percent, measured on
all-MiniLM-L6-v2), while the output error falls: on MiniLM at 6x, half the cosine loss.

Pure torch functions, float64. Memory: the weight twice and H's factor.
"""

from __future__ import annotations

import numpy as np
import torch

from deepzip.errors import ConfigError

DAMPING = 0.01  # of H's mean diagonal, added to it: keeps the factorisation stable when inputs are few or collinear
BLOCK = 128  # columns updated together: the same result, with most of the work in one matrix product


def grid_of(shape: tuple[int, int], step: float, scale: np.ndarray | None = None, axis: int | None = None) -> torch.Tensor:
    """The grid spacing of each weight (float64, broadcastable to `shape`): `step`, times scale[j] along `axis`."""
    if scale is None:
        return torch.full((1, 1), float(step), dtype=torch.float64)
    view = [1, 1]
    view[axis] = shape[axis]
    return torch.from_numpy(np.asarray(scale, dtype=np.float64)).view(view) * float(step)


def compensated_levels(weight: torch.Tensor, grid: torch.Tensor, hessian: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """Integer levels L (int64, weight's shape) with weight ~ L * grid, chosen column by column with GPTQ.

    `weight` is [out, in] (a Linear's), `grid` broadcastable to it (`grid_of`), `hessian`
    the [in, in] second moment of the layer's inputs. Inputs that calibration never saw
    (zero diagonal) get unit weight: their columns are rounded plainly and nothing is moved
    onto them. With a diagonal `hessian` the result is plain rounding, round(weight / grid).
    """
    if weight.dim() != 2 or tuple(hessian.shape) != (weight.shape[1], weight.shape[1]):
        raise ConfigError(f"error compensation needs a [out, in] weight and an [in, in] input moment, got {tuple(weight.shape)} and {tuple(hessian.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise ConfigError("weights contain NaN or infinity")
    if not bool(torch.isfinite(hessian).all()):
        raise ConfigError("the calibration inputs of a layer contain NaN or infinity")
    w = weight.detach().to(torch.float64).clone()
    grid = torch.broadcast_to(grid.to(torch.float64), w.shape)
    h = hessian.detach().to(torch.float64).clone()
    columns = w.shape[1]
    diagonal = torch.diagonal(h)
    dead = diagonal <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    diagonal[dead] = 1.0
    diagonal += damping * float(diagonal.mean())
    # The upper Cholesky factor U of H^-1: row i of U, divided by U[i, i], is how an error
    # in column i is spread over the columns after it (the OBQ update, one row at a time).
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    levels = torch.empty(w.shape, dtype=torch.int64)
    for start in range(0, columns, BLOCK):
        stop = min(start + BLOCK, columns)
        block = w[:, start:stop]
        errors = torch.empty_like(block)
        factor = upper[start:stop, start:stop]
        for i in range(stop - start):
            g = grid[:, start + i]
            level = torch.round(block[:, i] / g)
            levels[:, start + i] = level.to(torch.int64)
            error = (block[:, i] - level * g) / factor[i, i]
            block[:, i:] -= error[:, None] * factor[i, i:][None, :]
            errors[:, i] = error
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return levels


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """trace((W - Q) H (W - Q)^T): the layer's squared output error on the inputs H summarises."""
    delta = (weight.to(torch.float64) - quantized.to(torch.float64))
    return float(torch.sum((delta @ hessian.to(torch.float64)) * delta))
