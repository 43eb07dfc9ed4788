"""Canonical, length-limited Huffman coding of uint16 symbol streams (Deep Compression stage 3).

A code is described by its code lengths alone (one per symbol, 0 = unused); the code words
follow from the canonical assignment, so a file stores only the lengths (4 bits each, see
`pack_lengths`). Lengths come from the package-merge algorithm (Larmore & Hirschberg 1990),
which gives the optimal prefix code under a maximum code length. Bit streams are MSB-first
and zero-padded to a whole byte; the decoder rejects every stream that is not exactly what
`encode` would have written for the given count.
"""

import numpy as np
from numba import njit

from deepzip.codec.buffers import as_uint8
from deepzip.errors import FormatError

FORMAT_MAX_CODE_LENGTH = 15
"""Hard limit of the format: lengths are stored as 4-bit nibbles."""

DEFAULT_MAX_CODE_LENGTH = 12
"""Measured: a 12-bit limit costs ~0.01% in size and makes table decoding 1.5x faster than
16 bits, because the 4K-entry table stays in L1 cache."""

MAX_ALPHABET_SIZE = 1 << 16
"""Symbols are uint16."""


def code_lengths(counts, max_length=DEFAULT_MAX_CODE_LENGTH):
    """Optimal prefix code lengths for symbol `counts` with no code longer than `max_length`.

    Uses package-merge, so the result minimizes ``sum(counts * lengths)`` among all prefix
    codes whose lengths are <= `max_length`; with a non-binding limit this equals the
    classic Huffman cost. Symbols with count 0 get length 0; a single used symbol gets
    length 1 (a code word needs at least one bit); no used symbol gives all zeros.

    Raises ValueError if `max_length` is outside 1..15 or ``2**max_length`` is smaller than
    the number of used symbols (no prefix code can exist then), or if the counts are not a
    1-D array of non-negative integers of at most 65536 entries.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size > MAX_ALPHABET_SIZE:
        raise ValueError(f"counts must be 1-D with at most {MAX_ALPHABET_SIZE} entries")
    if counts.size and not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be integers, got {counts.dtype}")
    counts = counts.astype(np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("counts must be non-negative")
    if not 1 <= max_length <= FORMAT_MAX_CODE_LENGTH:
        raise ValueError(f"max_length must be in 1..{FORMAT_MAX_CODE_LENGTH}, got {max_length}")

    lengths = np.zeros(counts.size, dtype=np.uint8)
    used = np.flatnonzero(counts)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used] = 1
        return lengths
    if n > (1 << max_length):
        raise ValueError(f"{n} used symbols need codes longer than max_length={max_length}")

    # Leaves sorted by (count, symbol) so that ties resolve deterministically.
    order = used[np.argsort(counts[used], kind="stable")]
    leaves = counts[order]

    # Package-merge: level j's list is the leaves merged with pairs ("packages") of level
    # j-1's list. Leaves go first in the concatenation and the sort is stable, so every
    # list holds the leaves in their sorted order; a selected prefix of a list therefore
    # contains a prefix of the leaves, and only the number of leaves in it matters.
    is_leaf_per_level = [np.ones(n, dtype=bool)]
    items = leaves
    for _ in range(max_length - 1):
        packages = items[0 : 2 * (items.size // 2) : 2] + items[1 : 2 * (items.size // 2) : 2]
        merged = np.concatenate([leaves, packages])
        by_weight = np.argsort(merged, kind="stable")
        items = merged[by_weight]
        is_leaf_per_level.append(by_weight < n)

    # The optimal code takes the 2n-2 cheapest items of the last list; each package taken
    # takes its two children one level down. A leaf's code length is the number of levels
    # in which it is selected.
    selected = 2 * n - 2
    depth = np.zeros(n, dtype=np.int64)
    for is_leaf in reversed(is_leaf_per_level):
        leaf_count = int(np.count_nonzero(is_leaf[:selected]))
        depth[:leaf_count] += 1
        selected = 2 * (selected - leaf_count)
    lengths[order] = depth
    return lengths


def validate_lengths(lengths):
    """Check that `lengths` describe a prefix code and return them as a uint8 array.

    Every length must be in 0..15 and the Kraft sum over nonzero lengths must be <= 1. An
    incomplete code (Kraft sum < 1) is accepted; the decoder rejects its unused bit
    patterns. Raises FormatError otherwise (lengths usually come from a file).
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size > MAX_ALPHABET_SIZE:
        raise FormatError(f"code lengths must be 1-D with at most {MAX_ALPHABET_SIZE} entries")
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        raise FormatError(f"code lengths must be integers, got {lengths.dtype}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > FORMAT_MAX_CODE_LENGTH):
        raise FormatError(f"code lengths must be in 0..{FORMAT_MAX_CODE_LENGTH}")
    lengths = lengths.astype(np.uint8)
    nonzero = lengths[lengths > 0].astype(np.int64)
    # Kraft sum scaled by 2**15 so that it is exact in integers.
    kraft = int(np.sum(np.int64(1) << (FORMAT_MAX_CODE_LENGTH - nonzero)))
    if kraft > 1 << FORMAT_MAX_CODE_LENGTH:
        raise FormatError(
            f"code lengths violate the Kraft inequality (sum {kraft / 2**15:.4f} > 1)"
        )
    return lengths


def canonical_codes(lengths):
    """Canonical code words for `lengths` as uint32 (the low `length` bits are the code).

    Symbols are ordered by (length, symbol); each code is the previous one plus 1, shifted
    left by the length increase, starting from 0. Unused symbols (length 0) get code 0.
    Raises FormatError if the lengths are invalid (see `validate_lengths`).
    """
    lengths = validate_lengths(lengths)
    codes = np.zeros(lengths.size, dtype=np.uint32)
    # DEFLATE's formulation (RFC 1951, 3.2.2): the first code of each length follows from the
    # number of codes of each shorter length; within a length, codes go up by symbol.
    per_length = np.bincount(lengths, minlength=FORMAT_MAX_CODE_LENGTH + 1).astype(np.int64)
    per_length[0] = 0
    first_code = np.zeros(FORMAT_MAX_CODE_LENGTH + 1, dtype=np.int64)
    for length in range(1, FORMAT_MAX_CODE_LENGTH + 1):
        first_code[length] = (first_code[length - 1] + per_length[length - 1]) << 1
    used = np.flatnonzero(lengths)
    order = used[np.argsort(lengths[used], kind="stable")]
    sorted_lengths = lengths[order]
    start_of_length = np.concatenate([[0], np.cumsum(per_length)[:-1]])
    rank = np.arange(order.size) - start_of_length[sorted_lengths]
    codes[order] = first_code[sorted_lengths] + rank
    return codes


@njit(cache=True)
def _total_bits(symbols, lengths):
    """Sum of code lengths of `symbols`, or -(i+1) if symbol i has no code."""
    total = 0
    alphabet = lengths.size
    for i in range(symbols.size):
        s = symbols[i]
        if s >= alphabet or lengths[s] == 0:
            return -(i + 1)
        total += lengths[s]
    return total


@njit(cache=True)
def _encode_kernel(symbols, codes, lengths, out):
    """Write the codes of `symbols` MSB-first into `out`, which has the exact size."""
    # All arithmetic in uint64: numba turns mixed int64/uint64 arithmetic into float64.
    acc = np.uint64(0)
    nbits = np.uint64(0)
    pos = 0
    for i in range(symbols.size):
        s = symbols[i]
        length = np.uint64(lengths[s])
        acc = (acc << length) | np.uint64(codes[s])
        nbits += length
        # Flushing 4 bytes at a time keeps the branch rare; nbits stays below 32 + 15 bits,
        # so the bits still pending never leave the 64-bit accumulator.
        if nbits >= 32:
            nbits -= np.uint64(32)
            word = acc >> nbits
            out[pos] = (word >> np.uint64(24)) & np.uint64(0xFF)
            out[pos + 1] = (word >> np.uint64(16)) & np.uint64(0xFF)
            out[pos + 2] = (word >> np.uint64(8)) & np.uint64(0xFF)
            out[pos + 3] = word & np.uint64(0xFF)
            pos += 4
    while nbits >= 8:
        nbits -= np.uint64(8)
        out[pos] = (acc >> nbits) & np.uint64(0xFF)
        pos += 1
    if nbits > 0:
        out[pos] = (acc << (np.uint64(8) - nbits)) & np.uint64(0xFF)


def _as_symbols(symbols, alphabet_size):
    """`symbols` as a 1-D uint8 or uint16 array; ValueError if any is outside 0..alphabet_size-1.

    uint8 stays uint8 (the kernels compile for both): a dense layer's 4-bit codes of
    hundreds of millions of weights are not widened into a copy twice their size.
    """
    symbols = np.asarray(symbols)
    if symbols.ndim != 1:
        raise ValueError(f"symbols must be 1-D, got shape {symbols.shape}")
    if symbols.size == 0:
        return np.zeros(0, dtype=np.uint16)
    if not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got {symbols.dtype}")
    if symbols.dtype not in (np.uint8, np.uint16):
        # Range check before the cast, which would silently wrap e.g. -1 or 65536.
        low, high = int(symbols.min()), int(symbols.max())
        if low < 0 or high >= alphabet_size:
            raise ValueError(f"symbols must be in 0..{alphabet_size - 1}, got {low}..{high}")
        symbols = symbols.astype(np.uint16)
    return np.ascontiguousarray(symbols)


def encode(symbols, lengths):
    """Huffman-encode `symbols` (integers) with the canonical code of `lengths`.

    Returns the MSB-first bit stream zero-padded to a whole byte: exactly
    ``ceil(sum(lengths[symbols]) / 8)`` bytes. Raises ValueError if a symbol is outside the
    alphabet or has length 0 (a programming error: the lengths must come from counts that
    include every symbol), and FormatError if the lengths are invalid.
    """
    codes = canonical_codes(lengths)
    lengths = validate_lengths(lengths)
    symbols = _as_symbols(symbols, lengths.size)
    total = _total_bits(symbols, lengths)
    if total < 0:
        i = -total - 1
        raise ValueError(f"symbol {symbols[i]} at index {i} has no code (length 0 or out of range)")
    out = np.zeros((total + 7) // 8, dtype=np.uint8)
    _encode_kernel(symbols, codes, lengths, out)
    return out.tobytes()


_OK, _HOLE, _TRUNCATED = 0, 1, 2


@njit(cache=True)
def _decode_kernel(data, table_symbol, table_length, peek_bits, out):
    """Decode len(out) symbols; return (status, index of the failing symbol, bits consumed).

    Past the end of `data` the stream reads as zero bits, so the peek never needs a bounds
    check; whether the codes really fit in `data` is decided from the bits consumed.
    """
    n = data.size
    peek = np.uint64(peek_bits)
    mask = (np.uint64(1) << peek) - np.uint64(1)
    acc = np.uint64(0)
    nbits = np.uint64(0)
    pos = 0
    consumed = 0
    for i in range(out.size):
        if nbits < peek:
            # Refill to more than 56 bits: one refill then serves several symbols.
            while nbits <= 56:
                acc <<= np.uint64(8)
                if pos < n:
                    acc |= np.uint64(data[pos])
                pos += 1
                nbits += np.uint64(8)
        index = (acc >> (nbits - peek)) & mask
        length = table_length[index]
        if length == 0:
            # The peek reached past the data: the real bits may be a prefix of a valid code.
            if consumed + peek_bits > 8 * n:
                return _TRUNCATED, i, consumed
            return _HOLE, i, consumed
        nbits -= np.uint64(length)
        consumed += length
        out[i] = table_symbol[index]
    if consumed > 8 * n:
        return _TRUNCATED, out.size - 1, consumed
    return _OK, 0, consumed


def _decode_table(lengths):
    """Lookup table of 2**L entries (L = longest code): symbol and code length per L-bit peek.

    Canonical codes, left-aligned to L bits, are increasing in (length, symbol) order and
    cover consecutive ranges from 0, so the table is a run-length expansion of that order;
    the unassigned patterns of an incomplete code are the tail, left at length 0.
    """
    peek_bits = int(lengths.max())
    used = np.flatnonzero(lengths)
    order = used[np.argsort(lengths[used], kind="stable")]
    spans = np.int64(1) << (peek_bits - lengths[order].astype(np.int64))
    filled = int(spans.sum())
    table_symbol = np.zeros(1 << peek_bits, dtype=np.uint16)
    table_length = np.zeros(1 << peek_bits, dtype=np.uint8)
    table_symbol[:filled] = np.repeat(order.astype(np.uint16), spans)
    table_length[:filled] = np.repeat(lengths[order], spans)
    return table_symbol, table_length, peek_bits


def decode(data, lengths, count):
    """Decode exactly `count` symbols from `data` with the canonical code of `lengths`.

    `data` may be bytes, bytearray, memoryview or a 1-D uint8 array. Returns a uint16 array.
    Raises FormatError if the lengths are invalid, a bit pattern is not a code word, the
    data ends before `count` symbols, bytes follow the last code, or the padding bits are
    not zero; `count` must be at most 8 bits per byte of data (every code has >= 1 bit),
    which keeps a damaged count from allocating a huge output.
    """
    lengths = validate_lengths(lengths)
    data = as_uint8(data)
    count = int(count)
    if count < 0:
        raise FormatError(f"symbol count must be non-negative, got {count}")
    if count == 0:
        if data.size:
            raise FormatError(f"{data.size} bytes of data for 0 symbols")
        return np.zeros(0, dtype=np.uint16)
    if count > 8 * data.size:
        raise FormatError(f"{count} symbols cannot fit in {data.size} bytes")
    if not lengths.any():
        raise FormatError(f"{count} symbols to decode but the code has no symbols")

    table_symbol, table_length, peek_bits = _decode_table(lengths)
    out = np.empty(count, dtype=np.uint16)
    status, index, consumed = _decode_kernel(data, table_symbol, table_length, peek_bits, out)
    if status == _HOLE:
        raise FormatError(f"invalid code word at symbol {index} (bit {consumed})")
    if status == _TRUNCATED:
        raise FormatError(f"stream truncated: data ends inside symbol {index} of {count}")
    if data.size != (consumed + 7) // 8:
        raise FormatError(
            f"{data.size - (consumed + 7) // 8} trailing bytes after {count} symbols"
        )
    pad_bits = 8 * data.size - consumed
    if pad_bits and int(data[-1]) & ((1 << pad_bits) - 1):
        raise FormatError("nonzero padding bits after the last code")
    return out


def pack_lengths(lengths):
    """Pack code lengths (0..15) into 4-bit nibbles, high nibble first: ceil(n/2) bytes.

    Raises ValueError if a length is outside 0..15. An odd count is padded with a 0 nibble.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got {lengths.dtype}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > FORMAT_MAX_CODE_LENGTH):
        raise ValueError(f"lengths must be in 0..{FORMAT_MAX_CODE_LENGTH}")
    nibbles = np.zeros(lengths.size + lengths.size % 2, dtype=np.uint8)
    nibbles[: lengths.size] = lengths
    return ((nibbles[0::2] << 4) | nibbles[1::2]).tobytes()


def unpack_lengths(data, alphabet_size):
    """Inverse of `pack_lengths`: `alphabet_size` code lengths as a uint8 array.

    Raises FormatError if `data` is not exactly ceil(alphabet_size/2) bytes or the pad
    nibble of an odd size is not zero. The lengths are not checked for Kraft here;
    `decode` does that.
    """
    data = as_uint8(data)
    alphabet_size = int(alphabet_size)
    if not 0 <= alphabet_size <= MAX_ALPHABET_SIZE:
        raise FormatError(f"alphabet size must be in 0..{MAX_ALPHABET_SIZE}, got {alphabet_size}")
    expected = (alphabet_size + 1) // 2
    if data.size != expected:
        raise FormatError(
            f"code length table is {data.size} bytes, expected {expected} "
            f"for {alphabet_size} symbols"
        )
    nibbles = np.empty(2 * data.size, dtype=np.uint8)
    nibbles[0::2] = data >> 4
    nibbles[1::2] = data & 0x0F
    if alphabet_size % 2 and nibbles[-1]:
        raise FormatError("nonzero pad nibble in the code length table")
    return nibbles[:alphabet_size]
