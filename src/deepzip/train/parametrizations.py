"""The weight parametrizations deepzip trains through: a pruning mask, shared weights, variational dropout.

`torch.nn.utils.parametrize` makes `module.weight` (or any registered tensor) a function of
stored tensors, so the forward pass, the gradient and the state dict all see the
compressed weight:

- `Masked`: weight = input where mask, else exactly 0. The gradient of a pruned entry is 0,
  and whatever an optimizer does to the stored original there (momentum, weight decay)
  never reaches the weight, so a pruned connection cannot come back.
- `SharedWeights`: weight = centroids[codes] where mask, else 0. The codes (cluster
  assignments) are fixed buffers; the only trainable tensor is `centroids`, whose gradient
  is the sum of the gradients of the weights that share it: exactly the paper's rule
  dL/dC_k = sum_ij dL/dW_ij [I_ij == k].

deepzip's transform is always the last one on a tensor, so it composes with a user's own
parametrizations (weight_norm, orthogonal, spectral_norm), which stay below it. Tied sites
(one Parameter held by several modules) get the very same transform object: one mask, one
codebook, trained as one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from deepzip import module_state
from deepzip.errors import ConfigError
from deepzip.train.registry import layer_type


class Masked(nn.Module):
    """Parametrization that zeroes the pruned entries of a weight (mask is a bool buffer)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return `weight` with pruned entries replaced by exact zeros."""
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


class _CodebookLookup(torch.autograd.Function):
    """centroids[codes] whose backward is one bincount: dL/dC_k = sum of dL/dW over code k.

    Autograd's own backward of indexing (index_put_ with accumulate) computes the same sum
    but serializes on the few centroids: 7x slower per training step on LeNet-300-100.
    """

    @staticmethod
    def forward(ctx, centroids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(codes)
        ctx.k = centroids.numel()
        return centroids[codes]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (codes,) = ctx.saved_tensors
        # Summed in float64 where the device has it (MPS does not), then cast back.
        wide = torch.float32 if grad.device.type == "mps" else torch.float64
        summed = torch.bincount(codes.flatten(), weights=grad.flatten().to(wide), minlength=ctx.k)
        return summed.to(grad.dtype), None


class SharedWeights(nn.Module):
    """Parametrization that rebuilds a weight from a trainable codebook and fixed codes."""

    def __init__(self, centroids: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor, requires_grad: bool = True):
        super().__init__()
        self.centroids = nn.Parameter(centroids.to(torch.float32), requires_grad=requires_grad)
        # int16 holds any codebook index (k <= 4096) at a quarter of int64's memory;
        # forward widens it, because torch treats uint8 index tensors as boolean masks.
        self.register_buffer("codes", codes.to(torch.int16))
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return centroids[codes] in the weight's dtype, zero where pruned (`weight` is unused)."""
        shared = _CodebookLookup.apply(self.centroids, self.codes.long()).to(weight.dtype)
        return torch.where(self.mask, shared, torch.zeros((), dtype=weight.dtype, device=weight.device))


# Molchanov et al.'s fit of KL(posterior || log-uniform prior) as a function of log alpha.
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695
_LOG_ALPHA_RANGE = 10.0  # clipped, as in the paper's code: beyond it the KL is flat anyway


class Variational(nn.Module):
    """Parametrization of sparse variational dropout (`deepzip.train.variational`).

    The weight is theta (the stored tensor) with a trainable `log_sigma2` of the same
    shape beside it; log alpha = log sigma^2 - log theta^2. In training mode the weight is
    theta (the layer's forward hook adds the noise); in eval mode the entries with
    log alpha >= `threshold` are zero, as `harden_` will prune them. `mask` holds
    earlier pruning: those entries are zero throughout.
    """

    def __init__(self, log_sigma2: torch.Tensor, mask: torch.Tensor, threshold: float = 3.0):
        super().__init__()
        self.log_sigma2 = nn.Parameter(log_sigma2.to(torch.float32))
        self.register_buffer("mask", mask.to(torch.bool))
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self._theta: torch.Tensor | None = None  # what the last forward saw, for the KL term

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """theta where kept (and, in eval mode, where log alpha < threshold), else exact zeros."""
        self._theta = theta
        keep = self.mask if self.training else self.mask & (self.log_alpha(theta) < self.threshold)
        return torch.where(keep, theta, torch.zeros((), dtype=theta.dtype, device=theta.device))

    def log_alpha(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """log sigma^2 - log theta^2 per entry, clipped to +-10 (theta: the last forward's by default)."""
        theta = self._last_theta() if theta is None else theta
        raw = self.log_sigma2 - torch.log(theta.to(torch.float32) ** 2 + 1e-8)
        return raw.clamp(-_LOG_ALPHA_RANGE, _LOG_ALPHA_RANGE)

    def variance(self) -> torch.Tensor:
        """sigma^2 per entry, zero where pruned."""
        return torch.where(self.mask, self.log_sigma2.exp(), torch.zeros((), device=self.mask.device))

    def kl(self) -> torch.Tensor:
        """Molchanov et al.'s approximation of the KL divergence to the log-uniform prior, summed over kept entries."""
        log_alpha = self.log_alpha()
        per_entry = _K1 - _K1 * torch.sigmoid(_K2 + _K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)
        return torch.where(self.mask, per_entry, torch.zeros((), device=per_entry.device)).sum()

    @torch.no_grad()
    def kept_mask(self) -> torch.Tensor:
        """The entries that survive: kept before and log alpha < threshold."""
        return self.mask & (self.log_alpha() < self.threshold)

    def _last_theta(self) -> torch.Tensor:
        if self._theta is None:
            raise ConfigError("no forward pass has computed this weight yet")
        return self._theta


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def noise_kind(module: nn.Module, tensor_name: str) -> str | None:
    """How the local reparameterization computes this weight's output variance, or None if it cannot."""
    cls = layer_type(module)
    if tensor_name != "weight":
        return None
    if issubclass(cls, nn.Linear) and cls.forward is nn.Linear.forward:
        return "linear"
    if issubclass(cls, _CONVS):
        return "conv"
    if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers."):
        return "transposed-linear"
    return None


def attach_noise(module: nn.Module) -> None:
    """Register the local-reparameterization noise on `module`'s output (once)."""
    if not getattr(module, "_deepzip_noise", None):
        # The layer kind is looked up once here, not on every forward.
        module._deepzip_noise = module.register_forward_hook(functools.partial(_local_noise, noise_kind(module, "weight")))


def detach_noise(module: nn.Module) -> None:
    """Remove what `attach_noise` registered, if anything."""
    handle = getattr(module, "_deepzip_noise", None)
    if handle is not None:
        handle.remove()
        module._deepzip_noise = None


def _local_noise(kind: str, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Output + sqrt(variance) x N(0, 1) per element, in training mode: the layer's own op on x^2 and sigma^2."""
    transform = transform_of(module)
    if not isinstance(transform, Variational) or not transform.training or not torch.is_grad_enabled():
        return None
    x = args[0]
    variance = transform.variance().to(x.dtype)
    if kind == "linear":
        spread = F.linear(x * x, variance)
    elif kind == "conv":
        spread = module._conv_forward(x * x, variance, None)
    else:  # transformers' Conv1D keeps its weight as (in, out)
        spread = (x * x) @ variance
    return output + torch.sqrt(spread + 1e-8) * torch.randn_like(output)


TRANSFORMS = (Masked, SharedWeights, Variational)


def transform_of(module: nn.Module, tensor_name: str = "weight") -> nn.Module | None:
    """The deepzip parametrization on `module.<tensor_name>`, or None if it has none."""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    last = module.parametrizations[tensor_name][-1]
    return last if isinstance(last, TRANSFORMS) else None


def mask_of(module: nn.Module, tensor_name: str = "weight") -> torch.Tensor | None:
    """The bool mask of surviving weights of `module.<tensor_name>`, or None if never pruned."""
    transform = transform_of(module, tensor_name)
    return None if transform is None else transform.mask


def set_transform(sites: Sequence[module_state.Site], transform: nn.Module) -> None:
    """Make `transform` deepzip's parametrization on every site (tied sites share it).

    It replaces deepzip's previous transform on the tensor, or goes on top of the user's
    parametrizations. Where it is the only one, the stored original is overwritten with the
    compressed value, so that removing it later (`strip_`) leaves the compressed values.
    `requires_grad` of the stored tensors is left as it is.
    """
    for site in sites:
        module, name = site.module, site.tensor_name
        if transform_of(module, name) is not None:
            module.parametrizations[name][-1] = transform
        else:
            parametrize.register_parametrization(module, name, transform, unsafe=True)
    for site in sites:
        plist = site.module.parametrizations[site.tensor_name]
        if len(plist) == 1 and plist.is_tensor:
            with torch.no_grad():
                plist.original.copy_(transform(plist.original))


def strip_(model: nn.Module) -> None:
    """Remove deepzip's parametrizations, leaving the compressed values in place.

    A user's own parametrization below deepzip's stays, and is given the compressed value
    through its right_inverse (ConfigError if it cannot represent it, e.g. `orthogonal` on
    a pruned matrix). `requires_grad` stays as it was.
    """
    for site in list(module_state.sites(model)):
        module, name = site.module, site.tensor_name
        if transform_of(module, name) is None:
            continue
        plist = module.parametrizations[name]
        if len(plist) == 1:
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            continue
        with torch.no_grad():
            value = getattr(module, name).detach().clone()
            saved = [t.detach().clone() for t in originals(plist)]
        transform = plist[-1]
        del plist[-1]
        problem = None
        try:
            with torch.no_grad():
                plist.right_inverse(value)
                # Some right_inverses accept any value but keep only what they can represent.
                if not torch.allclose(getattr(module, name), value, rtol=1e-4, atol=1e-6):
                    problem = "its right_inverse does not reproduce them"
        except Exception as error:  # a user parametrization's own refusal (ValueError, NotImplementedError...)
            problem = str(error)
        if problem is not None:
            with torch.no_grad():
                for original, old in zip(originals(plist), saved):
                    original.copy_(old)
            plist.append(transform)
            raise ConfigError(
                f"{site.key}: the parametrization below deepzip's ({type(plist[-2]).__name__}) cannot take the "
                f"compressed values ({problem}); remove it first"
            )


def originals(plist) -> list[torch.Tensor]:
    """The stored tensors a parametrization list computes its value from."""
    if plist.is_tensor:
        return [plist.original]
    return [getattr(plist, f"original{i}") for i in range(plist.ntensors)]


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict saved from a pruned or quantized model into a fresh `model`.

    deepzip's parametrizations (masks, codes, centroids) are recreated from the state
    dict's keys first, on top of any the fresh model has of its own, so masks survive a
    `torch.save(model.state_dict())` / load cycle. Tied sites get one transform again.
    """
    by_identity: dict[int, nn.Module] = {}
    for site in list(module_state.sites(model)):
        prefix = f"{site.module_name}.parametrizations.{site.tensor_name}." if site.module_name else f"parametrizations.{site.tensor_name}."
        depth = len(site.module.parametrizations[site.tensor_name]) if site.parametrized else 0
        ours = f"{prefix}{depth - (transform_of(site.module, site.tensor_name) is not None)}."
        if ours + "mask" not in state_dict:
            continue
        identity = site.identity()
        if identity not in by_identity:
            mask = state_dict[ours + "mask"]
            if tuple(mask.shape) != tuple(site.value().shape):
                raise ConfigError(f"{site.key}: mask shape {tuple(mask.shape)} != weight shape {tuple(site.value().shape)}")
            if ours + "centroids" in state_dict:
                transform = SharedWeights(state_dict[ours + "centroids"], state_dict[ours + "codes"], mask)
            elif ours + "log_sigma2" in state_dict:
                transform = Variational(state_dict[ours + "log_sigma2"], mask, float(state_dict[ours + "threshold"]))
            else:
                transform = Masked(mask)
            by_identity[identity] = transform.to(site.value().device)
        set_transform([site], by_identity[identity])
        if isinstance(by_identity[identity], Variational):
            attach_noise(site.module)
    model.load_state_dict(state_dict)
