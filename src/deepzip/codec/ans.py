"""Static-model rANS coding of uint16 symbol streams: within a fraction of a percent of entropy.

Huffman (`deepzip.codec.huffman`) spends at least one bit a symbol and up to several percent
over the entropy on skewed alphabets; range asymmetric numeral systems (J. Duda 2009,
arXiv:0902.0271) code a symbol of probability p in ~log2(1/p) bits, a near-certain one in
almost none. The model is a table of integer frequencies summing to 2**P, P <= 16 chosen per
table and stored in it. The coder keeps a 64-bit state and moves 32-bit words; the state
starts at 0 and its final value is written in its fewest bytes, so a stream is within a few
bytes of its information content and a stream of one used symbol is empty. The bytes are
specified in docs/FORMAT.md ("rANS-coded streams"); the decoder accepts exactly what `encode` writes.

Why not constriction (`stack.AnsCoder`, the same construction at 24-bit precision): its
`Categorical` reproduces an integer table only through `perfect=True`'s optimiser (exact
when the table is representable, but not documented), gives every symbol of its alphabet a
nonzero probability (unused ones need remapping), rejects a one-symbol alphabet, takes and
returns int32, and decodes a 4-bit-entropy stream at 31-41 M symbols/s here (this: 135-175).
"""
from __future__ import annotations

import sys
from functools import lru_cache

import numpy as np
from numba import njit

from deepzip.codec.buffers import as_uint8
from deepzip.errors import FormatError

MAX_PRECISION = 16
"""P <= 16: a frequency and a slot offset pack into one uint32 decode-table entry, and the
64-bit state keeps 2**16 times the model's resolution (loss < 2**-15 bits a symbol)."""

MAX_ALPHABET_SIZE = 1 << 16
"""Symbols are uint16."""

EMPTY_TABLE = 0xFF
"""Stands in a table's precision byte for a table with no used symbol (a stream of 0 symbols)."""

_WORD, _LOW_WORD = np.uint64(32), np.uint64(0xFFFFFFFF)


# ---------------------------------------------------------------- the model


def _integers(values, what, error):
    """`values` as a 1-D int64 array of at most 65536 non-negative entries, else `error`."""
    values = np.asarray(values)
    if values.ndim != 1 or values.size > MAX_ALPHABET_SIZE:
        raise error(f"{what} must be 1-D with at most {MAX_ALPHABET_SIZE} entries")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise error(f"{what} must be integers, got {values.dtype}")
    if values.size and values.min() < 0:
        raise error(f"{what} must be non-negative")
    return values.astype(np.int64)


def _precision_of(freqs):
    """Validate a frequency table; return (freqs as int64, P), P = -1 for the empty table."""
    freqs = _integers(freqs, "frequencies", FormatError)
    total = int(freqs.sum())
    precision = total.bit_length() - 1
    if total and (total != 1 << precision or precision > MAX_PRECISION):
        raise FormatError(f"frequencies sum to {total}, not a power of two up to 2**{MAX_PRECISION}")
    return freqs, precision


def _quantize_used(c, precision):
    """Integer frequencies >= 1 summing to 2**precision that minimise sum(-c * log2 f).

    Starts from the continuous optimum f = max(1, lam * c) (water-filling: symbols too rare
    for one unit are held at 1, the rest share what remains in proportion), rounds down,
    hands out the units left by largest gain, then moves units from where a unit costs least
    to where it saves most until no move pays. A round moves a symbol by at most one unit and
    the start is within a unit or two of the optimum: a few rounds (the cap: float ties).
    """
    m, n = 1 << precision, c.size
    order = np.argsort(-c, kind="stable")
    top = np.cumsum(c[order])
    held = n - np.arange(1, n + 1)  # symbols held at 1 if the top j are free
    # The top j are free if the j-th largest gets >= 1 unit: (m - held) * c_j / top_j >= 1,
    # compared without division (exact in float64 for counts below 2**37); j = 1 always is.
    free = int(np.flatnonzero((m - held) * c[order] >= top)[-1]) + 1
    lam = (m - held[free - 1]) / top[free - 1]
    f = np.maximum(1, np.floor(np.minimum(lam * c, m - n + 1))).astype(np.int64)
    for _ in range(64):
        # As float32: numpy's log1p moves by an ulp between versions and CPUs, which decided near-ties.
        gain = (c * np.log1p(1.0 / f)).astype(np.float32)  # saved by raising f by one
        loss = np.where(f > 1, -c * np.log1p(-1.0 / np.maximum(f, 2)), np.inf).astype(np.float32)  # cost of lowering
        buyers, sellers = np.argsort(-gain, kind="stable"), np.argsort(loss, kind="stable")
        short = m - int(f.sum())
        if short > 0:  # rounding down leaves the sum short, by < n
            f[buyers[:short]] += 1
        elif short < 0:  # only through float rounding
            f[sellers[: min(-short, int(np.count_nonzero(f > 1)))]] -= 1
        else:
            # Gains fall and losses rise along the two orders, so the paying moves are a
            # prefix; a symbol in both halves nets out, which only makes the batch better.
            moves = int(np.count_nonzero(gain[buyers] > loss[sellers]))
            if moves == 0:
                break
            f[buyers[:moves]] += 1
            f[sellers[:moves]] -= 1
    return f


def _tokens(freqs):
    """The table's tokens in order: 2*(r-1)+1 for a run of r unused symbols, 2*(f-1) for f."""
    used = np.flatnonzero(freqs)
    runs = np.diff(np.concatenate([[-1], used])) - 1
    tokens = np.stack([2 * runs - 1, 2 * (freqs[used] - 1)], axis=1).ravel()
    return tokens[np.stack([runs > 0, np.ones(used.size, dtype=bool)], axis=1).ravel()]


def _token_bytes(tokens):
    """Bytes of each token as an LEB128 varint (tokens are below 2**17)."""
    return 1 + (tokens >= 1 << 7) + (tokens >= 1 << 14)


def _plan(counts, precision):
    """(frequencies, estimated table + stream bytes) of `counts` at `precision`.

    The stream's estimate is ceil(bits / 8) for `bits` of information content: measured,
    the real stream is that within -1..+2 bytes.
    """
    freqs = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    c = counts[used].astype(np.float64)
    freqs[used] = _quantize_used(c, precision) if used.size > 1 else 1 << precision
    bits = float(np.dot(c, precision - np.log2(freqs[used])))
    table = 1 + int(_token_bytes(_tokens(freqs)).sum())
    return freqs, table + (int(np.ceil(bits / 8 - 1e-9)) if bits > 0 else 0)


@lru_cache(maxsize=16)  # keyed by the counts' bytes: callers ask for the size, then the table
def _best(key, size):
    """(frequencies, estimated bytes) at the precision `quantize_frequencies` chooses."""
    counts = np.frombuffer(key, dtype=np.int64, count=size)
    used = int(np.count_nonzero(counts))
    if used == 0:
        return np.zeros(size, dtype=np.int64), 1
    plans = []
    # Table bytes grow with P and stream bytes shrink: stop two precisions past the best.
    for precision in range((used - 1).bit_length(), MAX_PRECISION + 1):  # 2**P slots hold them all
        plans.append(_plan(counts, precision))
        if len(plans) > 2 and min(plans[-1][1], plans[-2][1]) > min(plan[1] for plan in plans[:-2]):
            break
    # The lowest precision within 0.01% of the fewest bytes: its decode table is smaller, and
    # measured, a 2**16-slot table decodes 2-3x slower than a 2**12 one (L2 against L1).
    fewest = min(plan[1] for plan in plans)
    return next(plan for plan in plans if plan[1] <= fewest + fewest // 10_000)


def quantize_frequencies(counts, precision=None):
    """Integer frequencies for symbol `counts`: the model `encode` and `pack_table` take.

    Returns int64 frequencies summing to 2**P: every symbol with a nonzero count gets >= 1,
    every zero count gets 0, chosen to minimise the coded size sum(-count * log2(f / 2**P))
    (exactly, up to float ties). With `precision` None, P is the lowest in 0..16 whose table
    plus stream is within 0.01% of the smallest (see `coded_bytes`); one used symbol gets
    P = 0, f = 1; all-zero counts, all-zero frequencies (the empty table). Costs O(n log n)
    per precision tried, n the alphabet size (a call: ~5-15 ms). Raises ValueError if the
    counts are not a 1-D array of non-negative integers of at most 65536 entries, or if
    2**precision is below the number of used symbols or precision is outside 0..16.
    """
    counts = _integers(counts, "counts", ValueError)
    if precision is None:
        return _best(counts.tobytes(), counts.size)[0].copy()  # a copy: the cache keeps its own
    used = int(np.count_nonzero(counts))
    if not 0 <= precision <= MAX_PRECISION or (used and 1 << precision < used):
        raise ValueError(f"precision {precision} cannot hold {used} symbols (0..{MAX_PRECISION})")
    return _plan(counts, precision)[0] if used else np.zeros(counts.size, dtype=np.int64)


def coded_bytes(counts):
    """Estimated bytes of table plus stream for symbols with these `counts`, without encoding.

    An estimate: the table's size is exact, the stream's is the information content
    ceil(sum(count * log2(2**P / f)) / 8) under `quantize_frequencies(counts)`; the real
    stream is within -1..+2 bytes of it (measured on 3,000 streams of 1 to 3*10**5 symbols;
    docs/FORMAT.md ("rANS-coded streams") proves a bound of +8 bytes plus 2**(P-34) a symbol). Encode to know
    the exact size. Costs what `quantize_frequencies` costs; raises ValueError as it does.
    """
    counts = _integers(counts, "counts", ValueError)
    return _best(counts.tobytes(), counts.size)[1]


# ---------------------------------------------------------------- the table


def pack_table(freqs):
    """The frequency table as bytes (docs/FORMAT.md ("rANS-coded streams"), "The frequency table").

    One byte P, then one LEB128 varint token per used symbol in symbol order, 2*(f-1), each
    preceded by 2*(r-1)+1 when r unused symbols come before it; the table ends where the
    frequencies reach 2**P. All-zero `freqs` give the one byte 0xFF. Raises FormatError if
    `freqs` are not a valid table (see `unpack_table`).
    """
    freqs, precision = _precision_of(freqs)
    if precision < 0:
        return bytes([EMPTY_TABLE])
    tokens = _tokens(freqs)
    sizes = _token_bytes(tokens)
    # Byte j of a token holds its bits 7j..7j+6, with bit 7 set on all but its last byte.
    index = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    values = np.repeat(tokens, sizes) >> (7 * index)
    more = index < np.repeat(sizes, sizes) - 1
    return bytes([precision]) + ((values & 0x7F) | (more << 7)).astype(np.uint8).tobytes()


def unpack_table(data, alphabet_size):
    """Inverse of `pack_table`: the int64 frequencies of `alphabet_size` symbols.

    Raises FormatError, naming the fault, unless `data` is exactly one table: a precision
    byte in 0..16 (or 0xFF alone), then minimal varints of at most 3 bytes; no run of unused
    symbols right after another or at the end; the symbols within `alphabet_size`; the
    frequencies reaching exactly 2**P at the last byte, never above. Vectorised: O(size).
    """
    data = as_uint8(data)
    alphabet_size = int(alphabet_size)
    if not 0 <= alphabet_size <= MAX_ALPHABET_SIZE:
        raise FormatError(f"alphabet size must be in 0..{MAX_ALPHABET_SIZE}, got {alphabet_size}")
    if data.size == 0:
        raise FormatError("empty frequency table")
    precision = int(data[0])
    if precision == EMPTY_TABLE:
        if data.size > 1:
            raise FormatError(f"{data.size - 1} bytes after an empty frequency table")
        return np.zeros(alphabet_size, dtype=np.int64)
    if precision > MAX_PRECISION:
        raise FormatError(f"frequency table precision {precision} is above {MAX_PRECISION}")
    body = data[1:].astype(np.int64)
    ends = np.flatnonzero(body < 0x80)
    if body.size == 0 or body[-1] >= 0x80:
        raise FormatError("frequency table truncated inside a varint")
    starts = np.concatenate([[0], ends[:-1] + 1])
    sizes = ends - starts + 1
    if sizes.max() > 3:  # tokens are below 2**17
        raise FormatError(f"varint of {sizes.max()} bytes in the frequency table (at most 3)")
    if np.any((sizes > 1) & (body[ends] == 0)):
        raise FormatError("non-minimal varint in the frequency table")
    index = np.arange(body.size) - np.repeat(starts, sizes)
    tokens = np.add.reduceat((body & 0x7F) << (7 * index), starts)
    is_run = (tokens & 1).astype(bool)
    amount = (tokens >> 1) + 1
    if is_run[-1] or np.any(is_run[1:] & is_run[:-1]):
        raise FormatError("frequency table has a run of unused symbols at its end or after another run")
    symbol_end = np.cumsum(np.where(is_run, amount, 1))
    if symbol_end[-1] > alphabet_size:
        raise FormatError(f"frequency table lists more than {alphabet_size} symbols")
    freq = np.where(is_run, 0, amount)
    total = np.cumsum(freq)
    if total[-1] > 1 << precision or np.any(total[:-1] == 1 << precision):
        raise FormatError(f"frequencies reach 2**{precision} before the table ends or exceed it")
    if total[-1] < 1 << precision:
        raise FormatError(f"frequencies sum to {total[-1]}, not 2**{precision}: table truncated")
    freqs = np.zeros(alphabet_size, dtype=np.int64)
    freqs[symbol_end[~is_run] - 1] = freq[~is_run]
    return freqs


# ---------------------------------------------------------------- the coder


@njit(cache=True)
def _count_kernel(symbols, freqs, counts):
    """Count `symbols` into `counts`; return -1, or the index of the first symbol of frequency 0."""
    for i in range(symbols.size):
        s = symbols[i]
        if s >= freqs.size or freqs[s] == 0:
            return i
        counts[s] += 1
    return -1


@njit(cache=True)
def _encode_kernel(symbols, freqs, starts, limits, precision, words):
    """rANS-encode `symbols` last to first; words go to the end of `words`, backwards.

    Returns (index of the first word written, final state), or (-1, state) if `words` is too
    small. A state at or above f * 2**(64-P) (`limits`) gives up its low word first, so the
    coded state stays below 2**64. All in uint64: numba turns mixed signs into float64.
    """
    p, x, pos = np.uint64(precision), np.uint64(0), words.size
    for i in range(symbols.size - 1, -1, -1):
        s = symbols[i]
        f = freqs[s]
        if x >= limits[s]:
            if pos == 0:
                return -1, x
            pos -= 1
            words[pos] = x & _LOW_WORD
            x >>= _WORD
        x = ((x // f) << p) + x % f + starts[s]  # one division gives both
    return pos, x


@njit(cache=True)
def _decode_kernel(words, x, slot_symbols, slot_steps, precision, out):
    """Decode len(out) symbols from state `x`; return (final state, words consumed).

    A slot's step packs its symbol's frequency (high 16 bits) and the slot's offset in the
    symbol's range (low 16): x' = f * (x >> P) + offset. A word is read whenever the state
    drops below 2**32 while words remain, which is exactly where the encoder wrote one.
    """
    p, low, sixteen = np.uint64(precision), np.uint64(0xFFFF), np.uint64(16)
    mask, floor = (np.uint64(1) << p) - np.uint64(1), np.uint64(1) << _WORD
    n, pos = words.size, 0
    for i in range(out.size):
        slot = x & mask
        out[i] = slot_symbols[slot]
        step = np.uint64(slot_steps[slot])
        x = (step >> sixteen) * (x >> p) + (step & low)
        if x < floor and pos < n:
            x = (x << _WORD) | np.uint64(words[pos])
            pos += 1
    return x, pos


def _as_symbols(symbols):
    """`symbols` as a 1-D uint8 or uint16 array (uint8 stays uint8: no widened copy)."""
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or (symbols.size and not np.issubdtype(symbols.dtype, np.integer)):
        raise ValueError(f"symbols must be 1-D integers, got {symbols.dtype} {symbols.shape}")
    if symbols.size == 0:
        return np.zeros(0, dtype=np.uint16)
    if symbols.dtype not in (np.uint8, np.uint16):
        low, high = int(symbols.min()), int(symbols.max())  # before the cast, which would wrap
        if low < 0 or high >= MAX_ALPHABET_SIZE:
            raise ValueError(f"symbols must be in 0..{MAX_ALPHABET_SIZE - 1}, got {low}..{high}")
        symbols = symbols.astype(np.uint16)
    return np.ascontiguousarray(symbols)


def encode(symbols, freqs):
    """rANS-encode `symbols` (1-D integers) with the frequency table `freqs`.

    Returns the stream of docs/FORMAT.md ("rANS-coded streams"): the final state in its fewest little-endian
    bytes, then the words in the order the decoder reads them. A stream whose symbols all
    have frequency 2**P (one used symbol) or that has no symbols is empty. Costs a pass to
    count and check the symbols and one to code them (~90 M symbols/s); memory, the stream
    twice (words in a buffer sized by the spec's bound, then bytes). Raises ValueError if a
    symbol is outside the table or has frequency 0, FormatError if `freqs` is not a table.
    """
    freqs, precision = _precision_of(freqs)
    symbols = _as_symbols(symbols)
    if symbols.size == 0:
        return b""
    counts = np.zeros(freqs.size, dtype=np.int64)
    bad = _count_kernel(symbols, freqs, counts)
    if bad >= 0:
        raise ValueError(f"symbol {symbols[bad]} at index {bad} has frequency 0 or is outside the table")
    if freqs.max() == 1 << precision:
        return b""  # a certain symbol leaves the state at 0
    used = np.flatnonzero(counts)
    bits = float(np.dot(counts[used], precision - np.log2(freqs[used])))
    # The bound of docs/FORMAT.md ("rANS-coded streams") ("Stream size"), with room for float rounding.
    bound_bits = bits * (1 + 1e-9) + symbols.size * 2.0 ** (precision - 31) + 64
    words = np.empty(int(bound_bits / 32) + 2, dtype=np.uint32)
    starts = (np.cumsum(freqs) - freqs).astype(np.uint64)
    limits = freqs.astype(np.uint64) << np.uint64(64 - precision)
    pos, state = _encode_kernel(symbols, freqs.astype(np.uint64), starts, limits, precision, words)
    if pos < 0:
        raise AssertionError("rANS word buffer too small: the size bound of the spec is broken")
    return stream_bytes(int(state), words[pos:])


def stream_bytes(state: int, words: np.ndarray) -> bytes:
    """A stream's bytes: the final `state` in its fewest little-endian bytes, then `words` (u32)."""
    return state.to_bytes((state.bit_length() + 7) // 8, "little") + words.astype("<u4").tobytes()


def stream_state(data) -> tuple[int, np.ndarray]:
    """(initial state, words) of a stream's bytes: its head of H bytes, then W u32 words.

    H = C for C <= 8 bytes, else 5 + (C - 5) mod 4; FormatError if the head's top byte is 0.
    """
    data = as_uint8(data)
    head = data.size if data.size <= 8 else 5 + (data.size - 5) % 4  # the state's bytes
    if head and data[head - 1] == 0:
        raise FormatError("rANS state has a zero top byte (not written by the encoder)")
    words = np.frombuffer(data, dtype=np.uint32, offset=head)
    if sys.byteorder == "big":
        words = words.byteswap()
    return int.from_bytes(data[:head].tobytes(), "little"), words


def decode(data, freqs, count):
    """Decode exactly `count` symbols from the rANS stream `data` with the table `freqs`.

    `data` may be bytes, bytearray, memoryview or a 1-D uint8 array; returns uint16. Raises
    FormatError if the table is invalid or `data` is not exactly what `encode` writes for
    `count` symbols (a head with a zero top byte, a final state other than 0, words left or
    missing, bytes where the stream must be empty). Never a hang: the loop runs `count`
    times, ~150 M symbols/s (~80 at P = 16), after an O(2**P) table. `count` is not bounded
    by len(data) (a certain symbol costs no bits): the caller bounds it before this call.
    """
    freqs, precision = _precision_of(freqs)
    data = as_uint8(data)
    count = int(count)
    if count < 0:
        raise FormatError(f"symbol count must be non-negative, got {count}")
    if precision < 0 or freqs.max() == 1 << precision:
        # No symbol, or a certain one: the state never leaves 0, the stream is empty.
        if data.size:
            raise FormatError(f"{data.size} bytes in a stream that must be empty")
        if precision < 0 and count:
            raise FormatError(f"{count} symbols to decode but the table has no symbols")
        return np.full(count, int(np.argmax(freqs)) if count else 0, dtype=np.uint16)
    state, words = stream_state(data)
    starts = np.cumsum(freqs) - freqs
    slot_symbols = np.repeat(np.arange(freqs.size, dtype=np.uint16), freqs)
    offsets = np.arange(1 << precision, dtype=np.int64) - starts[slot_symbols]
    slot_steps = ((freqs[slot_symbols] << 16) | offsets).astype(np.uint32)
    out = np.empty(count, dtype=np.uint16)
    final, used = _decode_kernel(words, np.uint64(state), slot_symbols, slot_steps, precision, out)
    if used != words.size:
        raise FormatError(f"{4 * (words.size - used)} bytes left after {count} symbols")
    if final != 0:
        raise FormatError("rANS stream damaged or truncated: the final state is not 0")
    return out
