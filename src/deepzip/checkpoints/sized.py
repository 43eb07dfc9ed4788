"""Compress a checkpoint to a size budget: measure, allocate, write, and check the file on disk.

The steps come from `deepzip.budget.allocate` on each tensor's rate-distortion curve,
weighted by sensitivities measured on calibration data (`deepzip.budget.sensitivity`) or,
data-free, all equal. Everything in the file besides the compressed tensors (raw tensors,
attached files, the header) is measured first and taken off the budget; the file is then
written and its real size checked. When rounding in the estimates makes it overshoot, the
budget for the tensors shrinks by the excess and the file is written again, so the file
on disk always fits; when it lands more than SLACK under, the spare bytes are allocated
too and the larger file replaces it if it still fits.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deepzip import container
from deepzip.budget.allocate import Curve, choose, tensor_curve
from deepzip.budget.moments import input_moments
from deepzip.budget.sensitivity import OutputDistortion, geometric_mean, sensitivities
from deepzip.budget.sizes import budget_bytes
from deepzip.checkpoints.compress import Settings, compress_file
from deepzip.checkpoints.read import open_checkpoint
from deepzip.compressed import RawTensor
from deepzip.container.writer import may_code_planes, xz_compress
from deepzip.errors import ConfigError
from deepzip.summary import Summary
from deepzip.train.post_training import divide_slices, plan

MAX_TRIES = 6
# A file further than this under its budget is written again with the spare bytes given
# to the tensors (kept only if it still fits): the estimates are within a few % of the
# coded sizes, and that much rate is fidelity left unused.
SLACK = 0.004
MAX_GROWS = 2  # larger files tried after one fits: each costs a write
SETTINGS = Settings(0.0, 8, None, None, [])  # unused by tensors with a step: every compressed tensor has one
# The calibration inputs' second moments (float64 [in, in] a Linear) are held for the whole
# run; past this, the remaining layers are rounded without error compensation.
MAX_MOMENT_BYTES = 4 << 30
# Header bytes a record costs besides its section (name, dtype, shape, sizes, checksum).
_HEAD_BYTES = 24


@dataclass(frozen=True)
class Allocation:
    """What the budget run chose: per stored tensor its step, estimated bytes, sensitivity and scale axis.

`compensated` names the Linear weights whose levels were chosen by error compensation
(`deepzip.train.gptq`, calibrated runs only); the others are rounded to the nearest level.
"""

    budget: int
    steps: dict[str, float]
    nbytes: dict[str, int]
    sensitivity: dict[str, float]
    tries: int
    scale_axes: dict[str, int]
    compensated: frozenset[str] = frozenset()


def compress_to_size(
    path: str | os.PathLike,
    output: str | os.PathLike,
    size: str | None = None,
    *,
    bits_per_weight: float | None = None,
    probe: OutputDistortion | None = None,
    compensate: bool = True,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[int, Summary, Allocation]:
    """Compress the checkpoint at `path` into `output`, a file no larger than the budget.

    `size` is `8x` (against the fp32 parameters), `12MB`, `11MiB` or bytes; or give
    `bits_per_weight`. With `probe` (calibration: `deepzip.checkpoints.calibration`), each
    tensor's step is weighted by its measured output sensitivity, and Linear weights are
    rounded with error compensation on the calibration inputs (`deepzip.train.gptq`);
    without, data-free, every tensor's squared error counts the same. `compensate=False`
    rounds every weight to its nearest level even with a probe (error compensation would
    move a pruned model's zeros). ConfigError if even
    the coarsest quantization of every tensor cannot fit. Returns (file size, Summary,
    Allocation).
    """
    note = log or (lambda message: None)
    with open_checkpoint(path) as source:
        metas = {name: source.meta(name) for name in source.names}
        decided = plan(metas, source.ties)
        distinct = list(decided.groups)
        fp32 = sum(4 * int(np.prod(metas[first][1], dtype=np.int64)) for first in distinct)
        numel = fp32 // 4
        budget = budget_bytes(size, fp32, bits_per_weight, numel)
        fixed = _fixed_bytes(source, decided, metas)
        weights = {first: 1.0 for first in decided.chosen}
        scales: dict[str, tuple[np.ndarray, int]] = {}
        moments: dict[str, torch.Tensor] = {}
        if probe is not None:
            measured = sensitivities(decided.chosen, probe, progress)
            known = [v.mean for v in measured.values() if v is not None]
            if not known:
                raise ConfigError("no compressed tensor of the checkpoint was found in the calibration model")
            fallback = float(np.median(known))
            missing = [n for n, v in measured.items() if v is None]
            if missing:
                note(f"{len(missing)} tensors not in the calibration model get the median sensitivity ({missing[0]}, ...)")
            for name, found in measured.items():
                weights[name] = fallback if found is None else found.mean
                if found is not None and found.axis is not None:
                    scales[name], weights[name] = (slice_scales(found.slices), found.axis), geometric_mean(found.slices)
            if compensate:
                moments = _bounded(input_moments(decided.chosen, probe, progress), note)
        curves: dict[str, Curve] = {}
        for first in decided.chosen:
            if progress is not None:
                progress(f"curve {first}")
            tensor = source.tensor(first)
            if first in scales:
                tensor = divide_slices(tensor, *scales[first])
            curves[first] = tensor_curve(tensor, extra_bytes=2 * len(scales[first][0]) if first in scales else 0)
    note(f"budget {budget:,} bytes: {fixed:,} for raw tensors, files and the header, the rest for {len(curves)} tensors")
    target = budget - fixed
    best: tuple[int, Summary, Allocation] | None = None
    spare, fitted, grows = None, None, 0  # fitted: the last target whose file fit; grows: larger files tried
    try:
        for tries in range(1, MAX_TRIES + 1):
            choice = choose(curves, weights, target)
            steps = {n: float(curves[n].steps[i]) for n, i in choice.items()}
            quantizers = {
                n: {"step": step}
                | ({"scale": scales[n][0], "scale_axis": scales[n][1]} if n in scales else {})
                | ({"hessian": moments[n]} if n in moments else {})
                for n, step in steps.items()
            }
            # A file that fits stays at `output`; a larger one is tried beside it and replaces it only if it fits too.
            if best is not None and spare is None:
                handle, spare = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(output)), suffix=".dzip.part")
                os.close(handle)
            destination = output if best is None else spare
            written, summary = compress_file(path, destination, SETTINGS, overwrite=overwrite or tries > 1, steps=quantizers)
            if written > budget:
                if best is not None:  # the larger file did not fit: try half as much more, if a try is left
                    if grows == MAX_GROWS:
                        return best
                    target, grows = fitted + (target - fitted) // 2, grows + 1
                    continue
                note(f"the file is {written - budget:,} bytes over the budget: allocating again")
                target -= (written - budget) + max(64, (written - budget) // 4)
                continue
            if destination == spare:
                os.replace(spare, output)
            estimates = {n: int(curves[n].nbytes[i]) for n, i in choice.items()}
            axes = {n: a for n, (_, a) in scales.items()}
            best = written, summary, Allocation(budget, steps, estimates, weights, tries, axes, frozenset(moments))
            under = budget - written
            if under <= SLACK * budget or grows == MAX_GROWS:
                return best
            note(f"the file is {under:,} bytes under the budget: allocating them too")
            fitted, target, grows = target, target + under, grows + 1
        if best is not None:
            return best
    finally:
        if spare is not None and os.path.exists(spare):
            os.unlink(spare)
    os.unlink(output)
    raise ConfigError(f"could not fit the budget of {budget:,} bytes in {MAX_TRIES} tries")


def _bounded(moments: dict[str, torch.Tensor], note: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """The input moments, in order, up to MAX_MOMENT_BYTES in all; the layers past it are rounded plainly."""
    kept, total = {}, 0
    for name, moment in moments.items():
        total += moment.numel() * moment.element_size()
        if total > MAX_MOMENT_BYTES:
            note(f"input moments past {MAX_MOMENT_BYTES >> 30} GiB: {len(moments) - len(kept)} Linear weights are rounded without error compensation")
            break
        kept[name] = moment
    return kept


def slice_scales(slices: np.ndarray) -> np.ndarray:
    """Per-slice step factors (slices / geometric mean) ** -0.5, rounded to float16 values (as stored)."""
    factors = (slices / geometric_mean(slices)) ** -0.5
    return factors.astype(np.float16).astype(np.float32)


def _raw_bytes(source, name: str, dtype, shape) -> int:
    """Bytes a raw tensor takes in the file; read and encoded only where the writer would try byte planes."""
    numel = int(np.prod(shape, dtype=np.int64))
    if not may_code_planes(numel, dtype.itemsize):
        return numel * dtype.itemsize
    return container.encoded_size(RawTensor(source.tensor(name)))


def _fixed_bytes(source, decided, metas) -> int:
    """Bytes of everything but the compressed tensors' sections: raw tensors (as the writer
    codes them: byte planes where smaller), files, header, framing."""
    raw = sum(_raw_bytes(source, first, *metas[first]) for first in decided.groups if first not in decided.chosen)
    files = sum(len(xz_compress(content)) + _HEAD_BYTES + len(name) for name, content in source.files.items())
    heads = sum(_HEAD_BYTES + len(name) for name in metas)
    return raw + files + heads + container.PREAMBLE.size + 8
