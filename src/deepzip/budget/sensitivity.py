"""How much each tensor's quantization error costs at the model's output, measured on calibration data.

A tensor's sensitivity is the output distortion per unit of squared weight error. For
small independent weight noise (what quantization at 3-6 bits a weight is) the expected
distortion is the noise power times the diagonal of J^T J, J the outputs' Jacobian in the
weights; `sensitivities` estimates that diagonal for every tensor at once with
Hutchinson's trick (a few backward passes of random output directions), and reduces it
to a mean and, where it pays, per-slice means (`Sensitivity`). The distortion of the
whole model is then close to the sum of the tensors', which `deepzip.budget.allocate`
assumes. tests/budget/test_output_sensitivity.py checks the estimate against distortion
measured by substitution.

`OutputDistortion` holds a model, its inputs and its reference outputs; it can also swap
one parameter's values in place, run the inputs, and restore them (the substitution
measurement). The distortion is the relative squared error of every floating output
(last hidden states, pooled outputs, logits), padding positions left out where an
attention mask says which they are, unless the caller gives a metric of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepzip.errors import ConfigError

MIN_SCALE_GAIN_BITS = 0.05  # per-slice scales cost 2 bytes a slice: worth it above this gain
SLICE_RANGE = (1 / 16, 16)  # slice sensitivities clipped to this range around the mean: steps within 4x of the mean
HUTCHINSON_PROBES = 4  # random output directions; the sensitivities vary by a few % between seeds

Metric = Callable[[object, object], float]


def geometric_mean(values: np.ndarray) -> float:
    """The geometric mean of positive `values`."""
    return float(np.exp(np.mean(np.log(values))))


def _kept(reference: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The real-token positions of an output ([batch, tokens, ...]) where `mask` matches it, else None (all)."""
    if mask is None or reference.dim() < 2 or tuple(reference.shape[:2]) != tuple(mask.shape):
        return None
    keep = mask.to(torch.bool)
    return keep.view(*keep.shape, *([1] * (reference.dim() - 2))).expand(reference.shape)


def _floating_outputs(output) -> list[torch.Tensor]:
    """The floating tensors of a model's output: a tensor, a tuple/list, or a dict-like ModelOutput."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _floating_outputs(item)]
    return []


def output_error(reference, output, mask: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean over the model's floating outputs of ||output - reference||^2 / ||reference||^2, as a tensor.

    Differentiable in `output` (distillation trains on it: `deepzip.checkpoints.retrain`);
    computed in `dtype` where given. Where `mask` ([batch, tokens], 1 = real token) matches
    an output's first two dims, only real tokens count: padding positions carry values no
    one reads.
    """
    pairs = list(zip(_floating_outputs(reference), _floating_outputs(output), strict=True))
    total = torch.zeros((), dtype=dtype or torch.float32)
    for ref, out in pairs:
        if dtype is not None:
            ref, out = ref.to(dtype), out.to(dtype)
        diff, norm = (out - ref) ** 2, ref**2
        keep = _kept(ref, mask)
        if keep is not None:
            diff, norm = diff[keep], norm[keep]
        total = total + diff.sum() / norm.sum().clamp(min=1e-30)
    return total / max(len(pairs), 1)


def relative_error(reference, output, mask: torch.Tensor | None = None) -> float:
    """`output_error` in float64, as a number: the default distortion of `OutputDistortion`."""
    with torch.no_grad():
        return float(output_error(reference, output, mask, torch.float64))


class OutputDistortion:
    """A model and calibration batches (dicts of forward keyword arguments, or tensors).

    `distortion(name, values)` runs every batch with parameter `name` replaced by `values`
    and returns the mean of `metric(reference, output)` over batches (default
    `relative_error`); the parameter is restored afterwards, even on error.
    """

    def __init__(self, model: torch.nn.Module, batches: Sequence, metric: Metric | None = None):
        self.model = model.eval()
        self.batches = list(batches)
        if not self.batches:
            raise ConfigError("calibration needs at least one batch of inputs")
        self.metric = metric
        self.params = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
        self.reference = [self.run(batch) for batch in self.batches]

    def run(self, batch, grad: bool = False):
        """The model's output on one batch (keyword arguments or a tensor), with or without autograd."""
        with torch.set_grad_enabled(grad):
            return self.model(**batch) if isinstance(batch, Mapping) else self.model(batch)

    @staticmethod
    def mask_of(batch) -> torch.Tensor | None:
        """A batch's attention mask, where it has one."""
        return batch.get("attention_mask") if isinstance(batch, Mapping) else None

    def find(self, name: str) -> str | None:
        """The model's own name for checkpoint tensor `name` (base-model prefixes differ), or None."""
        if name in self.params:
            return name
        prefix = getattr(self.model, "base_model_prefix", "")
        for candidate in (f"{prefix}.{name}", name.split(".", 1)[-1]):
            if candidate in self.params:
                return candidate
        return None

    def distortion(self, name: str, values: torch.Tensor) -> float:
        """The calibration outputs' distortion with parameter `name` set to `values`."""
        param = self.params[name]
        saved = param.data
        param.data = values.to(dtype=param.dtype, device=param.device).view_as(saved)
        try:
            scores = []
            for batch, reference in zip(self.batches, self.reference, strict=True):
                output = self.run(batch)
                if self.metric is not None:
                    scores.append(float(self.metric(reference, output)))
                else:
                    scores.append(relative_error(reference, output, self.mask_of(batch)))
            return sum(scores) / len(scores)
        finally:
            param.data = saved


@dataclass(frozen=True)
class Sensitivity:
    """A tensor's output distortion per unit squared weight error: overall, and per slice.

    `mean` is the average over the tensor's weights. Where the weights of some slices along
    one axis (the input features of a Linear, say) matter far more than others', `axis`
    names the axis and `slices` their mean sensitivities (float64 [shape[axis]]): giving
    each slice a step proportional to slices**-0.5 spends the rate where it counts, and
    saves 0.5 * log2(arithmetic / geometric mean of `slices`) bits a weight at high rate.
    """

    mean: float
    axis: int | None = None
    slices: np.ndarray | None = None

    @staticmethod
    def of(diagonal: torch.Tensor) -> Sensitivity:
        """From the per-weight estimates: the axis whose slices gain the most, if any gains >= 0.05 bit."""
        mean = float(diagonal.mean()) if diagonal.numel() else 0.0
        best, gain = None, MIN_SCALE_GAIN_BITS
        if diagonal.dim() >= 2 and mean > 0:
            for axis in range(diagonal.dim()):
                others = [d for d in range(diagonal.dim()) if d != axis]
                slices = diagonal.mean(dim=others).numpy()
                # An axis along which many slices see no gradient at all (the rows of an
                # embedding for tokens the calibration text never used) says nothing about
                # inputs it has not seen: such an axis is not scaled.
                if np.mean(slices < 1e-6 * mean) > 0.1:
                    continue
                slices = np.clip(slices, mean * SLICE_RANGE[0], mean * SLICE_RANGE[1])
                bits = 0.5 * math.log2(float(np.mean(slices)) / geometric_mean(slices))
                if bits > gain:
                    best, gain = (axis, slices), bits
        if best is None:
            return Sensitivity(mean)
        return Sensitivity(mean, best[0], best[1])


def sensitivities(
    names: Iterable[str],
    probe: OutputDistortion,
    progress: Callable[[str], None] | None = None,
    probes: int = HUTCHINSON_PROBES,
    seed: int = 0,
) -> dict[str, float | None]:
    """{name: its Sensitivity}; None for a tensor the model does not have.

    For weight noise of variance e^2 a weight, the expected distortion of output y is
    e^2 * trace(J^T J) / ||y||^2, J the Jacobian of y in the tensor. The trace is
    E_v ||J^T v||^2 for Gaussian v (Hutchinson 1989), so `probes` backward passes of
    sum(v * y) over the calibration batches give every tensor's sensitivity at once:
    trace / (numel * ||y||^2), averaged as `relative_error` averages. `seed` fixes v.
    """
    wanted = {name: probe.find(name) for name in names}
    params = {own: probe.params[own] for own in wanted.values() if own is not None}
    totals = {own: torch.zeros(p.shape, dtype=torch.float64) for own, p in params.items()}
    if not params:
        return {name: None for name in wanted}
    generator = torch.Generator().manual_seed(seed)
    saved = {own: p.requires_grad for own, p in probe.model.named_parameters()}
    for p in probe.model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    try:
        for k in range(probes):
            for index, (batch, reference) in enumerate(zip(probe.batches, probe.reference, strict=True)):
                if progress is not None:
                    progress(f"sensitivity pass {k + 1}/{probes}, batch {index + 1}/{len(probe.batches)}")
                output = probe.run(batch, grad=True)
                pairs = list(zip(_floating_outputs(reference), _floating_outputs(output), strict=True))
                loss = 0.0
                for ref, out in pairs:
                    keep = _kept(ref, probe.mask_of(batch))
                    if keep is None:
                        keep = torch.ones(ref.shape, dtype=torch.bool)
                    norm = float(ref.double().pow(2)[keep].sum()) or 1e-30
                    v = torch.randn(ref.shape, generator=generator) * keep
                    loss = loss + (out * v).sum() / math.sqrt(norm * len(pairs) * len(probe.batches))
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for own, grad in zip(params, grads, strict=True):
                    if grad is not None:
                        totals[own] += grad.double().pow(2) / probes
    finally:
        for own, p in probe.model.named_parameters():
            p.requires_grad_(saved[own])
    return {name: None if own is None else Sensitivity.of(totals[own]) for name, own in wanted.items()}
