"""The constants of the .dzip format (docs/FORMAT.md), shared by the writer and the readers.

Both sides take the magic, the versions, the encodings, the dtype codes and the rule for
attached file names from here, so that what one writes the other reads. No torch: the
header reader behind `deepzip info` uses this alone. The numeric limits live in
`deepzip.limits`; torch's dtypes for the codes are in `deepzip.container.dtypes`.
"""

from __future__ import annotations

import struct

from deepzip.codec.tables import lengths_table_size
from deepzip.errors import FormatError
from deepzip.limits import MAX_FILE_NAME_PARTS

MAGIC = b"\x89DZIP\r\n\x1a"
VERSION = 6  # written; versions 1 to 5 are still read
VERSIONS = (1, 2, 3, 4, 5, 6)
# The preamble: magic, version, flags, and a u32 that is the header size in version 1
# and reserved (0) in versions 2 to 6, whose header follows the sections.
PREAMBLE = struct.Struct("<8sHHI")
TRAILER = struct.Struct("<II")  # versions 2 to 6: header body size, crc32 of preamble + header body
VARINT_MAX_BYTES = 10  # a u64 in LEB128


def pack_varint(value: int) -> bytes:
    """`value` (0 <= value < 2**64) as an unsigned LEB128 varint: 7 bits a byte, low first.

    Version 2 stores its sizes and counts this way: any u64, in 1-3 bytes for the sizes of
    small models, so the wider sizes cost LeNet's file nothing over version 1's u32s.
    """
    if not 0 <= value < 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)

ENCODING_RAW = 0
ENCODING_CODEBOOK = 1
ENCODING_ALIAS = 2  # a tied tensor: the section names the record it shares
ENCODING_FILE = 3  # an attached file (a model's config.json...): raw bytes, not a tensor
ENCODING_FILE_XZ = 4  # version 3: an attached file, xz-compressed (shape = its decoded size)
FILE_ENCODINGS = (ENCODING_FILE, ENCODING_FILE_XZ)
ENCODING_PLANES = 5  # version 5: a raw tensor whose byte planes are each stored or entropy coded

# Version 3 codebook records: a flags byte. Bits 0 and 1: the code and gap streams are
# rANS-coded (else Huffman); bit 2: codebook entries are float16 (else float32); bit 3: the
# per-slice scales are float16 (else float32). Version 4 adds bit 4: the positions are
# context-coded significance flags (the gap stream holds them; no gaps, no fillers).
# Version 5 adds bit 5: the codebook entries are byte-plane coded, as an encoding-5
# section is (their plane fields follow the table sizes). Version 6 adds bits 6 and 7: the
# code and the gap table, Huffman, are in the compact form (codec.compact_lengths). The
# other bits must be 0.
FLAG_CODE_ANS = 1
FLAG_GAP_ANS = 2
FLAG_CODEBOOK_F16 = 4
FLAG_SCALE_F16 = 8
FLAG_SIGNIFICANCE = 16
CODEBOOK_FLAGS_V3 = FLAG_CODE_ANS | FLAG_GAP_ANS | FLAG_CODEBOOK_F16 | FLAG_SCALE_F16
FLAG_CODEBOOK_PLANES = 32
CODEBOOK_FLAGS_V4 = CODEBOOK_FLAGS_V3 | FLAG_SIGNIFICANCE
CODEBOOK_FLAGS_V5 = CODEBOOK_FLAGS_V4 | FLAG_CODEBOOK_PLANES
FLAG_CODE_COMPACT = 64
FLAG_GAP_COMPACT = 128
CODEBOOK_FLAGS = CODEBOOK_FLAGS_V5 | FLAG_CODE_COMPACT | FLAG_GAP_COMPACT

# Byte-plane modes (version 5): a plane is stored as is, or Huffman- or rANS-coded over
# the 256 byte values: Huffman with a table of PLANE_HUFFMAN_TABLE bytes (all 256 code
# lengths) or, mode 3, with a listed one (the used values and their lengths only).
PLANE_STORED = 0
PLANE_HUFFMAN = 1
PLANE_ANS = 2
PLANE_HUFFMAN_LISTED = 3
PLANE_HUFFMAN_TABLE = lengths_table_size(256)


def pack_plane_fields(fields) -> bytes:
    """Byte-plane fields as a header holds them: per (mode, T, D), the u8 mode, then varints T
    and D unless the plane is stored."""
    return b"".join(bytes([mode]) + (b"" if mode == PLANE_STORED else pack_varint(t) + pack_varint(d)) for mode, t, d in fields)

DTYPE_NAMES = {
    1: "float32",
    2: "float16",
    3: "bfloat16",
    4: "float64",
    5: "int64",
    6: "int32",
    7: "int16",
    8: "int8",
    9: "uint8",
    10: "bool",
}
DTYPE_ITEMSIZE = {1: 4, 2: 2, 3: 2, 4: 8, 5: 8, 6: 4, 7: 2, 8: 1, 9: 1, 10: 1}
FLOAT_CODES = {1, 2, 3, 4}

__all__ = [
    "DTYPE_ITEMSIZE",
    "DTYPE_NAMES",
    "ENCODING_ALIAS",
    "ENCODING_CODEBOOK",
    "ENCODING_FILE",
    "ENCODING_FILE_XZ",
    "ENCODING_PLANES",
    "ENCODING_RAW",
    "CODEBOOK_FLAGS",
    "CODEBOOK_FLAGS_V3",
    "CODEBOOK_FLAGS_V4",
    "CODEBOOK_FLAGS_V5",
    "FILE_ENCODINGS",
    "FLAG_CODEBOOK_F16",
    "FLAG_CODEBOOK_PLANES",
    "FLAG_CODE_ANS",
    "FLAG_CODE_COMPACT",
    "FLAG_GAP_ANS",
    "FLAG_GAP_COMPACT",
    "FLAG_SCALE_F16",
    "FLAG_SIGNIFICANCE",
    "FLOAT_CODES",
    "MAGIC",
    "PLANE_ANS",
    "PLANE_HUFFMAN",
    "PLANE_HUFFMAN_LISTED",
    "PLANE_HUFFMAN_TABLE",
    "PLANE_STORED",
    "PREAMBLE",
    "TRAILER",
    "VARINT_MAX_BYTES",
    "VERSION",
    "VERSIONS",
    "check_file_name",
    "lengths_table_size",
    "pack_plane_fields",
    "pack_varint",
]


def check_file_name(name: str, error: type[Exception] = FormatError) -> None:
    """An attached file's name must be a plain relative path: it becomes a path on disk.

    Parts are separated by '/', none empty, '.' or '..', no backslash or NUL, at most 16.
    """
    parts = name.split("/")
    if (
        len(parts) > MAX_FILE_NAME_PARTS
        or any(part in ("", ".", "..") for part in parts)
        or "\\" in name
        or "\0" in name
        or ":" in parts[0]
    ):
        raise error(f"file {name!r}: not a plain relative path")
