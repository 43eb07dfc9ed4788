"""`deepzip reproduce`: the paper's MNIST experiments, end to end, from data to decoded model.

Train the dense baseline (cached), prune iteratively with retraining, quantize and
fine-tune the centroids, write the .dzip, read it back into a fresh model and evaluate
that. The final per-layer sparsity and bits are the shipped recipes' (src/deepzip/recipes/
MODEL.yaml); this module adds the training and the intermediate pruning steps. The
choices were made on the validation split; the reported errors are on the test split.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deepzip import report
from deepzip.errors import ConfigError
from deepzip.paper import models
from deepzip.paper.data import load_mnist
from deepzip.paper.resume import DEFAULT_EVERY, RunState
from deepzip.paper.training import TrainConfig, error_rate, train
from deepzip.runtime.load import load
from deepzip.train import distributed
from deepzip.train.export import save
from deepzip.train.parametrizations import SharedWeights, load_state_dict, transform_of
from deepzip.train.prune import prune_
from deepzip.train.quantize import quantize_
from deepzip.train.recipe import Recipe as CompressionRecipe
from deepzip.train.recipe import load_recipe


@dataclass(frozen=True)
class PruneStep:
    """One round of iterative pruning: prune to `sparsity` per layer pattern, then retrain."""

    sparsity: dict[str, float]
    retrain: TrainConfig


@dataclass(frozen=True)
class Recipe:
    """Everything `reproduce` does to one model, in order."""

    model: str
    baseline: TrainConfig
    prune_steps: tuple[PruneStep, ...]
    bits: dict[str, int]
    finetune: TrainConfig  # centroids (and biases) after quantization


def shipped_recipe(
    model: str,
    rules: CompressionRecipe,
    baseline: TrainConfig,
    intermediate: tuple[dict[str, float], ...],
    retrain: TrainConfig,
    finetune: TrainConfig,
) -> Recipe:
    """The schedule for `model`: prune to each `intermediate` sparsity, then to the final one of `rules`.

    `rules` (a recipe file) is the single source of the final per-layer sparsity and of the
    bits; each intermediate step names the same layer patterns, and no layer's sparsity may
    fall from one step to the next (pruning removes weights, retraining never restores them).
    """
    final = rules.setting("sparsity")
    steps = (*intermediate, final)
    for i, step in enumerate(intermediate, 1):
        if set(step) != set(final):
            raise ConfigError(f"{model}: pruning step {i} names {sorted(step)}, the recipe's final sparsity {sorted(final)}")
    for i, (before, after) in enumerate(zip(steps, steps[1:]), 2):
        lower = [layer for layer in final if after[layer] < before[layer]]
        if lower:
            raise ConfigError(f"{model}: pruning step {i} lowers the sparsity of {', '.join(lower)}")
    return Recipe(model, baseline, tuple(PruneStep(sparsity, retrain) for sparsity in steps), rules.setting("bits"), finetune)


# Retraining after each pruning step runs at the baseline's learning rate with a cosine
# decay. Weight decay was chosen on the validation split: 1e-4, 2e-4 and 5e-4 ended at
# 1.45%, 1.54% and 1.53% valid error; shorter retraining (10 epochs at lr 0.02) at 1.69%.
_LENET_300_RETRAIN = TrainConfig(epochs=15, lr=0.05, weight_decay=1e-4)
_LENET_5_RETRAIN = TrainConfig(epochs=6, lr=0.01, weight_decay=5e-4)

RECIPES = {
    "lenet-300-100": shipped_recipe(
        "lenet-300-100",
        load_recipe("lenet-300-100"),
        baseline=TrainConfig(epochs=30, lr=0.05, weight_decay=1e-4),
        intermediate=(
            {"fc1": 0.5, "fc2": 0.5, "fc3": 0.3},
            {"fc1": 0.7, "fc2": 0.7, "fc3": 0.45},
            {"fc1": 0.82, "fc2": 0.8, "fc3": 0.6},
            {"fc1": 0.89, "fc2": 0.87, "fc3": 0.7},
        ),
        retrain=_LENET_300_RETRAIN,
        finetune=TrainConfig(epochs=2, lr=1e-4),
    ),
    "lenet-5": shipped_recipe(
        "lenet-5",
        load_recipe("lenet-5"),
        # Caffe's LeNet solver: lr 0.01, momentum 0.9, weight decay 5e-4 (0.05 diverges).
        baseline=TrainConfig(epochs=20, lr=0.01, weight_decay=5e-4),
        intermediate=(
            {"conv1": 0.15, "conv2": 0.5, "fc1": 0.5, "fc2": 0.4},
            {"conv1": 0.25, "conv2": 0.75, "fc1": 0.8, "fc2": 0.65},
            {"conv1": 0.3, "conv2": 0.84, "fc1": 0.9, "fc2": 0.75},
        ),
        retrain=_LENET_5_RETRAIN,
        finetune=TrainConfig(epochs=2, lr=1e-4),
    ),
}


def reproduce(
    name: str,
    out: Path,
    data_root: Path | None = None,
    seed: int = 0,
    log=print,
    recipe: Recipe | None = None,
    *,
    resume: bool = False,
    checkpoint_every: int = DEFAULT_EVERY,
) -> dict:
    """Run the recipe for model `name`, write OUT/model.dzip and OUT/results.json, return the results.

    `recipe` replaces the shipped one (`recipe_schedule` makes one from a recipe file;
    tests pass tiny ones to run the pipeline in seconds). Under a process group (torchrun,
    `deepzip reproduce --nproc N`) every rank trains its share of each global batch, the
    ranks' masks, codes and centroids are checked equal after every step, and rank 0 alone
    logs, writes the files and returns the results; the others return their rank.

    Every `checkpoint_every` optimizer steps and after every stage, OUT/checkpoint.pt
    records where the run is (`deepzip.paper.resume`); with `resume`, a run killed
    part-way continues from there to the very file an uninterrupted run writes.
    """
    if recipe is None and name not in RECIPES:
        raise ConfigError(f"no reproduction recipe for {name!r}; choose one of {', '.join(RECIPES)}")
    recipe = recipe or RECIPES[name]
    if not distributed.is_writer():
        log = _silent  # rank 0 speaks and writes for all
    out.mkdir(parents=True, exist_ok=True)
    run = RunState(out, name, seed, recipe, checkpoint_every)
    saved = run.load() if resume else None
    if resume and saved is None:
        log(f"resume: no {run.path} yet, starting from the beginning")
    train_x, train_y = load_mnist("train", data_root)
    valid = load_mnist("valid", data_root)
    test = load_mnist("test", data_root)
    started = time.perf_counter()
    model = models.build(name)
    first = 0
    if saved is not None:
        load_state_dict(model, saved["model"])
        first = saved["stage"] + (saved["training"] is None)
        where = "done" if saved["training"] is None else f"at step {saved['training']['step']}"
        log(f"resume: from stage {saved['stage']} ({where})")

    def within(stage: int) -> dict | None:
        """The training loop's saved state if the run was killed inside `stage`."""
        return saved["training"] if saved is not None and saved["stage"] == stage else None

    if first == 0:
        model = trained_baseline(name, out, (train_x, train_y), recipe.baseline, seed, log, run, within(0), model)
        run.kept["dense_weights"] = {k: t.detach().clone() for k, t in model.state_dict().items()}
        run.save(0, model)
    dense_weights = run.kept["dense_weights"]
    dense = _dense(name, dense_weights)
    dense_error = error_rate(dense, *test)
    log(f"baseline: valid error {100 * error_rate(dense, *valid):.2f}%, test error {100 * dense_error:.2f}%")

    steps = len(recipe.prune_steps)
    for step, prune_step in enumerate(recipe.prune_steps, 1):
        if step < first:
            continue
        if within(step) is None:
            kept = prune_(model, prune_step.sparsity)
            distributed.check_agreement(model)
            shown = ", ".join(f"{layer} {100 * f:.1f}%" for layer, f in kept.items())
            log(f"prune step {step}: kept {shown}")
        config = _seeded(prune_step.retrain, seed + step)
        train(model, train_x, train_y, config, f"prune {step}/{steps}", None, run.during(step, model), within(step))
        run.save(step, model)
        log(f"prune step {step}: valid error {100 * error_rate(model, *valid):.2f}% after retraining")

    finetune = steps + 1
    if first <= finetune:
        if within(finetune) is None:
            clustered = {k: t.detach().clone() for k, t in model.state_dict().items()}
            clustered |= {f"{n}.weight": m.weight.detach().clone() for n, m in model.named_modules() if transform_of(m) is not None}
            run.kept["clustered"] = clustered
            quantize_(model, recipe.bits)
            distributed.check_agreement(model)
            log(f"quantized: valid error before fine-tuning {100 * error_rate(model, *valid):.2f}%")
        trainable = [p for n, p in model.named_parameters() if n.endswith(".centroids") or n.endswith(".bias")]
        config = _seeded(recipe.finetune, seed + 100)
        train(model, train_x, train_y, config, "fine-tune centroids", trainable, run.during(finetune, model), within(finetune))
        run.save(finetune, model)
        log(f"fine-tuned: valid error {100 * error_rate(model, *valid):.2f}%")
    clustered = run.kept["clustered"]

    distributed.check_agreement(model)
    path = out / "model.dzip"
    save(model, path, overwrite=True)
    if not distributed.is_writer():
        return {"world_size": distributed.world_size(), "rank": distributed.rank()}
    decoded = models.build(name)
    decoded.load_state_dict(load(path))
    _check_bit_identical(model, decoded)
    compressed_error = error_rate(decoded, *test)

    data = path.read_bytes()
    log("")
    stats = report.layer_stats(data)
    log(report.format_table(data, stats))
    totals = report.summary(data, stats)
    results = {
        "model": name,
        "seed": seed,
        "world_size": distributed.world_size(),
        "dense_error": dense_error,
        "compressed_error": compressed_error,
        "dense_bytes": totals["dense_bytes"],
        "file_bytes": totals["file_bytes"],
        "ratio": totals["ratio"],
        "seconds": round(time.perf_counter() - started, 1),
        "layers": totals["layers"],
    }
    log("")
    log(f"dense:   {results['dense_bytes']:,} bytes, test error {100 * dense_error:.2f}%")
    log(f"deepzip: {results['file_bytes']:,} bytes ({path}), test error {100 * compressed_error:.2f}% (decoded from the file)")
    log(f"ratio:   {results['ratio']:.1f}x")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    run.finish()
    summary = report.write_report(path, out / "report", dense_state_dict=dense_weights, clustered_state_dict=clustered)
    log(f"report:  {summary}")
    return results


def trained_baseline(
    name: str,
    out: Path,
    train_set,
    config: TrainConfig,
    seed: int,
    log=print,
    run: RunState | None = None,
    resume: dict | None = None,
    model: torch.nn.Module | None = None,
) -> torch.nn.Module:
    """The dense model trained on `train_set`, cached in OUT for re-runs (see `baseline_path`).

    With `run`, its training is checkpointed as stage 0; `resume` and `model` (holding the
    checkpoint's weights) continue a killed one.
    """
    torch.manual_seed(seed)
    fresh = models.build(name)
    model = fresh if resume is None or model is None else model
    config = _seeded(config, seed)
    path = baseline_path(out, name, train_set, config)
    if path.exists():
        model = fresh
        model.load_state_dict(torch.load(path, weights_only=True))
        log(f"baseline: loaded from {path}")
    else:
        checkpointing = None if run is None else run.during(0, model)
        train(model, *train_set, config, "baseline", None, checkpointing, resume)
        if distributed.is_writer():
            torch.save(model.state_dict(), path)
    return model


def _dense(name: str, weights: dict) -> torch.nn.Module:
    """A fresh `name` model holding the dense baseline's weights."""
    model = models.build(name)
    model.load_state_dict(weights)
    return model


def baseline_path(out: Path, name: str, train_set: tuple[torch.Tensor, ...], config: TrainConfig) -> Path:
    """OUT/baseline-MODEL-DIGEST-seedN.pt: the cache file of one model, training set and config.

    DIGEST (12 hex digits of SHA-256) covers the model name, every field of `config` and
    the dtype, shape and bytes of each tensor of `train_set`, so a run on other data (say
    Fashion-MNIST into the same OUT) or with another baseline schedule never reuses a
    cached model. Hashing the ~160 MB of MNIST's training images takes a fraction of a second.
    """
    digest = hashlib.sha256(json.dumps({"model": name, "config": asdict(config)}, sort_keys=True).encode())
    for tensor in train_set:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"|{tensor.dtype}{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # raw bytes of any dtype, no copy
    return out / f"baseline-{name}-{digest.hexdigest()[:12]}-seed{config.seed}.pt"


def recipe_schedule(name: str, rules: CompressionRecipe) -> Recipe:
    """The shipped schedule for `name` with a user recipe's final sparsity and bits.

    The recipe (deepzip.recipe.Recipe) gives each layer's final sparsity; pruning reaches
    it in as many steps as the shipped schedule, with the kept fraction shrinking
    geometrically (kept_i = kept_final ** (i / steps)) and the shipped retraining after each.
    """
    shipped = RECIPES[name]
    final = rules.setting("sparsity")
    if rules.setting("quality"):
        raise ConfigError("reproduce --recipe takes sparsity rules, not quality")
    steps = len(shipped.prune_steps)
    schedule = tuple(
        PruneStep(
            {p: 1.0 - (1.0 - s) ** (i / steps) for p, s in final.items()},
            shipped.prune_steps[i - 1].retrain,
        )
        for i in range(1, steps + 1)
    )
    # The recipe's bits first (first match wins), then the shipped ones for other layers.
    bits = {**rules.setting("bits"), **{p: b for p, b in shipped.bits.items() if p not in rules.setting("bits")}}
    return Recipe(name, shipped.baseline, schedule, bits, shipped.finetune)


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _seeded(config: TrainConfig, seed: int) -> TrainConfig:
    return TrainConfig(**{**config.__dict__, "seed": seed})


def _check_bit_identical(model: torch.nn.Module, decoded: torch.nn.Module) -> None:
    """The decoded weights must equal the in-memory quantized ones bit for bit."""
    reference = {n: m.weight for n, m in model.named_modules() if isinstance(transform_of(m), SharedWeights)}
    for name, module in decoded.named_modules():
        if name in reference and not torch.equal(reference[name].detach(), module.weight.detach()):
            raise AssertionError(f"{name}: decoded weights differ from the quantized model")


def sensitivity(
    name: str, out: Path, data_root: Path | None = None, seed: int = 0, tolerance: float = 0.001, log=print
) -> Path:
    """Scan one layer at a time (pruning, then bits) on the validation split; write a recipe.

    Uses the cached dense baseline (trained if missing). Writes OUT/sensitivity/: the
    tables (JSON and Markdown), the curves (PNG) and `recipe.yaml`, the largest sparsity
    and smallest bits per layer whose validation accuracy stays within `tolerance` of the
    dense model's. Returns the recipe's path; `reproduce --recipe` runs it.
    """
    from tqdm import tqdm

    from deepzip.report import charts
    from deepzip.train.sensitivity import (
        prune_sensitivity,
        quantize_sensitivity,
        recipe_from_sensitivity,
        recipe_yaml,
    )

    if name not in RECIPES:
        raise ConfigError(f"no reproduction recipe for {name!r}; choose one of {', '.join(RECIPES)}")
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
    train_set = load_mnist("train", data_root)
    valid = load_mnist("valid", data_root)
    model = trained_baseline(name, out, train_set, RECIPES[name].baseline, seed, log)
    target = out / "sensitivity"
    target.mkdir(parents=True, exist_ok=True)

    def accuracy(m: torch.nn.Module) -> float:
        return 1.0 - error_rate(m, *valid)

    tables = []
    for kind, scan in (("sparsity", prune_sensitivity), ("bits", quantize_sensitivity)):
        with tqdm(desc=f"sensitivity to {kind}", unit="eval", leave=False) as bar:
            table = scan(model, accuracy, progress=lambda _: bar.update(1))
        (target / f"{kind}.json").write_text(table.to_json())
        (target / f"{kind}.md").write_text(table.to_markdown())
        charts.sensitivity_curves(table, target / f"{kind}.png", tolerance=tolerance, metric="validation accuracy")
        log(table.to_markdown())
        tables.append(table)
    recipe = recipe_from_sensitivity(tables[0], tolerance, tables[1])
    path = target / "recipe.yaml"
    path.write_text(recipe_yaml(recipe, comment=f"{name}: from a sensitivity scan, tolerance {tolerance} (validation accuracy)"))
    log(f"recipe:  {path}")
    return path
