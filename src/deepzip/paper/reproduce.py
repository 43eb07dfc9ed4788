"""`deepzip reproduce`: the paper's MNIST experiments, end to end, from data to decoded model.

Train the dense baseline (cached), prune in steps with retraining (by magnitude, or learned
by variational dropout), quantize and fine-tune the centroids, write the .dzip, read it
back into a fresh model and evaluate that. What each network goes through is in
`deepzip.paper.schedules`: deepzip's best schedule by default, the paper's own with
`paper=True`. The choices were made on the validation split; the reported errors are on
the test split.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from deepzip import report
from deepzip.errors import ConfigError
from deepzip.paper import models
from deepzip.paper.data import load_mnist
from deepzip.paper.published import PUBLISHED, side_by_side
from deepzip.paper.resume import DEFAULT_EVERY, RunState
from deepzip.paper.schedules import PAPER_RECIPES, RECIPES, LearnedSparsity, Recipe
from deepzip.paper.training import TrainConfig, error_rate, logits_of, train
from deepzip.runtime.load import load
from deepzip.train import distributed
from deepzip.train.export import round_codebooks_, round_raw_, save
from deepzip.train.parametrizations import SharedWeights, load_state_dict, transform_of
from deepzip.train.prune import prune_
from deepzip.train.quantize import quantize_
from deepzip.train.variational import harden_, kl_divergence, variational_


def reproduce(
    name: str,
    out: Path,
    data_root: Path | None = None,
    seed: int = 0,
    log=print,
    recipe: Recipe | None = None,
    *,
    paper: bool = False,
    evaluate_test: bool = True,
    start: dict | None = None,
    keep_pruned: bool = False,
    write_report: bool = True,
    resume: bool = False,
    checkpoint_every: int = DEFAULT_EVERY,
) -> dict:
    """Run the recipe for model `name`, write OUT/model.dzip and OUT/results.json, return the results.

    `paper` runs the paper's own pipeline and settings instead of deepzip's best
    (`deepzip.paper.schedules`). Without `evaluate_test` the test split is never scored
    (a search's trials, chosen on the validation split alone). `start`, a state dict of
    a pruned model (masks included), replaces the model after the baseline stage, before
    the recipe's pruning steps (none: quantize it as it is); `keep_pruned` writes the
    model after the last pruning step to OUT/pruned.pt, such a state dict. `write_report`
    writes OUT/report/ (tables, figures). `recipe` replaces the shipped one (`recipe_schedule` makes one from a recipe file;
    tests pass tiny ones to run the pipeline in seconds). Under a process group (torchrun,
    `deepzip reproduce --nproc N`) every rank trains its share of each global batch, the
    ranks' masks, codes and centroids are checked equal after every step, and rank 0 alone
    logs, writes the files and returns the results; the others return their rank.

    Every `checkpoint_every` optimizer steps and after every stage, OUT/checkpoint.pt
    records where the run is (`deepzip.paper.resume`); with `resume`, a run killed
    part-way continues from there to the very file an uninterrupted run writes.
    """
    shipped = PAPER_RECIPES if paper else RECIPES
    if recipe is None and name not in shipped:
        raise ConfigError(f"no reproduction recipe for {name!r}; choose one of {', '.join(shipped)}")
    recipe = recipe or shipped[name]
    raw_dtype = getattr(torch, recipe.raw_dtype)  # biases and other raw tensors, as the file stores them
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
    dense_valid_error = error_rate(dense, *valid)
    log(f"baseline: valid error {100 * dense_valid_error:.2f}%, test error {100 * dense_error:.2f}%")
    teacher = {} if recipe.distill is None else {"teacher_logits": logits_of(dense, train_x), "distillation": recipe.distill}

    if start is not None and first <= 1:
        load_state_dict(model, start)
    steps = len(recipe.prune_steps)
    for step, prune_step in enumerate(recipe.prune_steps, 1):
        if step < first:
            continue
        learned = prune_step.learned
        if within(step) is None and prune_step.sparsity:
            _log_kept(log, f"prune step {step}", prune_(model, prune_step.sparsity))
            distributed.check_agreement(model)
        elif within(step) is None and learned is not None:
            variational_(model, log_sigma2=learned.log_sigma2, threshold=learned.threshold)
        config = _seeded(prune_step.retrain, seed + step)
        regularizer = None if learned is None else _kl_term(model, learned, len(train_x))
        desc = f"{'learn sparsity' if learned else 'prune'} {step}/{steps}"
        # A learned step trains on the labels alone: its KL term is weighed against the
        # cross-entropy, and a distillation loss would move that balance (LeNet-5, KL
        # weight 0.4: fc1 kept 2.4% of its weights under distillation, 1.1% without).
        guide = {} if learned is not None else teacher
        train(model, train_x, train_y, config, desc, None, run.during(step, model), within(step), regularizer=regularizer, **guide)
        if learned is not None:
            _log_kept(log, f"prune step {step} (variational dropout)", harden_(model))
            distributed.check_agreement(model)
        run.save(step, model)
        log(f"prune step {step}: valid error {100 * error_rate(model, *valid):.2f}% after retraining")

    quantized = any(isinstance(transform_of(m), SharedWeights) for m in model.modules())  # resumed past this point
    if keep_pruned and not quantized and distributed.is_writer():
        torch.save(model.state_dict(), out / "pruned.pt")
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
        train(model, train_x, train_y, config, "fine-tune centroids", trainable, run.during(finetune, model), within(finetune), **teacher)
        dead_weights, dead_biases = models.drop_dead_units_(model)  # exact: no output changes
        log(f"dead units: {dead_weights} weights and {dead_biases} biases that no output depends on pruned")
        round_raw_(model, raw_dtype)
        round_codebooks_(model, getattr(torch, recipe.codebook_dtype))
        run.save(finetune, model)
        log(f"fine-tuned: valid error {100 * error_rate(model, *valid):.2f}%")
    clustered = run.kept["clustered"]

    distributed.check_agreement(model)
    path = out / "model.dzip"
    save(model, path, overwrite=True, raw_dtype=raw_dtype, coders=recipe.coders, index_bits=recipe.index_bits)
    if not distributed.is_writer():
        return {"world_size": distributed.world_size(), "rank": distributed.rank()}
    decoded = models.build(name)
    decoded.load_state_dict(load(path))
    _check_bit_identical(model, decoded)
    valid_error = error_rate(decoded, *valid)
    compressed_error = error_rate(decoded, *test) if evaluate_test else None

    data = path.read_bytes()
    log("")
    stats = report.layer_stats(data)
    log(report.format_table(data, stats))
    totals = report.summary(data, stats)
    results = {
        "model": name,
        "mode": "paper" if paper else "deepzip",
        "seed": seed,
        "world_size": distributed.world_size(),
        "dense_error": dense_error,
        "compressed_error": compressed_error,
        "dense_valid_error": dense_valid_error,
        "valid_error": valid_error,
        "dense_bytes": totals["dense_bytes"],
        "file_bytes": totals["file_bytes"],
        "ratio": totals["ratio"],
        "seconds": round(time.perf_counter() - started, 1),
        "layers": totals["layers"],
    }
    log("")
    log(f"dense:   {results['dense_bytes']:,} bytes, test error {100 * dense_error:.2f}%")
    if compressed_error is None:
        log(f"deepzip: {results['file_bytes']:,} bytes ({path}), valid error {100 * valid_error:.2f}% (decoded from the file)")
    else:
        log(f"deepzip: {results['file_bytes']:,} bytes ({path}), test error {100 * compressed_error:.2f}% (decoded from the file)")
    log(f"ratio:   {results['ratio']:.1f}x")
    if name in PUBLISHED and compressed_error is not None:
        log("")
        log(side_by_side(name, stats, results["file_bytes"], dense_error, compressed_error))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    run.finish()
    if write_report:
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
    fields = asdict(config)
    if fields["optimizer"] == "sgd":
        del fields["optimizer"]  # a later field: its default leaves the digests of older caches as they were
    digest = hashlib.sha256(json.dumps({"model": name, "config": fields}, sort_keys=True).encode())
    for tensor in train_set:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"|{tensor.dtype}{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # raw bytes of any dtype, no copy
    return out / f"baseline-{name}-{digest.hexdigest()[:12]}-seed{config.seed}.pt"


def _log_kept(log, what: str, kept) -> None:
    log(f"{what}: kept " + ", ".join(f"{layer.removesuffix('.weight')} {100 * f:.1f}%" for layer, f in kept.items()))


def _kl_term(model: torch.nn.Module, learned: LearnedSparsity, examples: int):
    """The ELBO's KL term per training example, its weight ramped up over the warm-up."""

    def term(progress: float) -> torch.Tensor:
        ramp = 1.0 if learned.warmup <= 0 else min(1.0, progress / learned.warmup)
        return learned.kl_weight * ramp * kl_divergence(model) / examples

    return term


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
