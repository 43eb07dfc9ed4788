"""CompressedModel (or a stream of records) -> .dzip bytes, version 6 (docs/FORMAT.md).

Versions 2 to 6 put the header after the sections, so a file is written in one pass, section by
section, as the records arrive: a writer never holds more than one record's bytes. `write`
and `write_stream` write to a temporary file and rename it into place (atomic).
"""

from __future__ import annotations

import io
import lzma
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from deepzip.codec import planes
from deepzip.codec.layer import SIGNIFICANCE, encode_dense, encode_layer_smallest
from deepzip.codec.streams import ANS, CODERS, HUFFMAN
from deepzip.compressed import Alias, CodebookTensor, CompressedModel, RawTensor
from deepzip.container import atomic
from deepzip.container.dtypes import DTYPE_CODES
from deepzip.container.spec import (
    ENCODING_ALIAS,
    ENCODING_CODEBOOK,
    ENCODING_FILE,
    ENCODING_FILE_XZ,
    ENCODING_PLANES,
    ENCODING_RAW,
    FLAG_CODE_ANS,
    FLAG_CODE_COMPACT,
    FLAG_CODEBOOK_F16,
    FLAG_CODEBOOK_PLANES,
    FLAG_GAP_ANS,
    FLAG_GAP_COMPACT,
    FLAG_SCALE_F16,
    FLAG_SIGNIFICANCE,
    FLOAT_CODES,
    MAGIC,
    PLANE_ANS,
    PLANE_HUFFMAN,
    PLANE_HUFFMAN_LISTED,
    PLANE_STORED,
    PREAMBLE,
    TRAILER,
    VERSION,
    check_file_name,
    lengths_table_size,
    pack_plane_fields,
    pack_varint,
)
from deepzip.errors import ConfigError, DeepzipError
from deepzip.limits import (
    MAX_CODEBOOK,
    MAX_HEADER_SIZE,
    MAX_INDEX_BITS,
    MAX_NAME_BYTES,
    MAX_NDIM,
)


@dataclass(frozen=True)
class EncodedRecord:
    """A record already encoded (`encode_record`): what a worker process hands the writer.

    Encoding is the expensive part of writing; records encoded in parallel are written in
    the order they are given, so the file's bytes do not depend on who encoded them.
    """

    dtype: torch.dtype
    shape: tuple[int, ...]
    encoding: int
    chunks: tuple
    params: bytes = b""


Item = tuple[str, CodebookTensor | RawTensor | Alias | EncodedRecord]


def records_of(model: CompressedModel) -> Iterator[Item]:
    """`model`'s tensors sorted by name (equal models give equal bytes); ties as Alias items.

    A record object under several names is stored under the first in sorted order.
    """
    stored: dict[int, str] = {}
    for name in sorted(model.tensors):
        record = model.tensors[name]
        if id(record) in stored:
            yield name, Alias(stored[id(record)])
        else:
            stored[id(record)] = name
            yield name, record


def to_bytes(model: CompressedModel) -> bytes:
    """Serialize `model` (see `records_of` for the order)."""
    _check_names(model)
    buffer = io.BytesIO()
    write_to(buffer, records_of(model), model.files)
    return buffer.getvalue()


def write(model: CompressedModel, path: str | os.PathLike, overwrite: bool = False) -> int:
    """Write `model` to `path` atomically and return the file size in bytes.

    The bytes go to a temporary file in the same directory, are fsynced, and are renamed
    over `path` only when complete (see `deepzip.container.atomic`): a crash or a full disk
    never leaves a partial file at `path`, and an existing file survives any failure. An
    existing `path` is replaced only with `overwrite=True`.
    """
    _check_names(model)
    return write_stream(path, records_of(model), model.files, overwrite=overwrite)


def write_stream(path: str | os.PathLike, items: Iterable[Item], files: Mapping[str, bytes] = {}, overwrite: bool = False) -> int:
    """Write records as `items` yields them (name, record or Alias) to `path`, atomically; return the size.

    An Alias must name a record yielded before it. `files` are attached after the tensors.
    """
    path = Path(path)
    atomic.check_overwrite(path, overwrite)
    written = 0

    def fill(tmp: Path) -> None:
        nonlocal written
        with open(tmp, "wb") as f:
            written = write_to(f, items, files)
            f.flush()
            os.fsync(f.fileno())

    atomic.replace_file(path, fill)
    return written


def write_to(f: BinaryIO, items: Iterable[Item], files: Mapping[str, bytes] = {}) -> int:
    """Write a whole version-5 file to the binary stream `f`, one section at a time; return its size."""
    preamble = PREAMBLE.pack(MAGIC, VERSION, 0, 0)
    f.write(preamble)
    size = len(preamble)
    heads: list[bytes] = []
    stored: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    names: set[str] = set()
    for name, record in items:
        if name in names:
            raise ConfigError(f"name {name!r} is given twice")
        names.add(name)
        if isinstance(record, Alias):
            if record.target not in stored:
                raise ConfigError(f"tensor {name!r}: alias of {record.target!r}, which is not stored before it")
            dtype, shape = stored[record.target]
            record = EncodedRecord(dtype, shape, ENCODING_ALIAS, (record.target.encode("utf-8"),))
        elif not isinstance(record, EncodedRecord):
            record = encode_record(name, record)
        stored[name] = (record.dtype, record.shape)
        heads.append(_record_head(name, record.dtype, record.shape, record.encoding, record.chunks) + record.params)
        size += _write_chunks(f, record.chunks)
    for name in sorted(files):
        if name in names:
            raise ConfigError(f"name {name!r} is both a tensor and a file")
        check_file_name(name, ConfigError)
        content = bytes(files[name])
        packed = xz_compress(content)
        if len(packed) < len(content):
            heads.append(_record_head(name, torch.uint8, (len(content),), ENCODING_FILE_XZ, (packed,)))
        else:
            packed = content
            heads.append(_record_head(name, torch.uint8, (len(content),), ENCODING_FILE, (content,)))
        size += _write_chunks(f, [packed])
    body = pack_varint(len(heads)) + b"".join(heads)
    if len(body) > MAX_HEADER_SIZE:
        raise DeepzipError(f"header of {len(body)} bytes exceeds the format's limit of {MAX_HEADER_SIZE}")
    f.write(body)
    f.write(TRAILER.pack(len(body), zlib.crc32(body, zlib.crc32(preamble))))
    return size + len(body) + TRAILER.size


def xz_compress(content: bytes) -> bytes:
    """`content` xz-compressed (CRC-32 check, the strongest preset): a file is stored so when smaller.

    Tokenizer files are text that xz shrinks 3-5x; they can be several percent of a small
    model's file. lzma is in Python's standard library, so every reader has it.
    """
    return lzma.compress(content, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)


def _coding_params(
    k: int, index_bits: int, flags: int, scale_axis: int | None, counts: tuple[int, ...], tables: tuple[int, int]
) -> bytes:
    """A version-3 (to 5) codebook record's coding parameters: u16 k, u8 b, u8 flags, u8 scale axis
    (0 none, else axis + 1), then varints E, K, C, G, code table size, gap table size."""
    axis = 0 if scale_axis is None else scale_axis + 1
    return struct.pack("<HBBB", k, index_bits, flags, axis) + b"".join(pack_varint(v) for v in (*counts, *tables))


def _stream_flags(coder: int, table: bytes, alphabet_size: int, ans_flag: int, compact_flag: int) -> int:
    """A stream's coding flag: rANS, or Huffman with a compact table (one of another size
    than the packed one), or neither."""
    if coder == ANS:
        return ans_flag
    return compact_flag if len(table) != lengths_table_size(alphabet_size) else 0


def _float_entries(values: np.ndarray, flag: int) -> tuple[np.ndarray, int]:
    """float16 values and `flag` when every value is exactly a float16, else float32 values and 0."""
    values32 = np.ascontiguousarray(values, dtype="<f4")
    with np.errstate(over="ignore"):  # out of float16's range: then float32, as the check below finds
        values16 = values32.astype("<f2")
    if np.array_equal(values16.astype("<f4"), values32, equal_nan=False) and np.isfinite(values32).all():
        return values16, flag
    return values32, 0


# Raw tensors up to this many elements have their byte planes coded where that is smaller
# (every bias and norm of a model); past it they are written as they are, so that a model
# stored uncompressed is not entropy coded byte by byte at writing time.
PLANES_MAX_ELEMENTS = 1 << 24
_PLANE_MODES = {planes.STORED: PLANE_STORED, HUFFMAN: PLANE_HUFFMAN, ANS: PLANE_ANS, planes.LISTED: PLANE_HUFFMAN_LISTED}


def may_code_planes(numel: int, width: int) -> bool:
    """Whether the writer tries byte planes for `numel` values of `width` bytes (else they go raw)."""
    return width >= 2 and 0 < numel <= PLANES_MAX_ELEMENTS


def _coded_planes(data: np.ndarray, width: int, coders: tuple[int, ...] | None) -> tuple[bytes, tuple] | None:
    """(plane fields, section chunks) of the byte planes of `data` (uint8, values of `width` bytes),
    where they are smaller than `data` itself, else None."""
    if not may_code_planes(data.size // width, width):
        return None
    coded = planes.encode(data, width, CODERS if coders is None else coders)
    fields = pack_plane_fields((_PLANE_MODES[p.coder], len(p.table), len(p.data)) for p in coded)
    chunks = tuple(part for p in coded for part in (p.table, p.data))
    if len(fields) + sum(p.nbytes for p in coded) >= data.size:
        return None
    return fields, chunks


def _check_names(model: CompressedModel) -> None:
    overlap = set(model.tensors) & set(model.files)
    if overlap:
        raise ConfigError(f"name {sorted(overlap)[0]!r} is both a tensor and a file")


def _write_chunks(f: BinaryIO, chunks: tuple) -> int:
    for chunk in chunks:
        f.write(chunk)
    return sum(memoryview(chunk).nbytes for chunk in chunks)


def _record_head(name: str, dtype: torch.dtype, shape: tuple[int, ...], encoding: int, chunks: tuple) -> bytes:
    encoded_name = name.encode("utf-8")
    if not 1 <= len(encoded_name) <= MAX_NAME_BYTES:
        raise ConfigError(f"tensor name {name!r} must be 1..{MAX_NAME_BYTES} bytes of UTF-8")
    if dtype not in DTYPE_CODES:
        raise ConfigError(f"tensor {name!r}: dtype {dtype} cannot be stored in a .dzip file")
    if len(shape) > MAX_NDIM:
        raise ConfigError(f"tensor {name!r}: {len(shape)} dimensions exceed the format's {MAX_NDIM}")
    if any(d >= 1 << 32 for d in shape):
        raise ConfigError(f"tensor {name!r}: a dimension of {max(shape)} exceeds the format's 2^32 - 1")
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    size = sum(memoryview(chunk).nbytes for chunk in chunks)
    head = struct.pack("<H", len(encoded_name)) + encoded_name
    head += struct.pack(f"<BB{len(shape)}I", DTYPE_CODES[dtype], len(shape), *shape)
    return head + struct.pack("<B", encoding) + pack_varint(size) + struct.pack("<I", crc)


def encoded_size(record: CodebookTensor | RawTensor) -> int:
    """Bytes of `record`'s section and coding parameters as the writer stores it (its header's name,
    shape and sizes aside)."""
    encoded = encode_record("", record)
    return sum(memoryview(chunk).nbytes for chunk in encoded.chunks) + len(encoded.params)


def encode_record(name: str, record: CodebookTensor | RawTensor) -> EncodedRecord:
    """Encode one stored record: its section's chunks and its coding parameters (checked)."""
    shape = tuple(record.shape)
    if isinstance(record, RawTensor):
        # Viewing as uint8 handles every dtype, bfloat16 included, which numpy lacks; the
        # numpy view is written as it is, with no copy (little-endian hosts only: torch
        # supports no big-endian CPU).
        tensor = record.tensor.detach().cpu().contiguous()
        flat = tensor.reshape(-1).view(torch.uint8).numpy()
        coded = _coded_planes(flat, tensor.element_size(), record.coders)  # bool: 1-byte values, raw
        if coded is not None:
            return EncodedRecord(tensor.dtype, shape, ENCODING_PLANES, coded[1], coded[0])
        return EncodedRecord(tensor.dtype, shape, ENCODING_RAW, (flat,))
    k = len(record.codebook)
    # The writer enforces the reader's limits, so it never writes a file it cannot read.
    if DTYPE_CODES.get(record.dtype) not in FLOAT_CODES:
        raise ConfigError(f"tensor {name!r}: codebook encoding needs a floating dtype, got {record.dtype}")
    if not 1 <= k <= MAX_CODEBOOK:
        raise ConfigError(f"tensor {name!r}: codebook size {k} outside 1..{MAX_CODEBOOK}")
    if record.index_bits is not None and not 1 <= record.index_bits <= MAX_INDEX_BITS:
        raise ConfigError(f"tensor {name!r}: index bits {record.index_bits} outside 1..{MAX_INDEX_BITS}")
    coders = CODERS if record.coders is None else record.coders
    entries, flags = _float_entries(record.codebook, FLAG_CODEBOOK_F16)
    codebook, plane_fields = entries.tobytes(), b""
    coded = _coded_planes(entries.view(np.uint8), entries.itemsize, coders)
    if coded is not None:
        (plane_fields, chunks), flags = coded, flags | FLAG_CODEBOOK_PLANES
        codebook = b"".join(chunks)
    scale = b""
    if record.scale is not None:
        scale_values, scale_flag = _float_entries(record.scale, FLAG_SCALE_F16)
        scale = scale_values.tobytes()
        flags |= scale_flag
    kept = record.kept
    if record.index_bits is None and kept == record.numel and kept:
        # Every position kept: no position stream at all (b = 0), not one gap symbol per weight.
        stream = encode_dense(record.codes, k, coders)
        flags |= _stream_flags(stream.coder, stream.table, k + 1, FLAG_CODE_ANS, FLAG_CODE_COMPACT)
        counts = (kept, kept, len(stream.data), 0)
        params = _coding_params(k, 0, flags, record.scale_axis, counts, (len(stream.table), 0)) + plane_fields
        return EncodedRecord(record.dtype, shape, ENCODING_CODEBOOK, (codebook, scale, stream.table, stream.data), params)
    positions = record.flat_positions() if record.positions is None else record.positions  # int32 stays int32
    layer = encode_layer_smallest(positions, record.codes, k, record.numel, record.index_bits, coders, shape)
    flags |= _stream_flags(layer.code_coder, layer.code_table, k + 1, FLAG_CODE_ANS, FLAG_CODE_COMPACT)
    if layer.gap_coder == SIGNIFICANCE:
        flags |= FLAG_SIGNIFICANCE
    else:
        flags |= _stream_flags(layer.gap_coder, layer.gap_table, 1 << layer.index_bits, FLAG_GAP_ANS, FLAG_GAP_COMPACT)
    counts = (layer.entry_count, kept, len(layer.code_stream), len(layer.gap_stream))
    params = _coding_params(k, layer.index_bits, flags, record.scale_axis, counts, (len(layer.code_table), len(layer.gap_table)))
    params += plane_fields
    chunks = (codebook, scale, layer.code_table, layer.gap_table, layer.code_stream, layer.gap_stream)
    return EncodedRecord(record.dtype, shape, ENCODING_CODEBOOK, chunks, params)
