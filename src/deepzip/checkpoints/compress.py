"""Post-training compression of a checkpoint: settings from a recipe and explicit values.

The work itself, including tied tensors and the checks of every setting before the first
tensor, is `deepzip.train.post_training.compress_state_dict`; this module merges a
recipe's rules with explicit settings and attaches the checkpoint's files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from deepzip import container
from deepzip.checkpoints.read import Checkpoint
from deepzip.compressed import CompressedModel
from deepzip.errors import ConfigError
from deepzip.train.post_training import compress_state_dict
from deepzip.train.recipe import Recipe, load_recipe
from deepzip.train.registry import POST_TRAINING_BITS


def compress_checkpoint(
    checkpoint: Checkpoint,
    recipe: Recipe | str | os.PathLike | None = None,
    sparsity: float | Mapping[str, float] | None = None,
    bits: int | Mapping[str, int] | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    progress: Callable[[str], None] | None = None,
) -> CompressedModel:
    """Prune and quantize `checkpoint` post-training (see `compress_state_dict`).

    Settings come from `recipe` (a Recipe, a shipped recipe's name or a YAML path: its
    sparsity, bits and index_bits rules) and from `sparsity` / `bits`, each one value or
    {pattern: value}. Explicit settings win: their patterns are tried before the recipe's,
    and a single explicit value applies to every tensor, replacing the recipe's rules for
    that setting. Tensors nothing matches get sparsity 0 and 8 bits.

    A pattern that matches no tensor is an error (a typo, almost always). Tied tensors are
    compressed once and stay one record. `progress(name)` is called before each distinct
    tensor. The checkpoint's files are attached to the result, and its `summary` says what
    became of every tensor.
    """
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    rules = recipe or Recipe()
    if rules.setting("quality"):
        raise ConfigError("recipe: quality is only supported by prune_ for now; give sparsity for compress")
    sparsity = _merged(sparsity, rules.setting("sparsity"), 0.0)
    bits = _merged(bits, rules.setting("bits"), POST_TRAINING_BITS)
    index_bits = rules.setting("index_bits")
    include = list(include) if include is not None else None
    for name, tensor in checkpoint.state_dict.items():
        if tensor.dtype not in container.DTYPE_CODES:
            raise ConfigError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in a .dzip file")
    compressed = compress_state_dict(
        checkpoint.state_dict, sparsity, bits, include=include, exclude=exclude, index_bits=index_bits or None, progress=progress
    )
    return replace(compressed, files=dict(checkpoint.files))


def _merged(explicit, from_recipe: dict, default):
    """One setting: explicit patterns first, then the recipe's; a single explicit value alone."""
    if explicit is None:
        return from_recipe or default
    if not isinstance(explicit, Mapping):
        return explicit
    return {**explicit, **{p: v for p, v in from_recipe.items() if p not in explicit}}
