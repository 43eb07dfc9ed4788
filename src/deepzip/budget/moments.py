"""The second moment of each Linear layer's inputs on calibration data: H = sum of x x^T.

What error-compensated rounding (`deepzip.train.gptq`) needs to know of a layer's inputs:
its output error is trace(E H E^T) for a weight error E. One forward pass over the
probe's calibration batches, with hooks on the Linear modules whose weight is a tensor to
compress; padding tokens are left out where a batch's attention mask says which they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from deepzip.budget.sensitivity import OutputDistortion


def linear_inputs(names: Iterable[str], probe: OutputDistortion) -> dict[str, torch.nn.Linear]:
    """{checkpoint name: the Linear module whose own, untied weight it is} for the names that have one.

    A weight held anywhere else as well (an embedding tied to an output layer) is left out:
    one layer's inputs do not describe the tensor's other use.
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
        if len(modules) == 1 and type(modules[0]) is torch.nn.Linear and modules[0].weight is probe.params[own]:
            found[name] = modules[0]
    return found


def input_moments(
    names: Iterable[str], probe: OutputDistortion, progress: Callable[[str], None] | None = None
) -> dict[str, torch.Tensor]:
    """{checkpoint name: float64 [in, in] sum over calibration inputs of x x^T} for the Linear weights among `names`."""
    layers = linear_inputs(names, probe)
    sums: dict[str, torch.Tensor] = {}
    mask = None

    def hook(name: str):
        def collect(module, inputs, output):
            x = inputs[0].detach()
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask.to(torch.bool)]
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x

        return collect

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        for index, batch in enumerate(probe.batches):
            if progress is not None:
                progress(f"input moments, batch {index + 1}/{len(probe.batches)}")
            mask = probe.mask_of(batch)
            probe.run(batch)
    finally:
        for handle in handles:
            handle.remove()
    return sums
