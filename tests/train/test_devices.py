"""The pipeline on every available device, and retraining under autocast and torch.compile."""

import shutil

import pytest
import torch
from torch import nn

import deepzip
from deepzip.train.parametrizations import transform_of
from deepzip.train.sensitivity import prune_sensitivity, quantize_sensitivity

DEVICES = ["cpu"]
if torch.cuda.is_available():
    DEVICES.append("cuda")
if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
    DEVICES.append("mps")


def model_on(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).to(device)


def steps(model, x, params, n=3):
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(n):
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_stays_on_the_models_device(device, tmp_path):
    model = model_on(device)
    x = torch.randn(16, 64, device=device)
    deepzip.prune_(model, 0.8)
    for layer in (model[0], model[2]):
        assert transform_of(layer).mask.device.type == device
    steps(model, x, list(model.parameters()))
    deepzip.quantize_(model, 4)
    for layer in (model[0], model[2]):
        shared = transform_of(layer)
        assert {shared.codes.device.type, shared.centroids.device.type, shared.mask.device.type} == {device}
    centroids = [p for n, p in model.named_parameters() if n.endswith("centroids")]
    steps(model, x, centroids)
    assert all(p.grad.device.type == device for p in centroids)
    path = tmp_path / "model.dzip"
    deepzip.save(model, path)
    fresh = deepzip.load_into(model_on(device), path)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("device", DEVICES)
def test_masks_are_the_same_on_every_device(device):
    reference, model = model_on("cpu"), model_on(device)
    deepzip.prune_(reference, 0.7)
    deepzip.prune_(model, 0.7)
    for a, b in ((reference[0], model[0]), (reference[2], model[2])):
        assert torch.equal(transform_of(a).mask, transform_of(b).mask.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_sensitivity_scans_run_on_the_device(device):
    model = model_on(device)
    x = torch.randn(8, 64, device=device)
    before = model(x).detach()

    def evaluate(m):
        with torch.no_grad():
            return -float((m(x) - before).pow(2).mean())

    assert prune_sensitivity(model, evaluate, (0.0, 0.5)).curves["0"][0][1] == 0.0
    quantize_sensitivity(model, evaluate, (4,))
    assert torch.equal(model(x), before)


def test_retraining_under_autocast_bf16():
    model = model_on("cpu")
    x = torch.randn(16, 64)
    deepzip.prune_(model, 0.8)
    pruned = {i: transform_of(model[i]).mask.clone() for i in (0, 2)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps(model, x, list(model.parameters()))
    for i, mask in pruned.items():
        assert torch.all(model[i].weight[~mask] == 0)
    deepzip.quantize_(model, 4)
    codes = {i: transform_of(model[i]).codes.clone() for i in (0, 2)}
    centroids = [p for n, p in model.named_parameters() if n.endswith("centroids")]
    before = [c.detach().clone() for c in centroids]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps(model, x, list(model.parameters()))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, centroids))  # centroids trained
    for i in (0, 2):
        assert torch.equal(transform_of(model[i]).codes, codes[i])
        assert torch.all(model[i].weight[~pruned[i]] == 0)
        assert torch.unique(model[i].weight.detach()).numel() <= 17


# inductor (the default) needs a C++ compiler on the CPU; aot_eager traces the same graph.
BACKEND = "inductor" if shutil.which("cc") or shutil.which("gcc") else "aot_eager"


def test_retraining_through_torch_compile():
    model = model_on("cpu")
    x = torch.randn(16, 64)
    deepzip.prune_(model, 0.8)
    mask = transform_of(model[0]).mask.clone()
    compiled = torch.compile(model, backend=BACKEND)  
    steps(compiled, x, list(model.parameters()))
    assert torch.all(model[0].weight[~mask] == 0) and torch.any(model[0].weight[mask] != 0)
    deepzip.quantize_(model, 4)
    compiled = torch.compile(model, backend=BACKEND)
    centroids = [p for n, p in model.named_parameters() if n.endswith("centroids")]
    before = [c.detach().clone() for c in centroids]
    original = model[0].parametrizations.weight.original.detach().clone()
    steps(compiled, x, list(model.parameters()))
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, centroids))
    # Only the centroids train: the stored original gets no gradient, so no update.
    assert torch.equal(model[0].parametrizations.weight.original, original)
    assert torch.all(model[0].weight[~mask] == 0)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
