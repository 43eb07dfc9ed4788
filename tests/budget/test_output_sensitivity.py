"""deepzip.budget.sensitivity: Hutchinson's estimate against distortion measured by brute force."""

import numpy as np
import pytest
import torch

from deepzip.budget.sensitivity import (
    OutputDistortion,
    Sensitivity,
    relative_error,
    sensitivities,
)

torch.set_num_threads(1)


def mlp_and_batches(feature_scale):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(64, 16, generator=g) * feature_scale for _ in range(4)]
    return model, batches


def measured_distortion(probe, name, std, draws=200):
    """Mean distortion of iid Gaussian weight noise of `std`, by substitution (the definition)."""
    g = torch.Generator().manual_seed(2)
    weight = probe.params[name].data.clone()
    return float(np.mean([probe.distortion(name, weight + std * torch.randn(weight.shape, generator=g)) for _ in range(draws)]))


@pytest.mark.parametrize("name", ["0.weight", "2.weight"])
def test_hutchinson_matches_measured_distortion(name):
    model, batches = mlp_and_batches(torch.ones(16))
    probe = OutputDistortion(model, batches)
    sens = sensitivities([name], probe, probes=64)[name]
    std = 1e-3
    expected = sens.mean * std**2 * probe.params[name].numel()
    assert measured_distortion(probe, name, std) == pytest.approx(expected, rel=0.15)


def test_input_features_of_unequal_scale_are_scaled_along_the_input_axis():
    # A linear model: every output row matters alike, the input columns by their scale**2.
    scale = torch.tensor([10.0] * 4 + [0.1] * 12)
    _, batches = mlp_and_batches(scale)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    probe = OutputDistortion(model, batches)
    sens = sensitivities(["0.weight"], probe, probes=16)["0.weight"]
    assert sens.axis == 1
    # The loud features matter (about 100**2 times) more: their slices are the clipped top.
    assert sens.slices[:4].min() > 10 * sens.slices[4:].max()


def test_equal_slices_are_not_scaled():
    assert Sensitivity.of(torch.ones(8, 8)).axis is None


def test_distortion_restores_the_parameter_and_missing_names_are_none():
    model, batches = mlp_and_batches(torch.ones(16))
    probe = OutputDistortion(model, batches)
    before = model[0].weight.detach().clone()
    assert probe.distortion("0.weight", torch.zeros_like(before)) > 0
    assert torch.equal(model[0].weight.detach(), before)
    assert probe.distortion("0.weight", before) == 0.0
    assert sensitivities(["nope.weight"], probe)["nope.weight"] is None


def test_relative_error_leaves_padding_out():
    reference = torch.ones(2, 3, 4)
    output = reference.clone()
    output[1, 2] = 100.0  # a padding position
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert relative_error(reference, output, mask) == 0.0
    assert relative_error(reference, output) > 0
