"""Stage 1: prune_ on a model, and pruned weights that never come back (masks: test_masks.py)."""

import pytest
import torch
from torch import nn

import deepzip
from deepzip.errors import ConfigError


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_sparsity_out_of_range_is_rejected(bad):
    with pytest.raises(ConfigError):
        deepzip.prune_(small_model(), bad, min_size=0)


def test_prune_returns_kept_fractions_per_layer_pattern():
    model = small_model()
    kept = deepzip.prune_(model, {"0": 0.5, "3": 0.9, "5": 0.0}, min_size=0)
    assert kept == pytest.approx({"0": 0.5, "3": 0.1, "5": 1.0}, abs=1e-3)
    assert float((model[3].weight == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)


def test_unknown_pattern_is_rejected_and_nothing_changes():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="fc9"):
        deepzip.prune_(model, {"0": 0.5, "fc9": 0.5}, min_size=0)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_exactly_one_of_sparsity_and_quality():
    with pytest.raises(ConfigError):
        deepzip.prune_(small_model(), min_size=0)
    with pytest.raises(ConfigError):
        deepzip.prune_(small_model(), 0.5, quality=1.0, min_size=0)


def test_state_dict_keys_are_pinned():
    model = small_model()
    deepzip.prune_(model, 0.5, layers=["3"], min_size=0)
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "3.bias",
        "3.parametrizations.weight.original",
        "3.parametrizations.weight.0.mask",
        "5.weight",
        "5.bias",
    ]


@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adamw"])
def test_pruned_weights_are_never_revived_by_training(optimizer):
    model = small_model()
    # An optimizer that already holds momentum for every weight, the hard case: momentum
    # and weight decay push the stored originals, but the layer must still compute zeros.
    params = list(model.parameters())
    make = {
        "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
        "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    }[optimizer]
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    opt = make(params)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    deepzip.prune_(model, 0.8, min_size=0)
    masks = {i: model[i].parametrizations.weight[0].mask.clone() for i in (0, 3, 5)}
    # The same optimizer goes on: the stored original is the very Parameter it holds state
    # for, and that state is nonzero where the mask now prunes.
    for i, mask in masks.items():
        original = model[i].parametrizations.weight.original
        assert any(p is original for p in params)
        state = opt.state[original]
        moment = state["momentum_buffer"] if "momentum_buffer" in state else state["exp_avg"]
        assert (moment[~mask] != 0).any()
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for i, mask in masks.items():
        weight = model[i].weight.detach()
        assert torch.all(weight[~mask] == 0), f"layer {i}: a pruned weight came back"
        assert (weight[mask] != 0).all()


def test_pruned_gradient_is_zero():
    model = small_model()
    deepzip.prune_(model, 0.5, layers=["5"], min_size=0)
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()
    original = model[5].parametrizations.weight.original
    assert torch.all(original.grad[~model[5].parametrizations.weight[0].mask] == 0)


def test_masks_survive_state_dict_save_and_load(tmp_path):
    model = small_model()
    deepzip.prune_(model, 0.75, min_size=0)
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    fresh = small_model()
    deepzip.load_state_dict(fresh, torch.load(tmp_path / "ckpt.pt", weights_only=True))
    for i in (0, 3, 5):
        assert torch.equal(fresh[i].parametrizations.weight[0].mask, model[i].parametrizations.weight[0].mask)
        assert torch.equal(fresh[i].weight, model[i].weight)
    # And training the reloaded model keeps the zeros.
    opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        fresh(torch.randn(8, 1, 8, 8)).pow(2).sum().backward()
        opt.step()
    assert float((fresh[3].weight == 0).float().mean()) == pytest.approx(0.75, abs=1e-3)


def test_strip_leaves_plain_weights_with_the_pruned_values():
    model = small_model()
    deepzip.prune_(model, 0.6, min_size=0)
    expected = model[3].weight.detach().clone()
    deepzip.strip_(model)
    # Removing a parametrization re-registers the weight after the bias, hence sorted().
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "3.bias", "3.weight", "5.bias", "5.weight"]
    assert torch.equal(model[3].weight.detach(), expected)
