"""Save a compressed model to a .dzip file and load it back as a dense state dict."""

from __future__ import annotations

import os

import torch
from torch import nn

from deepzip.container import fileformat
from deepzip.compressed import CompressedModel


def save(
    model: nn.Module | CompressedModel,
    path: str | os.PathLike,
    *,
    index_bits: dict[str, int] | None = None,
    overwrite: bool = False,
) -> int:
    """Write `model` (a pruned/quantized module or a CompressedModel) to `path`; return its size.

    Quantized weights are stored as sparse codebook tensors, everything else raw.
    `index_bits` ({layer name: bits}) fixes the relative-index width of some layers; the
    others get the width that makes the file smallest. The write is atomic, and an
    existing file is replaced only with `overwrite=True`.
    """
    compressed = model if isinstance(model, CompressedModel) else CompressedModel.from_module(model, index_bits)
    return fileformat.write(compressed, path, overwrite=overwrite)


def load(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a .dzip file into a dense state dict with the model's plain keys (`fc1.weight`).

    The decoded weights are bit-identical to those of the quantized model that was saved.
    Reading never executes code; a damaged file raises deepzip.FormatError.
    """
    return fileformat.read(path).state_dict()
