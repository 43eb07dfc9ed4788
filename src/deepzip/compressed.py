"""The compressed model: the one object between the training side and the byte side.

`CompressedModel.from_module` reads a pruned/quantized `nn.Module` into plain arrays;
`deepzip.fileformat` turns it into bytes and back; `state_dict()` decodes it to dense
tensors. Nothing here trains or encodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from deepzip.train.kmeans import drop_empty_clusters
from deepzip.train.parametrizations import SharedWeights, current_transform


@dataclass(frozen=True)
class CodebookTensor:
    """A pruned, weight-shared tensor: entry `positions[i]` (flat, row-major) is codebook[codes[i]].

    All other entries are zero. `index_bits` is the width of the relative-index (gap)
    symbols in the file; None lets the encoder pick the width that gives the smallest file.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    codebook: np.ndarray  # float32 [k]
    positions: np.ndarray  # int64 [nnz], strictly increasing, < numel
    codes: np.ndarray  # uint16 [nnz], < k
    index_bits: int | None = None

    @property
    def numel(self) -> int:
        """Number of entries of the dense tensor."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def bits(self) -> int:
        """Bits of a fixed-width weight code: ceil(log2 k)."""
        return max(1, int(np.ceil(np.log2(len(self.codebook)))))

    def to_dense(self) -> torch.Tensor:
        """The dense tensor, bit-identical to centroids[codes] of the quantized model."""
        flat = torch.zeros(self.numel, dtype=torch.float32)
        flat[torch.from_numpy(self.positions)] = torch.from_numpy(self.codebook[self.codes])
        return flat.view(self.shape).to(self.dtype)


@dataclass(frozen=True)
class RawTensor:
    """A tensor stored as is (biases, normalization parameters, anything not compressed)."""

    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape, as CodebookTensor.shape."""
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> torch.dtype:
        """The tensor's dtype, as CodebookTensor.dtype."""
        return self.tensor.dtype

    def to_dense(self) -> torch.Tensor:
        """The tensor itself."""
        return self.tensor


@dataclass
class CompressedModel:
    """State-dict names mapped to CodebookTensor or RawTensor records, plus attached files.

    One record object under several names is a tied tensor: it is stored once and decodes
    to one shared tensor. `files` holds small files that travel with the model (a
    transformers config.json, say), by relative path.
    """

    tensors: dict[str, CodebookTensor | RawTensor] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_module(cls, model: nn.Module, index_bits: dict[str, int] | None = None) -> CompressedModel:
        """Read every tensor of `model`'s state, under its plain name (`fc1.weight`).

        Quantized weights become CodebookTensor records; everything else (biases, buffers,
        weights that were only pruned or left alone) is kept raw. `index_bits` optionally
        fixes the gap width per layer name ({"fc1": 5}); other layers get the best width.
        """
        index_bits = index_bits or {}
        tensors: dict[str, CodebookTensor | RawTensor] = {}
        # Records by id() of their source, so that tied tensors stay tied. Each entry keeps
        # its source alive: a freed temporary's id could be reused by the next tensor.
        records: dict[int, tuple[object, CodebookTensor | RawTensor]] = {}
        for module_name, module in _plain_modules(model):
            prefix = f"{module_name}." if module_name else ""
            transform = current_transform(module)
            if isinstance(transform, SharedWeights):
                if id(transform) not in records:
                    record = _codebook_tensor(transform, module.weight.dtype, index_bits.get(module_name))
                    records[id(transform)] = (transform, record)
                tensors[prefix + "weight"] = records[id(transform)][1]
            for name, tensor in _plain_tensors(module):
                if prefix + name not in tensors:
                    if id(tensor) not in records:
                        records[id(tensor)] = (tensor, RawTensor(tensor.detach().clone().contiguous()))
                    tensors[prefix + name] = records[id(tensor)][1]
        return cls(tensors)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Dense tensors under the model's own keys, ready for `load_state_dict`; tied ones shared."""
        decoded: dict[int, torch.Tensor] = {}
        for record in self.tensors.values():
            if id(record) not in decoded:
                decoded[id(record)] = record.to_dense()
        return {name: decoded[id(record)] for name, record in self.tensors.items()}

    def parameter_bytes(self) -> int:
        """fp32 bytes of all distinct tensors: the size the compression ratio is measured against."""
        distinct = {id(r): r for r in self.tensors.values()}.values()
        return sum(4 * int(np.prod(r.shape, dtype=np.int64)) for r in distinct)



def _codebook_tensor(transform: SharedWeights, dtype: torch.dtype, index_bits: int | None) -> CodebookTensor:
    mask = transform.mask.flatten()
    positions = torch.nonzero(mask).flatten().numpy().astype(np.int64)
    codes = transform.codes.flatten()[mask].numpy().astype(np.uint16)
    codebook, codes = drop_empty_clusters(transform.centroids.detach().float().numpy(), codes)
    return CodebookTensor(tuple(transform.mask.shape), dtype, codebook, positions, codes, index_bits)


def _plain_modules(module: nn.Module, name: str = ""):
    """Like named_modules(), without the internals of parametrizations (original, mask...)."""
    yield name, module
    for child_name, child in module.named_children():
        if child_name != "parametrizations":
            yield from _plain_modules(child, f"{name}.{child_name}" if name else child_name)


def _plain_tensors(module: nn.Module):
    """The module's own parameters and persistent buffers, weight taken as parametrized."""
    for name, param in module.named_parameters(recurse=False):
        yield name, param
    non_persistent = getattr(module, "_non_persistent_buffers_set", set())
    for name, buffer in module.named_buffers(recurse=False):
        if name not in non_persistent:
            yield name, buffer
    if "parametrizations" in module._modules and "weight" in module.parametrizations:
        yield "weight", module.weight
