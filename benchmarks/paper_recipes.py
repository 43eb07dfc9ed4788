"""The shipped AlexNet and VGG-16 recipes applied to randomly initialized models.

For each model: compress with the recipe (the paper's per-layer kept fractions and bits,
Han et al. 2016, Tables 3 and 4), write the .dzip, and print per layer the recipe's kept
fraction next to the one measured in the decoded file, and the file size. Random weights
say nothing about accuracy, and their codes are less skewed than trained ones, so the
ratio is a floor for what trained weights give.

    python benchmarks/paper_recipes.py [--models alexnet,vgg16]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click


@click.command()
@click.option("--models", default="alexnet,vgg16", show_default=True, help="Comma-separated shipped recipes to apply.")
def main(models: str) -> None:
    """Apply shipped recipes to random models; compare kept fractions; report file sizes."""
    import torch

    from deepzip import container
    from deepzip.paper import models as zoo
    from deepzip.train.post_training import compress_state_dict
    from deepzip.train.recipe import load_recipe

    torch.manual_seed(0)
    for name in models.split(","):
        recipe = load_recipe(name)
        state = zoo.build(name).state_dict()
        started = time.perf_counter()
        compressed = compress_state_dict(state, recipe.setting("sparsity"), recipe.setting("bits"))
        with tempfile.TemporaryDirectory() as tmp:
            size = container.write(compressed, Path(tmp) / f"{name}.dzip")
            decoded = container.read(Path(tmp) / f"{name}.dzip").state_dict()
        seconds = time.perf_counter() - started
        dense = 4 * sum(t.numel() for t in state.values())
        click.echo(f"\n{name}: {dense:,} bytes fp32 -> {size:,} bytes on disk, {dense / size:.1f}x ({seconds:.1f} s)")
        click.echo(f"{'layer':14} {'recipe kept':>11} {'file kept':>10} {'diff (points)':>14}")
        worst = 0.0
        for layer, sparsity in recipe.setting("sparsity").items():
            weight = decoded[f"{layer}.weight"]
            kept = float((weight != 0).sum()) / weight.numel()
            worst = max(worst, abs(100 * (kept - (1 - sparsity))))
            click.echo(f"{layer:14} {100 * (1 - sparsity):10.2f}% {100 * kept:9.2f}% {100 * (kept - (1 - sparsity)):+14.3f}")
        click.echo(f"largest difference: {worst:.3f} points")


if __name__ == "__main__":
    main()
