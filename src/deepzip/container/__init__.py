"""The .dzip container: CompressedModel <-> bytes, exactly as docs/FORMAT.md specifies.

`spec` holds the format's constants and the rule for attached file names, shared by
`writer` (`to_bytes`, and `write`, an atomic file replace through `atomic`) and `reader`
(`from_bytes`, `read`, `section_sizes`), which parses defensively: every size read from a
file is checked before anything is allocated, and every failure is a FormatError that
names the tensor and the section. The numeric limits live in `deepzip.limits`.

The container knows records and bytes only: it never imports torch.nn, nor the training,
runtime, checkpoint, report or paper code.
"""

from deepzip.container.reader import from_bytes, read, section_sizes
from deepzip.container.spec import (
    DTYPE_CODES,
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
from deepzip.container.writer import to_bytes, write

__all__ = [
    "DTYPES",
    "DTYPE_CODES",
    "ENCODING_ALIAS",
    "ENCODING_CODEBOOK",
    "ENCODING_FILE",
    "ENCODING_RAW",
    "FLOAT_CODES",
    "MAGIC",
    "PREAMBLE",
    "VERSION",
    "check_file_name",
    "from_bytes",
    "read",
    "section_sizes",
    "to_bytes",
    "write",
]
