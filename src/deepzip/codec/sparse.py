"""Relative sparse indices with filler zeros, as defined in Deep Compression (section 2).

A pruned tensor, flattened row-major, keeps entries at sorted flat positions. Each entry
stores its gap to the previous entry in `index_bits` bits: gap symbol s means "s + 1
positions after the previous entry", and the first gap counts from position -1. A gap
larger than ``2**index_bits`` is bridged by filler entries (value zero) placed at the
largest reachable position. Paper example, 3-bit gaps: entries at 4 and 15 become entries
at 4, 12 (filler), 15 with gap symbols [4, 7, 2]. Positions after the last entry need no
fillers: the tensor size is stored elsewhere. Fillers carry the reserved code symbol
`filler_symbol` (the codebook size k, so real codes are 0..k-1).
"""

import numpy as np

from deepzip.errors import FormatError

MAX_INDEX_BITS = 16
"""Gap symbols are uint16."""


def _check_index_bits(index_bits):
    """ValueError unless 1 <= index_bits <= 16."""
    if not 1 <= index_bits <= MAX_INDEX_BITS:
        raise ValueError(f"index_bits must be in 1..{MAX_INDEX_BITS}, got {index_bits}")


def _gaps(positions):
    """Gaps (>= 1) of strictly increasing, non-negative `positions`, the first from -1."""
    positions = np.asarray(positions)
    if positions.ndim != 1:
        raise ValueError(f"positions must be 1-D, got shape {positions.shape}")
    if positions.size and not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"positions must be integers, got {positions.dtype}")
    gaps = np.diff(positions.astype(np.int64, copy=False), prepend=np.int64(-1))
    # A first gap < 1 means a negative position; a later one, positions not increasing.
    if gaps.size and gaps.min() < 1:
        raise ValueError("positions must be non-negative and strictly increasing")
    return gaps


def count_fillers(positions, index_bits):
    """Number of filler entries that `to_relative` inserts for `positions` at `index_bits`."""
    _check_index_bits(index_bits)
    return int(np.sum((_gaps(positions) - 1) >> index_bits))


def to_relative(positions, codes, index_bits, filler_symbol, numel=None):
    """Encode entries at flat `positions` with weight `codes` as (gap_symbols, code_symbols).

    Both results are uint16 arrays of equal length: one element per entry, fillers
    included. A gap g becomes ``(g - 1) // 2**index_bits`` fillers, each with gap symbol
    ``2**index_bits - 1`` and code `filler_symbol`, then the entry itself with gap symbol
    ``g - 1 - fillers * 2**index_bits``. Raises ValueError if positions are negative or not
    strictly increasing, a code is outside 0..filler_symbol-1, or the lengths differ.

    With `numel`, the end of the tensor counts as one more entry (at position numel) whose
    gap is bridged by fillers too, so the entries reach within 2**index_bits of the end.
    The .dzip format requires this: it bounds a tensor's size by its stream, so a damaged
    shape cannot make a reader allocate more than the stream could describe.
    """
    _check_index_bits(index_bits)
    if not 1 <= filler_symbol <= 0xFFFF:
        raise ValueError(f"filler_symbol must be in 1..65535, got {filler_symbol}")
    gaps = _gaps(positions)
    codes = np.asarray(codes)
    if codes.shape != gaps.shape:
        raise ValueError(f"{codes.size} codes for {gaps.size} positions")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= filler_symbol):
        raise ValueError(f"codes must be in 0..{filler_symbol - 1} (filler_symbol is reserved)")

    tail = None
    if numel is not None:
        last = int(np.asarray(positions)[-1]) if gaps.size else -1
        if last >= numel:
            raise ValueError(f"position {last} is outside a tensor of {numel} elements")
        tail = numel - last - 1
    return relative_symbols(gaps, codes, index_bits, filler_symbol, tail)


_CHUNK = 1 << 20


def narrow_gaps(positions, numel: int) -> np.ndarray:
    """The gaps of `positions` (see `to_relative`) in the narrowest signed type that holds
    `numel`: int32 for tensors below 2**31 elements, halving the temporaries of encoding.
    Computed in chunks, so no int64 array of the gaps' size is made; checked like `_gaps`."""
    positions = np.asarray(positions)
    if positions.ndim != 1 or (positions.size and not np.issubdtype(positions.dtype, np.integer)):
        raise ValueError(f"positions must be 1-D integers, got {positions.dtype} of shape {positions.shape}")
    gaps = np.empty(positions.size, dtype=np.int32 if numel < 1 << 31 else np.int64)
    for start in range(0, positions.size, _CHUNK):
        before = positions[start - 1] if start else -1
        chunk = positions[start : start + _CHUNK]
        step = np.diff(chunk, prepend=before)
        if step.size and step.min() < 1:
            raise ValueError("positions must be non-negative and strictly increasing")
        gaps[start : start + _CHUNK] = step
    return gaps


def relative_symbols(gaps: np.ndarray, codes, index_bits: int, filler_symbol: int, tail: int | None) -> tuple[np.ndarray, np.ndarray]:
    """`to_relative` from checked gaps (>= 1, any signed integer type; left unchanged).

    `tail` is the number of elements after the last entry (None: no fillers towards the
    end). In place where it can be: about three gap-sized arrays at the peak, on layers of
    tens of millions of kept weights.
    """
    fillers = gaps - 1
    fillers >>= index_bits
    # Each real entry lands after its own fillers; everything else is a filler.
    entry_index = fillers + 1
    np.cumsum(entry_index, out=entry_index)
    entry_index -= 1
    total = int(entry_index[-1]) + 1 if entry_index.size else 0
    if tail is not None:
        total += tail >> index_bits  # fillers towards the end sentinel
    gap_symbols = np.full(total, (1 << index_bits) - 1, dtype=np.uint16)
    code_symbols = np.full(total, filler_symbol, dtype=np.uint16)
    fillers <<= index_bits
    fillers += 1
    np.subtract(gaps, fillers, out=fillers)  # now the gap symbol of each real entry
    gap_symbols[entry_index] = fillers
    code_symbols[entry_index] = codes
    return gap_symbols, code_symbols


def from_relative(gap_symbols, code_symbols, index_bits, filler_symbol, numel, ends_covered=False):
    """Inverse of `to_relative`: (positions int64, codes uint16) with the fillers removed.

    `numel` is the number of elements of the tensor. Raises FormatError if the streams
    differ in length, a gap symbol is >= 2**index_bits, a code symbol is > filler_symbol,
    or the last entry lies at or past `numel`; with `ends_covered`, also if the entries stop
    more than 2**index_bits short of `numel` (see `to_relative`). Fillers are accepted
    wherever they are: they are explicit zero entries, harmless to decode.
    """
    _check_index_bits(index_bits)
    gap_symbols = np.asarray(gap_symbols)
    code_symbols = np.asarray(code_symbols)
    if gap_symbols.ndim != 1 or code_symbols.ndim != 1:
        raise FormatError("gap and code streams must be 1-D")
    if gap_symbols.size != code_symbols.size:
        raise FormatError(f"{gap_symbols.size} gaps but {code_symbols.size} codes")
    if gap_symbols.size == 0:
        if ends_covered and numel + 1 > 1 << index_bits:  # the gap from p = -1 to the end
            raise FormatError(f"no entries, but a tensor of {numel} elements needs fillers up to its end")
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint16)
    if not all(np.issubdtype(a.dtype, np.integer) for a in (gap_symbols, code_symbols)):
        raise FormatError("gap and code symbols must be integers")
    if gap_symbols.min() < 0 or gap_symbols.max() >= 1 << index_bits:
        raise FormatError(f"gap symbol out of range for {index_bits}-bit indices")
    if code_symbols.min() < 0 or code_symbols.max() > filler_symbol:
        raise FormatError(f"code symbol out of range 0..{filler_symbol}")

    # No overflow: every step is at most 2**16 and an in-memory stream has far fewer than
    # 2**47 entries, so positions stay below 2**63.
    all_positions = np.cumsum(gap_symbols.astype(np.int64) + 1) - 1
    if all_positions[-1] >= numel:
        raise FormatError(
            f"sparse stream reaches position {all_positions[-1]} in a tensor of {numel} elements"
        )
    if ends_covered and numel - all_positions[-1] > 1 << index_bits:
        raise FormatError(
            f"entries stop at position {all_positions[-1]}, more than {1 << index_bits} before the end ({numel})"
        )
    real = code_symbols != filler_symbol
    return all_positions[real], code_symbols[real].astype(np.uint16)
