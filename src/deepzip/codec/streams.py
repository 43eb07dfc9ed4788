"""One symbol stream, coded by whichever coder measures smaller: Huffman or rANS.

A stream is (coder, table, data). Huffman's table is the code lengths, packed 4 bits a
symbol or, where that is smaller and allowed (format version 6), in the compact form of
`deepzip.codec.compact_lengths`. Huffman costs at least one bit a symbol; rANS
(`deepzip.codec.ans`) stores quantized symbol frequencies and codes within a fraction of a percent of the stream's empirical entropy, a near-certain
symbol in almost no bits. Which wins depends on the stream: on short ones the frequency
table costs more than Huffman's overhead saves, so each stream is measured and the smaller
taken (ties go to Huffman, the cheaper decoder). Pure functions over numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepzip.codec import ans, compact_lengths, huffman
from deepzip.codec.tables import lengths_table_size
from deepzip.errors import FormatError

HUFFMAN = 0
ANS = 1
CODERS = (HUFFMAN, ANS)
CODER_NAMES = {HUFFMAN: "huffman", ANS: "rans"}


@dataclass(frozen=True)
class CodedStream:
    """A coded symbol stream: `coder` (HUFFMAN or ANS), its `table` and its `data` bytes."""

    coder: int
    table: bytes
    data: bytes

    @property
    def nbytes(self) -> int:
        """Bytes of the table and the data."""
        return len(self.table) + len(self.data)


def counts_of(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    """Symbol counts, in chunks: bincount widens its input to intp (8 bytes a symbol)."""
    counts = np.zeros(alphabet_size, dtype=np.int64)
    for start in range(0, len(symbols), 1 << 20):
        counts += np.bincount(symbols[start : start + (1 << 20)], minlength=alphabet_size)[:alphabet_size]
    return counts


def max_code_length(used_symbols: int) -> int:
    """The Huffman code-length limit for `used_symbols` symbols: the default, or the least above it that fits.

    A prefix code of at most L bits has at most 2**L code words, so the default limit of 12
    bits cannot code a full 4096-entry codebook plus the filler symbol; those 4097 symbols
    get 13 bits. The format allows up to 15 bits, more than any alphabet here needs
    (at most MAX_CODEBOOK + 1 codes and 2**MAX_INDEX_BITS gaps).
    """
    length = huffman.DEFAULT_MAX_CODE_LENGTH
    while used_symbols > 1 << length and length < huffman.FORMAT_MAX_CODE_LENGTH:
        length += 1
    return length


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """The code lengths a stream gets for its symbol `counts` (length-limited Huffman)."""
    return huffman.code_lengths(counts, max_code_length(int(np.count_nonzero(counts))))


def huffman_table(lengths: np.ndarray, compact: bool = True) -> bytes:
    """The table of a Huffman code: its packed `lengths`, or with `compact` their compact
    form where that is smaller (version 6; the packed form on a tie)."""
    packed = huffman.pack_lengths(lengths)
    if compact and len(packed) > 1:
        smaller = compact_lengths.pack(lengths)
        if len(smaller) < len(packed):
            return smaller
    return packed


def huffman_table_lengths(table, alphabet_size: int) -> np.ndarray:
    """The code lengths a Huffman `table` holds: packed when it has the packed size, else compact.

    The two forms never share a size (a compact table is only ever smaller), so the size
    says which it is; the container checks that the record's flags agree.
    """
    table = bytes(table)
    if len(table) == lengths_table_size(alphabet_size):
        return huffman.unpack_lengths(table, alphabet_size)
    return compact_lengths.unpack(table, alphabet_size)


def huffman_bytes(counts: np.ndarray, lengths: np.ndarray, compact: bool = True) -> int:
    """Exact bytes of the Huffman table and stream for `counts` coded with `lengths`."""
    return len(huffman_table(lengths, compact)) + _huffman_data_bytes(counts, lengths)


def _huffman_data_bytes(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Exact bytes of the Huffman stream (no table) for `counts` coded with `lengths`."""
    bits = int(np.dot(counts.astype(np.int64), lengths.astype(np.int64)))
    return (bits + 7) // 8


def encode_stream(symbols: np.ndarray, alphabet_size: int, coders: tuple[int, ...] = CODERS, compact: bool = True) -> CodedStream:
    """Code `symbols` (< alphabet_size) with the smallest of `coders`, measured on their counts.

    Huffman's size is exact from its code lengths; rANS's is `ans.coded_bytes`, confirmed
    by encoding when it is the one taken. `compact` lets a Huffman table take its compact
    form where that is smaller (version 6); without it the table is packed, as in
    versions 1 to 5.
    """
    counts = counts_of(symbols, alphabet_size)
    lengths = huffman_lengths(counts)
    # The table once: its compact form is packed in Python, and it is both measured and stored.
    table = huffman_table(lengths, compact) if HUFFMAN in coders else None
    best = None
    if ANS in coders and (table is None or ans.coded_bytes(counts) < len(table) + _huffman_data_bytes(counts, lengths)):
        freqs = ans.quantize_frequencies(counts)
        best = CodedStream(ANS, ans.pack_table(freqs), ans.encode(symbols, freqs))
    if table is not None:
        coded = CodedStream(HUFFMAN, table, huffman.encode(symbols, lengths))
        if best is None or coded.nbytes <= best.nbytes:
            best = coded
    if best is None:
        raise ValueError(f"no known coder among {coders}")
    return best


def decode_stream(coder: int, table, data, alphabet_size: int, count: int) -> np.ndarray:
    """Decode `count` symbols of a stream; FormatError if the table or the data is damaged."""
    if coder == HUFFMAN:
        return huffman.decode(data, huffman_table_lengths(table, alphabet_size), count)
    if coder == ANS:
        return ans.decode(data, ans.unpack_table(bytes(table), alphabet_size), count)
    raise FormatError(f"unknown stream coder {coder}")
