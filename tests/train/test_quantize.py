"""Stage 2: weight sharing, fixed assignments, and the paper's centroid gradient."""

import numpy as np
import pytest
import torch
from torch import nn

import deepzip
from deepzip.errors import ConfigError
from deepzip.train.quantize import share_weights


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3))


def shared(module: nn.Module):
    return module.parametrizations.weight[0]


def test_default_bits_are_the_papers_8_for_conv_and_5_for_fc():
    model = small_model()
    assert deepzip.quantize_(model, min_size=0) == {"0": 8, "3": 5, "5": 5}
    # Unused centroids are dropped: at most 2**bits, and every one is some weight's.
    assert 32 < shared(model[0]).centroids.numel() <= 256
    assert shared(model[3]).centroids.numel() <= 32
    for layer in (model[0], model[3]):
        assert torch.unique(shared(layer).codes.long()).numel() == shared(layer).centroids.numel()


def test_quantized_weight_takes_at_most_k_values_from_the_codebook():
    model = small_model()
    deepzip.prune_(model, 0.5, min_size=0)
    deepzip.quantize_(model, {"*": 3}, min_size=0)
    for i in (0, 3, 5):
        weight = model[i].weight.detach()
        mask = shared(model[i]).mask
        assert torch.all(weight[~mask] == 0)
        values = set(weight[mask].tolist())
        assert len(values) <= 8
        assert values <= set(shared(model[i]).centroids.detach().tolist())


def test_only_survivors_are_clustered():
    # The 90% pruned zeros would pull a centroid to 0 if they were clustered.
    weight = torch.cat([torch.full((90,), 0.0), torch.full((5,), -1.0), torch.full((5,), 1.0)])
    mask = weight != 0
    centroids, codes = share_weights(weight, mask, bits=1)
    assert centroids.tolist() == [-1.0, 1.0]
    assert codes[mask].tolist() == [0] * 5 + [1] * 5


def test_state_dict_keys_are_pinned():
    model = small_model()
    deepzip.prune_(model, 0.5, layers=["5"], min_size=0)
    deepzip.quantize_(model, 4, layers=["5"], min_size=0)
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
        "5.bias",
        "5.parametrizations.weight.original",
        "5.parametrizations.weight.0.centroids",
        "5.parametrizations.weight.0.codes",
        "5.parametrizations.weight.0.mask",
    ]


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    model = small_model()
    deepzip.prune_(model, 0.6, min_size=0)
    deepzip.quantize_(model, 4, min_size=0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    # Reference: the same network with plain dense leaf weights equal to the quantized ones.
    reference = small_model()
    with torch.no_grad():
        for i in (0, 3, 5):
            reference[i].weight.copy_(model[i].weight)
            reference[i].bias.copy_(model[i].bias)
    nn.functional.cross_entropy(reference(x), y).backward()
    nn.functional.cross_entropy(model(x), y).backward()
    for i in (0, 3, 5):
        transform = shared(model[i])
        codes = transform.codes[transform.mask].long()
        dense_grad = reference[i].weight.grad[transform.mask]
        expected = torch.zeros(transform.centroids.numel(), dtype=torch.float64).index_add_(0, codes, dense_grad.double())
        torch.testing.assert_close(transform.centroids.grad.double(), expected, rtol=1e-5, atol=1e-7)


def test_fine_tuning_moves_centroids_but_never_assignments_or_pruned_zeros():
    model = small_model()
    deepzip.prune_(model, 0.7, min_size=0)
    deepzip.quantize_(model, 3, min_size=0)
    before = {i: (shared(model[i]).codes.clone(), shared(model[i]).centroids.detach().clone()) for i in (0, 3, 5)}
    # Train everything a user's loop would hand to the optimizer.
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9, weight_decay=0.01)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for i, (codes, centroids) in before.items():
        transform = shared(model[i])
        assert torch.equal(transform.codes, codes)
        assert not torch.equal(transform.centroids.detach(), centroids)
        weight = model[i].weight.detach()
        assert torch.all(weight[~transform.mask] == 0)
        assert torch.equal(weight[transform.mask], transform.centroids.detach()[codes[transform.mask].long()])


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_every_init_method_works(init):
    model = small_model()
    deepzip.quantize_(model, 2, init=init, min_size=0)
    assert shared(model[3]).centroids.numel() == 4


def test_bad_settings_are_rejected_before_any_change():
    model = small_model()
    with pytest.raises(ConfigError):
        deepzip.quantize_(model, {"0": 4, "3": 99}, min_size=0)
    with pytest.raises(ConfigError):
        deepzip.quantize_(model, 4, init="kmeans++", min_size=0)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"]


def test_pruning_after_quantization_is_refused():
    model = small_model()
    deepzip.quantize_(model, 4, min_size=0)
    with pytest.raises(ConfigError, match="quantize"):
        deepzip.prune_(model, 0.5, min_size=0)


def test_quantized_state_survives_save_and_load(tmp_path):
    model = small_model()
    deepzip.prune_(model, 0.5, min_size=0)
    deepzip.quantize_(model, 4, min_size=0)
    torch.save(model.state_dict(), tmp_path / "q.pt")
    fresh = small_model()
    deepzip.load_state_dict(fresh, torch.load(tmp_path / "q.pt", weights_only=True))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))
    assert np.array_equal(shared(fresh[3]).codes.numpy(), shared(model[3]).codes.numpy())
