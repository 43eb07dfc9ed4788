"""`deepzip reproduce MODEL --max-error-increase X`: the smallest file within X points of the dense validation error.

Two searches, both scored on the validation split alone:

1. Sparsity. The learned-sparsity step's KL weight (`LearnedSparsity.kl_weight`) sets
   every layer's sparsity at once, the data deciding how they split; a bisection on its
   logarithm finds the largest weight whose whole pipeline (learn, retrain, quantize,
   fine-tune, write, decode) stays within the budget.
2. Bits. From that trial's pruned model, each layer's code width is lowered by one bit
   at a time, in turn, while the file shrinks and the budget holds (quantize and
   fine-tune only: the masks stay).

A trial is within the budget when its validation error, plus one standard error, is at
most X points above the dense model's (the "one-standard-error rule" of model selection;
Breiman et al. 1984, Hastie, Tibshirani and Friedman 2009, 7.10). The increase and its
standard error are paired: both models are scored on the same images, so the error is
that of the per-image differences, sqrt(b + c - (b - c)^2 / n) / n where b images only the
trial gets wrong and c only the dense model. On MNIST's 10,000 validation images it is
about 0.1 points. The plain rule (the increase alone within X) let noise through: on
LeNet-300-100, seed 0, budget 0.10, it chose a trial at +0.09 on validation (standard
error 0.10) that was +0.18 on test.

Every trial runs `reproduce` into OUT/search/TRIAL with the test split never scored; the
table of trials is printed and saved with the results. The test split is scored once, on
the chosen file, which is copied to OUT/model.dzip.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from deepzip.errors import ConfigError
from deepzip.paper import models
from deepzip.paper.data import load_mnist
from deepzip.paper.reproduce import reproduce
from deepzip.paper.schedules import RECIPES, Recipe
from deepzip.paper.training import error_rate, logits_of
from deepzip.report import write_report
from deepzip.runtime.load import load

SPARSITY_TRIALS = 4
KL_RANGE = (0.05, 2.0)  # the bisection's bounds on the KL weight (1 = the true evidence bound)
MIN_BITS = 2
STANDARD_ERRORS = 1.0  # how many standard errors of the paired increase the budget must also hold


def paired_increase(dense_wrong: torch.Tensor, trial_wrong: torch.Tensor) -> tuple[float, float]:
    """The error-rate increase of a trial over the dense model on the same examples, and its standard error.

    Both are bool per example (True: misclassified). The increase is the mean of the
    per-example differences d = trial - dense in {-1, 0, 1}, and its standard error
    sqrt(var(d) / n) = sqrt(b + c - (b - c)^2 / n) / n, where b examples are wrong for the
    trial only and c for the dense model only (those McNemar's test counts).
    """
    if dense_wrong.shape != trial_wrong.shape or not dense_wrong.numel():
        raise ValueError(f"paired scores of {tuple(dense_wrong.shape)} and {tuple(trial_wrong.shape)} examples")
    n = dense_wrong.numel()
    b = int((trial_wrong & ~dense_wrong).sum())
    c = int((dense_wrong & ~trial_wrong).sum())
    return (b - c) / n, math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n


def search(
    name: str,
    out: Path,
    max_increase: float,
    data_root: Path | None = None,
    seed: int = 0,
    log=print,
    recipe: Recipe | None = None,
    sparsity_trials: int = SPARSITY_TRIALS,
    min_bits: int = MIN_BITS,
) -> dict:
    """Search `recipe`'s (default: the shipped one's) KL weight and per-layer bits; return the results.

    `max_increase` is in percentage points of validation error over the dense model's; a
    trial must stay within it by one standard error of its paired increase (see above).
    The results are `reproduce`'s for the chosen trial, with the test error of the chosen
    file and "search": every trial's settings, bytes and validation error.
    `sparsity_trials` bounds the bisection, `min_bits` the code widths the bits stage tries.
    """
    recipe = recipe or RECIPES[name]
    learned = [i for i, step in enumerate(recipe.prune_steps) if step.learned is not None]
    if not learned:
        raise ConfigError(f"{name}: the schedule has no learned-sparsity step to search")
    if not max_increase >= 0:
        raise ConfigError(f"--max-error-increase must be >= 0 points, got {max_increase}")
    budget = max_increase / 100
    trials: list[dict] = []
    valid = load_mnist("valid", data_root)
    dense_wrong: list[torch.Tensor] = []  # the dense model's, once its baseline exists

    def attempt(tag: str, trial_recipe: Recipe, kl_weight: float, **options) -> dict:
        folder = out / "search" / tag
        folder.mkdir(parents=True, exist_ok=True)
        for cached in out.glob(f"baseline-{name}-*.pt"):  # every trial starts from the one baseline
            shutil.copy(cached, folder / cached.name)
        result = reproduce(name, folder, data_root, seed, log=_quiet, recipe=trial_recipe, evaluate_test=False, write_report=False, **options)
        for cached in folder.glob(f"baseline-{name}-*.pt"):
            if not (out / cached.name).exists():
                shutil.copy(cached, out / cached.name)
        if not dense_wrong:
            dense = models.build(name)
            dense.load_state_dict(torch.load(next(folder.glob(f"baseline-{name}-*.pt")), weights_only=True))
            dense_wrong.append(_wrong(dense, *valid))
        trial = models.build(name)
        trial.load_state_dict(load(folder / "model.dzip"))
        increase, standard_error = paired_increase(dense_wrong[0], _wrong(trial, *valid))
        within = increase + STANDARD_ERRORS * standard_error <= budget + 1e-12
        row = {
            "trial": tag,
            "kl_weight": kl_weight,
            "bits": trial_recipe.bits,
            "kept": {layer["name"]: layer["kept"] / layer["weights"] for layer in result["layers"] if layer["weight_bits"] and layer["name"].endswith(".weight")},
            "file_bytes": result["file_bytes"],
            "ratio": result["ratio"],
            "valid_error": result["valid_error"],
            "valid_increase": increase,
            "standard_error": standard_error,
            "within_budget": within,
            "folder": str(folder),
            "result": result,
        }
        trials.append(row)
        log(_row_line(row, result["dense_valid_error"]))
        return row

    def with_kl(weight: float) -> Recipe:
        steps = list(recipe.prune_steps)
        for i in learned:
            steps[i] = replace(steps[i], learned=replace(steps[i].learned, kl_weight=weight))
        return replace(recipe, prune_steps=tuple(steps))

    log(
        f"search: the smallest file whose validation error, plus {STANDARD_ERRORS:g} standard error, is within "
        f"{max_increase:g} points of the dense model's"
    )
    low, high = (math.log(v) for v in KL_RANGE)
    best = None
    guess = math.log(_kl_weight(recipe))
    for i in range(sparsity_trials):
        weight = round(math.exp(guess), 4)
        row = attempt(f"kl-{weight:g}", with_kl(weight), weight, keep_pruned=True)
        if row["within_budget"]:
            low = guess
            best = row if best is None or row["file_bytes"] < best["file_bytes"] else best
        else:
            high = guess
        guess = (low + high) / 2
    if best is None:
        raise ConfigError(
            f"{name}: no trial came within {max_increase:g} points by one standard error (smallest KL weight tried: "
            f"{min(row['kl_weight'] for row in trials):.3g}, OUT/search has them all); allow more"
        )

    # Bits, one layer at a time, from the chosen trial's pruned model.
    pruned = torch.load(Path(best["folder"]) / "pruned.pt", weights_only=True)
    bits = dict(best["bits"])
    for layer in list(bits):
        while bits[layer] > min_bits:
            candidate = {**bits, layer: bits[layer] - 1}
            trial_recipe = replace(with_kl(best["kl_weight"]), prune_steps=(), bits=candidate)
            tag = f"kl-{best['kl_weight']:g}-bits-{'-'.join(map(str, candidate.values()))}"
            row = attempt(tag, trial_recipe, best["kl_weight"], start=pruned)
            if not (row["within_budget"] and row["file_bytes"] < best["file_bytes"]):
                break
            bits, best = candidate, row

    chosen = best["result"]
    shutil.copy(Path(best["folder"]) / "model.dzip", out / "model.dzip")
    test = load_mnist("test", data_root)
    decoded = models.build(name)
    decoded.load_state_dict(load(out / "model.dzip"))
    results = {**chosen, "compressed_error": error_rate(decoded, *test), "search": [_public(row) for row in trials]}
    results["chosen_trial"] = best["trial"]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log("")
    log(f"chosen: {best['trial']} ({best['file_bytes']:,} bytes, {results['ratio']:.1f}x), chosen on the validation split")
    log(f"test:   dense {100 * results['dense_error']:.2f}%, deepzip {100 * results['compressed_error']:.2f}% (scored once, on the chosen file)")
    log(f"report: {write_report(out / 'model.dzip', out / 'report')}")
    return results


def _wrong(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Which examples `model` misclassifies (bool per example)."""
    return logits_of(model, images).argmax(dim=1) != labels


def _kl_weight(recipe: Recipe) -> float:
    return next(step.learned.kl_weight for step in recipe.prune_steps if step.learned is not None)


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("result", "folder")}


def _row_line(row: dict, dense_valid: float) -> str:
    kept = ", ".join(f"{k.removesuffix('.weight')} {100 * v:.1f}%" for k, v in row["kept"].items())
    bits = "/".join(str(b) for b in row["bits"].values())
    verdict = "within" if row["within_budget"] else "over"
    return (
        f"trial {row['trial']}: KL weight {row['kl_weight']:g}, kept {kept}, bits {bits}: {row['file_bytes']:,} bytes "
        f"({row['ratio']:.1f}x), valid error {100 * row['valid_error']:.2f}% (dense {100 * dense_valid:.2f}%; "
        f"paired increase {100 * row['valid_increase']:+.2f} +- {100 * row['standard_error']:.2f}): {verdict}"
    )


def _quiet(*args, **kwargs) -> None:
    """Trials do not print their tables: the search prints one line per trial."""
