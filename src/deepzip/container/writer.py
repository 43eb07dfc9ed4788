"""CompressedModel -> .dzip bytes (docs/FORMAT.md), and an atomic write of them to a file."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import torch

from deepzip.codec.layer import encode_layer_smallest
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.container import atomic
from deepzip.container.spec import (
    DTYPE_CODES,
    ENCODING_ALIAS,
    ENCODING_CODEBOOK,
    ENCODING_FILE,
    ENCODING_RAW,
    FLOAT_CODES,
    MAGIC,
    PREAMBLE,
    VERSION,
    check_file_name,
)
from deepzip.errors import ConfigError, DeepzipError
from deepzip.limits import (
    MAX_CODEBOOK,
    MAX_HEADER_SIZE,
    MAX_INDEX_BITS,
    MAX_NAME_BYTES,
    MAX_NDIM,
)


def to_bytes(model: CompressedModel) -> bytes:
    """Serialize `model`. Records are sorted by name, so equal models give equal bytes.

    A record object that appears under several names (tied weights) is stored once, under
    the first name in sorted order; the other names become aliases of it.
    """
    overlap = set(model.tensors) & set(model.files)
    if overlap:
        raise ConfigError(f"name {sorted(overlap)[0]!r} is both a tensor and a file")
    records, sections = [], []
    stored: dict[int, str] = {}
    for name in sorted(model.tensors):
        tensor = model.tensors[name]
        if id(tensor) in stored:
            record, section = _encode_alias(name, tensor, stored[id(tensor)])
        else:
            stored[id(tensor)] = name
            record, section = _encode_record(name, tensor)
        records.append(record)
        sections.append(section)
    for name in sorted(model.files):
        record, section = _encode_file(name, model.files[name])
        records.append(record)
        sections.append(section)
    body = struct.pack("<I", len(records)) + b"".join(records)
    if len(body) > MAX_HEADER_SIZE:
        raise DeepzipError(f"header of {len(body)} bytes exceeds the format's limit of {MAX_HEADER_SIZE}")
    head = PREAMBLE.pack(MAGIC, VERSION, 0, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head)) + b"".join(sections)


def write(model: CompressedModel, path: str | os.PathLike, overwrite: bool = False) -> int:
    """Write `model` to `path` atomically and return the file size in bytes.

    The bytes go to a temporary file in the same directory, are fsynced, and are renamed
    over `path` only when complete (see `deepzip.container.atomic`): a crash or a full disk
    never leaves a partial file at `path`, and an existing file survives any failure. An
    existing `path` is replaced only with `overwrite=True`.
    """
    path = Path(path)
    atomic.check_overwrite(path, overwrite)
    data = to_bytes(model)
    atomic.replace_file(path, lambda tmp: atomic.write_bytes(tmp, data))
    return len(data)


def _record_head(name: str, dtype: torch.dtype, shape: tuple[int, ...], encoding: int, section: bytes) -> bytes:
    encoded_name = name.encode("utf-8")
    if not 1 <= len(encoded_name) <= MAX_NAME_BYTES:
        raise ConfigError(f"tensor name {name!r} must be 1..{MAX_NAME_BYTES} bytes of UTF-8")
    if dtype not in DTYPE_CODES:
        raise ConfigError(f"tensor {name!r}: dtype {dtype} cannot be stored in a .dzip file")
    if len(shape) > MAX_NDIM:
        raise ConfigError(f"tensor {name!r}: {len(shape)} dimensions exceed the format's {MAX_NDIM}")
    head = struct.pack("<H", len(encoded_name)) + encoded_name
    head += struct.pack(f"<BB{len(shape)}I", DTYPE_CODES[dtype], len(shape), *shape)
    return head + struct.pack("<BII", encoding, len(section), zlib.crc32(section))


def _encode_alias(name: str, tensor: CodebookTensor | RawTensor, target: str) -> tuple[bytes, bytes]:
    section = target.encode("utf-8")
    return _record_head(name, tensor.dtype, tuple(tensor.shape), ENCODING_ALIAS, section), section


def _encode_file(name: str, content: bytes) -> tuple[bytes, bytes]:
    check_file_name(name, ConfigError)
    return _record_head(name, torch.uint8, (len(content),), ENCODING_FILE, bytes(content)), bytes(content)


def _encode_record(name: str, record: CodebookTensor | RawTensor) -> tuple[bytes, bytes]:
    if isinstance(record, CodebookTensor):
        k = len(record.codebook)
        # The writer enforces the reader's limits, so it never writes a file it cannot read.
        if DTYPE_CODES.get(record.dtype) not in FLOAT_CODES:
            raise ConfigError(f"tensor {name!r}: codebook encoding needs a floating dtype, got {record.dtype}")
        if not 1 <= k <= MAX_CODEBOOK:
            raise ConfigError(f"tensor {name!r}: codebook size {k} outside 1..{MAX_CODEBOOK}")
        if record.index_bits is not None and not 1 <= record.index_bits <= MAX_INDEX_BITS:
            raise ConfigError(f"tensor {name!r}: index bits {record.index_bits} outside 1..{MAX_INDEX_BITS}")
        layer = encode_layer_smallest(record.positions, record.codes, k, record.numel, record.index_bits)
        section = b"".join(
            [
                record.codebook.astype("<f4").tobytes(),
                layer.code_lengths,
                layer.gap_lengths,
                layer.code_stream,
                layer.gap_stream,
            ]
        )
        params = struct.pack(
            "<HBIII", k, layer.index_bits, layer.entry_count, len(layer.code_stream), len(layer.gap_stream)
        )
        head = _record_head(name, record.dtype, tuple(record.shape), ENCODING_CODEBOOK, section)
        return head + params, section
    tensor = record.tensor.detach().cpu().contiguous()
    section = _tensor_bytes(tensor)
    return _record_head(name, tensor.dtype, tuple(tensor.shape), ENCODING_RAW, section), section


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # Viewing as uint8 handles every dtype, bfloat16 included, which numpy lacks.
    # (Little-endian hosts only: torch supports no big-endian CPU.)
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
