"""deepzip's transforms compose with a user's parametrizations, keep ties, keep requires_grad."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import deepzip
from deepzip.errors import ConfigError
from deepzip.train.parametrizations import Masked, SharedWeights, transform_of


def tied_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(40, 16), nn.Linear(16, 40, bias=False))
    model[1].weight = model[0].weight  # GPT-style tie: one Parameter, two modules
    return model


def test_a_tied_parameter_gets_one_mask_and_one_codebook_and_trains_as_one():
    model = tied_model()
    summary = deepzip.prune_(model, 0.5)
    assert list(summary) == ["0"]
    assert transform_of(model[0]) is transform_of(model[1])
    deepzip.quantize_(model, 4)
    shared = transform_of(model[0])
    assert isinstance(shared, SharedWeights) and transform_of(model[1]) is shared
    centroids = [p for n, p in model.named_parameters() if n.endswith("centroids")]
    assert len(centroids) == 1  # named_parameters sees the one codebook once
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 40, (8,))
    model[1](model[0](x)).pow(2).mean().backward()
    optimizer.step()
    assert torch.equal(model[0].weight, model[1].weight)  # still the same values after a step
    assert float((model[0].weight == 0).float().mean()) >= 0.5


def test_deepzip_goes_on_top_of_weight_norm_and_strip_removes_only_its_own():
    torch.manual_seed(0)
    layer = parametrizations.weight_norm(nn.Linear(30, 20))
    deepzip.prune_(nn.Sequential(layer), 0.6, min_size=0)
    plist = layer.parametrizations.weight
    assert len(plist) == 2 and isinstance(plist[-1], Masked)
    assert float((layer.weight == 0).float().mean()) == pytest.approx(0.6, abs=0.01)
    compressed = layer.weight.detach().clone()
    deepzip.strip_(layer)
    # weight_norm stays, and now represents the pruned values (through its right_inverse).
    assert parametrize.is_parametrized(layer, "weight") and len(layer.parametrizations.weight) == 1
    assert torch.allclose(layer.weight, compressed, atol=1e-6)


def test_spectral_norm_composes():
    torch.manual_seed(0)
    layer = parametrizations.spectral_norm(nn.Linear(30, 20))
    deepzip.quantize_(nn.Sequential(layer), 3, min_size=0)
    values = torch.unique(layer.weight.detach())
    assert values.numel() <= 8
    assert type(layer.parametrizations.weight[0]).__name__ == "_SpectralNorm"


def test_strip_refuses_what_a_user_parametrization_cannot_represent():
    layer = parametrizations.orthogonal(nn.Linear(16, 16))
    deepzip.prune_(nn.Sequential(layer), 0.5, min_size=0)
    with pytest.raises(ConfigError, match="cannot take the compressed values"):
        deepzip.strip_(layer)


def test_requires_grad_stays_as_the_user_set_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    model[0].weight.requires_grad_(False)  # a frozen layer
    deepzip.prune_(model, 0.5)
    assert not model[0].parametrizations.weight.original.requires_grad
    assert model[1].parametrizations.weight.original.requires_grad
    deepzip.quantize_(model, 4)
    assert not transform_of(model[0]).centroids.requires_grad
    assert transform_of(model[1]).centroids.requires_grad
    deepzip.strip_(model)
    assert not model[0].weight.requires_grad and model[1].weight.requires_grad


def test_state_dict_round_trip_recreates_ties_and_composition():
    model = tied_model()
    model.add_module("2", parametrizations.weight_norm(nn.Linear(40, 24)))
    deepzip.prune_(model, 0.5)
    deepzip.quantize_(model, 4)
    state = model.state_dict()
    fresh = tied_model()
    fresh.add_module("2", parametrizations.weight_norm(nn.Linear(40, 24)))
    deepzip.load_state_dict(fresh, state)
    assert transform_of(fresh[0]) is transform_of(fresh[1])
    assert isinstance(fresh[2].parametrizations.weight[-1], SharedWeights)
    for key in ("0.weight", "2.weight"):
        assert torch.equal(fresh.get_submodule(key[0]).weight, model.get_submodule(key[0]).weight)
