"""Tied tensors: state-dict entries that are one tensor under several names."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def group_tied(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{name: canonical name}: tensors that are the same memory map to one name.

    Two entries are tied when they share storage at the same offset with the same shape,
    stride and dtype (a torch.save'd model with tied embeddings loads this way). The
    canonical name of a group is its first name in sorted order, the name the .dzip file
    stores it under. Empty tensors are never tied: they all report the same null pointer.
    Views of different parts of one storage are distinct tensors, not ties.
    """
    canonical: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if tensor.numel() == 0:
            canonical[name] = name
            continue
        key = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        canonical[name] = first.setdefault(key, name)
    return {name: canonical[name] for name in state_dict}
