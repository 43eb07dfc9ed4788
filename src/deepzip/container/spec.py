"""The constants of the .dzip format (docs/FORMAT.md), shared by the writer and the reader.

Both sides take the magic, the version, the encodings, the dtype codes and the rule for
attached file names from here, so that what one writes the other reads. The numeric
limits live in `deepzip.limits`.
"""

from __future__ import annotations

import struct

import torch

from deepzip.errors import FormatError
from deepzip.limits import MAX_FILE_NAME_PARTS

MAGIC = b"\x89DZIP\r\n\x1a"
VERSION = 1
PREAMBLE = struct.Struct("<8sHHI")  # magic, version, flags, header size


ENCODING_RAW = 0
ENCODING_CODEBOOK = 1
ENCODING_ALIAS = 2  # a tied tensor: the section names the record it shares
ENCODING_FILE = 3  # an attached file (a model's config.json...): raw bytes, not a tensor

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float64: 4,
    torch.int64: 5,
    torch.int32: 6,
    torch.int16: 7,
    torch.int8: 8,
    torch.uint8: 9,
    torch.bool: 10,
}
DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
FLOAT_CODES = {1, 2, 3, 4}


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
