"""Tests of deepzip.codec.huffman against independent references (heapq Huffman, brute force)."""

import heapq
import itertools
from functools import lru_cache

import numpy as np
import pytest

from deepzip.codec import huffman
from deepzip.errors import FormatError

# ---------------------------------------------------------------- independent references


def huffman_cost(counts):
    """Cost sum(count * length) of an unlimited Huffman code: the sum of all merged weights."""
    heap = [int(c) for c in counts if c > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


@lru_cache(maxsize=None)
def _kraft_feasible_lengths(size, max_length):
    grid = np.array(list(itertools.product(range(1, max_length + 1), repeat=size)))
    # Kraft sum in units of 2**-max_length, exact in integers.
    kraft = (np.int64(1) << (max_length - grid)).sum(axis=1)
    return grid[kraft <= 1 << max_length]


def brute_force_cost(counts, max_length):
    """Minimum cost over every length vector in 1..max_length^n with Kraft sum <= 1."""
    counts = np.asarray(counts, dtype=np.int64)
    return int((_kraft_feasible_lengths(counts.size, max_length) @ counts).min())


def dp_cost(counts, max_length):
    """Minimum length-limited cost by dynamic programming over Kraft budget.

    Some optimal code gives the heavier symbol the shorter (or equal) code, so with counts
    in decreasing order the lengths are non-decreasing; the state is (symbol, minimum
    length, Kraft sum used so far in units of 2**-max_length).
    """
    weights = sorted((int(c) for c in counts), reverse=True)
    budget = 1 << max_length

    @lru_cache(maxsize=None)
    def best(i, min_length, used):
        if i == len(weights):
            return 0
        options = [
            weights[i] * length + best(i + 1, length, used + (budget >> length))
            for length in range(min_length, max_length + 1)
            if used + (budget >> length) <= budget
        ]
        return min(options, default=float("inf"))

    return best(0, 1, 0)


def reference_canonical_codes(lengths):
    """Canonical codes as bit strings, by the textbook loop over (length, symbol) order."""
    lengths = [int(length) for length in lengths]
    codes = {}
    code, previous_length = 0, 0
    used = [s for s in range(len(lengths)) if lengths[s]]
    for symbol in sorted(used, key=lambda s: (lengths[s], s)):
        code <<= lengths[symbol] - previous_length
        codes[symbol] = format(code, f"0{lengths[symbol]}b")
        previous_length = lengths[symbol]
        code += 1
    return codes


def reference_encode(symbols, lengths):
    """Bit-string encoder: concatenate code words, pad with zeros to whole bytes."""
    codes = reference_canonical_codes(lengths)
    bits = "".join(codes[int(s)] for s in symbols)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def random_counts(rng, kind, size):
    """Count vectors of several shapes: skewed, geometric, uniform, with many zeros."""
    if kind == "geometric":
        counts = np.floor(1e6 * 0.7 ** np.arange(size)).astype(np.int64) + 1
    elif kind == "skewed":
        counts = rng.zipf(1.5, size).astype(np.int64)
    elif kind == "uniform":
        counts = rng.integers(1, 1000, size)
    else:  # "zeros": about half the symbols unused
        counts = rng.integers(1, 1000, size) * (rng.random(size) < 0.5)
    return rng.permutation(counts)


# ---------------------------------------------------------------- code_lengths


@pytest.mark.parametrize("kind", ["geometric", "skewed", "uniform", "zeros"])
def test_code_lengths_match_unlimited_huffman_cost(kind):
    rng = np.random.default_rng(1)
    for size in list(range(1, 20)) + [50, 100, 257, 300]:
        counts = random_counts(rng, kind, size)
        if np.count_nonzero(counts) < 2:
            continue
        # 15 bits can still bind for long geometric tails; compare only where it does not.
        lengths = huffman.code_lengths(counts, max_length=15)
        expected = huffman_cost(counts)
        cost = int(counts @ lengths.astype(np.int64))
        if lengths.max() < 15:
            assert cost == expected, (kind, size)
        else:
            assert cost >= expected
        assert np.all((lengths == 0) == (counts == 0))


@pytest.mark.parametrize("max_length", [2, 3, 4, 5])
def test_code_lengths_limited_match_brute_force(max_length):
    rng = np.random.default_rng(2)
    for _ in range(30):
        size = int(rng.integers(2, 8))
        # Heavy tails make deep Huffman trees, so the limit binds in most cases.
        counts = rng.zipf(1.2, size).astype(np.int64)
        if size > 1 << max_length:
            continue
        lengths = huffman.code_lengths(counts, max_length)
        assert lengths.max() <= max_length
        assert int(counts @ lengths.astype(np.int64)) == brute_force_cost(counts, max_length)


def test_dp_reference_agrees_with_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        counts = rng.zipf(1.3, int(rng.integers(2, 7)))
        assert dp_cost(counts, 4) == brute_force_cost(counts, 4)


@pytest.mark.parametrize("max_length", [4, 5, 6])
def test_code_lengths_binding_limit_fibonacci(max_length):
    # Fibonacci counts make the unlimited Huffman tree a chain of depth 11.
    counts = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144])
    assert huffman.code_lengths(counts, 15).max() == 11
    lengths = huffman.code_lengths(counts, max_length)
    assert lengths.max() <= max_length
    assert int(counts @ lengths.astype(np.int64)) == dp_cost(counts, max_length)


def test_code_lengths_edge_cases():
    assert huffman.code_lengths([0, 0, 0]).tolist() == [0, 0, 0]
    assert huffman.code_lengths([]).tolist() == []
    assert huffman.code_lengths([0, 7, 0]).tolist() == [0, 1, 0]
    assert huffman.code_lengths([3, 3]).tolist() == [1, 1]
    assert huffman.code_lengths([1] * 16, max_length=4).tolist() == [4] * 16
    assert huffman.code_lengths(np.ones(2**15, dtype=np.int64), 15).tolist() == [15] * 2**15


@pytest.mark.parametrize(
    "counts, max_length",
    [([1] * 17, 4), ([1, 1, 1], 1), ([1, 2], 0), ([1, 2], 16), ([-1, 2], 12), ([1.5, 2], 12)],
)
def test_code_lengths_rejects(counts, max_length):
    with pytest.raises(ValueError):
        huffman.code_lengths(counts, max_length)


def test_default_limit_is_twelve():
    assert huffman.DEFAULT_MAX_CODE_LENGTH == 12
    assert huffman.FORMAT_MAX_CODE_LENGTH == 15
    counts = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987])
    assert huffman.code_lengths(counts).max() == 12


# ---------------------------------------------------------------- canonical codes


def test_canonical_codes_known_example():
    assert huffman.canonical_codes([2, 1, 3, 3]).tolist() == [0b10, 0b0, 0b110, 0b111]
    assert huffman.canonical_codes([0, 2, 0, 1, 2]).tolist() == [0, 0b10, 0, 0b0, 0b11]
    # RFC 1951 section 3.2.2 example: lengths (3, 3, 3, 3, 3, 2, 4, 4).
    assert huffman.canonical_codes([3, 3, 3, 3, 3, 2, 4, 4]).tolist() == [
        0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111
    ]


@pytest.mark.parametrize("kind", ["geometric", "skewed", "uniform", "zeros"])
def test_canonical_codes_kraft_prefix_free_and_match_reference(kind):
    rng = np.random.default_rng(4)
    for size in [2, 5, 30, 257]:
        counts = random_counts(rng, kind, size)
        if np.count_nonzero(counts) < 1:
            continue
        lengths = huffman.code_lengths(counts, 12)
        used = lengths[lengths > 0].astype(np.int64)
        assert np.sum(2.0 ** -used) <= 1.0
        codes = huffman.canonical_codes(lengths)
        words = {s: format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(lengths)}
        assert words == reference_canonical_codes(lengths.tolist())
        ordered = sorted(words.values())
        # In sorted order a prefix would sit right before a word it starts.
        assert all(not b.startswith(a) for a, b in zip(ordered, ordered[1:]))


# ---------------------------------------------------------------- encode / decode


def test_encode_golden_bytes():
    # Codes A=10 B=0 C=110 D=111: "10 0 110 111 0" + 6 zero pad bits.
    data = huffman.encode([0, 1, 2, 3, 1], [2, 1, 3, 3])
    assert data == bytes([0b10011011, 0b10000000])
    assert huffman.decode(data, [2, 1, 3, 3], 5).tolist() == [0, 1, 2, 3, 1]


@pytest.mark.parametrize(
    "alphabet, max_length", [(2, 12), (5, 12), (32, 12), (257, 12), (32, 6), (257, 9)]
)
def test_round_trip_random_streams(alphabet, max_length):
    rng = np.random.default_rng(alphabet * 100 + max_length)
    p = rng.dirichlet(np.full(alphabet, 0.3))
    symbols = rng.choice(alphabet, size=20_000, p=p)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet), max_length)
    data = huffman.encode(symbols, lengths)
    total_bits = int(lengths[symbols].astype(np.int64).sum())
    assert len(data) == (total_bits + 7) // 8
    assert huffman.encode(symbols[:2000], lengths) == reference_encode(symbols[:2000], lengths)
    decoded = huffman.decode(data, lengths, symbols.size)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, symbols)
    # Every accepted input type decodes the same.
    for view in (bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8)):
        np.testing.assert_array_equal(huffman.decode(view, lengths, symbols.size), symbols)


def test_round_trip_code_of_full_length_15():
    counts = np.array([2**i for i in range(16)])
    lengths = huffman.code_lengths(counts, 15)
    assert lengths.max() == 15
    symbols = np.repeat(np.arange(16), 3)
    data = huffman.encode(symbols, lengths)
    np.testing.assert_array_equal(huffman.decode(data, lengths, symbols.size), symbols)


def test_round_trip_single_symbol_stream():
    lengths = huffman.code_lengths([0, 0, 9, 0])
    symbols = np.full(9, 2)
    data = huffman.encode(symbols, lengths)
    assert data == b"\x00\x00"
    np.testing.assert_array_equal(huffman.decode(data, lengths, 9), symbols)


def test_round_trip_empty_stream():
    lengths = huffman.code_lengths([3, 4])
    assert huffman.encode(np.zeros(0, dtype=np.uint16), lengths) == b""
    assert huffman.decode(b"", lengths, 0).size == 0
    # No used symbol at all is fine as long as nothing is decoded.
    assert huffman.encode([], [0, 0]) == b""
    assert huffman.decode(b"", [0, 0], 0).size == 0


@pytest.mark.parametrize("symbols", [[0, 1, 2], [0, -1], [0, 4], [0, 65536]])
def test_encode_rejects_symbol_without_code(symbols):
    with pytest.raises(ValueError):
        huffman.encode(np.array(symbols), [1, 2, 0, 2])


def test_encode_rejects_symbol_without_code_uint16():
    with pytest.raises(ValueError, match="index 2"):
        huffman.encode(np.array([0, 1, 2], dtype=np.uint16), [1, 1, 0])


# ---------------------------------------------------------------- decode: damaged input


@pytest.fixture
def stream():
    lengths = np.array([2, 1, 3, 3], dtype=np.uint8)
    symbols = np.array([0, 1, 2, 3, 1, 0, 2, 3, 3, 1, 1])  # 26 bits: 4 bytes, 6 pad bits
    return huffman.encode(symbols, lengths), lengths, symbols.size


def test_decode_truncated(stream):
    data, lengths, count = stream
    with pytest.raises(FormatError, match="truncated"):
        huffman.decode(data[:-1], lengths, count)


def test_decode_trailing_byte(stream):
    data, lengths, count = stream
    with pytest.raises(FormatError, match="trailing"):
        huffman.decode(data + b"\x00", lengths, count)


def test_decode_nonzero_padding(stream):
    data, lengths, count = stream
    damaged = data[:-1] + bytes([data[-1] | 0x01])
    with pytest.raises(FormatError, match="padding"):
        huffman.decode(damaged, lengths, count)


def test_decode_hole_in_incomplete_code():
    # Codes 0 and 10 (Kraft 3/4): the pattern 11 is no code word.
    lengths = [1, 2]
    assert huffman.decode(bytes([0b01000000]), lengths, 2).tolist() == [0, 1]
    with pytest.raises(FormatError, match="invalid code word at symbol 1"):
        huffman.decode(bytes([0b01100000]), lengths, 2)


@pytest.mark.parametrize(
    "lengths",
    [[1, 1, 1], [16, 1], [-1, 1], [1, 2, 2, 2], np.array([1.0, 1.0]), np.array([[1, 1]])],
)
def test_decode_rejects_invalid_lengths(lengths):
    with pytest.raises(FormatError):
        huffman.decode(b"\x00", lengths, 1)


def test_decode_count_too_large_for_data(stream):
    data, lengths, count = stream
    with pytest.raises(FormatError, match="cannot fit"):
        huffman.decode(data, lengths, 8 * len(data) + 1)
    with pytest.raises(FormatError, match="cannot fit"):
        huffman.decode(b"", lengths, 1)


def test_decode_count_zero_needs_empty_data_and_count_non_negative(stream):
    data, lengths, _ = stream
    with pytest.raises(FormatError):
        huffman.decode(data, lengths, 0)
    with pytest.raises(FormatError):
        huffman.decode(data, lengths, -1)


def test_decode_without_any_code_word():
    with pytest.raises(FormatError, match="no symbols"):
        huffman.decode(b"\x00", [0, 0, 0], 1)


def test_validate_lengths_accepts_incomplete_and_complete():
    assert huffman.validate_lengths([1, 2]).tolist() == [1, 2]
    assert huffman.validate_lengths([1, 2, 2, 0]).dtype == np.uint8
    assert huffman.validate_lengths([15] * 2**15).size == 2**15


# ---------------------------------------------------------------- length tables


def test_pack_lengths_golden_and_round_trip():
    assert huffman.pack_lengths([1, 2, 3]) == bytes([0x12, 0x30])
    assert huffman.pack_lengths([15, 0]) == bytes([0xF0])
    assert huffman.pack_lengths([]) == b""
    rng = np.random.default_rng(5)
    for n in [1, 2, 7, 256, 257]:
        lengths = rng.integers(0, 16, n)
        packed = huffman.pack_lengths(lengths)
        assert len(packed) == (n + 1) // 2
        np.testing.assert_array_equal(huffman.unpack_lengths(packed, n), lengths)


def test_pack_lengths_rejects_out_of_range():
    with pytest.raises(ValueError):
        huffman.pack_lengths([16])


def test_unpack_lengths_rejects_wrong_size_and_pad_nibble():
    with pytest.raises(FormatError, match="expected 2"):
        huffman.unpack_lengths(b"\x12", 3)
    with pytest.raises(FormatError, match="expected 1"):
        huffman.unpack_lengths(b"\x12\x30", 2)
    with pytest.raises(FormatError, match="pad nibble"):
        huffman.unpack_lengths(b"\x12\x31", 3)
