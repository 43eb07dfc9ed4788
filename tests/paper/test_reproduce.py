"""The reproduction pipeline end to end, on a tiny data set and a one-epoch recipe."""

import json

import pytest
import torch

import deepzip
from deepzip.paper import models
from deepzip.paper.reproduce import RECIPES, PruneStep, Recipe, reproduce
from deepzip.paper.training import TrainConfig, error_rate
from deepzip.paper.data import load_mnist

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
    assert (tmp_path / "baseline-seed1.pt").exists()
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "weight_histograms.png").is_file()


def test_baseline_is_cached(tiny_mnist, tmp_path):
    recipe = Recipe("lenet-300-100", QUICK, (PruneStep({"*": 0.5}, QUICK),), {"*": 4}, QUICK)
    reproduce("lenet-300-100", tmp_path, tiny_mnist, log=lambda s: None, recipe=recipe)
    lines = []
    reproduce("lenet-300-100", tmp_path, tiny_mnist, log=lines.append, recipe=recipe)
    assert any("loaded from" in line for line in lines)
    cached = torch.load(tmp_path / "baseline-seed0.pt", weights_only=True)
    assert set(cached) == set(models.build("lenet-300-100").state_dict())
