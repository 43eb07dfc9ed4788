"""What format 5's byte planes save in .dzip files: each file beside the same records stored plainly.

    python benchmarks/byte_planes.py runs/lenet-300-100/model.dzip [more.dzip ...]

From the header alone (`deepzip.container.header`): for every record whose values are byte
planes (a raw tensor, encoding 5, or a codebook's entries, flag bit 5), the bytes it would
take stored plainly (version 4: raw values, plain entries) against its planes and their
fields. The plain total is exactly the file version 4 would hold for the same records.
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepzip.container import header
from deepzip.container.spec import DTYPE_ITEMSIZE, ENCODING_PLANES, FLAG_CODEBOOK_F16, FLAG_CODEBOOK_PLANES, pack_plane_fields, pack_varint


def field_bytes(planes) -> int:
    """Header bytes of the plane fields."""
    return len(pack_plane_fields(planes))


def size_field(plain: int, coded: int) -> int:
    """How many more bytes the section-size varint takes for the plain section than for the coded one."""
    return len(pack_varint(plain)) - len(pack_varint(coded))


def savings(data: bytes) -> tuple[int, int, int]:
    """(raw tensors' bytes saved, codebook entries' bytes saved, records with planes) of one file."""
    raw = entries = count = 0
    for record in header.parse(data, None).records:
        if record.encoding == ENCODING_PLANES:
            plain = record.numel * DTYPE_ITEMSIZE[record.dtype_code]
            raw += plain - record.size - field_bytes(record.planes) + size_field(plain, record.size)
            count += 1
        elif record.flags & FLAG_CODEBOOK_PLANES:
            plain = record.k * (2 if record.flags & FLAG_CODEBOOK_F16 else 4)
            section = record.size - record.codebook_bytes + plain
            entries += plain - record.codebook_bytes - field_bytes(record.planes) + size_field(section, record.size)
            count += 1
    return raw, entries, count


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    print(f"{'file':40} {'bytes':>12} {'plainly':>12} {'saved':>8} {'raw':>8} {'entries':>8} {'records':>7}")
    for path in paths:
        data = Path(path).read_bytes()
        raw, entries, count = savings(data)
        plain = len(data) + raw + entries
        print(f"{path:40} {len(data):>12,} {plain:>12,} {100 * (raw + entries) / plain:>7.2f}% {raw:>8,} {entries:>8,} {count:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
