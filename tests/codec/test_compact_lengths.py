"""Tests of deepzip.codec.compact_lengths (format version 6's compact Huffman tables).

The reference decoder below is written from docs/FORMAT.md ("Compact Huffman tables
(version 6)") alone, on plain '0'/'1' strings, sharing no code with deepzip.codec: it
must agree with `compact_lengths.unpack` and give back what `compact_lengths.pack` was
given. The writer's choices that the spec fixes (greedy runs, the least N, an optimal
length code of at most 7 bits) are checked against independent references, exact bytes
against hand-derived bit strings, and every rejection of the spec against crafted bits.
"""

import functools
from dataclasses import dataclass

import numpy as np
import pytest

from deepzip.codec import compact_lengths, huffman
from deepzip.errors import FormatError

# ---------------------------------------------------------------- the spec, in plain Python

ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
RUN = {16: (2, 3), 17: (3, 3), 18: (7, 11)}  # run symbol -> (extra bits, run of extra 0)
EXAMPLE = bytes.fromhex("c408000000002b0c40")  # FORMAT.md's example: [2, 2, 2, 2] + [0] * 60
EXAMPLE_LENGTHS = [2] * 4 + [0] * 60


class SpecError(Exception):
    """The reference decoder refuses a table."""


def bits_of(data: bytes) -> str:
    return "".join(f"{byte:08b}" for byte in data)


def to_bytes(bits: str) -> bytes:
    """A bit string, MSB first, zero-padded to a whole byte."""
    bits = bits.replace(" ", "")
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def field(value: int, width: int) -> str:
    assert 0 <= value < 1 << width
    return format(value, f"0{width}b") if width else ""


def canonical(lengths) -> dict[int, str]:
    """{symbol: code word} by FORMAT.md's rule: used symbols sorted by (length, symbol), the
    first code all zeros, each next one (previous + 1) << (length difference)."""
    used = sorted((int(n), s) for s, n in enumerate(lengths) if n)
    codes, code, previous = {}, 0, None
    for n, s in used:
        code = 0 if previous is None else (code + 1) << (n - previous)
        codes[s] = format(code, f"0{n}b")
        previous = n
    return codes


@dataclass
class Decoded:
    lengths: list[int]
    length_code: list[int]  # the 19 length-code lengths, by symbol
    given: int  # N
    symbols: list[tuple[int, int]]  # (length-code symbol, extra value)
    end: int  # bits used before the padding


def spec_decode(data: bytes, alphabet: int) -> Decoded:
    bits, pos = bits_of(data), 0

    def take(width: int) -> str:
        nonlocal pos
        if pos + width > len(bits):
            raise SpecError("ends early")
        pos += width
        return bits[pos - width : pos]

    given = int(take(4), 2) + 4
    length_code = [0] * 19
    for s in ORDER[:given]:
        length_code[s] = int(take(3), 2)
    if not any(length_code):
        raise SpecError("no used length-code symbol")
    if sum(2 ** (7 - n) for n in length_code if n) > 2**7:
        raise SpecError("length code breaks Kraft")
    words = {w: s for s, w in canonical(length_code).items()}
    longest = max(length_code)
    lengths, symbols = [], []
    while len(lengths) < alphabet:
        word = ""
        while word not in words:
            if len(word) == longest:
                raise SpecError("no code word")
            word += take(1)
        s = words[word]
        if s < 16:
            lengths.append(s)
            symbols.append((s, 0))
            continue
        width, base = RUN[s]
        extra = int(take(width), 2) if width else 0
        symbols.append((s, extra))
        if s == 16 and not lengths:
            raise SpecError("16 before any length")
        if len(lengths) + base + extra > alphabet:
            raise SpecError("run past the alphabet's end")
        lengths += [lengths[-1] if s == 16 else 0] * (base + extra)
    rest = bits[pos:]
    if len(rest) >= 8:
        raise SpecError("bytes after the last symbol")
    if "1" in rest:
        raise SpecError("nonzero padding")
    return Decoded(lengths, length_code, given, symbols, pos)


def spec_table(length_code: dict[int, int], symbols, given: int | None = None) -> str:
    """The bits of a table with these length-code lengths {symbol: length} and (symbol,
    extra) pairs: N - 4, the N 3-bit fields, the code words and their extra bits."""
    full = [length_code.get(s, 0) for s in range(19)]
    if given is None:
        given = max(4, 1 + max(i for i, s in enumerate(ORDER) if full[s]))
    codes = canonical(full)
    bits = field(given - 4, 4) + "".join(field(full[s], 3) for s in ORDER[:given])
    for s, extra in symbols:
        bits += codes[s] + field(extra, RUN[s][0] if s in RUN else 0)
    return bits


def greedy_symbols(lengths) -> list[tuple[int, int]]:
    """FORMAT.md's writer rule: zeros as 18s of up to 138, then a 17 for a rest of 3..10;
    another length once, then 16s of up to 6; shorter rests one by one."""
    out, i = [], 0
    lengths = [int(v) for v in lengths]
    while i < len(lengths):
        v, j = lengths[i], i
        while j < len(lengths) and lengths[j] == v:
            j += 1
        left = j - i
        if v == 0:
            while left >= 11:
                out.append((18, min(left, 138) - 11))
                left -= min(left, 138)
            if left >= 3:
                out.append((17, left - 3))
                left = 0
        else:
            out.append((v, 0))
            left -= 1
            while left >= 3:
                out.append((16, min(left, 6) - 3))
                left -= min(left, 6)
        out += [(v, 0)] * left
        i = j
    return out


def optimal_cost(counts, max_length: int = 7) -> int:
    """Least sum(count x length) of a prefix code of lengths <= max_length, by dynamic
    programming over the Kraft budget (heavier symbols never get longer codes)."""
    weights = sorted((c for c in counts if c), reverse=True)
    if len(weights) == 1:
        return weights[0]  # a lone symbol still needs a bit
    budget = 1 << max_length

    @functools.lru_cache(maxsize=None)
    def best(i, low, used):
        if i == len(weights):
            return 0
        options = [
            weights[i] * n + best(i + 1, n, used + (budget >> n))
            for n in range(low, max_length + 1)
            if used + (budget >> n) <= budget
        ]
        return min(options, default=float("inf"))

    return best(0, 1, 0)


def check_writer(lengths) -> Decoded:
    """`pack(lengths)` read by the reference and by `unpack`, with the choices the spec fixes."""
    lengths = np.asarray(lengths)
    data = compact_lengths.pack(lengths)
    got = spec_decode(data, lengths.size)
    assert got.lengths == lengths.tolist()
    assert compact_lengths.unpack(data, lengths.size).tolist() == lengths.tolist()
    assert compact_lengths.unpack(data, lengths.size).dtype == np.uint8
    assert got.symbols == greedy_symbols(lengths)
    counts = [0] * 19
    for s, _ in got.symbols:
        counts[s] += 1
    assert [bool(n) for n in got.length_code] == [bool(c) for c in counts]  # exactly the used symbols
    assert max(got.length_code) <= 7
    assert sum(c * n for c, n in zip(counts, got.length_code)) == optimal_cost(counts)
    assert got.given == max(4, 1 + max(i for i, s in enumerate(ORDER) if counts[s]))
    assert len(data) == (got.end + 7) // 8
    return got


# ---------------------------------------------------------------- round trips


def random_lengths(kind: str, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(1, 5001))
    if kind == "uniform":
        return rng.integers(0, 16, n)
    if kind == "sparse":
        out = np.zeros(n, np.int64)
        used = rng.random(n) < rng.uniform(0.001, 0.2)
        out[used] = rng.integers(1, 16, int(used.sum()))
        return out
    if kind == "runs":  # long runs of equal values, zeros among them
        values = rng.integers(0, 16, n)
        runs = rng.geometric(rng.uniform(0.005, 0.3), n)
        return np.repeat(values, runs)[:n]
    if kind == "zeros":
        return np.zeros(n, np.int64)
    assert kind == "huffman"  # real code lengths of geometric-like counts
    counts = (rng.uniform(100, 10_000) * rng.uniform(0.5, 0.999) ** np.arange(n) * rng.uniform(0.5, 1.5, n)).astype(np.int64)
    counts[rng.random(n) < rng.uniform(0, 0.5)] = 0
    if not counts.any():
        counts[0] = 1
    return huffman.code_lengths(counts, 12)


@pytest.mark.parametrize("kind", ["uniform", "sparse", "runs", "zeros", "huffman"])
def test_pack_and_unpack_agree_with_the_reference(kind):
    rng = np.random.default_rng(sum(map(ord, kind)))
    for _ in range(20):
        check_writer(random_lengths(kind, rng))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 11, 12, 138, 139, 140, 141, 148, 149, 150, 276, 277, 5000])
@pytest.mark.parametrize("value", [0, 1, 7, 15])
def test_runs_of_every_boundary_length(n, value):
    check_writer([value] * n)
    check_writer([value] * n + [3])
    check_writer([3] + [value] * n)


def test_the_length_code_is_limited_to_7_bits():
    # Ten literal symbols with Fibonacci counts: unlimited Huffman would go 9 deep.
    fib = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]
    values = [v for v, c in zip(range(1, 11), fib) for _ in range(c)]
    rng = np.random.default_rng(0)
    rng.shuffle(values)
    lengths = [values[0]]
    for v in values[1:]:
        lengths += [v] if v != lengths[-1] else [11, v]  # never a run: each one a literal symbol
    got = check_writer(lengths)
    assert max(got.length_code) == 7


def test_real_huffman_lengths_of_a_gap_alphabet():
    for b in range(1, 13):
        counts = (10_000 * 0.7 ** np.arange(1 << b)).astype(np.int64)
        check_writer(huffman.code_lengths(counts, 12))


# ---------------------------------------------------------------- hand-derived bytes


def test_the_format_example():
    # 2; 16 with extra 0; 18 with extra 49; code 18 -> 0, 2 -> 10, 16 -> 11; N = 16.
    bits = "1100" + "010 000 001" + "000" * 12 + "010" + "10" + "11 00" + "0 0110001"
    assert to_bytes(bits) == EXAMPLE
    assert compact_lengths.pack(EXAMPLE_LENGTHS) == EXAMPLE
    assert compact_lengths.unpack(EXAMPLE, 64).tolist() == EXAMPLE_LENGTHS
    got = spec_decode(EXAMPLE, 64)
    assert got.lengths == EXAMPLE_LENGTHS and got.symbols == [(2, 0), (16, 0), (18, 49)] and got.given == 16


HAND = [
    # 64 zeros: one 18 (extra 53), the lone symbol of length 1 (code 0); N = 4 (16, 17, 18, 0).
    ([0] * 64, "0000" "000 000 001 000" "0 0110101"),
    # 3 zeros: one 17 (extra 0).
    ([0] * 3, "0000" "000 001 000 000" "0 000"),
    # 140 zeros: 18 (extra 127), then two zeros one by one: 0 -> 0, 18 -> 1.
    ([0] * 140, "0000" "000 000 001 001" "1 1111111" "0" "0"),
    # 148 zeros: 18 (extra 127), then a 17 for the rest of 10: 17 -> 0, 18 -> 1.
    ([0] * 148, "0000" "000 001 001 000" "1 1111111" "0 111"),
    # 150 zeros: 18 (extra 127) and 18 (extra 1).
    ([0] * 150, "0000" "000 000 001 000" "0 1111111" "0 0000001"),
    # [1, 1]: symbol 1 twice, lone, at the 18th place of the order: N = 18.
    ([1, 1], "1110" + "000" * 17 + "001" + "0" "0"),
    # A lone length 0: symbol 0 once (4th place, N = 4).
    ([0], "0000" "000 000 000 001" "0"),
    # Eight 3s: 3, 16 (extra 3: six more), 3; 3 -> 0, 16 -> 1; 3 is 14th: N = 14.
    ([3] * 8, "1010" "001" + "000" * 12 + "001" + "0" "1 11" "0"),
    # Twelve 5s: 5, 16 (extra 3), 16 (extra 2); 5 -> 0, 16 -> 1; 5 is 10th: N = 10.
    ([5] * 12, "0110" "001" + "000" * 8 + "001" + "0" "1 11" "1 10"),
    # Nine 5s: 5, 16 (extra 3), then 5 and 5 one by one: 5 has 3 uses, 16 one: both 1 bit.
    ([5] * 9, "0110" "001" + "000" * 8 + "001" + "0" "1 11" "0" "0"),
    # 1, five zeros, 1: 1 (twice) and 17 (extra 2): 1 -> 0, 17 -> 1; N = 18.
    ([1, 0, 0, 0, 0, 0, 1], "1110" "000 001" + "000" * 15 + "001" + "0" "1 010" "0"),
    # 2 3 4 3 4 3 3 0 0 0: 3 x4, 4 x2, 2 x1, 17 x1 -> optimal lengths 1, 2, 3, 3 (unique):
    # 3 -> 0, 4 -> 10, 2 -> 110, 17 -> 111; 2 is 16th: N = 16.
    (
        [2, 3, 4, 3, 4, 3, 3, 0, 0, 0],
        "1100" "000 011 000 000" "000 000 000 000" "000 000 000 010" "000 001 000 011"
        "110" "0" "10" "0" "10" "0" "0" "111 000",
    ),
]


@pytest.mark.parametrize("lengths, bits", HAND, ids=[f"case{i}" for i in range(len(HAND))])
def test_hand_derived_tables(lengths, bits):
    assert compact_lengths.pack(lengths) == to_bytes(bits)
    assert compact_lengths.pack(np.array(lengths, np.uint8)) == to_bytes(bits)
    assert compact_lengths.unpack(to_bytes(bits), len(lengths)).tolist() == lengths
    assert spec_decode(to_bytes(bits), len(lengths)).lengths == lengths


def test_hand_derived_bytes():
    assert compact_lengths.pack([0] * 64) == bytes.fromhex("000835")
    assert compact_lengths.pack([0] * 3) == bytes.fromhex("004000")
    assert compact_lengths.pack([1, 1]) == bytes.fromhex("e000000000000040")


def test_run_symbols_are_the_greedy_ones():
    assert compact_lengths.run_symbols([2, 2, 2, 2] + [0] * 60) == [(2, 0), (16, 0), (18, 49)]
    assert compact_lengths.run_symbols([0] * 148) == [(18, 127), (17, 7)]
    assert compact_lengths.run_symbols([7] * 14) == [(7, 0), (16, 3), (16, 3), (7, 0)]
    assert compact_lengths.run_symbols([0, 0, 4, 4, 4, 4]) == [(0, 0), (0, 0), (4, 0), (16, 0)]


def test_a_reader_accepts_choices_the_writer_would_not_make():
    # The example's lengths as 2, 2, 2, 2 one by one and 60 zeros as 17 x 6, with a
    # complete 2-symbol code, all 19 fields given.
    bits = spec_table({2: 1, 17: 1}, [(2, 0)] * 4 + [(17, 7)] * 6, given=19)
    assert compact_lengths.unpack(to_bytes(bits), 64).tolist() == EXAMPLE_LENGTHS
    assert spec_decode(to_bytes(bits), 64).lengths == EXAMPLE_LENGTHS
    # An incomplete length code (Kraft sum < 1) and a length code of 7 bits.
    bits = spec_table({2: 3, 16: 7, 18: 2}, [(2, 0), (16, 0), (18, 49)])
    assert compact_lengths.unpack(to_bytes(bits), 64).tolist() == EXAMPLE_LENGTHS
    # A 16 repeating a zero length.
    bits = spec_table({0: 1, 16: 1}, [(0, 0), (16, 3), (0, 0)])
    assert compact_lengths.unpack(to_bytes(bits), 8).tolist() == [0] * 8


# ---------------------------------------------------------------- rejections

LONE_ONE = {1: 1, 17: 1}  # 1 -> 0, 17 -> 1

REJECTED = [
    ("no length-code symbol", to_bytes("0000" + "000" * 4), 4, "no symbol"),
    ("no length-code symbol, 19 given", to_bytes("1111" + "000" * 19), 4, "no symbol"),
    ("length code breaks kraft", to_bytes("0000" "001 001 001 000" + "0" * 8), 4, "Kraft"),  # 16, 17, 18 of 1 bit
    ("length code just breaks kraft", to_bytes("0000" "001 010 010 011" + "0" * 8), 4, "Kraft"),  # 1/2 + 1/4 + 1/4 + 1/8
    ("no code word", to_bytes(spec_table({0: 1, 1: 2}, [(0, 0), (1, 0)]) + "1111111"), 4, "no code word"),
    ("16 first", to_bytes(spec_table({1: 1, 16: 1}, [(16, 0)])), 3, "before any length"),
    ("17 past the end", to_bytes(spec_table(LONE_ONE, [(1, 0), (1, 0), (17, 0)])), 4, "passes the end"),
    ("18 past the end", to_bytes(spec_table({18: 1}, [(18, 0)])), 10, "passes the end"),
    ("16 past the end", to_bytes(spec_table({1: 1, 16: 1}, [(1, 0), (16, 0)])), 3, "passes the end"),
    ("truncated", EXAMPLE[:-1], 64, "ends early"),
    ("truncated in the fields", EXAMPLE[:1], 64, "ends early"),
    ("empty", b"", 64, "ends early"),
    ("trailing byte", EXAMPLE + b"\x00", 64, "after its last symbol"),
    ("padding, last bit", EXAMPLE[:-1] + b"\x41", 64, "padding"),
    ("padding, first bit", EXAMPLE[:-1] + b"\x60", 64, "padding"),
]


@pytest.mark.parametrize("data, alphabet, words", [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_unpack_rejects(data, alphabet, words):
    with pytest.raises(SpecError):
        spec_decode(data, alphabet)
    with pytest.raises(FormatError, match=words):
        compact_lengths.unpack(data, alphabet)


@pytest.mark.parametrize(
    "length_code, symbols, alphabet, lengths",
    [
        (LONE_ONE, [(1, 0), (1, 0), (17, 0)], 5, [1, 1, 0, 0, 0]),
        ({18: 1}, [(18, 0)], 11, [0] * 11),
        ({1: 1, 16: 1}, [(1, 0), (16, 0)], 4, [1] * 4),
        ({0: 1, 1: 2}, [(0, 0), (1, 0)], 2, [0, 1]),
    ],
    ids=["17", "18", "16", "incomplete"],
)
def test_the_same_runs_end_exactly_at_a_larger_alphabet(length_code, symbols, alphabet, lengths):
    # The controls of the rejections above: one symbol more and the table is valid.
    data = to_bytes(spec_table(length_code, symbols))
    assert compact_lengths.unpack(data, alphabet).tolist() == lengths
    assert spec_decode(data, alphabet).lengths == lengths


def test_pack_rejects_bad_lengths():
    for bad in ([16], [0, -1], [3, 99], []):
        with pytest.raises(ValueError):
            compact_lengths.pack(np.array(bad, dtype=np.int64))
    with pytest.raises(ValueError):
        compact_lengths.pack(np.zeros((2, 2), np.int64))
