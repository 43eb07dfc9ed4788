"""`reproduce --max-error-increase`: trials scored on the validation split, the chosen file scored once on test."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import deepzip
from deepzip.errors import ConfigError
from deepzip.paper import models
from deepzip.paper.data import load_mnist
from deepzip.paper.schedules import LearnedSparsity, PruneStep, Recipe
from deepzip.paper.search import STANDARD_ERRORS, paired_increase, search
from deepzip.paper.training import TrainConfig, error_rate

QUICK = TrainConfig(epochs=1, lr=0.05)
ADAM = TrainConfig(epochs=1, lr=1e-3, optimizer="adam")


def _recipe() -> Recipe:
    steps = (PruneStep({}, ADAM, LearnedSparsity(kl_weight=0.5, warmup=0.0, log_sigma2=-2.0)), PruneStep({}, QUICK))
    return Recipe("lenet-300-100", QUICK, steps, {"fc1": 5, "fc2": 5, "fc3": 5}, QUICK, raw_dtype="float16")


def test_search_chooses_on_validation_and_scores_test_once(tiny_mnist, tmp_path):
    lines = []
    results = search("lenet-300-100", tmp_path, 100.0, tiny_mnist, log=lines.append, recipe=_recipe(), sparsity_trials=2, min_bits=4)
    trials = results["search"]
    kl_trials = [t for t in trials if "bits" not in t["trial"]]
    assert [t["kl_weight"] for t in kl_trials][0] == 0.5 and len(kl_trials) == 2
    assert kl_trials[1]["kl_weight"] > 0.5  # within the budget: the bisection asks for more sparsity
    for trial in trials:  # no trial ever scored the test split
        saved = json.loads((tmp_path / "search" / trial["trial"] / "results.json").read_text())
        assert saved["compressed_error"] is None and saved["valid_error"] == trial["valid_error"]
    for trial in trials:  # the paired increase is the difference of the error rates; the rule adds one standard error
        assert trial["valid_increase"] == pytest.approx(trial["valid_error"] - results["dense_valid_error"], abs=1e-12)
        assert trial["within_budget"] == (trial["valid_increase"] + STANDARD_ERRORS * trial["standard_error"] <= 1.0 + 1e-12)
    chosen = next(t for t in trials if t["trial"] == results["chosen_trial"])
    assert chosen["within_budget"] and chosen["file_bytes"] == min(t["file_bytes"] for t in trials if t["within_budget"])
    assert (tmp_path / "model.dzip").read_bytes() == (tmp_path / "search" / chosen["trial"] / "model.dzip").read_bytes()
    decoded = models.build("lenet-300-100")
    decoded.load_state_dict(deepzip.load(tmp_path / "model.dzip"))
    assert results["compressed_error"] == error_rate(decoded, *load_mnist("test", tiny_mnist))
    # The bits stage lowered code widths from the chosen trial's own masks.
    bits_trials = [t for t in trials if "bits" in t["trial"]]
    assert bits_trials and all(min(t["bits"].values()) >= 4 for t in bits_trials)
    source = min((t for t in kl_trials if t["within_budget"]), key=lambda t: t["file_bytes"])
    for trial in bits_trials:
        assert trial["kept"] == pytest.approx(source["kept"]) and trial["kl_weight"] == source["kl_weight"]
    assert any(line.startswith("trial kl-0.5:") for line in lines)
    assert json.loads((tmp_path / "results.json").read_text())["chosen_trial"] == results["chosen_trial"]


def test_search_needs_a_learned_step_and_a_budget(tmp_path):
    magnitude = replace(_recipe(), prune_steps=(PruneStep({"fc1": 0.5}, QUICK),))
    with pytest.raises(ConfigError, match="learned-sparsity"):
        search("lenet-300-100", tmp_path, 0.1, recipe=magnitude)
    with pytest.raises(ConfigError, match=">= 0"):
        search("lenet-300-100", tmp_path, -1.0, recipe=_recipe())


def test_paired_increase_is_the_mean_and_standard_error_of_per_example_differences():
    generator = torch.Generator().manual_seed(0)
    dense = torch.rand(997, generator=generator) < 0.05
    trial = dense ^ (torch.rand(997, generator=generator) < 0.04)  # flips both ways
    differences = trial.double().numpy() - dense.double().numpy()
    increase, standard_error = paired_increase(dense, trial)
    assert increase == pytest.approx(differences.mean(), abs=1e-15)
    assert standard_error == pytest.approx(differences.std() / np.sqrt(differences.size), rel=1e-12)
    assert paired_increase(dense, dense) == (0.0, 0.0)
    # b = 3 examples wrong for the trial only, c = 1 for the dense model only, n = 10
    b_c = paired_increase(torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool), torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool))
    assert b_c == pytest.approx((0.2, np.sqrt(4 - 0.4) / 10))
    with pytest.raises(ValueError):
        paired_increase(dense, trial[:-1])


def test_search_says_so_when_no_trial_is_within_the_budget(tiny_mnist, tmp_path):
    # A budget of 0 points needs a standard error of 0: the very same predictions as dense.
    with pytest.raises(ConfigError, match=r"no trial came within 0 points by one standard error \(smallest KL weight tried: 0.5,"):
        search("lenet-300-100", tmp_path, 0.0, tiny_mnist, log=lambda *a: None, recipe=_recipe(), sparsity_trials=1)
    assert not (tmp_path / "model.dzip").exists() and (tmp_path / "search" / "kl-0.5" / "model.dzip").exists()
