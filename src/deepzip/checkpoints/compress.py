"""Post-training compression of a checkpoint: settings from a recipe and explicit values.

The work itself, including tied tensors and the checks of every setting before the first
tensor, is `deepzip.train.post_training`; this module merges a recipe's rules with
explicit settings and attaches the checkpoint's files. `compress_checkpoint` works in
memory; `compress_file` streams a checkpoint of any size to a .dzip file one tensor at a
time, optionally on several processes, with the same bytes whatever their number.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from deepzip import container
from deepzip.checkpoints.read import Checkpoint, open_checkpoint
from deepzip.compressed import Alias, CompressedModel, RawTensor
from deepzip.container.writer import EncodedRecord
from deepzip.errors import ConfigError
from deepzip.summary import Summary
from deepzip.train.post_training import compress_planned, compress_state_dict, plan
from deepzip.train.recipe import Recipe, load_recipe
from deepzip.train.registry import POST_TRAINING_BITS


@dataclass(frozen=True)
class Settings:
    """Explicit settings and a recipe, merged once (explicit patterns first, see `compress_checkpoint`)."""

    sparsity: float | Mapping[str, float]
    bits: int | Mapping[str, int]
    index_bits: Mapping[str, int] | None
    include: list[str] | None
    exclude: list[str]


def settings(
    recipe: Recipe | str | os.PathLike | None = None,
    sparsity: float | Mapping[str, float] | None = None,
    bits: int | Mapping[str, int] | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> Settings:
    """Merge a recipe (a Recipe, a shipped recipe's name or a YAML path) with explicit settings."""
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    rules = recipe or Recipe()
    if rules.setting("quality"):
        raise ConfigError("recipe: quality is only supported by prune_ for now; give sparsity for compress")
    return Settings(
        _merged(sparsity, rules.setting("sparsity"), 0.0),
        _merged(bits, rules.setting("bits"), POST_TRAINING_BITS),
        rules.setting("index_bits") or None,
        list(include) if include is not None else None,
        list(exclude),
    )


def compress_file(
    path: str | os.PathLike,
    output: str | os.PathLike,
    setting: Settings,
    *,
    jobs: int = 1,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    steps: Mapping[str, dict] | None = None,
) -> tuple[int, Summary]:
    """Compress the checkpoint at `path` into the .dzip `output`; return (file size, Summary).

    The checkpoint is read one tensor at a time (memory-mapped where the format allows) and
    the file is written section by section, so memory holds about one tensor per process.
    With `jobs` > 1, that many worker processes compress tensors in parallel; records are
    written in the same order, so the file's bytes are the same for any `jobs`.
    `progress(name)` is called as each distinct tensor is written. `steps` ({stored name:
    {"step", and optionally "scale" and "scale_axis"}}, from a size budget:
    `deepzip.checkpoints.sized`) quantizes those tensors uniformly instead of with the
    settings' sparsity and bits (see `post_training.quantize_uniform`).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    with open_checkpoint(path) as source:
        metas = {name: source.meta(name) for name in source.names}
        for name, (dtype, _) in metas.items():
            if dtype not in container.DTYPE_CODES:
                raise ConfigError(f"tensor {name!r}: dtype {dtype} cannot be stored in a .dzip file")
        decided = plan(
            metas, source.ties, setting.sparsity, setting.bits, include=setting.include,
            exclude=setting.exclude, index_bits=setting.index_bits,
        )  # fmt: skip
        for first, quantizer in (steps or {}).items():
            decided.chosen[first].update(quantizer)
        rows: list = []
        items = _items(source, decided, metas, rows, jobs, progress)
        size = container.write_stream(output, items, source.files, overwrite=overwrite)
    return size, decided.summary(rows)


def _items(source, decided, metas, rows, jobs, progress):
    """(name, record) in sorted order of the stored names, aliases after their target."""
    order = sorted(decided.groups)
    compressed = [first for first in order if first in decided.chosen]
    pool = None
    if jobs > 1 and len(compressed) > 1:
        # spawn, not fork: a forked child of a process that ran OpenMP kernels may hang.
        pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(compressed)))
        results = pool.imap(_encode_one, [(source.path, first, decided.chosen[first]) for first in compressed])
    try:
        for first in order:
            if first in decided.chosen:
                encoded, kept, k = next(results) if pool else _encode_one((source, first, decided.chosen[first]))
                rows.append(decided.row(first, metas[first][1], kept, k))
            else:
                encoded = RawTensor(source.tensor(first))
                rows.append(decided.row(first, metas[first][1], None))
            yield first, encoded
            del encoded
            for name in decided.groups[first][1:]:
                yield name, Alias(first)
            if progress is not None:
                progress(first)
    finally:
        if pool is not None:
            pool.terminate()


_SOURCES: dict = {}  # per worker process: the checkpoint opened once


def _encode_one(task) -> tuple[EncodedRecord, int, int]:
    """Compress and encode one tensor (in a worker, or inline): (encoded record, kept, codebook size)."""
    source, name, setting = task
    if not hasattr(source, "tensor"):  # a path, in a worker process
        source = _SOURCES.get(source) or _SOURCES.setdefault(source, open_checkpoint(source))
    record = compress_planned(source.tensor(name), setting)
    return container.encode_record(name, record), record.kept, len(record.codebook)


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
    merged = settings(recipe, sparsity, bits, include, exclude)
    for name, tensor in checkpoint.state_dict.items():
        if tensor.dtype not in container.DTYPE_CODES:
            raise ConfigError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in a .dzip file")
    compressed = compress_state_dict(
        checkpoint.state_dict, merged.sparsity, merged.bits, include=merged.include, exclude=merged.exclude,
        index_bits=merged.index_bits, progress=progress,
    )  # fmt: skip
    return replace(compressed, files=dict(checkpoint.files))


def _merged(explicit, from_recipe: dict, default):
    """One setting: explicit patterns first, then the recipe's; a single explicit value alone."""
    if explicit is None:
        return from_recipe or default
    if not isinstance(explicit, Mapping):
        return explicit
    return {**explicit, **{p: v for p, v in from_recipe.items() if p not in explicit}}
