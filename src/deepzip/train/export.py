"""Export: a pruned / quantized nn.Module -> the CompressedModel, and `save` to a .dzip file.

This is the one place the training side hands its work to the byte side: parametrizations
become CodebookTensor records, everything else RawTensor records, under the plain keys
(`fc1.weight`) that an unparametrized copy of the model uses. Tied tensors become one
record under several names (stored once, as an alias).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from deepzip import container, module_state
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.container.writer import encoded_size
from deepzip.errors import ConfigError
from deepzip.limits import MAX_CODEBOOK, MAX_INDEX_BITS
from deepzip.train import patterns
from deepzip.train.distributed import is_writer
from deepzip.train.kmeans import drop_empty_clusters
from deepzip.train.parametrizations import Masked, SharedWeights, transform_of

__all__ = ["export", "round_codebooks_", "round_raw_", "save"]


def export(
    model: nn.Module,
    index_bits: Mapping[str, int] | None = None,
    raw_dtype: torch.dtype | None = None,
    coders: tuple[int, ...] | None = None,
) -> CompressedModel:
    """Read every parameter and persistent buffer of `model` into a CompressedModel.

    Quantized tensors become CodebookTensor records (unused centroids dropped); everything
    else (biases, buffers, weights that were only pruned or left alone) is kept as the
    model computes it, on the CPU: raw, or, for a plain tensor with zeros where it is
    smaller, as a lossless sparse codebook (`_plain_record`). `index_bits` ({pattern: bits}, matched like every
    setting) fixes the gap width of some quantized tensors; the others get the width that
    makes the file smallest. A pattern that matches no quantized tensor is an error.
    `raw_dtype` (say torch.float16) stores the raw float32 tensors in that dtype, rounded;
    a reader gets them in that dtype, and `load_state_dict` widens them back. `coders`
    restricts the entropy coders of every tensor (`(HUFFMAN,)`: the paper's), the byte
    planes of raw tensors included.
    """
    records: dict[int, CodebookTensor | RawTensor] = {}
    tensors: dict[str, CodebookTensor | RawTensor] = {}
    all_sites = list(module_state.sites(model))
    # The quantized tensors by their first key, with every site's names, for index_bits.
    quantized: dict[str, list] = {}
    first_key: dict[int, str] = {}
    for site in all_sites:
        if isinstance(transform_of(site.module, site.tensor_name), SharedWeights):
            name = first_key.setdefault(site.identity(), site.key.removesuffix(".weight"))
            quantized.setdefault(name, []).append(patterns.site_names(site.key, site.module_name))
    widths = patterns.resolve(quantized, index_bits, "index_bits") if index_bits else {}
    for width in widths.values():
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_INDEX_BITS:
            raise ConfigError(f"index_bits must be integers in 1..{MAX_INDEX_BITS}, got {width!r}")
    for site in all_sites:
        identity = site.identity()
        if identity not in records:
            transform = transform_of(site.module, site.tensor_name)
            if isinstance(transform, SharedWeights):
                records[identity] = _codebook_tensor(transform, site.value().dtype, widths.get(first_key[identity]), coders)
            else:
                stored = _as_stored(site.value().detach().cpu(), raw_dtype).clone().contiguous()
                records[identity] = RawTensor(stored, coders) if site.parametrized else _plain_record(stored, coders)
        tensors[site.key] = records[identity]
    return CompressedModel(tensors)


def _plain_record(tensor: torch.Tensor, coders: tuple[int, ...] | None = None) -> CodebookTensor | RawTensor:
    """A plain tensor (a bias, a norm) as stored: raw, or a lossless sparse codebook where that is smaller.

    A mostly-zero tensor, such as the biases of the units that pruning left unread
    (`deepzip.paper.models.drop_dead_units_`), costs less as the positions of its
    nonzeros and a codebook of their distinct values than as raw bytes. It decodes to the
    very same bits: the codebook holds each distinct value exactly (float16, bfloat16 and
    float32 values are all exact float32 ones), and the zeros are +0.0.
    """
    raw = RawTensor(tensor, coders)
    if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not tensor.numel():
        return raw
    # One pass that copies nothing settles nearly every tensor (a large model's embeddings
    # and norms): no zeros at all, or more nonzeros than a codebook can hold.
    nonzeros = int(torch.count_nonzero(tensor))
    if nonzeros == tensor.numel() or nonzeros > MAX_CODEBOOK:
        return raw
    values = tensor.flatten().float().numpy()
    entries = (values != 0) | np.signbit(values)  # -0.0 is kept as an entry: it decodes as +0.0 otherwise
    if entries.sum() > MAX_CODEBOOK or not np.isfinite(values).all():
        return raw
    positions = np.flatnonzero(entries)
    codebook, codes = np.unique(values[positions], return_inverse=True)
    if not codebook.size:  # all zeros: a codebook must still hold one value
        codebook = np.zeros(1, dtype=np.float32)
    sparse = CodebookTensor(
        tuple(tensor.shape), tensor.dtype, codebook.astype(np.float32), positions.astype(np.int64), codes.astype(np.uint16), coders=coders
    )
    return sparse if encoded_size(sparse) < encoded_size(raw) else raw


def _as_stored(value: torch.Tensor, raw_dtype: torch.dtype | None) -> torch.Tensor:
    """A raw tensor as `export` stores it: float32 ones in `raw_dtype` when one is given."""
    return value.to(raw_dtype) if raw_dtype is not None and value.dtype == torch.float32 else value


@torch.no_grad()
def round_raw_(model: nn.Module, raw_dtype: torch.dtype) -> None:
    """Round, in place, what `export(model, raw_dtype=raw_dtype)` stores raw, to the values the file will hold.

    Then the model computes exactly what its file decodes to. Covers the plain tensors
    (biases, norms, buffers) and pruned-only weights (their stored original; pruned zeros
    stay zeros); quantized weights are codebooks, and a tensor under a parametrization of
    the user's is left as it is.
    """
    for site in module_state.sites(model):
        transform = transform_of(site.module, site.tensor_name)
        if site.parametrized:
            plist = site.module.parametrizations[site.tensor_name]
            if not isinstance(transform, Masked) or len(plist) != 1 or not plist.is_tensor:
                continue
            tensor = plist.original
        else:
            tensor = site.value()
        tensor.copy_(_as_stored(tensor, raw_dtype).to(tensor.dtype))


@torch.no_grad()
def round_codebooks_(model: nn.Module, dtype: torch.dtype) -> None:
    """Round, in place, every quantized tensor's centroids to `dtype` (say torch.float16).

    The writer stores a codebook whose values are all exact float16 values in float16:
    half the codebook bytes, which on a small model are a large share of the file (a
    256-entry float32 codebook is 1 KiB). A codebook that would overflow `dtype` is left
    as it is (the writer then keeps it in float32). The model computes the rounded values,
    so it computes what its file decodes to.
    """
    done: set[int] = set()
    for site in module_state.sites(model):
        transform = transform_of(site.module, site.tensor_name)
        if isinstance(transform, SharedWeights) and id(transform) not in done:
            done.add(id(transform))  # a codebook shared by tied weights is rounded once
            rounded = transform.centroids.to(dtype)
            if torch.equal(torch.isfinite(rounded), torch.isfinite(transform.centroids)):  # nothing overflowed
                transform.centroids.copy_(rounded.to(transform.centroids.dtype))


def _codebook_tensor(transform: SharedWeights, dtype: torch.dtype, index_bits: int | None, coders: tuple[int, ...] | None) -> CodebookTensor:
    mask = transform.mask.detach().flatten().cpu()
    positions = torch.nonzero(mask).flatten().numpy().astype(np.int64)
    codes = transform.codes.detach().flatten().cpu()[mask].numpy().astype(np.uint16)
    codebook, codes = drop_empty_clusters(transform.centroids.detach().float().cpu().numpy(), codes)
    return CodebookTensor(tuple(transform.mask.shape), dtype, codebook, positions, codes, index_bits, coders=coders)


def save(
    model: nn.Module | CompressedModel,
    path: str | os.PathLike,
    *,
    index_bits: Mapping[str, int] | None = None,
    overwrite: bool = False,
    raw_dtype: torch.dtype | None = None,
    coders: tuple[int, ...] | None = None,
) -> int:
    """Write `model` (a pruned/quantized module or a CompressedModel) to `path`; return its size.

    Quantized weights are stored as sparse codebook tensors, everything else raw; see
    `export`. The write is atomic, and an existing file is replaced only with
    `overwrite=True`. Under a process group of several ranks only rank 0 writes; the
    others write nothing and return 0. `raw_dtype` and `coders`: see `export`.
    """
    if not is_writer():
        return 0
    if isinstance(model, CompressedModel):
        if index_bits or raw_dtype is not None or coders is not None:
            raise ConfigError("index_bits, raw_dtype and coders apply to a module; a CompressedModel carries its own")
        compressed = model
    else:
        compressed = export(model, index_bits, raw_dtype, coders)
    return container.write(compressed, path, overwrite=overwrite)
