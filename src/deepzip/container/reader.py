""".dzip bytes -> CompressedModel (docs/FORMAT.md), read defensively.

Every size read from the file is checked against the bytes that remain and against fixed
limits before anything is allocated or a compiled decoder runs; every failure is a
FormatError (or a subclass) that names the tensor and the section.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepzip.codec.layer import EncodedLayer, decode_layer, lengths_table_size
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.container.spec import (
    DTYPES,
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
from deepzip.errors import (
    ChecksumError,
    DeepzipError,
    FormatError,
    TruncatedError,
    VersionError,
)
from deepzip.limits import (
    MAX_CODEBOOK,
    MAX_HEADER_SIZE,
    MAX_INDEX_BITS,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_NUMEL,
)


def read(path: str | os.PathLike) -> CompressedModel:
    """Read and fully validate a .dzip file."""
    path = Path(path)
    if not path.is_file():
        raise DeepzipError(f"{path}: no such file")
    return from_bytes(path.read_bytes())


def from_bytes(data: bytes | bytearray | memoryview) -> CompressedModel:
    """Parse a whole .dzip file; raises FormatError for anything that is not a valid file."""
    view = memoryview(data).cast("B")
    if bytes(view[:8]) != MAGIC:
        raise FormatError("not a .dzip file (bad magic bytes)")
    if len(view) < PREAMBLE.size:
        raise TruncatedError(f"preamble: the file ends after {len(view)} bytes")
    _, version, flags, header_size = PREAMBLE.unpack(view[: PREAMBLE.size])
    if version > VERSION:
        raise VersionError(f"file format version {version} was written by a newer deepzip (this one reads {VERSION})")
    if version != VERSION:
        raise VersionError(f"unknown file format version {version}")
    if flags:
        raise FormatError(f"preamble: unknown flags {flags:#06x}")
    if header_size > MAX_HEADER_SIZE or PREAMBLE.size + header_size + 4 > len(view):
        raise TruncatedError(f"header: size {header_size} runs past the end of the {len(view)}-byte file")
    header_end = PREAMBLE.size + header_size
    (crc,) = struct.unpack("<I", view[header_end : header_end + 4])
    if zlib.crc32(view[:header_end]) != crc:
        raise ChecksumError("header: checksum mismatch")
    records = _parse_header(_Cursor(view, PREAMBLE.size, header_end, "header"))
    offset = header_end + 4
    tensors: dict[str, CodebookTensor | RawTensor] = {}
    files: dict[str, bytes] = {}
    aliases: dict[str, tuple[_Record, str]] = {}
    for record in records:
        if record.size > len(view) - offset:
            raise TruncatedError(f"tensor {record.name!r}, data section: runs past the end of the file")
        section = view[offset : offset + record.size]
        offset += record.size
        if zlib.crc32(section) != record.crc:
            raise ChecksumError(f"tensor {record.name!r}, data section: checksum mismatch")
        if record.encoding == ENCODING_FILE:
            files[record.name] = bytes(section)
        elif record.encoding == ENCODING_ALIAS:
            try:
                aliases[record.name] = (record, bytes(section).decode("utf-8"))
            except UnicodeDecodeError:
                raise FormatError(f"tensor {record.name!r}, alias section: target name is not UTF-8") from None
        else:
            tensors[record.name] = _decode_section(record, section)
    if offset != len(view):
        raise FormatError(f"{len(view) - offset} trailing bytes after the last section")
    for name, (record, target) in aliases.items():
        # Only a stored tensor can be a target: no chains, no cycles, no files.
        if target not in tensors or target in aliases:
            raise FormatError(f"tensor {name!r}, alias section: target {target!r} is not a stored tensor")
        if (tensors[target].shape, tensors[target].dtype) != (record.shape, record.dtype):
            raise FormatError(f"tensor {name!r}, alias section: shape or dtype differs from its target {target!r}")
        tensors[name] = tensors[target]
    return CompressedModel(tensors, files)


def section_sizes(data: bytes) -> dict[str, int]:
    """{tensor name: data section bytes} of a valid file, for per-layer byte accounting."""
    view = memoryview(data)
    _, _, _, header_size = PREAMBLE.unpack(view[: PREAMBLE.size])
    records = _parse_header(_Cursor(view, PREAMBLE.size, PREAMBLE.size + header_size, "header"))
    return {r.name: r.size for r in records}


class _Cursor:
    """Reads little-endian fields from a buffer, checking every length before using it."""

    def __init__(self, data: memoryview, start: int, end: int, where: str):
        self.data, self.pos, self.end, self.where = data, start, end, where

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.end - self.pos:
            raise TruncatedError(f"{self.where}: {what} needs {n} bytes but only {self.end - self.pos} remain")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))


@dataclass(frozen=True)
class _Record:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    encoding: int
    size: int
    crc: int
    params: tuple[int, int, int, int, int] | None  # k, index bits, entries, code bytes, gap bytes


def _parse_header(cur: _Cursor) -> list[_Record]:
    (count,) = cur.unpack("I", "tensor count")
    # Each record takes at least 12 bytes, so a count beyond that is damage, not a big model.
    if count > (cur.end - cur.pos) // 12:
        raise FormatError(f"header: tensor count {count} does not fit in the header")
    records, names = [], set()
    for index in range(count):
        cur.where = f"header, record {index}"
        (name_len,) = cur.unpack("H", "name length")
        if not 1 <= name_len <= MAX_NAME_BYTES:
            raise FormatError(f"{cur.where}: name length {name_len} outside 1..{MAX_NAME_BYTES}")
        try:
            name = bytes(cur.take(name_len, "name")).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{cur.where}: name is not UTF-8") from None
        if name in names:
            raise FormatError(f"tensor {name!r}, header: duplicate tensor name")
        names.add(name)
        cur.where = f"tensor {name!r}, header"
        records.append(_parse_record(cur, name))
    if cur.pos != cur.end:
        raise FormatError(f"header: {cur.end - cur.pos} unused bytes after the last record")
    return records


def _parse_record(cur: _Cursor, name: str) -> _Record:
    dtype_code, ndim = cur.unpack("BB", "dtype and ndim")
    if dtype_code not in DTYPES:
        raise FormatError(f"{cur.where}: unknown dtype code {dtype_code}")
    if ndim > MAX_NDIM:
        raise FormatError(f"{cur.where}: {ndim} dimensions exceed {MAX_NDIM}")
    shape = cur.unpack(f"{ndim}I", "shape")
    numel, extent = 1, 1
    for dim in shape:
        numel *= dim  # Python ints: no overflow, checked against the limit below
        extent *= max(dim, 1)  # an empty tensor's other dims still size its strides
    if extent > MAX_NUMEL:
        raise FormatError(f"{cur.where}: shape {list(shape)} exceeds {MAX_NUMEL} elements")
    encoding, size, crc = cur.unpack("BII", "encoding and section size")
    params = None
    if encoding == ENCODING_CODEBOOK:
        if dtype_code not in FLOAT_CODES:
            raise FormatError(f"{cur.where}: codebook encoding needs a floating dtype, got {DTYPES[dtype_code]}")
        params = cur.unpack("HBIII", "coding parameters")
        k, index_bits, entries, code_bytes, gap_bytes = params
        if not 1 <= k <= MAX_CODEBOOK:
            raise FormatError(f"{cur.where}: codebook size {k} outside 1..{MAX_CODEBOOK}")
        if not 1 <= index_bits <= MAX_INDEX_BITS:
            raise FormatError(f"{cur.where}: index bits {index_bits} outside 1..{MAX_INDEX_BITS}")
        if entries > numel:
            raise FormatError(f"{cur.where}: {entries} entries for {numel} elements")
        expected = 4 * k + lengths_table_size(k + 1) + lengths_table_size(1 << index_bits) + code_bytes + gap_bytes
        if size != expected:
            raise FormatError(f"{cur.where}: section size {size} != {expected}, the sum of its parts")
    elif encoding == ENCODING_RAW:
        expected = numel * DTYPES[dtype_code].itemsize
        if size != expected:
            raise FormatError(f"{cur.where}: raw section size {size} != {expected} for shape {list(shape)}")
    elif encoding == ENCODING_ALIAS:
        if not 1 <= size <= MAX_NAME_BYTES:
            raise FormatError(f"{cur.where}: alias target name of {size} bytes outside 1..{MAX_NAME_BYTES}")
    elif encoding == ENCODING_FILE:
        if DTYPES[dtype_code] != torch.uint8 or len(shape) != 1 or shape[0] != size:
            raise FormatError(f"{cur.where}: a file record must be uint8 of shape [section size]")
        check_file_name(name)
    else:
        raise FormatError(f"{cur.where}: unknown encoding {encoding}")
    return _Record(name, DTYPES[dtype_code], tuple(shape), encoding, size, crc, params)


def _decode_section(record: _Record, section: memoryview) -> CodebookTensor | RawTensor:
    where = f"tensor {record.name!r}"
    if record.encoding == ENCODING_RAW:
        buffer = bytearray(section)  # a private, writable copy that the tensor owns
        if record.dtype == torch.bool and buffer.translate(None, b"\x00\x01"):
            raise FormatError(f"{where}, raw section: bool bytes must be 0 or 1")
        flat = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.zeros(0, dtype=torch.uint8)
        return RawTensor(flat.view(record.dtype).reshape(record.shape))
    k, index_bits, entries, code_bytes, gap_bytes = record.params
    cur = _Cursor(section, 0, len(section), f"{where}, codebook section")
    codebook = np.frombuffer(cur.take(4 * k, "codebook"), dtype="<f4").astype(np.float32)
    encoded = EncodedLayer(
        index_bits=index_bits,
        entry_count=entries,
        code_lengths=bytes(cur.take(lengths_table_size(k + 1), "code length table")),
        gap_lengths=bytes(cur.take(lengths_table_size(1 << index_bits), "gap length table")),
        code_stream=cur.take(code_bytes, "code stream"),
        gap_stream=cur.take(gap_bytes, "gap stream"),
    )
    numel = int(np.prod(record.shape, dtype=np.int64))
    try:
        positions, codes = decode_layer(encoded, k, numel)
    except FormatError as error:
        raise FormatError(f"{where}, code or gap stream: {error}") from None
    return CodebookTensor(record.shape, record.dtype, codebook, positions, codes, index_bits)
