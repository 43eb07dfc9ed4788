""".dzip bytes -> records and tensors (docs/FORMAT.md, versions 1 to 5), read defensively.

`container.header` checks every size the header declares before anything is allocated;
this module then checks each section's checksum and decodes it, naming the tensor and the
section in every FormatError. Files are memory-mapped, not read whole: a caller that
decodes one tensor at a time (`DzipFile.decode`) holds one tensor at a time.
"""

from __future__ import annotations

import lzma
import mmap
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from deepzip.codec import planes as planes_
from deepzip.codec.layer import SIGNIFICANCE, EncodedLayer, decode_dense, decode_layer
from deepzip.codec.streams import ANS, HUFFMAN
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.container import header as header_
from deepzip.container.dtypes import DTYPES
from deepzip.container.spec import (
    ENCODING_ALIAS,
    ENCODING_CODEBOOK,
    ENCODING_FILE,
    ENCODING_FILE_XZ,
    ENCODING_PLANES,
    ENCODING_RAW,
    FILE_ENCODINGS,
    FLAG_CODE_ANS,
    FLAG_CODEBOOK_F16,
    FLAG_CODEBOOK_PLANES,
    FLAG_GAP_ANS,
    FLAG_SCALE_F16,
    FLAG_SIGNIFICANCE,
    PLANE_ANS,
    PLANE_HUFFMAN,
    PLANE_HUFFMAN_LISTED,
    PLANE_STORED,
)
from deepzip.errors import ChecksumError, DeepzipError, FormatError
from deepzip.limits import DEFAULT_MAX_DECODED_SIZE


class DzipFile:
    """A checked .dzip file whose sections are decoded on demand.

    `header.records` lists every record in file order; `tensor_names` the tensors (stored
    and aliases), `aliases` {alias: target} and `files` {name: bytes} of attached files.
    `decode(name)` checks one section's checksum and decodes it.
    """

    def __init__(self, data: bytes | bytearray | memoryview | mmap.mmap, max_decoded_size: int | None = DEFAULT_MAX_DECODED_SIZE):
        self._view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
        self._mapped = data if isinstance(data, mmap.mmap) else None
        self.header = header_.parse(self._view, max_decoded_size)
        self._records = {record.name: record for record in self.header.records}
        self.aliases: dict[str, str] = {}
        self.files: dict[str, bytes] = {}
        for record in self.header.records:
            if record.encoding == ENCODING_ALIAS:
                try:
                    self.aliases[record.name] = bytes(self._section(record)).decode("utf-8")
                except UnicodeDecodeError:
                    raise FormatError(f"tensor {record.name!r}, alias section: target name is not UTF-8") from None
            elif record.encoding == ENCODING_FILE:
                self.files[record.name] = bytes(self._section(record))
            elif record.encoding == ENCODING_FILE_XZ:
                self.files[record.name] = _unxz(record, self._section(record))
        for name, target in self.aliases.items():
            # Only a stored tensor can be a target: no chains, no cycles, no files.
            stored = self._records.get(target)
            if stored is None or stored.encoding not in (ENCODING_RAW, ENCODING_PLANES, ENCODING_CODEBOOK):  # not FILE_ENCODINGS
                raise FormatError(f"tensor {name!r}, alias section: target {target!r} is not a stored tensor")
            alias = self._records[name]
            if (stored.shape, stored.dtype_code) != (alias.shape, alias.dtype_code):
                raise FormatError(f"tensor {name!r}, alias section: shape or dtype differs from its target {target!r}")
        self.tensor_names = [r.name for r in self.header.records if r.encoding not in FILE_ENCODINGS]

    def _section(self, record: header_.Record) -> memoryview:
        section = self._view[record.offset : record.offset + record.size]
        if zlib.crc32(section) != record.crc:
            raise ChecksumError(f"tensor {record.name!r}, data section: checksum mismatch")
        return section

    def verify(self) -> None:
        """Check every section's checksum (ChecksumError naming the first bad one), decoding nothing."""
        for record in self.header.records:
            self._section(record)
            self._release(record)

    def _release(self, record: header_.Record) -> None:
        """Drop the mapped pages of a section that has been read (they stay in the page cache).

        Pages a mapping has touched count in the process's RSS until it is unmapped; decoding
        a large file one tensor at a time would otherwise look like holding all of it.
        """
        if self._mapped is None or not record.size:
            return
        start = record.offset - record.offset % mmap.PAGESIZE
        self._mapped.madvise(mmap.MADV_DONTNEED, start, record.offset + record.size - start)

    def stored_name(self, name: str) -> str:
        """The record `name` is stored as: its alias target, or itself."""
        return self.aliases.get(name, name)

    def record(self, name: str) -> header_.Record:
        """The header record stored under `name` (an alias's target's)."""
        return self._records[self.stored_name(name)]

    def decode(self, name: str) -> CodebookTensor | RawTensor:
        """The record stored under `name` (an alias's target's record), checked and decoded."""
        record = self.record(name)
        decoded = _decode_section(record, self._section(record))
        self._release(record)
        return decoded

    def model(self) -> CompressedModel:
        """Every tensor decoded, aliases sharing their target's record, plus the files."""
        tensors: dict[str, CodebookTensor | RawTensor] = {}
        for name in self.tensor_names:
            if name not in self.aliases:
                tensors[name] = self.decode(name)
        for name, target in self.aliases.items():
            tensors[name] = tensors[target]
        return CompressedModel({name: tensors[name] for name in self.tensor_names}, dict(self.files))


def open_file(path: str | os.PathLike, max_decoded_size: int | None = DEFAULT_MAX_DECODED_SIZE) -> DzipFile:
    """Memory-map and check the .dzip file at `path` (its header: sections are read on demand)."""
    path = Path(path)
    if not path.is_file():
        raise DeepzipError(f"{path}: no such file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return DzipFile(b"", max_decoded_size)
        # The map outlives the file object (it holds its own descriptor) and is closed when
        # the last view of it goes: tensors decoded from it own copies, never views.
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return DzipFile(mapped, max_decoded_size)


def read(path: str | os.PathLike, max_decoded_size: int | None = DEFAULT_MAX_DECODED_SIZE) -> CompressedModel:
    """Read and fully validate a .dzip file; refuse one that decodes to over `max_decoded_size` bytes."""
    return open_file(path, max_decoded_size).model()


def from_bytes(data: bytes | bytearray | memoryview, max_decoded_size: int | None = DEFAULT_MAX_DECODED_SIZE) -> CompressedModel:
    """Parse a whole .dzip file held in memory; raises FormatError for anything that is not a valid file."""
    return DzipFile(data, max_decoded_size).model()


def section_sizes(data: bytes) -> dict[str, int]:
    """{record name: data section bytes} of a valid file, for per-layer byte accounting."""
    return {r.name: r.size for r in header_.parse(data, None).records}


def _decode_section(record: header_.Record, section: memoryview) -> CodebookTensor | RawTensor:
    where = f"tensor {record.name!r}"
    dtype = DTYPES[record.dtype_code]
    if record.encoding == ENCODING_RAW:
        buffer = bytearray(section)  # a private, writable copy that the tensor owns
        if dtype == torch.bool and buffer.translate(None, b"\x00\x01"):
            raise FormatError(f"{where}, raw section: bool bytes must be 0 or 1")
        flat = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.zeros(0, dtype=torch.uint8)
        return RawTensor(flat.view(dtype).reshape(record.shape))
    if record.encoding == ENCODING_PLANES:
        values = _planes(record.planes, section, record.numel, f"{where}, byte planes")
        return RawTensor(torch.from_numpy(values.reshape(-1)).view(dtype).reshape(record.shape))
    k, b = record.k, record.index_bits
    sizes = (record.codebook_bytes, record.scale_bytes, record.code_table_bytes, record.gap_table_bytes)
    parts = np.cumsum([0, *sizes, record.code_bytes, record.gap_bytes])
    piece = [section[parts[i] : parts[i + 1]] for i in range(6)]  # sizes were checked in the header
    entries = piece[0]
    if record.flags & FLAG_CODEBOOK_PLANES:
        entries = _planes(record.planes, piece[0], k, f"{where}, codebook planes").reshape(-1)
    codebook = np.frombuffer(entries, dtype="<f2" if record.flags & FLAG_CODEBOOK_F16 else "<f4").astype(np.float32)
    scale = None
    if record.scale_axis is not None:
        scale = np.frombuffer(piece[1], dtype="<f2" if record.flags & FLAG_SCALE_F16 else "<f4").astype(np.float32)
    code_coder = ANS if record.flags & FLAG_CODE_ANS else HUFFMAN
    gap_coder = SIGNIFICANCE if record.flags & FLAG_SIGNIFICANCE else ANS if record.flags & FLAG_GAP_ANS else HUFFMAN
    try:
        if b == 0 and gap_coder != SIGNIFICANCE:
            codes = decode_dense(code_coder, bytes(piece[2]), piece[4], k, record.entries)
            return CodebookTensor(record.shape, dtype, codebook, None, codes, None, scale, record.scale_axis)
        encoded = EncodedLayer(b, record.entries, bytes(piece[2]), bytes(piece[3]), piece[4], piece[5], code_coder, gap_coder)
        positions, codes = decode_layer(encoded, k, record.numel, record.shape)
    except FormatError as error:
        raise FormatError(f"{where}, code or gap stream: {error}") from None
    if record.kept is not None and len(codes) != record.kept:
        raise FormatError(f"{where}, gap stream: {len(codes)} kept weights, the header says {record.kept}")
    # b = 0 here: significance flags, whose index bits the encoder chooses again on a rewrite.
    return CodebookTensor(record.shape, dtype, codebook, positions, codes, b or None, scale, record.scale_axis)


_PLANE_CODERS = {PLANE_STORED: planes_.STORED, PLANE_HUFFMAN: HUFFMAN, PLANE_ANS: ANS, PLANE_HUFFMAN_LISTED: planes_.LISTED}


def _planes(fields: tuple[tuple[int, int, int], ...], section: memoryview, count: int, where: str) -> np.ndarray:
    """The (count, width) bytes of byte-plane coded values; their sizes were checked in the header."""
    coded, offset = [], 0
    for mode, table, data in fields:
        if mode == PLANE_STORED:
            coded.append(planes_.CodedStream(planes_.STORED, b"", section[offset : offset + count]))
            offset += count
        else:
            tables = bytes(section[offset : offset + table])
            coded.append(planes_.CodedStream(_PLANE_CODERS[mode], tables, section[offset + table : offset + table + data]))
            offset += table + data
    try:
        return planes_.decode(tuple(coded), count)
    except FormatError as error:
        raise FormatError(f"{where}: {error}") from None


XZ_MEMORY_LIMIT = 96 << 20


def _unxz(record: header_.Record, section: memoryview) -> bytes:
    """An xz file section decompressed to exactly the size its record declares, or FormatError.

    The decompressor is never asked for more than that size plus one byte, so a small
    section cannot make it allocate more than the header (and the decoded-size cap) allowed.
    """
    where = f"file {record.name!r}, xz section"
    size = record.shape[0]
    # The memory limit bounds what the stream's own headers can make liblzma allocate (a
    # dictionary size is declared, not implied); the writer's preset needs about 65 MiB.
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT)
    try:
        content = decompressor.decompress(bytes(section), max_length=size + 1)
    except lzma.LZMAError as error:
        raise FormatError(f"{where}: {error}") from None
    if len(content) != size or not decompressor.eof or decompressor.unused_data:
        raise FormatError(f"{where}: does not decode to exactly {size} bytes")
    return content
