"""Parse and check a .dzip file's preamble and header (versions 1 to 6), with struct alone.

No torch, numpy or numba here: `deepzip info` answers from the header without importing
them, and the reader checks every record before it allocates anything. Every size a
record declares is checked against the file, the format's limits and the decoded-size cap
here; what needs the streams (Huffman codes, positions) is checked when they are decoded.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from deepzip.container.cursor import Cursor
from deepzip.container.spec import (
    CODEBOOK_FLAGS,
    CODEBOOK_FLAGS_V3,
    CODEBOOK_FLAGS_V4,
    CODEBOOK_FLAGS_V5,
    DTYPE_ITEMSIZE,
    DTYPE_NAMES,
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
    PLANE_STORED,
    PREAMBLE,
    TRAILER,
    VERSION,
    VERSIONS,
    check_file_name,
    lengths_table_size,
)
from deepzip.errors import ChecksumError, FormatError, TruncatedError, VersionError
from deepzip.limits import (
    DEFAULT_MAX_DECODED_SIZE,
    MAX_CODEBOOK,
    MAX_HEADER_SIZE,
    MAX_INDEX_BITS,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_NUMEL,
)


@dataclass(frozen=True)
class Record:
    """One header record: where its section lies and what it declares.

    `kept` is the number of kept weights of a codebook record (E minus fillers), known
    from a version-2 header; None for version 1, where only the gap stream tells.
    `index_bits` 0 marks a dense codebook record (versions 2, 3): no gap stream at all.
    `flags` (version 3; spec.FLAG_*) say which coder each stream uses (version 4: or that the
    gap stream holds significance flags, with b = 0) and the width of the
    codebook and scale entries; `scale_axis` is the dimension whose slices carry a scale
    (None: no scales); `code_table_bytes` and `gap_table_bytes` size the two tables.
    """

    name: str
    dtype_code: int
    shape: tuple[int, ...]
    encoding: int
    offset: int
    size: int
    crc: int
    k: int = 0
    index_bits: int = 0
    entries: int = 0
    kept: int | None = None
    code_bytes: int = 0
    gap_bytes: int = 0
    flags: int = 0
    scale_axis: int | None = None
    code_table_bytes: int = 0
    gap_table_bytes: int = 0
    planes: tuple[tuple[int, int, int], ...] = ()  # version 5: (mode, table bytes, data bytes) per byte plane

    @property
    def codebook_bytes(self) -> int:
        """Bytes of the codebook entries (of their byte planes, with flag bit 5)."""
        if self.flags & FLAG_CODEBOOK_PLANES:
            return plane_bytes(self.planes, self.k)
        return self.k * (2 if self.flags & FLAG_CODEBOOK_F16 else 4)

    @property
    def scale_bytes(self) -> int:
        """Bytes of the per-slice scales (0 without)."""
        if self.scale_axis is None:
            return 0
        return self.shape[self.scale_axis] * (2 if self.flags & FLAG_SCALE_F16 else 4)

    @property
    def numel(self) -> int:
        """Element count: the plain product of the dims (1 for a scalar)."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def decoded_bytes(self) -> int:
        """Bytes the record takes once decoded (a file's bytes, a tensor's elements)."""
        if self.encoding == ENCODING_ALIAS:
            return 0
        return self.numel * DTYPE_ITEMSIZE[self.dtype_code]

    @property
    def dtype_name(self) -> str:
        """The dtype's name, as torch spells it without the prefix (`float16`)."""
        return DTYPE_NAMES[self.dtype_code]


@dataclass(frozen=True)
class Header:
    """A checked header: the version, the records in file order, and the file's size."""

    version: int
    records: tuple[Record, ...]
    file_size: int


def parse(data: Sequence[int] | memoryview | bytes, max_decoded_size: int | None = DEFAULT_MAX_DECODED_SIZE) -> Header:
    """Check the preamble and parse the header of the whole file `data` (bytes or a memoryview).

    The preamble is the first 16 bytes: magic, version, flags and (version 1) the header
    size. They are checked in that order: not a .dzip file, a version this reader does not
    know, unknown flags. Then the header's checksum, then every record, then that the
    sections tile the file exactly. `max_decoded_size` (bytes; None = no cap) bounds the
    sum of what the tensors and files decode to, so that a small file cannot make a reader
    allocate without limit: a file above it is refused here, before any allocation, naming
    the tensor that crosses it.
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    size = len(view)
    if bytes(view[:8]) != MAGIC:
        raise FormatError("not a .dzip file (bad magic bytes)")
    if size < PREAMBLE.size:
        raise TruncatedError(f"preamble: the file ends after {size} bytes")
    _, version, flags, header_size = PREAMBLE.unpack(view[: PREAMBLE.size])
    if version > VERSION:
        raise VersionError(f"file format version {version} was written by a newer deepzip (this one reads 1..{VERSION})")
    if version not in VERSIONS:
        raise VersionError(f"unknown file format version {version}")
    if flags:
        raise FormatError(f"preamble: unknown flags {flags:#06x}")
    if version == 1:
        if header_size > MAX_HEADER_SIZE or PREAMBLE.size + header_size + 4 > size:
            raise TruncatedError(f"header: size {header_size} runs past the end of the {size}-byte file")
        body_start, body_end = PREAMBLE.size, PREAMBLE.size + header_size
        (crc,) = struct.unpack("<I", view[body_end : body_end + 4])
        if zlib.crc32(view[:body_end]) != crc:
            raise ChecksumError("header: checksum mismatch")
        sections_start, sections_end = body_end + 4, size
    else:
        if header_size != 0:
            raise FormatError(f"preamble: the reserved field is {header_size}, must be 0 in version {version}")
        if size < PREAMBLE.size + TRAILER.size:
            raise TruncatedError(f"trailer: the file ends after {size} bytes")
        body_size, crc = TRAILER.unpack(view[size - TRAILER.size :])
        if body_size > MAX_HEADER_SIZE or PREAMBLE.size + body_size + TRAILER.size > size:
            raise TruncatedError(f"header: size {body_size} does not fit in the {size}-byte file")
        body_start, body_end = size - TRAILER.size - body_size, size - TRAILER.size
        if zlib.crc32(view[body_start:body_end], zlib.crc32(view[: PREAMBLE.size])) != crc:
            raise ChecksumError("header: checksum mismatch")
        sections_start, sections_end = PREAMBLE.size, body_start
    records = _parse_records(Cursor(view, body_start, body_end, "header"), version, sections_start)
    offset = sections_start
    for record in records:
        if record.size > sections_end - offset:
            raise TruncatedError(f"tensor {record.name!r}, data section: runs past the end of the sections")
        offset += record.size
    if offset != sections_end:
        raise FormatError(f"{sections_end - offset} trailing bytes after the last section")
    if max_decoded_size is not None:
        total = 0
        for record in records:
            total += record.decoded_bytes
            if total > max_decoded_size:
                raise FormatError(
                    f"tensor {record.name!r}: decodes to {_gib(record.decoded_bytes)} (shape {list(record.shape)}), "
                    f"which takes the file past the decoded-size limit of {_gib(max_decoded_size)} "
                    "(raise max_decoded_size / --max-decoded-size if you trust the file)"
                )
    return Header(version, tuple(records), size)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n:,} bytes"


def plane_bytes(planes: Sequence[tuple[int, int, int]], count: int) -> int:
    """Section bytes of byte planes of `count` values: n for a stored plane, T + D for a coded one."""
    return sum(count if mode == PLANE_STORED else table + data for mode, table, data in planes)


def _parse_records(cur: Cursor, version: int, offset: int) -> list[Record]:
    count = cur.size(version, "record count")
    # Each record takes at least 12 bytes in version 1 (14, in fact) and 11 in versions 2
    # and 3 (a one-byte name, a 0-d raw record, a one-byte size varint): a count beyond
    # that is damage.
    if count > (cur.end - cur.pos) // (12 if version == 1 else 11):
        raise FormatError(f"header: record count {count} does not fit in the header")
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
        if name in names:  # across tensor, alias and file records alike
            raise FormatError(f"tensor {name!r}, header: duplicate name")
        names.add(name)
        cur.where = f"tensor {name!r}, header"
        record = _parse_record(cur, name, version, offset)
        offset += record.size
        records.append(record)
    if cur.pos != cur.end:
        raise FormatError(f"header: {cur.end - cur.pos} unused bytes after the last record")
    return records


def _parse_record(cur: Cursor, name: str, version: int, offset: int) -> Record:
    dtype_code, ndim = cur.unpack("BB", "dtype and ndim")
    if dtype_code not in DTYPE_NAMES:
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
    (encoding,) = cur.unpack("B", "encoding")
    size = cur.size(version, "section size")
    (crc,) = cur.unpack("I", "section crc")
    fields = dict(name=name, dtype_code=dtype_code, shape=tuple(shape), encoding=encoding, offset=offset, size=size, crc=crc)
    if encoding == ENCODING_CODEBOOK:
        return _parse_codebook(cur, version, numel, fields)
    if encoding == ENCODING_RAW:
        expected = numel * DTYPE_ITEMSIZE[dtype_code]
        if size != expected:
            raise FormatError(f"{cur.where}: raw section size {size} != {expected} for shape {list(shape)}")
    elif encoding == ENCODING_PLANES and version >= 5:
        width = DTYPE_ITEMSIZE[dtype_code]
        if width < 2:
            raise FormatError(f"{cur.where}: byte planes need elements of 2 bytes or more, not {DTYPE_NAMES[dtype_code]}")
        planes = cur.planes(width, numel)
        if size != plane_bytes(planes, numel):
            raise FormatError(f"{cur.where}: section size {size} != {plane_bytes(planes, numel)}, the sum of its byte planes")
        return Record(**fields, planes=planes)
    elif encoding == ENCODING_ALIAS:
        if not 1 <= size <= MAX_NAME_BYTES:
            raise FormatError(f"{cur.where}: alias target name of {size} bytes outside 1..{MAX_NAME_BYTES}")
    elif encoding == ENCODING_FILE:
        if DTYPE_NAMES[dtype_code] != "uint8" or len(shape) != 1 or shape[0] != size:
            raise FormatError(f"{cur.where}: a file record must be uint8 of shape [section size]")
        check_file_name(name)
    elif encoding == ENCODING_FILE_XZ and version >= 3:
        # The shape is the decoded size, which the decoded-size cap bounds; the reader
        # decompresses to exactly that many bytes and no more.
        if DTYPE_NAMES[dtype_code] != "uint8" or len(shape) != 1 or not size:
            raise FormatError(f"{cur.where}: an xz file record must be uint8 of shape [decoded size], with a section")
        check_file_name(name)
    else:
        raise FormatError(f"{cur.where}: unknown encoding {encoding}")
    return Record(**fields)


def _check_table(cur: Cursor, what: str, size: int, alphabet: int, ans: int, compact: int) -> None:
    """A Huffman table is packed (ceil(alphabet / 2) bytes) or, with its compact flag (version 6),
    3 bytes (its fields and one length-code symbol take 17 bits at least) up to one less than
    that; a rANS table may have any size, and no compact flag."""
    packed = lengths_table_size(alphabet)
    if compact and ans:
        raise FormatError(f"{cur.where}: the {what} stream is rANS-coded, so its table cannot be a compact Huffman one")
    if compact and not 3 <= size < packed:
        raise FormatError(f"{cur.where}: a compact Huffman {what} table of {alphabet} symbols is 3..{packed - 1} bytes, not {size}")
    if not ans and not compact and size != packed:
        raise FormatError(f"{cur.where}: a Huffman {what} table of {alphabet} symbols is {packed} bytes, not {size}")


def _parse_codebook(cur: Cursor, version: int, numel: int, fields: dict) -> Record:
    if fields["dtype_code"] not in FLOAT_CODES:
        raise FormatError(f"{cur.where}: codebook encoding needs a floating dtype, got {DTYPE_NAMES[fields['dtype_code']]}")
    k, b = cur.unpack("HB", "codebook size and index bits")
    flags, scale_axis = cur.unpack("BB", "coding flags and scale axis") if version >= 3 else (0, 0)
    entries = cur.size(version, "entry count")
    kept = cur.varint("kept count") if version >= 2 else None
    code_bytes = cur.size(version, "code stream size")
    gap_bytes = cur.size(version, "gap stream size")
    if not 1 <= k <= MAX_CODEBOOK:
        raise FormatError(f"{cur.where}: codebook size {k} outside 1..{MAX_CODEBOOK}")
    low = 0 if version >= 2 else 1  # b = 0: a dense record (versions 2, 3)
    if not low <= b <= MAX_INDEX_BITS:
        raise FormatError(f"{cur.where}: index bits {b} outside {low}..{MAX_INDEX_BITS}")
    if flags & ~{3: CODEBOOK_FLAGS_V3, 4: CODEBOOK_FLAGS_V4, 5: CODEBOOK_FLAGS_V5}.get(version, CODEBOOK_FLAGS):
        raise FormatError(f"{cur.where}: unknown coding flags {flags:#04x}")
    significance = bool(flags & FLAG_SIGNIFICANCE)
    if significance and (b or flags & FLAG_GAP_ANS):
        raise FormatError(f"{cur.where}: significance flags have no index bits and no rANS gap stream")
    ndim = len(fields["shape"])
    if scale_axis > ndim:
        raise FormatError(f"{cur.where}: scale axis {scale_axis - 1} of a {ndim}-d tensor")
    if not scale_axis and flags & FLAG_SCALE_F16:
        raise FormatError(f"{cur.where}: scale entries are typed but there are no scales")
    if b == 0 and flags & FLAG_GAP_ANS:
        raise FormatError(f"{cur.where}: a dense record has no gap stream to code")
    if version >= 3:
        code_table = cur.varint("code table size")
        gap_table = cur.varint("gap table size")
    else:
        code_table, gap_table = lengths_table_size(k + 1), lengths_table_size(1 << b) if b else 0
    planes = cur.planes(2 if flags & FLAG_CODEBOOK_F16 else 4, k) if flags & FLAG_CODEBOOK_PLANES else ()
    _check_table(cur, "code", code_table, k + 1, flags & FLAG_CODE_ANS, flags & FLAG_CODE_COMPACT)
    if b:
        _check_table(cur, "gap", gap_table, 1 << b, flags & FLAG_GAP_ANS, flags & FLAG_GAP_COMPACT)
    elif gap_table or flags & FLAG_GAP_COMPACT:  # dense or significance-coded: no gap table
        raise FormatError(f"{cur.where}: the gap table is {gap_table} bytes{' (compact)' if flags & FLAG_GAP_COMPACT else ''}, must be 0")
    if entries > numel:
        raise FormatError(f"{cur.where}: {entries} entries for {numel} elements")
    # A Huffman-coded entry costs at least one bit of its stream (a lone symbol has length 1
    # or more), so such a stream bounds its entry count. rANS has no such floor; there the
    # entry count is bounded by the tensor's size, itself under the decoded-size cap.
    if (not flags & FLAG_CODE_ANS and entries > 8 * code_bytes) or (b and not flags & FLAG_GAP_ANS and entries > 8 * gap_bytes):
        raise FormatError(f"{cur.where}: {entries} entries cannot fit in streams of {code_bytes} and {gap_bytes} bytes")
    if significance:
        # One entry a kept weight, no fillers; the flags themselves are bounded by n alone.
        if kept != entries:
            raise FormatError(f"{cur.where}: a significance-coded record has {entries} entries for {kept} kept weights")
    elif b == 0:
        if entries != numel or kept != entries or gap_bytes:
            raise FormatError(f"{cur.where}: a dense record keeps every one of its {numel} elements, with no gap stream")
    else:
        # The entries reach the tensor's end (docs/FORMAT.md), so n <= (E + 1) * 2^b - 1.
        if numel > (entries + 1) * (1 << b) - 1:
            raise FormatError(f"{cur.where}: {entries} entries of {b}-bit gaps cannot reach {numel} elements")
        if kept is not None and kept > entries:
            raise FormatError(f"{cur.where}: {kept} kept weights among {entries} entries")
    record = Record(
        **fields,
        k=k,
        index_bits=b,
        entries=entries,
        kept=kept,
        code_bytes=code_bytes,
        gap_bytes=gap_bytes,
        flags=flags,
        scale_axis=scale_axis - 1 if scale_axis else None,
        code_table_bytes=code_table,
        gap_table_bytes=gap_table,
        planes=planes,
    )
    expected = record.codebook_bytes + record.scale_bytes + code_table + gap_table + code_bytes + gap_bytes
    if fields["size"] != expected:
        raise FormatError(f"{cur.where}: section size {fields['size']} != {expected}, the sum of its parts")
    return record
