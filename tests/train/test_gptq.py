"""Error-compensated rounding (GPTQ) against a second, textbook implementation and plain rounding."""

import numpy as np
import pytest
import torch

from deepzip.errors import ConfigError
from deepzip.train import gptq
from deepzip.train.gptq import compensated_levels, grid_of
from deepzip.train.post_training import quantize_uniform
from deepzip.train.uniform import grid_quantize


def correlated_problem(rows=12, columns=24, samples=200, seed=0):
    """A weight and the second moment of strongly correlated inputs."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=g, dtype=torch.float64)
    x = torch.randn(samples, columns, generator=g, dtype=torch.float64) @ mixing
    return torch.randn(rows, columns, generator=g, dtype=torch.float64), x.T @ x


def output_error(weight, quantized, hessian):
    """trace((W - Q) H (W - Q)^T): the layer's squared output error on the inputs H summarises."""
    delta = weight.to(torch.float64) - quantized.to(torch.float64)
    return float(torch.sum((delta @ hessian.to(torch.float64)) * delta))


def obq_levels(weight, step, hessian, damping=gptq.DAMPING):
    """Optimal Brain Quantization in its original form: explicit inverse, one column at a time, no Cholesky.

    After rounding column q, the remaining columns F move by -(w_q - q) / [H_F^-1]_qq *
    [H_F^-1]_{q,F}, and q leaves the inverse: H^-1 <- H^-1 - H^-1[:, q] H^-1[q, :] / H^-1[q, q].
    """
    w = weight.clone()
    h = hessian.clone()
    h += damping * float(torch.diagonal(h).mean()) * torch.eye(h.shape[0], dtype=h.dtype)
    inverse = torch.linalg.inv(h)
    levels = torch.empty(w.shape, dtype=torch.int64)
    for q in range(w.shape[1]):
        level = torch.round(w[:, q] / step)
        levels[:, q] = level.long()
        error = (w[:, q] - level * step) / inverse[q, q]
        w[:, q:] -= error[:, None] * inverse[q, q:][None, :]
        inverse -= torch.outer(inverse[:, q], inverse[q, :]) / inverse[q, q]
    return levels


def test_equals_the_textbook_form_of_optimal_brain_quantization():
    weight, hessian = correlated_problem()
    step = 0.3
    assert torch.equal(compensated_levels(weight, grid_of(weight.shape, step), hessian), obq_levels(weight, step, hessian))


def test_the_result_does_not_depend_on_the_block_size(monkeypatch):
    weight, hessian = correlated_problem(columns=40)
    whole = compensated_levels(weight, grid_of(weight.shape, 0.2), hessian)
    monkeypatch.setattr(gptq, "BLOCK", 7)
    assert torch.equal(compensated_levels(weight, grid_of(weight.shape, 0.2), hessian), whole)


def test_uncorrelated_inputs_give_plain_rounding():
    weight, _ = correlated_problem()
    hessian = torch.diag(torch.linspace(0.5, 3.0, weight.shape[1], dtype=torch.float64))
    assert torch.equal(compensated_levels(weight, grid_of(weight.shape, 0.25), hessian), torch.round(weight / 0.25).long())


def test_the_output_error_falls_well_below_plain_rounding():
    weight, hessian = correlated_problem(rows=32, columns=48, samples=400)
    step = 0.25
    rounded = torch.round(weight / step) * step
    # At GPTQ's paper damping (1%) the compensation more than halves the error; the default's
    # stronger damping trades part of that for not fitting the calibration set, but still gains.
    compensated = compensated_levels(weight, grid_of(weight.shape, step), hessian, damping=0.01) * step
    assert output_error(weight, compensated, hessian) < 0.5 * output_error(weight, rounded, hessian)
    default = compensated_levels(weight, grid_of(weight.shape, step), hessian) * step
    assert output_error(weight, default, hessian) < 0.8 * output_error(weight, rounded, hessian)


def test_inputs_never_seen_are_rounded_plainly_and_receive_nothing():
    weight, hessian = correlated_problem()
    dead = [3, 10]
    hessian[dead, :] = 0
    hessian[:, dead] = 0
    levels = compensated_levels(weight, grid_of(weight.shape, 0.3), hessian)
    assert torch.equal(levels[:, dead], torch.round(weight[:, dead] / 0.3).long())


def test_per_row_and_per_column_grids():
    weight, hessian = correlated_problem()
    for axis in (0, 1):
        scale = np.linspace(0.5, 2.0, weight.shape[axis]).astype(np.float32)
        grid = grid_of(tuple(weight.shape), 0.3, scale, axis)
        levels = compensated_levels(weight, grid, hessian)
        # a weight rounded plainly lands within half a step of itself; compensation moves it further only by what it absorbed
        assert torch.all((levels * grid - weight).abs().max(dim=1 - axis).values < 4 * grid.reshape(-1))


def test_bad_shapes_and_values_are_config_errors():
    with pytest.raises(ConfigError, match="input moment"):
        compensated_levels(torch.zeros(3, 4), grid_of((3, 4), 0.1), torch.eye(3))
    with pytest.raises(ConfigError, match="NaN"):
        compensated_levels(torch.tensor([[0.0, float("nan")]]), grid_of((1, 2), 0.1), torch.eye(2))
    with pytest.raises(ConfigError, match="calibration inputs"):
        compensated_levels(torch.zeros(1, 2), grid_of((1, 2), 0.1), torch.full((2, 2), float("inf")))


def test_grid_quantize_decodes_to_the_grid_points_of_the_levels():
    levels = np.array([-3, 5, 0, 5, -3, 2])
    codebook, codes = grid_quantize(levels, 0.5)
    assert codebook.tolist() == [-1.5, 0.0, 1.0, 2.5]
    assert np.array_equal(codebook[codes], levels * 0.5)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_quantize_uniform_with_a_moment_decodes_to_grid_points(axis):
    weight, hessian = correlated_problem()
    weight32 = weight.float()
    scale = None if axis is None else np.linspace(0.5, 2.0, weight.shape[axis]).astype(np.float16).astype(np.float32)
    record = quantize_uniform(weight32, 0.3, scale, axis, hessian)
    grid = grid_of(tuple(weight.shape), 0.3, scale, axis)
    expected = compensated_levels(weight32, grid, hessian) * grid
    assert torch.allclose(record.to_dense().double(), expected, rtol=1e-6, atol=1e-7)
    assert record.positions is None


def test_groups_are_solved_as_separate_problems():
    """A grouped (depthwise-like) layer: each group's rows against its own moment, as the textbook form gives."""
    groups, rows, columns = 5, 2, 9
    problems = [correlated_problem(rows, columns, samples=30, seed=s) for s in range(groups)]
    weight = torch.cat([w for w, _ in problems]).reshape(groups * rows, 1, 3, 3)
    hessian = torch.stack([h for _, h in problems])
    levels = compensated_levels(weight, grid_of(tuple(weight.shape), 0.3), hessian)
    for g, (w, h) in enumerate(problems):
        assert torch.equal(levels[g * rows : (g + 1) * rows].reshape(rows, columns), obq_levels(w, 0.3, h))
