"""Compression under torch.distributed: every rank holds the same masks, codes and centroids, by design.

Data-parallel training keeps the ranks' weights equal, but what deepzip computes from them
need not be: a mask's threshold can fall between two equal magnitudes, k-means can take a
different path from a different floating-point order, and other tools seeded clustering by
rank. So, under an initialized process group of more than one rank, `prune_` and
`quantize_` compute on every rank and then take rank 0's masks, codes and centroids
(`agree`, a broadcast): identical by construction, whatever the backend (gloo, nccl).

`DistributedDataParallel` copies rank 0's buffers before every forward by default, which
would hide masks that diverged later instead of preventing it; `wrap` builds the wrapper
without that (`broadcast_buffers=False`), and `check_agreement` compares every rank's
digest of its masks, codes and centroids and names the tensors where a rank differs.

The pattern, the same with one process as with many:

    model = ...; prune_(model, sparsity=0.9); ddp = wrap(model); train(ddp)
    quantize_(model); ddp = wrap(model); train(ddp)   # centroids are new Parameters: a new wrapper
    check_agreement(model); if is_writer(): save(model, "model.dzip")

FSDP2 (`fully_shard`) shards each weight across ranks, so no rank holds a whole tensor to
rank by magnitude or cluster: deepzip refuses such a model (`refuse_sharded`) and says to
use DDP. Only rank 0 writes files (`deepzip.train.export.save` writes nothing elsewhere).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from deepzip import module_state
from deepzip.errors import ConfigError
from deepzip.train.parametrizations import SharedWeights, transform_of


def init_from_environment() -> bool:
    """Join the process group that torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR...), if any.

    nccl where CUDA is available, else gloo. Returns whether a group of more than one
    rank is running; without torchrun's variables it does nothing and returns False.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return active()


def active() -> bool:
    """Whether an initialized process group of more than one rank is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank() == 0


def agree(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite `tensors` in place with rank 0's values (no-op without a process group of > 1 rank).

    Every rank must pass tensors of the same shapes and dtypes in the same order. Booleans
    travel as uint8 and int16 codes as int32, dtypes every backend broadcasts.
    """
    if not active():
        return
    import torch.distributed as dist

    for tensor in tensors:
        carrier = _CARRIERS.get(tensor.dtype)
        if carrier is None:
            dist.broadcast(tensor.data, src=0)
            continue
        sent = tensor.detach().to(carrier)
        dist.broadcast(sent, src=0)
        tensor.data.copy_(sent.to(tensor.dtype))


_CARRIERS = {torch.bool: torch.uint8, torch.int16: torch.int32}


def compression_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{key: tensor} of every deepzip mask, code tensor and codebook in `model` (tied tensors once)."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for site in module_state.sites(model):
        transform = transform_of(site.module, site.tensor_name)
        if transform is None or id(transform) in seen:
            continue
        seen.add(id(transform))
        state[f"{site.key}:mask"] = transform.mask
        if isinstance(transform, SharedWeights):
            state[f"{site.key}:codes"] = transform.codes
            state[f"{site.key}:centroids"] = transform.centroids.detach()
    return state


def digests(model: nn.Module) -> dict[str, str]:
    """{key: SHA-256 of the tensor's bytes} of `compression_state(model)`."""
    return {key: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for key, t in compression_state(model).items()}


def check_agreement(model: nn.Module) -> None:
    """ConfigError on every rank if any rank's masks, codes or centroids differ from rank 0's.

    The message names the first ranks and tensors that differ. Without a process group of
    more than one rank there is nothing to compare.
    """
    if not active():
        return
    import torch.distributed as dist

    mine = digests(model)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    reference = everyone[0]
    for other, theirs in enumerate(everyone[1:], 1):
        differ = sorted(k for k in set(reference) | set(theirs) if reference.get(k) != theirs.get(k))
        if differ:
            raise ConfigError(f"rank {other} disagrees with rank 0 on {len(differ)} compression tensors ({', '.join(differ[:3])})")


def refuse_sharded(model: nn.Module) -> None:
    """ConfigError if `model` has parameters sharded by FSDP2 (`fully_shard`, DTensor parameters)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support has no sharded tensors either
        return
    for name, param in model.named_parameters():
        if isinstance(param, DTensor):
            raise ConfigError(
                f"{name} is sharded (FSDP2 fully_shard): deepzip needs whole tensors to prune and cluster; "
                "train with DistributedDataParallel (deepzip.train.distributed.wrap) instead"
            )


def wrap(model: nn.Module, **kwargs) -> nn.Module:
    """`model` in DistributedDataParallel, or `model` itself without a process group of > 1 rank.

    Build it after each `prune_` and `quantize_`: quantization replaces the trained tensor
    by its centroids, which the previous wrapper does not know. Buffers (masks, codes) are
    not re-broadcast each step (`broadcast_buffers=False` unless given): they are equal by
    construction, and `check_agreement` would see it if they were not. Parameters that no
    longer reach the output (the stored originals of quantized weights) are left out of
    the gradient reduction. On CUDA the wrapper uses the model's device.
    """
    refuse_sharded(model)
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, p in model.named_parameters() if p.requires_grad and _shadowed(model, name)]
    if frozen:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    kwargs.setdefault("broadcast_buffers", False)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
    with warnings.catch_warnings():
        # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers, but only the
        # former (False) also skips the buffer copy at construction, which would hide
        # masks that differ; check_agreement is what compares them.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(model, **kwargs)


def _shadowed(model: nn.Module, name: str) -> bool:
    """Whether parameter `name` is a stored original under a SharedWeights (the forward no longer reads it)."""
    found = re.fullmatch(r"(?:(.*)\.)?parametrizations\.([^.]+)\.original\d*", name)
    if found is None:
        return False
    module = model.get_submodule(found.group(1) or "")
    return isinstance(transform_of(module, found.group(2)), SharedWeights)
