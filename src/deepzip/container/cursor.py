"""A bounds-checked reader of header fields: every length is checked before it is used.

The header parser (`deepzip.container.header`) reads records through it, so that a damaged
or hostile size fails as a FormatError naming the field, never as an IndexError or an
allocation. struct alone, no numpy: `deepzip info` imports this without numpy or torch.
"""

from __future__ import annotations

import struct

from deepzip.container.spec import (
    PLANE_ANS,
    PLANE_HUFFMAN,
    PLANE_HUFFMAN_LISTED,
    PLANE_HUFFMAN_TABLE,
    PLANE_STORED,
    VARINT_MAX_BYTES,
)
from deepzip.errors import FormatError, TruncatedError


class Cursor:
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

    def varint(self, what: str) -> int:
        """An unsigned LEB128 varint: at most 10 bytes, minimal (no needless 0x80 / 0x00), < 2**64."""
        value = 0
        for i in range(VARINT_MAX_BYTES):
            (byte,) = self.take(1, what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if i and not byte:
                    raise FormatError(f"{self.where}: {what} is not a minimal varint")
                if value >= 1 << 64:
                    raise FormatError(f"{self.where}: {what} exceeds 64 bits")
                return value
        raise FormatError(f"{self.where}: {what} is a varint of more than {VARINT_MAX_BYTES} bytes")

    def size(self, version: int, what: str) -> int:
        """A size or count: u32 in version 1, a varint in versions 2 to 5."""
        return self.unpack("I", what)[0] if version == 1 else self.varint(what)

    def planes(self, width: int, count: int) -> tuple[tuple[int, int, int], ...]:
        """`width` byte-plane fields (version 5): u8 mode, then for a coded plane varints T and D, checked."""
        fields = []
        for j in range(width):
            (mode,) = self.unpack("B", f"byte plane {j} mode")
            if mode == PLANE_STORED:
                fields.append((mode, 0, count))
                continue
            if mode not in (PLANE_HUFFMAN, PLANE_ANS, PLANE_HUFFMAN_LISTED):
                raise FormatError(f"{self.where}: byte plane {j} has unknown mode {mode}")
            table, data = self.varint(f"byte plane {j} table size"), self.varint(f"byte plane {j} data size")
            if mode == PLANE_HUFFMAN and table != PLANE_HUFFMAN_TABLE:
                raise FormatError(f"{self.where}: byte plane {j}: a Huffman table of 256 symbols is {PLANE_HUFFMAN_TABLE} bytes, not {table}")
            if mode == PLANE_HUFFMAN_LISTED and not 3 <= table <= 1 + 256 + 128:
                raise FormatError(f"{self.where}: byte plane {j}: a listed Huffman table of {table} bytes (3..385)")
            # A Huffman-coded byte costs at least one bit; rANS has no such floor.
            if mode in (PLANE_HUFFMAN, PLANE_HUFFMAN_LISTED) and count > 8 * data:
                raise FormatError(f"{self.where}: byte plane {j}: {count} bytes cannot fit in a Huffman stream of {data} bytes")
            fields.append((mode, table, data))
        return tuple(fields)
