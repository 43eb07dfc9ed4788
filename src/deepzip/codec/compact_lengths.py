"""Compact Huffman tables (format version 6): code lengths run-length coded, as DEFLATE does.

A packed table (`huffman.pack_lengths`) spends 4 bits on every symbol of the alphabet,
used or not. A gap alphabet of 2**9 symbols costs 256 bytes that way, most of them on
unused large gaps and on runs of equal lengths. This form is DEFLATE's code-length code
(RFC 1951, section 3.2.7): the lengths are a sequence of symbols 0..15 (a length), 16
(repeat the previous length 3..6 times), 17 (3..10 zeros) and 18 (11..138 zeros), coded
with a canonical Huffman code of at most 7 bits whose own 19 lengths come first, 3 bits
each, in DEFLATE's order. On LeNet-300-100's paper-mode gap tables it takes 103 bytes where
the packed form takes 256, and it lets the widest gap widths pay for their tables.

Unlike DEFLATE, bits are written most significant first (as every Huffman stream of the
format is) and the alphabet size is known from the record, so there is no HLIT.
docs/FORMAT.md, "Compact Huffman tables (version 6)", is the specification. Pure Python:
a table has at most 65,536 lengths, and each is touched once.
"""

from __future__ import annotations

import numpy as np

from deepzip.codec import huffman
from deepzip.codec.buffers import as_uint8
from deepzip.errors import FormatError

ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
"""DEFLATE's order of the length alphabet's own lengths: the likely-used symbols first, so
that trailing unused ones can be left out (the count field says how many are given)."""

REPEAT, ZEROS, LONG_ZEROS = 16, 17, 18
RUNS = {REPEAT: (2, 3), ZEROS: (3, 3), LONG_ZEROS: (7, 11)}
"""Run symbol -> (extra bits, the run length of extra value 0)."""

MAX_LENGTH_CODE = 7  # the length alphabet's code lengths are 3-bit fields
MIN_GIVEN = 4  # at least 4 of the 19 lengths are given (a 4-bit field holds given - 4)


def run_symbols(lengths) -> list[tuple[int, int]]:
    """`lengths` as (symbol, extra value) pairs of the length alphabet, runs taken greedily.

    A run of zeros takes 18s of up to 138, then a 17 for a rest of 3..10; a run of another
    length is that length once, then 16s of up to 6. Shorter rests are written out.
    """
    values = [int(v) for v in lengths]
    out: list[tuple[int, int]] = []
    i, n = 0, len(values)
    while i < n:
        value, j = values[i], i
        while j < n and values[j] == value:
            j += 1
        run = j - i
        if value == 0:
            while run >= 11:
                take = min(run, 138)
                out.append((LONG_ZEROS, take - 11))
                run -= take
            if run >= 3:
                out.append((ZEROS, run - 3))
                run = 0
        else:
            out.append((value, 0))
            run -= 1
            while run >= 3:
                take = min(run, 6)
                out.append((REPEAT, take - 3))
                run -= take
        out.extend((value, 0) for _ in range(run))
        i = j
    return out


class _BitWriter:
    def __init__(self):
        self.value, self.bits = 0, 0

    def put(self, value: int, width: int) -> None:
        self.value = (self.value << width) | value
        self.bits += width

    def getvalue(self) -> bytes:
        pad = -self.bits % 8
        return (self.value << pad).to_bytes((self.bits + pad) // 8, "big")


def pack(lengths) -> bytes:
    """The compact form of code `lengths` (each 0..15): see the module docstring.

    Raises ValueError if a length is outside 0..15 or there are none.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not lengths.size:
        raise ValueError("lengths must be a non-empty 1-D array")
    if lengths.min() < 0 or lengths.max() > huffman.FORMAT_MAX_CODE_LENGTH:
        raise ValueError(f"lengths must be in 0..{huffman.FORMAT_MAX_CODE_LENGTH}")
    symbols = run_symbols(lengths)
    counts = np.bincount([s for s, _ in symbols], minlength=19)
    code_lengths = huffman.code_lengths(counts, MAX_LENGTH_CODE)
    codes = huffman.canonical_codes(code_lengths)
    given = len(ORDER)
    while given > MIN_GIVEN and not code_lengths[ORDER[given - 1]]:
        given -= 1
    out = _BitWriter()
    out.put(given - MIN_GIVEN, 4)
    for symbol in ORDER[:given]:
        out.put(int(code_lengths[symbol]), 3)
    for symbol, extra in symbols:
        out.put(int(codes[symbol]), int(code_lengths[symbol]))
        if symbol in RUNS:
            out.put(extra, RUNS[symbol][0])
    return out.getvalue()


class _BitReader:
    def __init__(self, data: np.ndarray):
        self.data, self.pos = data, 0

    def take(self, width: int) -> int:
        if self.pos + width > 8 * self.data.size:
            raise FormatError("compact code-length table ends early")
        value = 0
        for _ in range(width):
            byte = int(self.data[self.pos >> 3])
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


def unpack(data, alphabet_size: int) -> np.ndarray:
    """Inverse of `pack`: exactly `alphabet_size` code lengths as a uint8 array.

    Raises FormatError if the length alphabet's code is not a prefix code with a used
    symbol, a bit pattern is no code word, a 16 comes first, a run passes the alphabet's
    end, the table ends early, or it holds bytes or nonzero padding bits after its last
    symbol. The lengths themselves are checked for Kraft by `huffman.decode`.
    """
    data = as_uint8(data)
    alphabet_size = int(alphabet_size)
    if not 1 <= alphabet_size <= huffman.MAX_ALPHABET_SIZE:
        raise FormatError(f"alphabet size must be in 1..{huffman.MAX_ALPHABET_SIZE}, got {alphabet_size}")
    bits = _BitReader(data)
    given = bits.take(4) + MIN_GIVEN
    code_lengths = np.zeros(19, dtype=np.uint8)
    for symbol in ORDER[:given]:
        code_lengths[symbol] = bits.take(3)
    if not code_lengths.any():
        raise FormatError("compact code-length table: its length code has no symbol")
    codes = huffman.canonical_codes(code_lengths)  # FormatError unless Kraft holds
    words = {(int(code_lengths[s]), int(codes[s])): s for s in range(19) if code_lengths[s]}
    out = np.zeros(alphabet_size, dtype=np.uint8)
    filled = 0
    while filled < alphabet_size:
        word, width = 0, 0
        while (width, word) not in words:
            if width == MAX_LENGTH_CODE:
                raise FormatError("compact code-length table: a bit pattern that is no code word")
            word, width = (word << 1) | bits.take(1), width + 1
        symbol = words[(width, word)]
        if symbol not in RUNS:
            out[filled] = symbol
            filled += 1
            continue
        extra_bits, base = RUNS[symbol]
        run = base + bits.take(extra_bits)
        if symbol == REPEAT and not filled:
            raise FormatError("compact code-length table: a repeat before any length")
        if filled + run > alphabet_size:
            raise FormatError(f"compact code-length table: a run passes the end of {alphabet_size} symbols")
        out[filled : filled + run] = out[filled - 1] if symbol == REPEAT else 0
        filled += run
    if (bits.pos + 7) // 8 != data.size:
        raise FormatError(f"compact code-length table: {data.size - (bits.pos + 7) // 8} bytes after its last symbol")
    if bits.pos % 8 and int(data[-1]) & ((1 << (8 - bits.pos % 8)) - 1):
        raise FormatError("compact code-length table: nonzero padding bits")
    return out
