"""The compressed model: the one object between the training side and the byte side.

`deepzip.train.export` reads a pruned/quantized `nn.Module` into it, the post-training
path builds it from tensors, `deepzip.container` turns it into bytes and back, and
`state_dict()` decodes it to dense tensors. Nothing here trains or encodes, and nothing
here knows torch.nn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from deepzip.summary import Summary

_DECODE_CHUNK = 1 << 22  # codes widened to int64 per chunk, not for the whole tensor


@dataclass(frozen=True)
class CodebookTensor:
    """A pruned, weight-shared tensor: entry `positions[i]` (flat, row-major) is codebook[codes[i]].

    All other entries are zero. `positions` None means dense: every entry is kept, and
    entry i is codebook[codes[i]] (no position array is ever built, which matters for
    billions of weights). `index_bits` is the width of the relative-index (gap) symbols
    in the file; None lets the encoder pick the width that gives the smallest file.

    `scale` (float32 [shape[scale_axis]]), when given, multiplies every entry of slice j
    along dimension `scale_axis`: entry = float32(codebook[code] * scale[j]), then rounded
    to `dtype`. One shared codebook with a scale per output channel (or input feature) is
    a codebook per channel for the price of one number each.

    `coders` restricts the entropy coders the writer chooses between for this tensor's
    streams (`deepzip.codec.streams.HUFFMAN`, `ANS`): `(HUFFMAN,)` is the paper's coding.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    codebook: np.ndarray  # float32 [k]
    positions: np.ndarray | None  # int64 (or int32) [nnz], strictly increasing, < numel; None = all
    codes: np.ndarray  # uint8 or uint16 [nnz], < k
    index_bits: int | None = None
    scale: np.ndarray | None = None  # float32 [shape[scale_axis]]
    scale_axis: int | None = None
    coders: tuple[int, ...] | None = None  # entropy coders the writer may pick from; None = all it knows

    def __post_init__(self):
        if (self.scale is None) != (self.scale_axis is None):
            raise ValueError("scale and scale_axis go together")
        if self.scale is not None and (
            not 0 <= self.scale_axis < len(self.shape) or np.shape(self.scale) != (self.shape[self.scale_axis],)
        ):
            raise ValueError(f"scale of shape {np.shape(self.scale)} for axis {self.scale_axis} of shape {self.shape}")

    @property
    def numel(self) -> int:
        """Number of entries of the dense tensor."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def kept(self) -> int:
        """Number of kept (stored) weights."""
        return int(self.codes.size)

    @property
    def bits(self) -> int:
        """Bits of a fixed-width weight code: ceil(log2 k)."""
        return max(1, int(np.ceil(np.log2(len(self.codebook)))))

    def flat_positions(self) -> np.ndarray:
        """The kept positions as int64, built for a dense tensor (small tensors only)."""
        return np.arange(self.numel, dtype=np.int64) if self.positions is None else self.positions.astype(np.int64, copy=False)

    def to_dense(self) -> torch.Tensor:
        """The dense tensor, bit-identical to centroids[codes] of the quantized model.

        The codebook is converted to the tensor's dtype first (converting each value
        before or after the lookup gives the same bits), so no float32 copy of the whole
        tensor is made.
        """
        if self.scale is not None:
            return self._scaled_dense()
        codebook = torch.from_numpy(np.ascontiguousarray(self.codebook, dtype=np.float32)).to(self.dtype)
        if self.positions is None:
            flat = torch.empty(self.numel, dtype=self.dtype)
            for start in range(0, self.numel, _DECODE_CHUNK):
                codes = torch.from_numpy(self.codes[start : start + _DECODE_CHUNK].astype(np.int64))
                flat[start : start + len(codes)] = codebook[codes]
        else:
            flat = torch.zeros(self.numel, dtype=self.dtype)
            positions = torch.from_numpy(self.positions.astype(np.int64, copy=False))
            flat[positions] = codebook[torch.from_numpy(self.codes.astype(np.int64))]
        return flat.view(self.shape)

    def _scaled_dense(self) -> torch.Tensor:
        """to_dense with scales: the products in float32 (a float32 copy of the tensor), then the dtype."""
        codebook = torch.from_numpy(np.ascontiguousarray(self.codebook, dtype=np.float32))
        flat = torch.zeros(self.numel, dtype=torch.float32)
        positions = slice(None) if self.positions is None else torch.from_numpy(self.positions.astype(np.int64, copy=False))
        flat[positions] = codebook[torch.from_numpy(self.codes.astype(np.int64))]
        view = [1] * len(self.shape)
        view[self.scale_axis] = self.shape[self.scale_axis]
        scale = torch.from_numpy(np.ascontiguousarray(self.scale, dtype=np.float32)).view(view)
        return (flat.view(self.shape) * scale).to(self.dtype)


@dataclass(frozen=True)
class Alias:
    """In a stream of records for the writer: this name is the tensor stored as `target`.

    A CompressedModel spells a tie as one record object under several names; a writer fed
    one record at a time (so as not to hold them all) is told with an Alias instead.
    """

    target: str


@dataclass(frozen=True)
class RawTensor:
    """A tensor stored as is (biases, normalization parameters, anything not compressed).

    "As is" means bit for bit: the writer may still entropy code its byte planes (format
    version 5) where that is smaller, with the coders in `coders` (None: all it knows).
    """

    tensor: torch.Tensor
    coders: tuple[int, ...] | None = None

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
    transformers config.json, say), by relative path. `summary` is not stored in files.
    """

    tensors: dict[str, CodebookTensor | RawTensor] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    summary: Summary | None = None  # what the post-training path did, where it built the model

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
