"""The one magnitude selection: exact counts, ties by position, masks that never revive."""

import numpy as np
import pytest
import torch

from deepzip.errors import ConfigError
from deepzip.train import masks
from deepzip.train.masks import (
    _torch_mask,
    quality_mask,
    sparsity_mask,
    sparsity_positions,
)


def reference_positions(weight: torch.Tensor, sparsity: float, alive: np.ndarray | None = None) -> np.ndarray:
    """Independent rule: sort by (-|w|, position) among the alive, take the first `keep`."""
    flat = weight.flatten().double().numpy()
    alive = np.ones(flat.size, bool) if alive is None else alive.flatten()
    keep = min(round((1 - sparsity) * flat.size), int(alive.sum()))
    candidates = np.flatnonzero(alive)
    order = np.lexsort((candidates, -np.abs(flat[candidates])))
    return np.sort(candidates[order[:keep]])


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.999, 1.0])
def test_sparsity_mask_matches_the_reference(sparsity):
    weight = torch.randn(300, 70)
    mask = sparsity_mask(weight, sparsity)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert np.array_equal(np.flatnonzero(mask.numpy()), reference_positions(weight, sparsity))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ties_are_broken_by_position_at_low_precision(dtype):
    # Rounded to 16 bits, thousands of weights share a magnitude: the count stays exact
    # and the lowest positions win, the same on every run and device.
    weight = (torch.randn(200, 100) * 0.01).to(dtype)
    for sparsity in (0.5, 0.77, 0.95):
        mask = sparsity_mask(weight, sparsity)
        assert np.array_equal(np.flatnonzero(mask.numpy()), reference_positions(weight.float(), sparsity))


def test_ties_at_the_threshold_keep_the_lowest_positions():
    weight = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0, 0.5])
    assert np.flatnonzero(sparsity_mask(weight, 0.5).numpy()).tolist() == [1, 2, 4]


def test_sparsity_mask_counts_the_whole_tensor_and_never_revives():
    weight = torch.randn(100, 50)
    first = sparsity_mask(weight, 0.8)
    assert int(first.sum()) == 1000
    boosted = torch.where(first, weight, weight.sign() * 100)
    second = sparsity_mask(boosted, 0.9, first)
    assert int(second.sum()) == 500
    assert not (second & ~first).any()
    assert np.array_equal(np.flatnonzero(second.numpy()), reference_positions(boosted, 0.9, first.numpy()))
    assert torch.equal(sparsity_mask(weight, 0.5, first), first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cpu_selection_is_the_torch_selection_across_chunks(monkeypatch, dtype):
    # The CPU path counts bit patterns chunk by chunk; GPUs keep torch's kthvalue. Both must
    # give the same mask: with ties, zeros of both signs, a current mask, chunk boundaries.
    monkeypatch.setattr(masks, "_CHUNK", 333)
    g = torch.Generator().manual_seed(1)
    for kind in ("normal", "ties", "signed zeros", "tiny"):
        weight = torch.randn(61, 47, generator=g)
        if kind == "ties":
            weight = (weight * 4).round() / 4
        elif kind == "signed zeros":
            weight = torch.where(torch.rand(61, 47, generator=g) < 0.6, 0.0, weight) * torch.where(torch.rand(61, 47, generator=g) < 0.5, -1.0, 1.0)
        elif kind == "tiny":
            weight = weight * 1e-6
        weight = weight.to(dtype)
        current = torch.rand(61, 47, generator=g) < 0.7
        for sparsity in (0.0, 0.2, 0.5, 0.77, 0.95, 0.9999, 1.0):
            for mask in (None, current):
                keep = round((1 - sparsity) * weight.numel())
                assert torch.equal(sparsity_mask(weight, sparsity, mask), _torch_mask(weight, keep, mask)), (kind, sparsity)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_sparsity_positions_are_the_masks_positions(monkeypatch, dtype):
    monkeypatch.setattr(masks, "_CHUNK", 1000)
    weight = (torch.randn(120, 90) * 0.01).to(dtype)
    for sparsity in (0.3, 0.77, 0.999, 1.0):
        positions = sparsity_positions(weight, sparsity)
        assert positions.dtype == np.int64
        assert np.array_equal(positions, np.flatnonzero(sparsity_mask(weight, sparsity).numpy()))
        assert np.array_equal(positions, reference_positions(weight.double(), sparsity))
    # Keeping every weight (sparsity 0, or one that rounds to keeping all) builds nothing.
    assert sparsity_positions(weight, 0.0) is None
    assert sparsity_positions(weight, 1e-9) is None


def test_nan_ranks_above_every_magnitude_on_the_cpu():
    weight = torch.tensor([0.5, float("nan"), -3.0, float("-inf"), 1.0])
    assert sparsity_positions(weight, 0.4).tolist() == [1, 2, 3]


def test_quality_mask_is_the_papers_threshold():
    weight = torch.randn(1000)
    assert torch.equal(quality_mask(weight, 0.7), weight.abs() >= 0.7 * weight.std())


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_sparsity_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        sparsity_mask(torch.randn(10), bad)


def test_a_mask_of_another_shape_is_a_config_error():
    with pytest.raises(ConfigError, match="shape"):
        sparsity_mask(torch.randn(4, 5), 0.5, torch.ones(5, 4, dtype=torch.bool))
