"""One compressed layer as bytes: coded weight codes and gaps, with their tables.

Each stream is coded by the smaller of Huffman and rANS (`deepzip.codec.streams`), unless
the caller restricts the coders (the version-1 and version-2 formats know Huffman only).
Positions are the paper's gaps, or, where that measures smaller and rANS is allowed,
context-coded significance flags (`deepzip.codec.significance`, format version 4).
Pure functions over numpy arrays. The container (`deepzip.container`) places these bytes
in a file; this module knows nothing of files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepzip.codec import significance, sparse
from deepzip.codec.streams import (
    ANS,
    CODERS,
    HUFFMAN,
    CodedStream,
    decode_stream,
    encode_stream,
    huffman_lengths,
)
from deepzip.errors import FormatError

# Widths tried when the caller leaves the choice to us. The paper uses 5 (fc) and 8 (conv);
# the best width depends on the sparsity pattern, so we measure rather than guess.
INDEX_BITS_CHOICES = tuple(range(1, 13))

SIGNIFICANCE = 2
"""`EncodedLayer.gap_coder` of a layer whose gap stream holds significance flags: no gaps,
no fillers, no gap table, index bits 0, and one code per kept weight."""


@dataclass(frozen=True)
class EncodedLayer:
    """The byte streams of one codebook layer (see docs/FORMAT.md, "Codebook section").

    `code_table` and `gap_table` are the packed Huffman code lengths or rANS frequencies,
    as `code_coder` and `gap_coder` say. With `gap_coder` SIGNIFICANCE the gap stream is a
    significance stream instead, and the gap table is empty.
    """

    index_bits: int
    entry_count: int
    code_table: bytes
    gap_table: bytes
    code_stream: bytes
    gap_stream: bytes
    code_coder: int = HUFFMAN
    gap_coder: int = HUFFMAN

    @property
    def nbytes(self) -> int:
        """Bytes of tables and streams (the codebook itself is not included)."""
        return len(self.code_table) + len(self.gap_table) + len(self.code_stream) + len(self.gap_stream)


def stream_code_lengths(counts: np.ndarray) -> np.ndarray:
    """The Huffman code lengths a layer's stream gets for its symbol `counts` (length-limited)."""
    return huffman_lengths(counts)


def encode_layer(
    positions: np.ndarray,
    codes: np.ndarray,
    k: int,
    index_bits: int,
    numel: int,
    coders: tuple[int, ...] = CODERS,
    compact: bool = True,
) -> EncodedLayer:
    """Encode kept entries (flat positions < numel, codes < k) with gaps of `index_bits` bits.

    `compact` allows compact Huffman tables (format version 6; `streams.encode_stream`).
    """
    gaps, code_symbols = sparse.to_relative(positions, codes, index_bits, filler_symbol=k, numel=numel)
    return _encoded(index_bits, gaps, code_symbols, k, coders, compact)


def _encoded(index_bits: int, gaps: np.ndarray, code_symbols: np.ndarray, k: int, coders: tuple[int, ...], compact: bool) -> EncodedLayer:
    code = encode_stream(code_symbols, k + 1, coders, compact)
    gap = encode_stream(gaps, 1 << index_bits, coders, compact)
    return EncodedLayer(index_bits, len(gaps), code.table, gap.table, code.data, gap.data, code.coder, gap.coder)


def encode_layer_smallest(
    positions: np.ndarray,
    codes: np.ndarray,
    k: int,
    numel: int,
    index_bits: int | None = None,
    coders: tuple[int, ...] = CODERS,
    shape: tuple[int, ...] | None = None,
    compact: bool = True,
) -> EncodedLayer:
    """Encode with the given width, or with whatever gives the fewest bytes.

    That is the width in INDEX_BITS_CHOICES with the fewest bytes, or, when the tensor's
    `shape` is given and rANS is among `coders`, significance flags if they are smaller
    still (ties go to the gaps). `compact` allows compact Huffman tables (version 6).
    """
    if index_bits is not None:
        return encode_layer(positions, codes, k, index_bits, numel, coders, compact)
    best = _smallest_gaps(positions, codes, k, numel, coders, compact)
    if shape is None or ANS not in coders:
        return best
    flags = significance.encode(positions, tuple(shape))
    code = encode_dense(codes, k, coders, compact)
    if len(flags) + code.nbytes < best.nbytes:
        return EncodedLayer(0, len(codes), code.table, b"", code.data, flags, code.coder, SIGNIFICANCE)
    return best


def _smallest_gaps(positions, codes, k: int, numel: int, coders: tuple[int, ...], compact: bool) -> EncodedLayer:
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
    # Under Huffman every entry costs at least one bit in each stream, so a width's entry
    # count bounds its size from below. Trying widths in order of that bound and stopping
    # once it exceeds the best real size skips the narrow widths whose fillers would
    # multiply the entries (and the memory: 1-bit gaps on a 4%-dense 100 M-weight layer
    # make 50 M entries). rANS has no such floor; a quarter bit an entry is assumed there,
    # which only ever skips widths far from the best.
    bits_per_entry = 2 if coders == (HUFFMAN,) else 0.25
    bounds = sorted((_entries(gaps, b, tail), b) for b in INDEX_BITS_CHOICES)
    best = None
    for entries, b in bounds:
        if best is not None and entries * bits_per_entry / 8 > best.nbytes:
            break
        encoded = _encoded(b, *sparse.relative_symbols(gaps, codes, b, k, tail), k, coders, compact)
        # Ties go to the narrower width, so the choice does not depend on the search order.
        if best is None or (encoded.nbytes, b) < (best.nbytes, best.index_bits):
            best = encoded
    return best


def _entries(gaps: np.ndarray, b: int, tail: int) -> int:
    """Entries (kept and fillers) at gap width `b`, counted in chunks (no gap-sized temporary)."""
    fillers = sum(int(np.sum((gaps[i : i + (1 << 20)] - 1) >> b)) for i in range(0, gaps.size, 1 << 20))
    return gaps.size + fillers + (tail >> b)


def encode_dense(codes: np.ndarray, k: int, coders: tuple[int, ...] = CODERS, compact: bool = True) -> CodedStream:
    """Encode the codes of a dense layer (every position kept, no gaps) as one stream.

    The alphabet is k + 1 symbols like a sparse layer's, with the filler symbol k unused.
    `compact` allows a compact Huffman table (version 6).
    """
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= k):
        raise ValueError(f"codes must be in 0..{k - 1} (the filler symbol {k} is reserved)")
    return encode_stream(codes, k + 1, coders, compact)


def decode_dense(coder: int, table: bytes, code_stream, k: int, count: int) -> np.ndarray:
    """Decode the `count` codes of a dense layer; FormatError if damaged or if a filler appears."""
    codes = decode_stream(coder, table, code_stream, k + 1, count)
    if codes.size and int(codes.max()) >= k:
        raise FormatError(f"a dense layer holds a filler symbol ({k})")
    return codes


def decode_layer(encoded: EncodedLayer, k: int, numel: int, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode to (positions int64, codes uint16) of the kept entries; FormatError if damaged.

    A significance-coded layer needs the tensor's `shape` (its flags' grid).
    """
    if encoded.gap_coder == SIGNIFICANCE:
        if shape is None or int(np.prod(shape, dtype=np.int64)) != numel:
            raise ValueError("a significance-coded layer decodes with its tensor's shape")
        codes = decode_dense(encoded.code_coder, encoded.code_table, encoded.code_stream, k, encoded.entry_count)
        return significance.decode(encoded.gap_stream, tuple(shape), encoded.entry_count), codes
    code_symbols = decode_stream(encoded.code_coder, encoded.code_table, encoded.code_stream, k + 1, encoded.entry_count)
    gaps = decode_stream(encoded.gap_coder, encoded.gap_table, encoded.gap_stream, 1 << encoded.index_bits, encoded.entry_count)
    return sparse.from_relative(gaps, code_symbols, encoded.index_bits, k, numel, ends_covered=True)
