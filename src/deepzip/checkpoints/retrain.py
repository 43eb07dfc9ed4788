"""Retrain a pretrained model while compressing it, with no labels: distillation from the original.

The paper's pipeline (prune, retrain, quantize, retrain the centroids) needs a training
signal. A user with an encoder or a backbone and no labelled task has one anyway: the
uncompressed model itself. `distill_` trains a pruned or quantized student to reproduce
the teacher's floating outputs (last hidden states, pooled outputs, logits) on unlabeled
inputs, with the same relative squared error, padding left out, that `--size` minimises
post-training (`deepzip.budget.sensitivity.relative_error`). `retrain` runs the whole
pipeline on a transformers directory and writes the .dzip with the directory's files.

The Python API takes the user's own model, batches and loss: `distill_(student, teacher,
batches, steps, loss=...)` between the user's own `prune_` and `quantize_` calls.
"""

from __future__ import annotations

import copy
import itertools
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from deepzip import container, module_state
from deepzip.budget.sensitivity import OutputDistortion, output_error
from deepzip.checkpoints.calibration import model_of, text_batches
from deepzip.checkpoints.read import open_checkpoint
from deepzip.compressed import CompressedModel
from deepzip.errors import ConfigError
from deepzip.train import distributed
from deepzip.train.export import export
from deepzip.train.prune import prune_
from deepzip.train.quantize import quantize_
from deepzip.train.registry import raw_reason_for

Loss = Callable[[object, object, object], torch.Tensor]


def output_loss(reference, output, batch) -> torch.Tensor:
    """The distillation loss: `output_error` (relative squared error of every floating output), real tokens only."""
    return output_error(reference, output, OutputDistortion.mask_of(batch))


def distill_(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    batches: Sequence,
    steps: int,
    *,
    lr: float = 1e-4,
    loss: Loss = output_loss,
    desc: str = "distill",
) -> float:
    """Train `student` in place for `steps` Adam steps to match `teacher` on `batches`; return the last loss.

    `batches` are dicts of forward keyword arguments (or tensors), cycled in order; the
    teacher's outputs are computed once per batch. Every parameter of the student that
    requires a gradient trains (after `quantize_`: the centroids, biases and norms), in
    eval mode. Under a
    process group, wrap is `deepzip.train.distributed.wrap`, and each rank should pass its
    own share of the batches.
    """
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    batches = list(batches)
    if not batches:
        raise ConfigError("distillation needs at least one batch of inputs")
    teacher.eval()
    with torch.no_grad():
        targets = [teacher(**b) if isinstance(b, Mapping) else teacher(b) for b in batches]
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    wrapped = distributed.wrap(student)
    # The student trains in eval mode: no dropout and frozen normalisation statistics, so
    # what it learns to match is the teacher's inference-time behaviour.
    student.eval()
    last = float("nan")
    cycle = itertools.cycle(zip(batches, targets, strict=True))
    with tqdm(total=steps, desc=desc, unit="step", leave=False, dynamic_ncols=True, disable=distributed.rank() != 0) as bar:
        for _ in range(steps):
            batch, target = next(cycle)
            output = wrapped(**batch) if isinstance(batch, Mapping) else wrapped(batch)
            value = loss(target, output, batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            last = float(value.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last:.2e}", refresh=False)
    return last


def retrain(
    path: str | os.PathLike,
    output: str | os.PathLike,
    text_file: str | os.PathLike,
    *,
    sparsity: float | Mapping[str, float] = 0.0,
    bits: int | Mapping[str, int] = 4,
    size: str | None = None,
    prune_steps: int = 300,
    finetune_steps: int = 300,
    lr: float = 1e-4,
    max_texts: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[int, CompressedModel]:
    """Prune, distil, quantize and distil a transformers directory; write the .dzip; return (size, record).

    `sparsity` and `bits` are one value or {pattern: value}, as in `prune_`/`quantize_`;
    the text (one input a line, through the directory's tokenizer) is the only data. The
    file carries the directory's config and tokenizer files, like `deepzip compress`.
    With `size` (`8x`, `12MB`: see `deepzip.checkpoints.sized`), the pruned and distilled
    model is quantized to that budget instead of to `bits`: the steps per tensor are
    allocated by sensitivities measured on the same text (`finetune_steps` is unused;
    a pruned model's weights are rounded to the nearest level, so its zeros stay zeros).
    Under a process group (torchrun), each rank distils on its share of the text's
    batches, the ranks agree on masks and codebooks, and only rank 0 writes.
    """
    teacher = model_of(path)
    batches = text_batches(path, text_file, max_texts)
    student = copy.deepcopy(teacher)
    log(f"retrain: {sum(len(b['input_ids']) for b in batches)} texts in {len(batches)} batches")
    shard = batches
    if distributed.active() and len(batches) >= distributed.world_size():
        shard = batches[distributed.rank() :: distributed.world_size()]
    elif distributed.active():
        log(f"{len(batches)} batches are too few to share among {distributed.world_size()} ranks: each distils on all")
    if sparsity:
        prune_(student, sparsity)
        log(f"pruned: distilling {prune_steps} steps")
        distill_(student, teacher, shard, prune_steps, lr=lr, desc="distill after pruning")
    if size is not None:
        return _write_to_size(path, output, student, batches, size, compensate=not sparsity, overwrite=overwrite, log=log)
    quantize_(student, bits)
    log(f"quantized: distilling {finetune_steps} steps (centroids, biases, norms)")
    distill_(student, teacher, shard, finetune_steps, lr=lr, desc="distill after quantization")
    with open_checkpoint(path) as source:
        files = dict(source.files)
    compressed = export(student)
    compressed = CompressedModel(compressed.tensors, files)
    if not distributed.is_writer():
        return 0, compressed
    return container.write(compressed, output, overwrite=overwrite), compressed


def _write_to_size(path, output, student, batches, size, *, compensate, overwrite, log) -> tuple[int, CompressedModel]:
    """The distilled student quantized to `size`: its weights written as a checkpoint beside
    the directory's files, then `compress_to_size` calibrated on `batches` (rank 0 only)."""
    from safetensors.torch import save_file

    from deepzip.checkpoints.sized import compress_to_size

    computed = module_state.plain_state(student)
    with open_checkpoint(path) as source:
        files = dict(source.files)
        if any(name != canonical for name, canonical in source.ties.items()):
            raise ConfigError("retrain --size does not handle tied weights yet: use --bits")
        untrained = [name for name in source.names if name not in computed and raw_reason_for(*source.meta(name)) is None]
        if untrained:
            raise ConfigError(f"the model built from the directory lacks {len(untrained)} of its weights ({untrained[0]}, ...)")
        # The checkpoint's own names: the student's values, and the checkpoint's for what the
        # model does not keep (a position-ids buffer older checkpoints saved and newer models
        # do not register as state), which distillation never changes.
        state = {
            name: (computed[name] if name in computed else source.tensor(name)).detach().contiguous()
            for name in source.names
        }
    if not distributed.is_writer():
        return 0, CompressedModel({}, files)
    with tempfile.TemporaryDirectory() as work:
        for name, content in files.items():
            target = Path(work) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        save_file(state, str(Path(work) / "model.safetensors"))
        log(f"quantizing to {size}, calibrated on the same text")
        # The probe is the student as the checkpoint holds it: plain weights, no pruning parametrizations.
        probe = OutputDistortion(model_of(work), batches)
        written, _, _ = compress_to_size(work, output, size, probe=probe, compensate=compensate, overwrite=overwrite, log=log)
    return written, container.read(output)
