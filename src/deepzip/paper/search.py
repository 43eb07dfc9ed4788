"""`deepzip reproduce MODEL --max-error-increase X`: the smallest file within X points of the dense validation error.

Two searches, both scored on the validation split alone:

1. Sparsity. The learned-sparsity step's KL weight (`LearnedSparsity.kl_weight`) sets
   every layer's sparsity at once, the data deciding how they split; a bisection on its
   logarithm finds the largest weight whose whole pipeline (learn, retrain, quantize,
   fine-tune, write, decode) stays within the budget.
2. Bits. From that trial's pruned model, each layer's code width is lowered by one bit
   at a time, in turn, while the file shrinks and the budget holds (quantize and
   fine-tune only: the masks stay).

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
from deepzip.paper.training import error_rate
from deepzip.report import write_report
from deepzip.runtime.load import load

SPARSITY_TRIALS = 4
KL_RANGE = (0.05, 2.0)  # the bisection's bounds on the KL weight (1 = the true evidence bound)
MIN_BITS = 2


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

    `max_increase` is in percentage points of validation error over the dense model's.
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

    def attempt(tag: str, trial_recipe: Recipe, kl_weight: float, **options) -> dict:
        folder = out / "search" / tag
        folder.mkdir(parents=True, exist_ok=True)
        for cached in out.glob(f"baseline-{name}-*.pt"):  # every trial starts from the one baseline
            shutil.copy(cached, folder / cached.name)
        result = reproduce(name, folder, data_root, seed, log=_quiet, recipe=trial_recipe, evaluate_test=False, write_report=False, **options)
        for cached in folder.glob(f"baseline-{name}-*.pt"):
            if not (out / cached.name).exists():
                shutil.copy(cached, out / cached.name)
        within = result["valid_error"] <= result["dense_valid_error"] + budget + 1e-12
        row = {
            "trial": tag,
            "kl_weight": kl_weight,
            "bits": trial_recipe.bits,
            "kept": {layer["name"]: layer["kept"] / layer["weights"] for layer in result["layers"] if layer["weight_bits"] and layer["name"].endswith(".weight")},
            "file_bytes": result["file_bytes"],
            "ratio": result["ratio"],
            "valid_error": result["valid_error"],
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

    log(f"search: the smallest file within {max_increase:g} points of the dense validation error")
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
            f"{name}: no trial came within {max_increase:g} points (smallest KL weight tried: {math.exp(low):.3g}); allow more"
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
        f"({row['ratio']:.1f}x), valid error {100 * row['valid_error']:.2f}% (dense {100 * dense_valid:.2f}%): {verdict}"
    )


def _quiet(*args, **kwargs) -> None:
    """Trials do not print their tables: the search prints one line per trial."""
