"""The second moment of each layer's inputs on calibration data: H = sum of x x^T.

What error-compensated rounding (`deepzip.train.gptq`) needs to know of a layer's inputs:
its output error is trace(E H E^T) for a weight error E. For a Linear, x is an input
vector; for a Conv2d, an unfolded input patch (input channel, kernel position), and a
grouped convolution has one moment a group (`[groups, n, n]`). One forward pass over the
probe's calibration batches, with hooks on the layers whose weight is a tensor to
compress; padding tokens are left out where a batch's attention mask says which they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from deepzip.budget.sensitivity import OutputDistortion

_PATCH_CHUNK = 1 << 24  # unfolded values (float32) handled at once: bounds memory on large images


def layer_inputs(names: Iterable[str], probe: OutputDistortion) -> dict[str, torch.nn.Module]:
    """{checkpoint name: the Linear or Conv2d whose own, untied weight it is} for the names that have one.

    A weight held anywhere else as well (an embedding tied to an output layer) is left out:
    one layer's inputs do not describe the tensor's other use. So is a Conv2d whose padding
    the unfolding cannot reproduce (a padding mode other than zeros, padding="same").
    """
    holders: dict[int, list] = {}
    for module in probe.model.modules():
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), []).append(module)
    found = {}
    for name in names:
        own = probe.find(name)
        if own is None or not own.endswith("weight"):
            continue
        modules = holders.get(id(probe.params[own]), [])
        if len(modules) != 1 or modules[0].weight is not probe.params[own]:
            continue
        module = modules[0]
        if type(module) is torch.nn.Linear or (isinstance(module, torch.nn.Conv2d) and _unfoldable(module)):
            found[name] = module
    return found


def _unfoldable(conv: torch.nn.Conv2d) -> bool:
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def input_moments(
    names: Iterable[str], probe: OutputDistortion, progress: Callable[[str], None] | None = None
) -> dict[str, torch.Tensor]:
    """{checkpoint name: float64 sum over calibration inputs of x x^T} for the Linear and Conv2d weights among `names`.

    A Linear's moment is [in, in]; a Conv2d's [in * kh * kw, same], or [groups, n, n] for a
    grouped one, in the order of the weight's flattened columns.
    """
    layers = layer_inputs(names, probe)
    sums: dict[str, torch.Tensor] = {}
    state = {"mask": None}

    def add(name: str, moment: torch.Tensor) -> None:
        sums[name] = sums[name] + moment if name in sums else moment

    def linear_hook(name: str):
        def collect(module, inputs, output):
            x = inputs[0].detach()
            mask = state["mask"]
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask.to(torch.bool)]
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            add(name, x.T @ x)

        return collect

    def conv_forward(name: str, conv: torch.nn.Conv2d):
        # The input the convolution itself sees, after any padding its forward adds (a
        # subclass padding like TensorFlow's "same", say): _conv_forward is where every
        # Conv2d forward ends up, so the patches unfolded here are the ones it multiplies.
        original = conv._conv_forward

        def capture(x, weight, bias):
            add(name, _patch_moment(x.detach(), conv))
            return original(x, weight, bias)

        return original, capture

    handles = [module.register_forward_hook(linear_hook(name)) for name, module in layers.items() if isinstance(module, torch.nn.Linear)]
    patched = {}
    try:
        for name, module in layers.items():
            if isinstance(module, torch.nn.Conv2d):
                patched[name], module._conv_forward = conv_forward(name, module)
        for index, batch in enumerate(probe.batches):
            if progress is not None:
                progress(f"input moments, batch {index + 1}/{len(probe.batches)}")
            state["mask"] = probe.mask_of(batch)
            probe.run(batch)
    finally:
        for handle in handles:
            handle.remove()
        for name in patched:
            del layers[name]._conv_forward  # back to the class's method
    return sums


def _patch_moment(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """[groups, n, n] (or [n, n] for groups=1) sum of x x^T over the unfolded patches of `x` for `conv`."""
    if x.dim() == 3:  # an unbatched input
        x = x[None]
    groups = conv.groups
    n = conv.weight[0].numel()
    per_sample = n * groups * max(1, (x.shape[-1] * x.shape[-2]) // (conv.stride[0] * conv.stride[1]))
    step = max(1, _PATCH_CHUNK // max(per_sample, 1))
    total = torch.zeros(groups, n, n, dtype=torch.float64)
    for i in range(0, x.shape[0], step):
        patches = F.unfold(x[i : i + step].float(), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        patches = patches.view(patches.shape[0], groups, n, -1)
        total += torch.einsum("bgnl,bgml->gnm", patches, patches).to(torch.float64)
    return total[0] if groups == 1 else total
