"""The .dzip container: CompressedModel <-> bytes, exactly as docs/FORMAT.md specifies.

`spec` holds the format's constants and the rule for attached file names, shared by
`writer` (version 2, section by section, through `atomic`) and the readers: `header`
checks a preamble and header with struct alone (no torch, for `deepzip info`), `reader`
memory-maps a file and decodes its sections, versions 1 and 2. Every size read from a file
is checked before anything is allocated, and every failure is a FormatError that names the
tensor and the section. The numeric limits live in `deepzip.limits`.

The container knows records and bytes only: it never imports torch.nn, nor the training,
runtime, checkpoint, report or paper code. Its names are loaded on first use, so that
importing `deepzip.container.header` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepzip.lazy import loader

_EXPORTS = {
    "DzipFile": "reader",
    "from_bytes": "reader",
    "open_file": "reader",
    "read": "reader",
    "section_sizes": "reader",
    "EncodedRecord": "writer",
    "encode_record": "writer",
    "encoded_size": "writer",
    "records_of": "writer",
    "to_bytes": "writer",
    "write": "writer",
    "write_stream": "writer",
    "DTYPES": "dtypes",
    "DTYPE_CODES": "dtypes",
    "check_file_name": "spec",
    "MAGIC": "spec",
    "PREAMBLE": "spec",
    "VERSION": "spec",
    "FLOAT_CODES": "spec",
    "ENCODING_ALIAS": "spec",
    "ENCODING_CODEBOOK": "spec",
    "ENCODING_FILE": "spec",
    "ENCODING_RAW": "spec",
}

__all__ = sorted(_EXPORTS)


__getattr__ = loader("deepzip.container", globals(), {name: f"deepzip.container.{module}" for name, module in _EXPORTS.items()})


if TYPE_CHECKING:
    from deepzip.container.dtypes import DTYPE_CODES, DTYPES
    from deepzip.container.reader import (
        DzipFile,
        from_bytes,
        open_file,
        read,
        section_sizes,
    )
    from deepzip.container.spec import check_file_name
    from deepzip.container.writer import (
        EncodedRecord,
        encode_record,
        encoded_size,
        records_of,
        to_bytes,
        write,
        write_stream,
    )
