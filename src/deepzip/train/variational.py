"""Learned sparsity: sparse variational dropout (Molchanov, Ashukha, Vetrov, ICML 2017).

Magnitude pruning decides which weights go from their size alone, at a sparsity the user
picks per layer. Sparse variational dropout learns both: every weight w gets a Gaussian
posterior N(theta, sigma^2) under the log-uniform prior, and training maximizes the
evidence lower bound, data term minus KL. The KL pushes each weight's dropout rate
alpha = sigma^2 / theta^2 up unless the data need that weight; weights whose log alpha
ends above 3 (a dropout rate above 95%) carry no signal and are pruned. How many survive
in each layer comes out of training, not out of a setting.

Use, on any model whose Linear or convolution weights deepzip compresses:

    variational_(model)                      # adds log sigma^2 beside each weight
    loss = task_loss + kl_divergence(model) / len(train_set)    # every step
    harden_(model)                           # masks where log alpha >= 3, as prune_ leaves them

then `quantize_` and fine-tuning as after `prune_`. During training the noise is sampled
per example with the local reparameterization trick (Kingma, Salimans, Welling 2015): a
layer's output gets Gaussian noise of variance (x^2) * sigma^2, computed by the layer's own
operation, which is far less noisy than sampling one weight matrix per batch. In eval mode
the weights are theta with the entries at log alpha >= 3 already zeroed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from deepzip import module_state
from deepzip.errors import ConfigError
from deepzip.summary import Row, Summary
from deepzip.train.distributed import agree, refuse_sharded
from deepzip.train.parametrizations import (
    Masked,
    SharedWeights,
    Variational,
    attach_noise,
    detach_noise,
    mask_of,
    noise_kind,
    set_transform,
    transform_of,
)
from deepzip.train.registry import DEFAULT_MIN_SIZE
from deepzip.train.selection import kept_fraction, select

__all__ = ["Variational", "harden_", "kl_divergence", "variational_"]

def variational_(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    *,
    log_sigma2: float = -10.0,
    threshold: float = 3.0,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Summary:
    """Give every selected Linear and convolution weight a trainable log sigma^2, in place.

    `log_sigma2` is the initial value of every entry's log variance (-10: a pretrained
    model starts almost noise-free); `threshold` is the log alpha at and above which an
    entry counts as dropped, in eval mode and in `harden_`. Entries already pruned stay
    pruned. Other registered tensors (embeddings, attention and recurrent weights,
    transposed convolutions) are left as they are, and the Summary says so. Train with
    `kl_divergence` added to the loss, then call `harden_`.
    """
    refuse_sharded(model)
    selection = select(model, True, "variational", layers, min_size)
    modules = dict(model.named_modules())
    chosen, skipped = {}, {}
    for name in selection.chosen:
        target = selection.targets[name]
        site = target.sites[0]
        transform = transform_of(site.module, site.tensor_name)
        if isinstance(transform, SharedWeights):
            raise ConfigError(f"{name} is already quantized: learn sparsity before quantize_")
        kinds = {noise_kind(s.module, s.tensor_name) for s in target.sites}
        if None in kinds:
            skipped[name] = "variational dropout covers Linear and convolution weights only"
            continue
        # nn.MultiheadAttention reads its out_proj's weight itself: the layer's forward (and
        # so the noise) never runs, and the KL alone would prune it.
        if any(isinstance(modules.get(s.module_name.rpartition(".")[0]), nn.MultiheadAttention) for s in target.sites if s.module_name):
            skipped[name] = "read by nn.MultiheadAttention's own forward, which the noise cannot reach"
            continue
        weight = site.value()
        mask = mask_of(site.module, site.tensor_name)
        mask = torch.ones(weight.shape, dtype=torch.bool, device=weight.device) if mask is None else mask
        chosen[name] = Variational(torch.full(weight.shape, float(log_sigma2), device=weight.device), mask, threshold)
    for name, transform in chosen.items():
        set_transform(selection.targets[name].sites, transform)
        for site in selection.targets[name].sites:
            attach_noise(site.module)
    # The targets left alone for their layer type are listed with their reason, not as compressed.
    selection = replace(
        selection, chosen={n: v for n, v in selection.chosen.items() if n not in skipped}, reasons={**selection.reasons, **skipped}
    )
    return selection.summary("variational_", lambda target, _: "log sigma^2 added", {name: 1.0 for name in chosen})


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Sum over every variational weight of KL(posterior || log-uniform prior), Molchanov's approximation.

    Computed from the values the last forward pass saw; add `kl / N` (N the number of
    training examples) to a per-example task loss. A tied weight counts once.
    """
    terms = [transform.kl() for transform in _transforms(model)]
    if not terms:
        raise ConfigError("the model has no variational weights: call variational_ first")
    return sum(terms[1:], terms[0])


def harden_(model: nn.Module) -> Summary:
    """Replace every variational weight by a pruning mask: kept where log alpha < threshold.

    The model is left as `prune_` leaves it (a `Masked` transform, theta where kept),
    ready for more training, `quantize_` and `save`. Under a process group every rank gets
    rank 0's masks. Returns a Summary mapping each weight's key to its kept fraction.
    """
    groups: dict[int, list[module_state.Site]] = {}
    for site in module_state.sites(model):
        transform = transform_of(site.module, site.tensor_name)
        if isinstance(transform, Variational):
            groups.setdefault(id(transform), []).append(site)
    with torch.no_grad():
        for sites in groups.values():
            sites[0].value()  # a fresh forward: the masks come from the current theta
    masks = {key: transform_of(sites[0].module, sites[0].tensor_name).kept_mask() for key, sites in groups.items()}
    agree(masks.values())
    rows, kept = [], {}
    for key, sites in groups.items():
        set_transform(sites, Masked(masks[key]))
        for site in sites:
            detach_noise(site.module)
        name = sites[0].key
        kept[name] = kept_fraction(masks[key])
        rows.append(Row(" = ".join(s.key for s in sites), tuple(masks[key].shape), True, f"kept {100 * kept[name]:.2f}%"))
    return Summary("harden_", tuple(rows), kept)


def _transforms(model: nn.Module) -> list[Variational]:
    seen, out = set(), []
    for module in model.modules():
        transform = transform_of(module)
        if isinstance(transform, Variational) and id(transform) not in seen:
            seen.add(id(transform))
            out.append(transform)
    return out
