"""Tests of deepzip.codec.ans against a reference written from docs/FORMAT.md ("rANS-coded streams") alone.

The reference below parses tables, encodes and decodes streams in plain Python integers,
sharing no code with deepzip.codec.ans; the optimal-quantization reference is the textbook
greedy (one unit at a time to the largest gain, optimal for a separable concave cost).
"""

import heapq
import math

import numpy as np
import pytest

from deepzip.codec import ans, huffman
from deepzip.errors import FormatError

# ---------------------------------------------------------------- independent references


class RefError(Exception):
    """The reference found a rule of docs/FORMAT.md ("rANS-coded streams") broken."""


def ref_unpack_table(data: bytes, alphabet: int) -> list[int]:
    if not data:
        raise RefError("empty")
    if data[0] == 0xFF:
        if len(data) > 1:
            raise RefError("bytes after the empty table")
        return [0] * alphabet
    precision = data[0]
    if precision > 16:
        raise RefError("precision")
    freqs, pos, total, last_run = [], 1, 0, False
    while total < 1 << precision:
        token, shift, size = 0, 0, 0
        while True:
            if pos >= len(data):
                raise RefError("truncated")
            byte = data[pos]
            pos, size = pos + 1, size + 1
            token |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if size > 3 or (size > 1 and byte == 0):
            raise RefError("varint")
        if token % 2:
            if last_run:
                raise RefError("run after run")
            freqs += [0] * ((token >> 1) + 1)
        else:
            freqs.append((token >> 1) + 1)
            total += freqs[-1]
        last_run = bool(token % 2)
        if len(freqs) > alphabet or total > 1 << precision:
            raise RefError("too many symbols or sum too big")
    if pos != len(data):
        raise RefError("bytes after the table")
    return freqs + [0] * (alphabet - len(freqs))


def ref_model(freqs: list[int]):
    total = sum(freqs)
    precision = total.bit_length() - 1
    starts = [sum(freqs[:s]) for s in range(len(freqs))]
    return precision, starts


def ref_encode(symbols: list[int], freqs: list[int]) -> bytes:
    precision, starts = ref_model(freqs)
    if max(freqs) == 1 << precision:
        return b""
    x, emitted = 0, []
    for s in reversed(symbols):
        if x >= freqs[s] << (64 - precision):
            emitted.append(x % 2**32)
            x //= 2**32
        x = (x // freqs[s] << precision) + x % freqs[s] + starts[s]
    head = x.to_bytes((x.bit_length() + 7) // 8, "little")
    return head + b"".join(w.to_bytes(4, "little") for w in reversed(emitted))


def ref_decode(data: bytes, freqs: list[int], count: int) -> list[int]:
    if sum(freqs) == 0:
        if data or count:
            raise RefError("empty table")
        return []
    precision, starts = ref_model(freqs)
    if max(freqs) == 1 << precision:
        if data:
            raise RefError("bytes for a certain symbol")
        return [freqs.index(max(freqs))] * count
    head = len(data) if len(data) <= 8 else 5 + (len(data) - 5) % 4
    if head and data[head - 1] == 0:
        raise RefError("head not minimal")
    x = int.from_bytes(data[:head], "little")
    words = [int.from_bytes(data[i : i + 4], "little") for i in range(head, len(data), 4)]
    slot_owner = [s for s, f in enumerate(freqs) for _ in range(f)]
    out, read = [], 0
    for _ in range(count):
        q = x % 2**precision
        s = slot_owner[q]
        x = freqs[s] * (x >> precision) + q - starts[s]
        assert x < 2**64
        if x < 2**32 and read < len(words):
            x, read = x * 2**32 + words[read], read + 1
        out.append(s)
    if x != 0 or read != len(words):
        raise RefError("final state or words left")
    return out


def ref_optimal_cost(counts: np.ndarray, precision: int) -> float:
    """Minimum of sum(-c log2 f) over f >= 1 summing to 2**precision, by the greedy."""
    used = [int(c) for c in counts if c]
    f = [1] * len(used)
    heap = [(-c * math.log2(2), i) for i, c in enumerate(used)]
    heapq.heapify(heap)
    for _ in range((1 << precision) - len(used)):
        _, i = heapq.heappop(heap)
        f[i] += 1
        heapq.heappush(heap, (-used[i] * math.log2((f[i] + 1) / f[i]), i))
    return cost(used, f)


def cost(counts, freqs) -> float:
    return -sum(c * math.log2(f) for c, f in zip(counts, freqs) if c)


def entropy_bytes(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    return float(-(c * np.log2(c / c.sum())).sum() / 8)


# ---------------------------------------------------------------- streams


def stream(rng, alphabet: int, n: int, kind: str) -> np.ndarray:
    if kind == "uniform":
        p = np.ones(alphabet)
    elif kind == "skewed":
        p = rng.dirichlet(np.full(alphabet, 0.1))
    elif kind == "geometric":
        p = 0.7 ** np.arange(alphabet)
    elif kind == "single":
        p = np.zeros(alphabet)
        p[rng.integers(alphabet)] = 1
    else:
        raise AssertionError(kind)
    return rng.choice(alphabet, n, p=p / p.sum()).astype(np.uint16)


def roundtrip(symbols: np.ndarray, alphabet: int) -> tuple[bytes, bytes]:
    counts = np.bincount(symbols, minlength=alphabet)
    freqs = ans.quantize_frequencies(counts)
    table = ans.pack_table(freqs)
    assert np.array_equal(ans.unpack_table(table, alphabet), freqs)
    data = ans.encode(symbols, freqs)
    decoded = ans.decode(data, freqs, symbols.size)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, symbols)
    return table, data


@pytest.mark.parametrize("alphabet", [1, 2, 3, 17, 256, 4096, 4097])
@pytest.mark.parametrize("kind", ["uniform", "skewed", "geometric", "single"])
@pytest.mark.parametrize("n", [0, 1, 7, 300, 20_000])
def test_roundtrip(alphabet, kind, n):
    rng = np.random.default_rng(alphabet * 1000 + n)
    symbols = stream(rng, alphabet, n, kind)
    table, data = roundtrip(symbols, alphabet)
    if alphabet <= 256:  # uint8 input codes to the same bytes
        assert ans.encode(symbols.astype(np.uint8), ans.unpack_table(table, alphabet)) == data
    if n == 0 or kind == "single" or alphabet == 1:
        assert data == b""


@pytest.mark.parametrize("seed", range(40))
def test_reference_encoder_and_decoder_agree_with_production(seed):
    rng = np.random.default_rng(seed)
    alphabet = int(rng.integers(1, 300))
    n = int(rng.integers(0, 3000))
    symbols = stream(rng, alphabet, n, ["uniform", "skewed", "geometric", "single"][seed % 4])
    freqs = ans.quantize_frequencies(np.bincount(symbols, minlength=alphabet))
    table = ans.pack_table(freqs)
    assert ref_unpack_table(table, alphabet) == freqs.tolist()
    data = ans.encode(symbols, freqs)
    assert data == ref_encode(symbols.tolist(), freqs.tolist())
    assert ref_decode(data, freqs.tolist(), n) == symbols.tolist()


def test_golden_bytes_of_the_spec_examples():
    freqs = np.array([0, 3, 0, 0, 5])
    assert ans.pack_table(freqs) == bytes.fromhex("03 01 04 03 08")
    assert ans.pack_table([0, 0, 1]) == bytes.fromhex("00 03 00")
    assert ans.pack_table([0, 0, 0]) == b"\xff"
    symbols = np.array([1, 4, 4, 1, 4, 4, 4, 1])
    assert ans.encode(symbols, freqs) == b"\xe2"
    assert ans.encode(np.tile(symbols, 10), freqs) == bytes.fromhex("f8 47 30 18 45 17 5d 03 d2 fd")
    assert ref_decode(bytes.fromhex("f8 47 30 18 45 17 5d 03 d2 fd"), freqs.tolist(), 80) == np.tile(symbols, 10).tolist()


def test_single_symbol_costs_nothing_and_near_certain_symbols_almost_nothing():
    symbols = np.full(1_000_000, 5, dtype=np.uint16)
    freqs = ans.quantize_frequencies(np.bincount(symbols, minlength=9))
    assert ans.encode(symbols, freqs) == b"" and len(ans.pack_table(freqs)) <= 4
    assert np.array_equal(ans.decode(b"", freqs, 10**6), symbols)
    rng = np.random.default_rng(0)
    symbols = (rng.random(1_000_000) < 1e-4).astype(np.uint8)  # ~100 ones: ~1,470 bits
    counts = np.bincount(symbols, minlength=2)
    data = ans.encode(symbols, ans.quantize_frequencies(counts))
    assert len(data) <= entropy_bytes(counts) * 1.01 + 8
    assert len(data) < 1_000_000 / 8 / 50  # Huffman: 125,000 bytes


# ---------------------------------------------------------------- sizes


def huffman_bytes(symbols: np.ndarray, alphabet: int) -> int:
    counts = np.bincount(symbols, minlength=alphabet)
    lengths = huffman.code_lengths(counts, max(12, (int(np.count_nonzero(counts)) - 1).bit_length()))
    return len(huffman.pack_lengths(lengths)) + len(huffman.encode(symbols, lengths))


@pytest.mark.parametrize(
    ("alphabet", "n", "kind", "whole"),
    [(33, 2_000_000, "geometric", True), (17, 1_000_000, "skewed", True), (4097, 1_000_000, "skewed", False), (4096, 2_000_000, "uniform", False)],
)
def test_size_is_within_a_tenth_of_a_percent_of_the_entropy(alphabet, n, kind, whole):
    rng = np.random.default_rng(n + alphabet)
    symbols = stream(rng, alphabet, n, kind)
    counts = np.bincount(symbols, minlength=alphabet)
    table, data = roundtrip(symbols, alphabet)
    # Small alphabets: table and stream together; 4K alphabets: the stream (their ~4 KB
    # table is its own cost, which the caller weighs against Huffman's).
    size = len(data) + (len(table) if whole else 0)
    h = entropy_bytes(counts)
    print(f"A={alphabet} n={n} {kind}: entropy {h:.0f} B, rANS {size} B ({100 * (size / h - 1):+.3f}%), table {len(table)} B, Huffman {huffman_bytes(symbols, alphabet)} B")
    assert size <= h * 1.001 + 8


def test_rans_beats_huffman_on_a_skewed_stream():
    rng = np.random.default_rng(1)
    symbols = rng.choice(8, 500_000, p=[0.9, 0.05, 0.02, 0.01, 0.01, 0.005, 0.003, 0.002]).astype(np.uint8)
    table, data = roundtrip(symbols, 8)
    h, rans, huff = entropy_bytes(np.bincount(symbols)), len(table) + len(data), huffman_bytes(symbols, 8)
    print(f"skewed 8 symbols: entropy {h:.0f} B, rANS {rans} B, Huffman {huff} B")
    assert rans <= h * 1.001 + 8 and rans < 0.75 * huff


def test_coded_bytes_estimate_is_within_its_documented_range():
    rng = np.random.default_rng(2)
    for trial in range(300):
        alphabet = int(rng.integers(1, 600))
        symbols = stream(rng, alphabet, int(10 ** rng.uniform(0, 5)), ["uniform", "skewed", "geometric", "single"][trial % 4])
        counts = np.bincount(symbols, minlength=alphabet)
        freqs = ans.quantize_frequencies(counts)
        actual = len(ans.pack_table(freqs)) + len(ans.encode(symbols, freqs))
        assert -1 <= actual - ans.coded_bytes(counts) <= 2


# ---------------------------------------------------------------- quantization


@pytest.mark.parametrize("seed", range(60))
def test_quantization_is_optimal_and_keeps_used_symbols(seed):
    rng = np.random.default_rng(seed)
    alphabet = int(rng.integers(2, 80))
    counts = rng.integers(0, 50, alphabet) * (rng.random(alphabet) < 0.7)
    counts[rng.integers(alphabet)] += rng.integers(1, 10**6)  # one heavy symbol
    used = int(np.count_nonzero(counts))
    for precision in sorted({(used - 1).bit_length(), 8, 12}):
        freqs = ans.quantize_frequencies(counts, precision)
        assert freqs.sum() == 1 << precision
        assert np.array_equal(freqs > 0, counts > 0)
        best = ref_optimal_cost(counts, precision)
        assert cost(counts, freqs) <= best + 1e-12 * abs(best) + 1e-9
    freqs = ans.quantize_frequencies(counts)
    assert np.array_equal(freqs > 0, counts > 0) and int(freqs.sum()).bit_count() == 1


def test_quantization_edge_cases():
    assert ans.quantize_frequencies(np.zeros(5, dtype=int)).tolist() == [0] * 5
    assert ans.quantize_frequencies([0, 0, 7]).tolist() == [0, 0, 1]  # P = 0
    assert ans.quantize_frequencies([3, 0, 3], 4).tolist() == [8, 0, 8]
    assert ans.quantize_frequencies(np.ones(4097, dtype=int)).sum() == 1 << 13
    with pytest.raises(ValueError):
        ans.quantize_frequencies([1, 1, 1], 1)  # 3 symbols in 2 slots
    with pytest.raises(ValueError):
        ans.quantize_frequencies([1, 1], 17)
    for bad in ([-1, 2], [[1, 2]], [1.5, 2.0], np.ones(70_000, dtype=int)):
        with pytest.raises(ValueError):
            ans.quantize_frequencies(bad)


# ---------------------------------------------------------------- tables


@pytest.mark.parametrize("seed", range(30))
def test_table_roundtrip(seed):
    rng = np.random.default_rng(seed)
    alphabet = int(rng.integers(1, 5000))
    precision = int(rng.integers(0, 17))
    counts = rng.integers(1, 1000, alphabet) * (rng.random(alphabet) < rng.random())
    if not counts.any() or np.count_nonzero(counts) > 1 << precision:
        counts[:] = 0
        counts[rng.integers(alphabet)] = 1
    freqs = ans.quantize_frequencies(counts, precision)
    table = ans.pack_table(freqs)
    assert np.array_equal(ans.unpack_table(table, alphabet), freqs)
    assert ref_unpack_table(table, alphabet) == freqs.tolist()


@pytest.mark.parametrize(
    ("table", "alphabet", "match"),
    [
        (b"", 4, "empty"),
        (b"\x11\x00", 4, "precision"),
        (b"\xff\x00", 4, "after an empty"),
        (b"\x03\x81", 4, "truncated inside a varint"),
        (b"\x03\x80\x80\x80\x00", 4, "varint of 4 bytes"),
        (b"\x03\x8e\x00", 4, "non-minimal"),
        (b"\x03\x01\x01\x0e", 4, "after another run"),
        (b"\x03\x0e\x01", 4, "at its end"),
        (b"\x03\x05\x0e", 3, "more than 3 symbols"),
        (b"\x03\x0e\x00", 4, "reach 2\\*\\*3 before"),
        (b"\x03\x10", 4, "exceed"),
        (b"\x03\x04\x04", 4, "truncated"),
        (b"\x03\x0e", 4, "before the table ends|exceed|truncated"),
    ],
)
def test_malformed_tables_are_format_errors(table, alphabet, match):
    if table == b"\x03\x0e":  # a valid table (f = 8 for symbol 0): the control case
        assert ans.unpack_table(table, alphabet).tolist() == [8, 0, 0, 0]
        return
    with pytest.raises(FormatError, match=match):
        ans.unpack_table(table, alphabet)
    with pytest.raises(RefError):
        ref_unpack_table(table, alphabet)


def test_invalid_frequencies_and_symbols():
    with pytest.raises(FormatError):
        ans.pack_table([1, 2])  # sums to 3
    with pytest.raises(FormatError):
        ans.encode([0, 1], [3, 3, 3])  # sums to 9
    with pytest.raises(ValueError, match="frequency 0"):
        ans.encode(np.array([0, 1, 2]), [4, 0, 4])
    with pytest.raises(ValueError, match="outside"):
        ans.encode(np.array([0, 3]), [4, 2, 2])
    with pytest.raises(ValueError):
        ans.encode(np.array([0, -1]), [4, 4])
    with pytest.raises(FormatError):
        ans.decode(b"", [2, 2], -1)
    with pytest.raises(FormatError, match="no symbols"):
        ans.decode(b"", [0, 0], 3)
    with pytest.raises(FormatError, match="must be empty"):
        ans.decode(b"\x01", [0, 4], 3)
    assert ans.decode(b"", [0, 0], 0).size == 0


# ---------------------------------------------------------------- damage


def mutate(rng, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.integers(6)
    if kind == 0 and data:
        i = rng.integers(len(data))
        data[i] ^= 1 << int(rng.integers(8))
    elif kind == 1 and data:
        data[rng.integers(len(data))] = rng.integers(256)
    elif kind == 2 and data:
        del data[rng.integers(len(data)) :]
    elif kind == 3:
        data += bytes(rng.integers(0, 256, int(rng.integers(1, 9))).astype(np.uint8))
    elif kind == 4 and data:
        del data[rng.integers(len(data))]
    else:
        data.insert(int(rng.integers(len(data) + 1)), int(rng.integers(256)))
    return bytes(data)


def test_damaged_streams_and_tables_are_format_errors_or_canonical_decodes():
    rng = np.random.default_rng(3)
    cases = []
    for alphabet, kind in [(2, "skewed"), (17, "geometric"), (33, "uniform"), (300, "skewed"), (5, "single")]:
        symbols = stream(rng, alphabet, 400, kind)
        freqs = ans.quantize_frequencies(np.bincount(symbols, minlength=alphabet))
        cases.append((alphabet, freqs, ans.pack_table(freqs), ans.encode(symbols, freqs), symbols.size))
    outcomes = {"error": 0, "decoded": 0}
    for trial in range(4000):
        alphabet, freqs, table, data, count = cases[trial % len(cases)]
        if trial % 4 == 3:  # damage the table, then decode the stream with whatever it gives
            try:
                freqs = ans.unpack_table(mutate(rng, table), alphabet)
            except FormatError:
                outcomes["error"] += 1
                continue
        else:
            data = mutate(rng, data)
            count += int(rng.integers(-1, 2)) if trial % 7 == 0 else 0
        try:
            decoded = ans.decode(data, freqs, max(count, 0))
        except FormatError:
            outcomes["error"] += 1
            continue
        # Accepted bytes are exactly what the encoder writes for what they decode to.
        assert decoded.size == max(count, 0)
        assert ans.encode(decoded, freqs) == data
        outcomes["decoded"] += 1
    print(outcomes)
    assert outcomes["error"] > 3000
