"""Tests of deepzip.codec.layer against an independent decoder written from docs/FORMAT.md.

The reference below reads the packed length tables, assigns canonical codes (DEFLATE's
rule), reads the MSB-first bit streams symbol by symbol and rebuilds the positions from
the gaps, all in plain Python, sharing no code with deepzip.codec.
"""

import heapq
import math

import numpy as np
import pytest
import torch

from deepzip import container
from deepzip.codec import compact_lengths, layer
from deepzip.codec.layer import INDEX_BITS_CHOICES, EncodedLayer, decode_layer
from deepzip.codec.streams import HUFFMAN, max_code_length
from deepzip.codec.tables import lengths_table_size
from deepzip.compressed import CodebookTensor, CompressedModel
from deepzip.errors import FormatError

# The reference decodes Huffman streams with packed tables: the layer is coded with Huffman
# alone here, its tables packed (rANS streams have their own reference decoder in
# test_ans.py, compact tables in test_compact_lengths.py; `test_compact_tables_*` below
# cover the layer with them).
def encode_layer(*args, **kwargs):
    return layer.encode_layer(*args, coders=(HUFFMAN,), compact=False, **kwargs)


def encode_layer_smallest(*args, **kwargs):
    return layer.encode_layer_smallest(*args, coders=(HUFFMAN,), compact=False, **kwargs)


KS = (1, 2, 32, 256)
WIDTHS = (1, 3, 5, 8, 12)


# ---------------------------------------------------------------- independent references


def ref_unpack(table: bytes, n: int) -> list[int]:
    """n 4-bit lengths, high nibble first; an odd count leaves a zero low nibble."""
    assert len(table) == (n + 1) // 2
    nibbles = [x for byte in table for x in (byte >> 4, byte & 15)]
    if n % 2:
        assert nibbles[-1] == 0
    return nibbles[:n]


def ref_canonical(lengths: list[int]) -> dict[str, int]:
    """{code word as a '0'/'1' string: symbol} by sorting used symbols by (length, symbol)."""
    used = sorted((length, s) for s, length in enumerate(lengths) if length)
    codes, code, prev = {}, 0, None
    for length, symbol in used:
        if prev is not None:
            code = (code + 1) << (length - prev)
        else:
            code = 0
        codes[format(code, f"0{length}b")] = symbol
        prev = length
    assert sum(2.0**-l for l in lengths if l) <= 1.0
    return codes


def ref_decode_stream(stream: bytes, lengths: list[int], count: int) -> list[int]:
    """Decode `count` symbols; the stream must be exactly ceil(bits/8) bytes, zero padded."""
    words = ref_canonical(lengths)
    bits = "".join(format(b, "08b") for b in stream)
    out, pos = [], 0
    for _ in range(count):
        end = pos + 1
        while bits[pos:end] not in words:
            end += 1
            assert end <= len(bits), "stream ended inside a code"
        out.append(words[bits[pos:end]])
        pos = end
    assert len(stream) == (pos + 7) // 8, "stream is not exactly ceil(bits / 8) bytes"
    assert set(bits[pos:]) <= {"0"}, "nonzero padding"
    return out


def ref_decode_layer(enc: EncodedLayer, k: int, numel: int):
    """Spec decoder: (positions of real entries, their codes, all entry positions).

    Checks docs/FORMAT.md's rules on the positions: every entry lies before the end
    (p_last < numel), and the end is within reach (numel - p_last <= 2**b, p_last = -1 if E = 0).
    """
    code_table = ref_unpack(enc.code_table, k + 1)
    gap_table = ref_unpack(enc.gap_table, 1 << enc.index_bits)
    codes = ref_decode_stream(enc.code_stream, code_table, enc.entry_count)
    gaps = ref_decode_stream(enc.gap_stream, gap_table, enc.entry_count)
    positions, kept, kept_codes, prev = [], [], [], -1
    for g, c in zip(gaps, codes):
        prev = prev + g + 1
        positions.append(prev)
        assert c <= k
        if c != k:
            kept.append(prev)
            kept_codes.append(c)
    assert prev < numel, "an entry lies at or past the element count"
    assert numel - prev <= 1 << enc.index_bits, "the entries stop more than 2**b before the end"
    return kept, kept_codes, positions, code_table, gap_table, codes, gaps


def ref_entries(positions, index_bits, numel):
    """All entry positions, fillers included, by the paper's rule: step 2**b while too far.

    The end of the tensor, position numel, is one more (unstored) target to step towards.
    """
    widest, prev, out = 1 << index_bits, -1, []
    for p in [*positions, numel]:
        while p - prev > widest:
            prev += widest
            out.append(prev)
        out.append(int(p))
        prev = int(p)
    assert out.pop() == numel  # the end itself is not an entry
    return out


def huffman_cost(counts) -> int:
    """Cost sum(count * length) of an optimal (unlimited) Huffman code via heapq."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]  # a single used symbol gets a 1-bit code
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def random_layer(rng, numel, density, k):
    positions = np.flatnonzero(rng.random(numel) < density).astype(np.int64)
    codes = rng.integers(0, k, positions.size).astype(np.uint16)
    return positions, codes


def check_layer(positions, codes, k, index_bits, numel):
    enc = encode_layer(positions, codes, k, index_bits, numel)
    assert enc.index_bits == index_bits
    # Byte fields have exactly the sizes the spec gives.
    assert len(enc.code_table) == math.ceil((k + 1) / 2)
    assert len(enc.gap_table) == math.ceil((1 << index_bits) / 2)
    # Independent decoder reproduces positions and codes and the paper's filler layout.
    kept, kept_codes, all_pos, code_table, gap_table, code_syms, gap_syms = ref_decode_layer(enc, k, numel)
    assert kept == positions.tolist()
    assert kept_codes == codes.tolist()
    assert all_pos == ref_entries(positions.tolist(), index_bits, numel)
    assert enc.entry_count == len(all_pos)
    # The stream bounds the tensor's size: n <= (E + 1) * 2**b.
    assert numel <= (enc.entry_count + 1) << index_bits
    # The code lengths are those of an optimal Huffman code for the symbol counts.
    for lengths, syms in ((code_table, code_syms), (gap_table, gap_syms)):
        counts = np.bincount(np.asarray(syms, dtype=np.int64), minlength=len(lengths))
        assert all((c > 0) == (length > 0) for c, length in zip(counts, lengths))
        assert sum(int(c) * l for c, l in zip(counts, lengths)) == huffman_cost(counts)
    # deepzip's own decoder agrees.
    dec_pos, dec_codes = decode_layer(enc, k, numel)
    assert dec_pos.tolist() == positions.tolist()
    assert dec_codes.tolist() == codes.tolist()
    assert dec_pos.dtype == np.int64 and dec_codes.dtype == np.uint16
    return enc


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("index_bits", WIDTHS)
def test_round_trip_random_patterns(k, index_bits):
    rng = np.random.default_rng(1000 * k + index_bits)
    for numel, density in ((3000, 0.02), (1500, 0.3), (700, 0.9)):
        positions, codes = random_layer(rng, numel, density, k)
        enc = check_layer(positions, codes, k, index_bits, numel)
        last = ref_entries(positions.tolist(), index_bits, numel)[-1]
        # Any element count the entries still reach decodes the same; one beyond does not.
        dec_pos, dec_codes = decode_layer(enc, k, last + (1 << index_bits))
        assert np.array_equal(dec_pos, positions) and np.array_equal(dec_codes, codes)
        with pytest.raises(FormatError):
            decode_layer(enc, k, last + (1 << index_bits) + 1)
        with pytest.raises(FormatError):
            decode_layer(enc, k, last)  # the last entry would lie past the end


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("index_bits", WIDTHS)
def test_empty_layer(k, index_bits):
    widest = 1 << index_bits
    nothing = (np.zeros(0, np.int64), np.zeros(0, np.uint16))
    # Up to 2**b - 1 elements an empty stream reaches the end (n - (-1) <= 2**b).
    for numel in (0, 1, widest - 1):
        enc = encode_layer(*nothing, k, index_bits, numel)
        assert enc.entry_count == 0
        assert enc.code_stream == b"" and enc.gap_stream == b""
        # No used symbol: every length is 0.
        assert enc.code_table == bytes(math.ceil((k + 1) / 2))
        assert enc.gap_table == bytes(math.ceil((widest) / 2))
        pos, codes = decode_layer(enc, k, numel)
        assert pos.size == 0 and codes.size == 0
    # A larger all-zero tensor is fillers only: n >> b of them, every code symbol k.
    for numel in (widest, 3 * widest + 2, 5000):
        enc = check_layer(*nothing, k, index_bits, numel)
        assert enc.entry_count == numel >> index_bits
        _, _, _, code_table, gap_table, code_syms, gap_syms = ref_decode_layer(enc, k, numel)
        assert code_syms == [k] * enc.entry_count and gap_syms == [widest - 1] * enc.entry_count
        assert [i for i, l in enumerate(code_table) if l] == [k]
        assert [i for i, l in enumerate(gap_table) if l] == [widest - 1]
    # An empty stream cannot describe a tensor far beyond its reach.
    enc = encode_layer(*nothing, k, index_bits, 0)
    with pytest.raises(FormatError):
        decode_layer(enc, k, widest + 1)
    with pytest.raises(FormatError):
        decode_layer(enc, k, 1 << 40)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("index_bits", WIDTHS)
@pytest.mark.parametrize("position", [0, 1, 7, 4095, 10_000])
@pytest.mark.parametrize("after", [0, 1, 4095, 10_000])
def test_single_entry(k, index_bits, position, after):
    # `after` zeros follow the entry: numel = position + 1 + after.
    code = k - 1
    positions = np.array([position], np.int64)
    codes = np.array([code], np.uint16)
    enc = check_layer(positions, codes, k, index_bits, position + 1 + after)
    fillers = (position) >> index_bits  # gap from -1 is position + 1
    trailing = after >> index_bits  # gap to the end sentinel is after + 1
    assert enc.entry_count == fillers + 1 + trailing


def test_single_entry_hand_computed_bytes():
    # k=2, b=3, one entry at position 4 with code 1: gap symbol 4, no filler.
    # Code alphabet 3 symbols, only symbol 1 used -> length 1, code '0'.
    # Gap alphabet 8 symbols, only symbol 4 used -> length 1, code '0'.
    # n = 12: 12 - 4 = 8 <= 2**3, so no trailing filler either.
    enc = encode_layer(np.array([4]), np.array([1]), k=2, index_bits=3, numel=12)
    assert enc.entry_count == 1
    assert enc.code_table == bytes([0x01, 0x00])
    assert enc.gap_table == bytes([0x00, 0x00, 0x10, 0x00])
    assert enc.code_stream == b"\x00" and enc.gap_stream == b"\x00"


def test_paper_example_hand_computed_bytes():
    # Paper example, b=3: kept at 4 and 15 -> entries 4, 12 (filler), 15; gap symbols [4, 7, 2].
    # n = 16: 16 - 15 = 1, no trailing filler.
    # k=4, codes [2, 0]: code symbols [2, 4 (filler), 0]; each used once.
    # Code counts [1,0,1,0,1] -> Huffman lengths: two of 2 bits and one of 1 bit. Ties make
    # the assignment ambiguous, so only check what every optimal code shares.
    enc = encode_layer(np.array([4, 15]), np.array([2, 0]), k=4, index_bits=3, numel=16)
    kept, kept_codes, all_pos, code_table, gap_table, *_ = ref_decode_layer(enc, 4, 16)
    assert all_pos == [4, 12, 15]
    assert kept == [4, 15] and kept_codes == [2, 0]
    assert sorted(l for l in code_table if l) == [1, 2, 2]
    assert sorted(l for l in gap_table if l) == [1, 2, 2]
    assert [i for i, l in enumerate(gap_table) if l] == [2, 4, 7]
    # 5 bits per stream -> 1 byte each.
    assert len(enc.code_stream) == len(enc.gap_stream) == 1


def test_spec_example_with_end_hand_computed_bytes():
    # FORMAT.md, b=3, kept at 4 and 15, n=30 -> entries 4, 12 (filler), 15, 23 (filler);
    # 30 - 23 = 7 <= 8 ends it. Gap symbols [4, 7, 2, 7].
    # k=4, codes [2, 0] -> code symbols [2, 4, 0, 4] (4 = filler).
    # Code counts sym0 1, sym2 1, sym4 2 -> the unique optimum: sym4 1 bit, sym0 and sym2
    # 2 bits; 5 nibbles 2 0 2 0 1 (+ pad 0) -> 20 20 10. Canonical: sym4 '0', sym0 '10',
    # sym2 '11'; stream '11' '0' '10' '0' -> 110100(00) -> D0.
    # Gap counts sym2 1, sym4 1, sym7 2 -> sym7 1 bit, sym2 and sym4 2 bits; 8 nibbles
    # 0 0 2 0 2 0 0 1 -> 00 20 20 01. Canonical: sym7 '0', sym2 '10', sym4 '11';
    # stream '11' '0' '10' '0' -> D0.
    enc = encode_layer(np.array([4, 15]), np.array([2, 0]), k=4, index_bits=3, numel=30)
    assert enc == EncodedLayer(3, 4, bytes([0x20, 0x20, 0x10]), bytes([0x00, 0x20, 0x20, 0x01]), b"\xd0", b"\xd0")
    pos, codes = decode_layer(enc, 4, 30)
    assert pos.tolist() == [4, 15] and codes.tolist() == [2, 0]
    # The same bytes describe no tensor of more than 23 + 8 = 31 elements.
    decode_layer(enc, 4, 31)
    with pytest.raises(FormatError):
        decode_layer(enc, 4, 32)
    # Without the trailing filler (written for n = 16) they cannot describe n = 30.
    with pytest.raises(FormatError):
        decode_layer(encode_layer(np.array([4, 15]), np.array([2, 0]), 4, 3, 16), 4, 30)


def test_skewed_counts_hand_computed_bytes():
    # k=2, b=2, kept at 1, 10, 11, 12 with codes [0, 0, 1, 0]:
    # entries 1 (gap sym 1), 5 filler (3), 9 filler (3), 10 (0), 11 (0), 12 (0).
    # Gap symbols [1,3,3,0,0,0], counts [3,1,0,2] -> the unique optimum is
    # sym0=1, sym1=2, sym3=2 bits (cost 9); canonical: sym0 '0', sym1 '10', sym3 '11'.
    # Stream '10' '11' '11' '0' '0' '0' = 10111100 0(0000000) -> BC 00.
    # Code symbols [0,2,2,0,1,0] (2 = filler), counts [3,1,2] -> sym0=1, sym1=2, sym2=2;
    # canonical sym0 '0', sym1 '10', sym2 '11': '0' '11' '11' '0' '10' '0' -> 7A 00.
    # n = 16: 16 - 12 = 4 <= 2**2, no trailing filler.
    enc = encode_layer(np.array([1, 10, 11, 12]), np.array([0, 0, 1, 0]), k=2, index_bits=2, numel=16)
    assert enc.entry_count == 6
    assert enc.gap_table == bytes([0x12, 0x02])
    assert enc.gap_stream == bytes([0xBC, 0x00])
    assert enc.code_table == bytes([0x12, 0x20])
    assert enc.code_stream == bytes([0x7A, 0x00])


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("index_bits", WIDTHS)
def test_fully_dense(k, index_bits):
    rng = np.random.default_rng(k * 31 + index_bits)
    numel = 500
    positions = np.arange(numel, dtype=np.int64)
    codes = rng.integers(0, k, numel).astype(np.uint16)
    enc = check_layer(positions, codes, k, index_bits, numel)
    assert enc.entry_count == numel  # no fillers
    # Every gap symbol is 0, the only used gap symbol: 1 bit each -> ceil(numel/8) zero bytes.
    assert enc.gap_stream == bytes(math.ceil(numel / 8))
    assert ref_unpack(enc.gap_table, 1 << index_bits) == [1] + [0] * ((1 << index_bits) - 1)


def test_fillers_only_code_symbol_k():
    # Large gaps with b=1: almost everything is filler; codes must survive untouched.
    positions = np.array([0, 100, 101, 5000], np.int64)
    codes = np.array([0, 0, 0, 0], np.uint16)
    # 5010 elements. Gaps 1, 100, 1, 4899 and 10 (5000 -> the end) need (g - 1) >> 1 fillers.
    enc = check_layer(positions, codes, k=1, index_bits=1, numel=5010)
    assert enc.entry_count == len(ref_entries(positions.tolist(), 1, 5010))
    assert enc.entry_count == 4 + (0 >> 1) + (99 >> 1) + (0 >> 1) + (4898 >> 1) + (9 >> 1)


# ---------------------------------------------------------------- width choice and sizes


@pytest.mark.parametrize("seed", range(6))
def test_smallest_width_is_minimal(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.choice([1, 2, 16, 32, 256]))
    density = float(rng.choice([0.005, 0.05, 0.2, 0.6, 0.95]))
    positions, codes = random_layer(rng, 4000, density, k)
    best = encode_layer_smallest(positions, codes, k, 4000, index_bits=None)
    sizes = {}
    for b in INDEX_BITS_CHOICES:
        enc = encode_layer(positions, codes, k, b, 4000)
        # nbytes is the sum of the four byte fields (computed here from the fields).
        sizes[b] = len(enc.code_table) + len(enc.gap_table) + len(enc.code_stream) + len(enc.gap_stream)
    assert set(INDEX_BITS_CHOICES) == set(range(1, 13))
    assert best.nbytes == min(sizes.values())
    assert sizes[best.index_bits] == best.nbytes
    assert best == encode_layer(positions, codes, k, best.index_bits, 4000)
    pos, dec = decode_layer(best, k, 4000)
    assert np.array_equal(pos, positions) and np.array_equal(dec, codes)


def test_smallest_width_fixed_width_passthrough():
    rng = np.random.default_rng(7)
    positions, codes = random_layer(rng, 1000, 0.1, 32)
    for b in WIDTHS:
        assert encode_layer_smallest(positions, codes, 32, 1000, index_bits=b) == encode_layer(positions, codes, 32, b, 1000)
        # numel reaches the encoding: a longer tail means more trailing fillers.
        longer = encode_layer_smallest(positions, codes, 32, 1000 + (4 << b), index_bits=b)
        assert longer == encode_layer(positions, codes, 32, b, 1000 + (4 << b))
        assert longer.entry_count > encode_layer(positions, codes, 32, b, 1000).entry_count


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("index_bits", WIDTHS)
def test_nbytes_is_sum_of_fields(k, index_bits):
    rng = np.random.default_rng(k + 100 * index_bits)
    positions, codes = random_layer(rng, 2000, 0.1, k)
    enc = encode_layer(positions, codes, k, index_bits, 2000)
    fields = (enc.code_table, enc.gap_table, enc.code_stream, enc.gap_stream)
    assert enc.nbytes == sum(len(f) for f in fields)
    # Stream sizes equal ceil(total bits / 8) of the coded symbols.
    _, _, _, code_table, gap_table, code_syms, gap_syms = ref_decode_layer(enc, k, 2000)
    assert len(enc.code_stream) == math.ceil(sum(code_table[s] for s in code_syms) / 8)
    assert len(enc.gap_stream) == math.ceil(sum(gap_table[s] for s in gap_syms) / 8)


def test_nbytes_handmade():
    enc = EncodedLayer(3, 5, b"\x00" * 2, b"\x00" * 4, b"abc", b"defgh")
    assert enc.nbytes == 2 + 4 + 3 + 5


@pytest.mark.parametrize("n, size", [(1, 1), (2, 1), (3, 2), (4, 2), (257, 129), (4096, 2048), (4097, 2049)])
def test_lengths_table_size(n, size):
    assert lengths_table_size(n) == size


# ---------------------------------------------------------------- 12-bit codebooks: k + 1 = 4097 symbols


@pytest.mark.parametrize("used, length", [(0, 12), (1, 12), (4096, 12), (4097, 13), (8192, 13), (8193, 14), (1 << 15, 15)])
def test_max_code_length_is_the_least_that_fits(used, length):
    assert max_code_length(used) == length


def full_codebook_layer(rng, gap):
    """Every code of a 4096-entry codebook, each used twice in random order, `gap` apart."""
    k = 4096
    codes = rng.permutation(np.tile(np.arange(k, dtype=np.uint16), 2))
    positions = np.arange(codes.size, dtype=np.int64) * gap
    return positions, codes, k, int(positions[-1]) + 1


@pytest.mark.parametrize("index_bits", [1, 4, 12])
def test_full_12_bit_codebook_with_fillers(index_bits):
    # Gaps just wider than 2**b: fillers appear, so all k + 1 = 4097 code symbols are used,
    # more than codes of the default 12-bit limit can tell apart.
    positions, codes, k, numel = full_codebook_layer(np.random.default_rng(index_bits), (1 << index_bits) + 3)
    enc = check_layer(positions, codes, k, index_bits, numel)
    code_table = ref_unpack(enc.code_table, k + 1)
    assert sum(1 for length in code_table if length) == k + 1
    assert max(code_table) == 13
    assert max(ref_unpack(enc.gap_table, 1 << index_bits)) <= 12


def test_full_12_bit_codebook_through_the_container():
    positions, codes, k, _ = full_codebook_layer(np.random.default_rng(7), 2)
    # One gap wider than 2**12 needs a filler at every width the encoder may pick.
    positions = np.append(positions, positions[-1] + 5000)
    codes = np.append(codes, np.uint16(k - 1))
    numel = int(positions[-1]) + 1
    codebook = np.linspace(-1, 1, k, dtype=np.float32)
    record = CodebookTensor((numel,), torch.float32, codebook, positions, codes)
    back = container.from_bytes(container.to_bytes(CompressedModel({"w": record}))).tensors["w"]
    assert np.array_equal(back.positions, positions)
    assert np.array_equal(back.codes, codes)
    assert back.codebook.tobytes() == codebook.tobytes()
    assert back.shape == (numel,) and back.dtype == torch.float32
    enc = encode_layer_smallest(positions, codes, k, numel)
    assert enc.entry_count > positions.size  # fillers were needed


# ---------------------------------------------------------------- compact tables (version 6)


def test_compact_tables_hold_the_packed_lengths_and_cost_no_more():
    # A 3%-dense layer: most of its 2**b gap symbols are unused. With compact tables allowed
    # each table is the compact form of the very lengths the packed table holds, where that
    # is smaller, and the streams are unchanged.
    rng = np.random.default_rng(3)
    positions, codes = random_layer(rng, 20_000, 0.03, 64)
    for b in (5, 9, 12):
        packed = encode_layer(positions, codes, 64, b, 20_000)
        compact = layer.encode_layer(positions, codes, 64, b, 20_000, coders=(HUFFMAN,))
        assert (compact.code_stream, compact.gap_stream) == (packed.code_stream, packed.gap_stream)
        for table, full, alphabet in ((compact.code_table, packed.code_table, 65), (compact.gap_table, packed.gap_table, 1 << b)):
            assert len(table) <= len(full) == lengths_table_size(alphabet)
            lengths = ref_unpack(full, alphabet)
            if len(table) < len(full):
                assert compact_lengths.unpack(table, alphabet).tolist() == lengths
                assert table == compact_lengths.pack(lengths)
            else:
                assert table == full
        assert len(compact.gap_table) < len(packed.gap_table)  # at 5 bits too: the long gaps are rare
        dec_pos, dec_codes = decode_layer(compact, 64, 20_000)
        assert dec_pos.tolist() == positions.tolist() and dec_codes.tolist() == codes.tolist()


def test_compact_tables_let_a_wider_width_win():
    # The width search counts the tables as stored: compact gap tables make wide widths
    # (no fillers) cheap, so the smallest layer is never larger than with packed tables.
    rng = np.random.default_rng(4)
    positions, codes = random_layer(rng, 50_000, 0.02, 32)
    packed = encode_layer_smallest(positions, codes, 32, 50_000)
    compact = layer.encode_layer_smallest(positions, codes, 32, 50_000, coders=(HUFFMAN,))
    assert compact.nbytes < packed.nbytes and compact.index_bits >= packed.index_bits
    widths = [layer.encode_layer(positions, codes, 32, b, 50_000, coders=(HUFFMAN,)).nbytes for b in INDEX_BITS_CHOICES]
    assert compact.nbytes == min(widths)
