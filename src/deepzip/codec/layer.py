"""One compressed layer as bytes: Huffman-coded weight codes and gaps, with their tables.

Pure functions over numpy arrays. The container (`deepzip.container`) places these bytes
in a file; this module knows nothing of files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepzip.codec import huffman, sparse
from deepzip.codec.tables import lengths_table_size
from deepzip.errors import FormatError

# Widths tried when the caller leaves the choice to us. The paper uses 5 (fc) and 8 (conv);
# the best width depends on the sparsity pattern, so we measure rather than guess.
INDEX_BITS_CHOICES = tuple(range(1, 13))


@dataclass(frozen=True)
class EncodedLayer:
    """The byte streams of one codebook layer (see docs/FORMAT.md, "Codebook section")."""

    index_bits: int
    entry_count: int
    code_lengths: bytes
    gap_lengths: bytes
    code_stream: bytes
    gap_stream: bytes

    @property
    def nbytes(self) -> int:
        """Bytes of tables and streams (the codebook itself is not included)."""
        return len(self.code_lengths) + len(self.gap_lengths) + len(self.code_stream) + len(self.gap_stream)


def stream_code_lengths(counts: np.ndarray) -> np.ndarray:
    """The code lengths a layer's stream gets for its symbol `counts` (length-limited Huffman)."""
    return huffman.code_lengths(counts, max_code_length(int(np.count_nonzero(counts))))


def _counts(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    """Symbol counts, in chunks: bincount widens its input to intp (8 bytes a symbol)."""
    counts = np.zeros(alphabet_size, dtype=np.int64)
    for start in range(0, len(symbols), 1 << 20):
        counts += np.bincount(symbols[start : start + (1 << 20)], minlength=alphabet_size)[:alphabet_size]
    return counts


def _huffman(symbols: np.ndarray, alphabet_size: int) -> tuple[bytes, bytes]:
    """Code `symbols` with an optimal code of their own counts; return (packed lengths, stream)."""
    lengths = stream_code_lengths(_counts(symbols, alphabet_size))
    return huffman.pack_lengths(lengths), huffman.encode(symbols, lengths)


def max_code_length(used_symbols: int) -> int:
    """The code-length limit for `used_symbols` symbols: the default, or the least above it that fits.

    A prefix code of at most L bits has at most 2**L code words, so the default limit of 12
    bits cannot code a full 4096-entry codebook plus the filler symbol; those 4097 symbols
    get 13 bits. The format allows up to 15 bits, more than any alphabet here needs
    (at most MAX_CODEBOOK + 1 codes and 2**MAX_INDEX_BITS gaps).
    """
    length = huffman.DEFAULT_MAX_CODE_LENGTH
    while used_symbols > 1 << length and length < huffman.FORMAT_MAX_CODE_LENGTH:
        length += 1
    return length


def encode_layer(positions: np.ndarray, codes: np.ndarray, k: int, index_bits: int, numel: int) -> EncodedLayer:
    """Encode kept entries (flat positions < numel, codes < k) with gaps of `index_bits` bits."""
    gaps, code_symbols = sparse.to_relative(positions, codes, index_bits, filler_symbol=k, numel=numel)
    return _encoded(index_bits, gaps, code_symbols, k)


def _encoded(index_bits: int, gaps: np.ndarray, code_symbols: np.ndarray, k: int) -> EncodedLayer:
    code_lengths, code_stream = _huffman(code_symbols, k + 1)
    gap_lengths, gap_stream = _huffman(gaps, 1 << index_bits)
    return EncodedLayer(index_bits, len(gaps), code_lengths, gap_lengths, code_stream, gap_stream)


def encode_layer_smallest(
    positions: np.ndarray, codes: np.ndarray, k: int, numel: int, index_bits: int | None = None
) -> EncodedLayer:
    """Encode with the given width, or with the width in INDEX_BITS_CHOICES that gives the fewest bytes."""
    if index_bits is not None:
        return encode_layer(positions, codes, k, index_bits, numel)
    codes = np.asarray(codes)
    if codes.size and int(codes.max()) >= k:
        raise ValueError(f"codes must be in 0..{k - 1} (the filler symbol {k} is reserved)")
    # The gaps once, in the narrowest type, for every width tried (they are the memory).
    gaps = sparse.narrow_gaps(positions, numel)
    if gaps.shape != codes.shape:
        raise ValueError(f"{codes.size} codes for {gaps.size} positions")
    last = int(positions[-1]) if len(positions) else -1
    if last >= numel:
        raise ValueError(f"position {last} is outside a tensor of {numel} elements")
    tail = numel - last - 1
    # Every entry costs at least one bit in each stream, so a width's entry count bounds its
    # size from below. Trying widths in order of that bound and stopping once it exceeds
    # the best real size skips the narrow widths whose fillers would multiply the entries
    # (and the memory: 1-bit gaps on a 4%-dense 100 M-weight layer make 50 M entries).
    bounds = sorted((_entries(gaps, b, tail), b) for b in INDEX_BITS_CHOICES)
    best = None
    for entries, b in bounds:
        if best is not None and entries / 4 > best.nbytes:
            break
        encoded = _encoded(b, *sparse.relative_symbols(gaps, codes, b, k, tail), k)
        # Ties go to the narrower width, so the choice does not depend on the search order.
        if best is None or (encoded.nbytes, b) < (best.nbytes, best.index_bits):
            best = encoded
    return best


def _entries(gaps: np.ndarray, b: int, tail: int) -> int:
    """Entries (kept and fillers) at gap width `b`, counted in chunks (no gap-sized temporary)."""
    fillers = sum(int(np.sum((gaps[i : i + (1 << 20)] - 1) >> b)) for i in range(0, gaps.size, 1 << 20))
    return gaps.size + fillers + (tail >> b)


def encode_dense(codes: np.ndarray, k: int) -> tuple[bytes, bytes]:
    """Encode the codes of a dense layer (every position kept, no gaps); return (lengths table, stream).

    The table covers k + 1 symbols like a sparse layer's, with the filler symbol k unused.
    """
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise ValueError(f"codes must be in 0..{k - 1} (the filler symbol {k} is reserved)")
    return _huffman(codes, k + 1)


def decode_dense(code_lengths: bytes, code_stream, k: int, count: int) -> np.ndarray:
    """Decode the `count` codes of a dense layer; FormatError if damaged or if a filler appears."""
    codes = huffman.decode(code_stream, huffman.unpack_lengths(code_lengths, k + 1), count)
    if codes.size and int(codes.max()) >= k:
        raise FormatError(f"a dense layer holds a filler symbol ({k})")
    return codes


def decode_layer(encoded: EncodedLayer, k: int, numel: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode to (positions int64, codes uint16) of the kept entries; FormatError if damaged."""
    code_lengths = huffman.unpack_lengths(encoded.code_lengths, k + 1)
    gap_lengths = huffman.unpack_lengths(encoded.gap_lengths, 1 << encoded.index_bits)
    code_symbols = huffman.decode(encoded.code_stream, code_lengths, encoded.entry_count)
    gaps = huffman.decode(encoded.gap_stream, gap_lengths, encoded.entry_count)
    return sparse.from_relative(gaps, code_symbols, encoded.index_bits, k, numel, ends_covered=True)
