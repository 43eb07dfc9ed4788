"""Sparse variational dropout: the KL fit, the local noise, hardening into masks, learning which weights matter."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepzip.errors import ConfigError
from deepzip.train.parametrizations import Masked, Variational, load_state_dict, transform_of
from deepzip.train.prune import prune_
from deepzip.train.quantize import quantize_
from deepzip.train.variational import harden_, kl_divergence, variational_


def _true_negative_kl(log_alpha: float) -> float:
    """-KL(N(theta, alpha theta^2) || log-uniform) up to a constant: 0.5 log alpha - E log|1 + sqrt(alpha) eps|.

    Integrated numerically on a fine grid (the log singularity is integrable), independent of the fit.
    """
    eps = np.linspace(-12, 12, 400_001)
    density = np.exp(-0.5 * eps**2) / np.sqrt(2 * np.pi)
    expectation = np.trapezoid(density * np.log(np.abs(1 + np.exp(0.5 * log_alpha) * eps) + 1e-300), eps)
    return 0.5 * log_alpha - expectation


def test_kl_fit_matches_the_integral_up_to_its_constant():
    log_alphas = np.linspace(-4, 6, 11)
    fitted = []
    for la in log_alphas:
        theta = torch.tensor([1.0])
        transform = Variational(torch.tensor([la]), torch.tensor([True]))
        transform(theta)
        fitted.append(-float(transform.kl().detach()))
    differences = np.array(fitted) - np.array([_true_negative_kl(la) for la in log_alphas])
    # Molchanov et al. report the fit's error below 0.01 over the whole range.
    assert np.ptp(differences) < 0.02


def test_kl_vanishes_for_dropped_weights_and_grows_for_certain_ones():
    kls = []
    for log_sigma2 in (10.0, 0.0, -10.0):
        transform = Variational(torch.tensor([log_sigma2]), torch.tensor([True]))
        transform(torch.tensor([1.0]))
        kls.append(float(transform.kl().detach()))
    assert kls[0] < 1e-3 < kls[1] < kls[2]


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_local_noise_has_the_mean_and_variance_of_the_weight_posterior(kind):
    torch.manual_seed(0)
    layer = nn.Linear(6, 3) if kind == "linear" else nn.Conv2d(2, 3, 3, padding=1)
    variational_(layer, min_size=1, log_sigma2=-3.0)
    layer.train()
    x = torch.randn(1, 6) if kind == "linear" else torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        theta = layer.parametrizations.weight.original.clone()
        sigma2 = layer.parametrizations.weight[0].variance()
        op = F.linear if kind == "linear" else (lambda inp, w: F.conv2d(inp, w, padding=1))
        mean = op(x, theta) + (layer.bias if kind == "linear" else layer.bias.view(1, -1, 1, 1))
        variance = op(x * x, sigma2)
    with torch.enable_grad():
        samples = layer(x.expand(20000, *x.shape[1:])).detach()  # noise is drawn per example
    # Dense references: the mean is the layer with theta, the variance (x^2) sigma^2.
    torch.testing.assert_close(samples.mean(0, keepdim=True), mean, atol=4 * float(variance.max().sqrt()) / 141, rtol=0)
    torch.testing.assert_close(samples.var(0, keepdim=True), variance, rtol=0.05, atol=1e-6)


def test_eval_mode_zeroes_high_dropout_entries_and_harden_keeps_the_same_function():
    torch.manual_seed(1)
    layer = nn.Linear(8, 4)
    variational_(layer, min_size=1)
    with torch.no_grad():
        layer.parametrizations.weight[0].log_sigma2[0, :4] = 5.0  # log alpha >= 3 wherever |theta| < 1
    layer.eval()
    x = torch.randn(5, 8)
    before = layer(x)
    transform = layer.parametrizations.weight[0]
    theta = layer.parametrizations.weight.original.detach()
    dropped = (transform.log_sigma2.detach() - torch.log(theta**2)) >= 3  # the paper's rule, from its definition
    assert dropped[0, :4].all()
    assert torch.equal(layer.weight.detach() == 0, dropped)
    summary = harden_(layer)
    assert isinstance(transform_of(layer), Masked)
    assert summary["weight"] == pytest.approx(1 - float(dropped.float().mean()))
    assert torch.equal(layer(x), before)
    assert layer._forward_hooks == {}


def test_learns_to_drop_the_inputs_the_target_ignores():
    torch.manual_seed(0)
    x = torch.randn(4096, 32)
    y = x[:, :4] @ torch.tensor([2.0, -1.5, 1.0, 3.0]).unsqueeze(1)  # the other 28 inputs do not matter
    model = nn.Linear(32, 1)
    variational_(model, min_size=1)
    steps = 1000
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    for _ in range(steps):
        batch = torch.randint(0, len(x), (128,))
        loss = F.mse_loss(model(x[batch]), y[batch]) * 50 + kl_divergence(model) / len(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    harden_(model)
    kept = transform_of(model).mask[0]
    assert kept[:4].all()
    assert not kept[4:].any()  # no sparsity was asked for: the KL found the 28 unneeded weights
    assert F.mse_loss(model(x), y) < 1e-4


def test_pruned_entries_stay_pruned_and_quantize_follows_harden():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    prune_(model, 0.5, min_size=1)
    before = transform_of(model[0]).mask.clone()
    variational_(model, min_size=1)
    with pytest.raises(ConfigError, match="harden_"):
        quantize_(model, 4, min_size=1)  # a Variational transform is not a pruning result yet
    with pytest.raises(ConfigError, match="harden_"):
        prune_(model, 0.9, min_size=1)
    harden_(model)
    assert not (transform_of(model[0]).mask & ~before).any()
    quantize_(model, 4, min_size=1)


def test_refuses_a_quantized_model_and_explains_skipped_layer_types():
    model = nn.Sequential(nn.Embedding(40, 8), nn.Linear(8, 8))
    summary = variational_(model, min_size=1)
    assert [row.name for row in summary.compressed] == ["1.weight"]
    assert any("Linear and convolution" in row.detail for row in summary.raw)
    harden_(model)
    quantize_(model, 4, min_size=1)
    with pytest.raises(ConfigError, match="already quantized"):
        variational_(model, min_size=1)


def test_attention_out_proj_is_left_alone():
    model = nn.Sequential(nn.MultiheadAttention(16, 2), nn.Linear(16, 16))
    summary = variational_(model, min_size=1)
    assert [row.name for row in summary.compressed] == ["1.weight"]
    assert any(row.name == "0.out_proj.weight" and "MultiheadAttention" in row.detail for row in summary.raw)


def test_kl_needs_variational_weights():
    with pytest.raises(ConfigError, match="variational_"):
        kl_divergence(nn.Linear(3, 3))


def test_state_dict_round_trip_restores_the_noise():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 8))
    variational_(model, min_size=1, log_sigma2=-2.0)
    state = model.state_dict()
    fresh = nn.Sequential(nn.Linear(8, 8))
    load_state_dict(fresh, state)
    assert isinstance(transform_of(fresh[0]), Variational)
    assert fresh[0]._deepzip_noise is not None
    fresh.train()
    x = torch.randn(2, 8)
    assert not torch.equal(fresh(x), fresh(x))  # noisy in training
    fresh.eval()
    model.eval()
    assert torch.equal(fresh(x), model(x))
