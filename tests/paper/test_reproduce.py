"""The reproduction pipeline end to end, on a tiny data set and a one-epoch recipe; the shipped schedules."""

import fnmatch
import json
import shutil
from dataclasses import replace

import pytest
import torch

import deepzip
from deepzip.errors import ConfigError
from deepzip.paper import models
from deepzip.paper.data import load_mnist
from deepzip.paper.reproduce import (
    RECIPES,
    PruneStep,
    Recipe,
    baseline_path,
    recipe_schedule,
    reproduce,
    shipped_recipe,
    trained_baseline,
)
from deepzip.paper.training import TrainConfig, error_rate
from deepzip.train.recipe import load_recipe, parse_recipe

QUICK = TrainConfig(epochs=1, lr=0.05)


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_pipeline_writes_a_file_that_decodes_to_the_same_model(name, tiny_mnist, tmp_path):
    shipped = RECIPES[name]
    last = shipped.prune_steps[-1].sparsity
    recipe = Recipe(name, QUICK, (PruneStep(last, QUICK),), shipped.bits, TrainConfig(epochs=1, lr=1e-4))
    lines = []
    results = reproduce(name, tmp_path, tiny_mnist, seed=1, log=lines.append, recipe=recipe)

    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("dense_error", "compressed_error", "dense_bytes", "file_bytes", "ratio"):
        assert saved[key] == results[key]
    file_bytes = (tmp_path / "model.dzip").stat().st_size
    assert results["file_bytes"] == file_bytes
    dense_bytes = 4 * sum(p.numel() for p in models.build(name).parameters())
    assert results["dense_bytes"] == dense_bytes
    assert results["ratio"] == pytest.approx(dense_bytes / file_bytes)

    # The reported error is the error of the model decoded from the file.
    decoded = models.build(name)
    decoded.load_state_dict(deepzip.load(tmp_path / "model.dzip"))
    assert results["compressed_error"] == error_rate(decoded, *load_mnist("test", tiny_mnist))
    # The last pruning step's sparsity holds in the decoded weights.
    for layer, sparsity in last.items():
        weight = getattr(decoded, layer).weight
        assert float((weight == 0).float().mean()) >= sparsity - 1e-3
    assert any(line.startswith("total") for line in "\n".join(lines).splitlines())
    assert len(list(tmp_path.glob(f"baseline-{name}-*-seed1.pt"))) == 1
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "weight_histograms.png").is_file()


def test_baseline_is_cached(tiny_mnist, tmp_path):
    recipe = Recipe("lenet-300-100", QUICK, (PruneStep({"*": 0.5}, QUICK),), {"*": 4}, QUICK)
    reproduce("lenet-300-100", tmp_path, tiny_mnist, log=lambda s: None, recipe=recipe)
    lines = []
    reproduce("lenet-300-100", tmp_path, tiny_mnist, log=lines.append, recipe=recipe)
    assert any("loaded from" in line for line in lines)
    (path,) = tmp_path.glob("baseline-lenet-300-100-*-seed0.pt")
    cached = torch.load(path, weights_only=True)
    assert set(cached) == set(models.build("lenet-300-100").state_dict())


@pytest.fixture(scope="module")
def relabeled_mnist(tiny_mnist, tmp_path_factory):
    """tiny_mnist with the training labels shifted by one class: the same images, other data."""
    root = tmp_path_factory.mktemp("relabeled")
    for path in tiny_mnist.iterdir():
        shutil.copy(path, root / path.name)
    labels = root / "train-labels-idx1-ubyte"
    data = labels.read_bytes()
    labels.write_bytes(data[:8] + bytes((b + 1) % 10 for b in data[8:]))  # 8-byte IDX header
    return root


def test_baselines_of_different_data_are_not_shared(tiny_mnist, relabeled_mnist, tmp_path):
    first, second = load_mnist("train", tiny_mnist), load_mnist("train", relabeled_mnist)
    assert torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])
    lines = []
    a = trained_baseline("lenet-300-100", tmp_path, first, QUICK, 0, lines.append)
    b = trained_baseline("lenet-300-100", tmp_path, second, QUICK, 0, lines.append)
    assert not any("loaded from" in line for line in lines)  # the second trained anew
    assert len(list(tmp_path.glob("baseline-lenet-300-100-*-seed0.pt"))) == 2
    assert not torch.equal(a.fc3.weight, b.fc3.weight)
    again = trained_baseline("lenet-300-100", tmp_path, first, QUICK, 0, lines.append)
    assert lines[-1] == f"baseline: loaded from {baseline_path(tmp_path, 'lenet-300-100', first, QUICK)}"  # QUICK: seed 0
    assert torch.equal(again.fc3.weight, a.fc3.weight)


def test_baseline_path_keys(tiny_mnist, tmp_path):
    images, labels = load_mnist("test", tiny_mnist)
    path = baseline_path(tmp_path, "lenet-5", (images, labels), QUICK)
    assert path.parent == tmp_path and path.name.startswith("baseline-lenet-5-") and path.name.endswith("-seed0.pt")
    assert len(path.name) == len("baseline-lenet-5-") + 12 + len("-seed0.pt")
    assert baseline_path(tmp_path, "lenet-5", (images.clone(), labels.clone()), QUICK) == path  # content, not identity
    changed_image = images.clone()
    changed_image[0, 0, 0, 0] += 0.5
    others = {
        baseline_path(tmp_path, "lenet-300-100", (images, labels), QUICK),
        baseline_path(tmp_path, "lenet-5", (changed_image, labels), QUICK),
        baseline_path(tmp_path, "lenet-5", (images[:-1], labels[:-1]), QUICK),
        baseline_path(tmp_path, "lenet-5", (images, labels), TrainConfig(epochs=2, lr=0.05)),
        baseline_path(tmp_path, "lenet-5", (images, labels), TrainConfig(epochs=1, lr=0.05, weight_decay=1e-4)),
        baseline_path(tmp_path, "lenet-5", (images, labels), replace(QUICK, seed=1)),
    }
    assert path not in others and len(others) == 6


# The schedules the published results (README) were produced with, written out in full.
PUBLISHED = {
    "lenet-300-100": dict(
        baseline=TrainConfig(epochs=30, lr=0.05, weight_decay=1e-4),
        sparsity=[
            {"fc1": 0.5, "fc2": 0.5, "fc3": 0.3},
            {"fc1": 0.7, "fc2": 0.7, "fc3": 0.45},
            {"fc1": 0.82, "fc2": 0.8, "fc3": 0.6},
            {"fc1": 0.89, "fc2": 0.87, "fc3": 0.7},
            {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74},
        ],
        retrain=TrainConfig(epochs=15, lr=0.05, weight_decay=1e-4),
        bits={"*": 5},
        finetune=TrainConfig(epochs=2, lr=1e-4),
    ),
    "lenet-5": dict(
        baseline=TrainConfig(epochs=20, lr=0.01, weight_decay=5e-4),
        sparsity=[
            {"conv1": 0.15, "conv2": 0.5, "fc1": 0.5, "fc2": 0.4},
            {"conv1": 0.25, "conv2": 0.75, "fc1": 0.8, "fc2": 0.65},
            {"conv1": 0.3, "conv2": 0.84, "fc1": 0.9, "fc2": 0.75},
            {"conv1": 0.34, "conv2": 0.88, "fc1": 0.94, "fc2": 0.81},
        ],
        retrain=TrainConfig(epochs=6, lr=0.01, weight_decay=5e-4),
        bits={"conv*": 8, "fc*": 5},
        finetune=TrainConfig(epochs=2, lr=1e-4),
    ),
}


def per_layer(model: str, patterns: dict) -> dict:
    """{layer: value} for each weighted layer of `model`, first matching pattern winning."""
    layers = [name for name, module in models.build(model).named_modules() if hasattr(module, "weight")]
    return {layer: next(v for p, v in patterns.items() if fnmatch.fnmatchcase(layer, p)) for layer in layers}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_schedules_are_the_published_ones(name):
    published, recipe = PUBLISHED[name], RECIPES[name]
    assert [step.sparsity for step in recipe.prune_steps] == published["sparsity"]  # exact floats
    assert [step.retrain for step in recipe.prune_steps] == [published["retrain"]] * len(published["sparsity"])
    assert per_layer(name, recipe.bits) == per_layer(name, published["bits"])
    assert (recipe.model, recipe.baseline, recipe.finetune) == (name, published["baseline"], published["finetune"])
    # The final step and the bits are the shipped recipe file's.
    rules = load_recipe(name)
    assert recipe.prune_steps[-1].sparsity == rules.setting("sparsity") and recipe.bits == rules.setting("bits")


def test_shipped_recipe_rejects_steps_that_do_not_lead_to_the_final():
    rules = parse_recipe("layers: {fc1: {sparsity: 0.8, bits: 5}, fc2: {sparsity: 0.6}}")
    ok = shipped_recipe("lenet-300-100", rules, QUICK, ({"fc1": 0.5, "fc2": 0.6},), QUICK, QUICK)
    assert [s.sparsity for s in ok.prune_steps] == [{"fc1": 0.5, "fc2": 0.6}, {"fc1": 0.8, "fc2": 0.6}]
    assert ok.bits == {"fc1": 5}
    with pytest.raises(ConfigError, match="step 2 lowers the sparsity of fc2"):
        shipped_recipe("lenet-300-100", rules, QUICK, ({"fc1": 0.5, "fc2": 0.7},), QUICK, QUICK)
    with pytest.raises(ConfigError, match="step 1 names"):
        shipped_recipe("lenet-300-100", rules, QUICK, ({"fc1": 0.5},), QUICK, QUICK)


def test_recipe_schedule_keeps_the_shipped_training():
    shipped = RECIPES["lenet-5"]
    rules = parse_recipe("layers: {'*': {sparsity: 0.75, bits: 4}}")
    schedule = recipe_schedule("lenet-5", rules)
    steps = len(shipped.prune_steps)
    assert [s.retrain for s in schedule.prune_steps] == [s.retrain for s in shipped.prune_steps]
    for i, step in enumerate(schedule.prune_steps, 1):
        assert step.sparsity["*"] == pytest.approx(1 - 0.25 ** (i / steps))  # kept shrinks geometrically
    assert schedule.prune_steps[-1].sparsity["*"] == pytest.approx(0.75)
    assert per_layer("lenet-5", schedule.bits) == {"conv1": 4, "conv2": 4, "fc1": 4, "fc2": 4}
    assert (schedule.baseline, schedule.finetune) == (shipped.baseline, shipped.finetune)
