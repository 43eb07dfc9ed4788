"""The reproduction pipeline end to end, on a tiny data set and a one-epoch recipe; the shipped schedules."""

import fnmatch
import json
import re
import shutil
from dataclasses import replace

import pytest
import torch

import deepzip
from deepzip.codec.streams import HUFFMAN
from deepzip.container import open_file
from deepzip.container.spec import FLAG_CODE_ANS, FLAG_GAP_ANS
from deepzip.errors import ConfigError
from deepzip.paper import models
from deepzip.paper.data import load_mnist
from deepzip.paper.reproduce import baseline_path, reproduce, trained_baseline
from deepzip.paper.schedules import PAPER_RECIPES, RECIPES, LearnedSparsity, PruneStep, Recipe, recipe_schedule, stepped_recipe
from deepzip.paper.training import Distillation, TrainConfig, error_rate
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


# The paper's Table 2, written out here independently of deepzip.paper.published.
PAPER_TABLE_2 = {
    "lenet-300-100": dict(sparsity={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}, bits={"fc1": 6, "fc2": 6, "fc3": 6}),
    "lenet-5": dict(
        sparsity={"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81}, bits={"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}
    ),
}


def per_layer(model: str, patterns: dict) -> dict:
    """{layer: value} for each weighted layer of `model`, first matching pattern winning."""
    layers = [name for name, module in models.build(model).named_modules() if hasattr(module, "weight")]
    return {layer: next(v for p, v in patterns.items() if fnmatch.fnmatchcase(layer, p)) for layer in layers}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE_2))
def test_paper_mode_is_the_papers_method_and_settings(name):
    recipe, table = PAPER_RECIPES[name], PAPER_TABLE_2[name]
    assert recipe.prune_steps[-1].sparsity == pytest.approx(table["sparsity"])
    assert per_layer(name, recipe.bits) == table["bits"]
    assert recipe.index_bits is None  # chosen per tensor: see published_rules
    assert recipe.coders == (HUFFMAN,) and recipe.raw_dtype == "float32" and recipe.distill is None
    assert all(step.learned is None for step in recipe.prune_steps)  # magnitude pruning only
    kept = [[1 - step.sparsity[layer] for layer in table["sparsity"]] for step in recipe.prune_steps]
    assert all(a >= b for before, after in zip(kept, kept[1:]) for a, b in zip(before, after))


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_best_schedules_end_at_the_shipped_recipe_files(name):
    recipe, rules = RECIPES[name], load_recipe(name)
    magnitude = [step for step in recipe.prune_steps if step.sparsity]
    if magnitude:
        assert magnitude[-1].sparsity == rules.setting("sparsity")
    assert recipe.bits == rules.setting("bits")
    assert recipe.raw_dtype == "float16"


def test_paper_mode_writes_huffman_only(tiny_mnist, tmp_path):
    shipped = PAPER_RECIPES["lenet-300-100"]
    recipe = replace(shipped, baseline=QUICK, prune_steps=(PruneStep(shipped.prune_steps[-1].sparsity, QUICK),), finetune=QUICK)
    lines = []
    results = reproduce("lenet-300-100", tmp_path, tiny_mnist, log=lines.append, recipe=recipe, paper=True)
    assert results["mode"] == "paper"
    dzip = open_file(tmp_path / "model.dzip")
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        record = dzip.record(name)
        assert not record.flags & (FLAG_CODE_ANS | FLAG_GAP_ANS)
    text = "\n".join(lines)
    assert "paper kept" in text and "paper: 40x" in text  # the side-by-side table


def test_a_learned_sparsity_step_trains_with_the_kl_term_and_hardens(tiny_mnist, tmp_path):
    shipped = RECIPES["lenet-300-100"]
    adam = TrainConfig(epochs=1, lr=1e-3, optimizer="adam")
    steps = (PruneStep({}, adam, LearnedSparsity(kl_weight=1.0, warmup=0.0, log_sigma2=-2.0)), PruneStep({}, QUICK))
    recipe = replace(shipped, baseline=QUICK, prune_steps=steps, finetune=QUICK)
    lines = []
    reproduce("lenet-300-100", tmp_path, tiny_mnist, log=lines.append, recipe=recipe)
    learned = next(line for line in lines if "variational dropout" in line)
    decoded = deepzip.load(tmp_path / "model.dzip")
    # The file keeps what the step learned, less the dead units' weights (which the log counts).
    dead = int(re.search(r"dead units: (\d+) weights", "\n".join(lines)).group(1))
    learned_kept = file_kept = 0
    for layer in ("fc1", "fc2", "fc3"):
        weights = decoded[f"{layer}.weight"].numel()
        share = float(re.search(rf"{layer} ([\d.]+)%", learned).group(1)) / 100
        kept = int((decoded[f"{layer}.weight"] != 0).sum())
        assert kept <= share * weights + 0.0005 * weights
        learned_kept, file_kept = learned_kept + share * weights, file_kept + kept
    assert abs(learned_kept - dead - file_kept) <= 0.0005 * decoded["fc1.weight"].numel() * 3
    assert float((decoded["fc1.weight"] == 0).float().mean()) > 0.2  # the KL term pruned, unasked
    assert decoded["fc1.bias"].dtype == torch.float16


def test_distillation_leaves_the_learned_step_to_the_labels(tiny_mnist, tmp_path):
    # The learned step's masks are the same with and without a teacher; retraining differs.
    adam = TrainConfig(epochs=1, lr=1e-3, optimizer="adam")
    steps = (PruneStep({}, adam, LearnedSparsity(kl_weight=1.0, warmup=0.0, log_sigma2=-2.0)), PruneStep({}, QUICK))
    recipe = replace(RECIPES["lenet-300-100"], baseline=QUICK, prune_steps=steps, finetune=QUICK)
    pruned = {}
    for tag, distill in (("labels", None), ("teacher", Distillation(0.5, 4.0))):
        reproduce("lenet-300-100", tmp_path / tag, tiny_mnist, log=lambda *a: None, recipe=replace(recipe, distill=distill), keep_pruned=True, write_report=False)
        pruned[tag] = torch.load(tmp_path / tag / "pruned.pt", weights_only=True)
    masks = [key for key in pruned["labels"] if key.endswith(".mask")]
    assert masks and all(torch.equal(pruned["labels"][key], pruned["teacher"][key]) for key in masks)
    originals = [key for key in pruned["labels"] if key.endswith(".original")]
    assert any(not torch.equal(pruned["labels"][key], pruned["teacher"][key]) for key in originals)


def test_a_learned_step_takes_no_sparsity_targets():
    with pytest.raises(ConfigError, match="no sparsity"):
        PruneStep({"fc1": 0.5}, QUICK, LearnedSparsity())


def test_shipped_recipe_rejects_steps_that_do_not_lead_to_the_final():
    rules = parse_recipe("layers: {fc1: {sparsity: 0.8, bits: 5}, fc2: {sparsity: 0.6}}")
    ok = stepped_recipe("lenet-300-100", rules, QUICK, ({"fc1": 0.5, "fc2": 0.6},), QUICK, QUICK)
    assert [s.sparsity for s in ok.prune_steps] == [{"fc1": 0.5, "fc2": 0.6}, {"fc1": 0.8, "fc2": 0.6}]
    assert ok.bits == {"fc1": 5}
    with pytest.raises(ConfigError, match="step 2 lowers the sparsity of fc2"):
        stepped_recipe("lenet-300-100", rules, QUICK, ({"fc1": 0.5, "fc2": 0.7},), QUICK, QUICK)
    with pytest.raises(ConfigError, match="step 1 names"):
        stepped_recipe("lenet-300-100", rules, QUICK, ({"fc1": 0.5},), QUICK, QUICK)


def test_recipe_schedule_keeps_the_papers_training():
    shipped = PAPER_RECIPES["lenet-5"]
    rules = parse_recipe("layers: {'*': {sparsity: 0.75, bits: 4}}")
    schedule = recipe_schedule("lenet-5", rules)
    steps = len(shipped.prune_steps)
    assert [s.retrain for s in schedule.prune_steps] == [s.retrain for s in shipped.prune_steps]
    for i, step in enumerate(schedule.prune_steps, 1):
        assert step.sparsity["*"] == pytest.approx(1 - 0.25 ** (i / steps))  # kept shrinks geometrically
    assert schedule.prune_steps[-1].sparsity["*"] == pytest.approx(0.75)
    assert per_layer("lenet-5", schedule.bits) == {"conv1": 4, "conv2": 4, "fc1": 4, "fc2": 4}
    assert (schedule.baseline, schedule.finetune) == (shipped.baseline, shipped.finetune)
