"""Tests of deepzip.codec.sparse (relative indices with filler zeros) against a loop reference."""

import numpy as np
import pytest

from deepzip.codec import sparse
from deepzip.errors import FormatError

FILLER = 32  # a 5-bit codebook: real codes 0..31, 32 marks a filler


def reference_to_relative(positions, codes, index_bits, filler_symbol, numel=None):
    """The paper's rule, one entry at a time: step by the widest gap until the entry fits.

    With `numel`, docs/FORMAT.md's end rule: position numel counts as one more (unstored)
    kept weight, so fillers also step towards it until numel - last <= 2**index_bits.
    """
    widest = 1 << index_bits
    gaps, out_codes, previous = [], [], -1
    for position, code in zip(positions, codes):
        while position - previous > widest:
            previous += widest
            gaps.append(widest - 1)
            out_codes.append(filler_symbol)
        gaps.append(position - previous - 1)
        out_codes.append(code)
        previous = position
    if numel is not None:
        while numel - previous > widest:
            previous += widest
            gaps.append(widest - 1)
            out_codes.append(filler_symbol)
    return gaps, out_codes


def reference_positions(gaps):
    """All entry positions (fillers included) from gap symbols: p_i = p_{i-1} + g_i + 1."""
    out, previous = [], -1
    for g in gaps:
        previous += int(g) + 1
        out.append(previous)
    return out


def random_pattern(rng, numel, density):
    positions = np.flatnonzero(rng.random(numel) < density)
    return positions, rng.integers(0, FILLER, positions.size)


def test_paper_example():
    gaps, codes = sparse.to_relative([4, 15], [7, 9], index_bits=3, filler_symbol=FILLER)
    assert gaps.tolist() == [4, 7, 2]
    assert codes.tolist() == [7, FILLER, 9]
    assert gaps.dtype == codes.dtype == np.uint16
    positions, decoded = sparse.from_relative(gaps, codes, 3, FILLER, numel=16)
    assert positions.tolist() == [4, 15] and decoded.tolist() == [7, 9]
    assert positions.dtype == np.int64 and decoded.dtype == np.uint16


@pytest.mark.parametrize("index_bits", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.95])
def test_matches_loop_reference_and_round_trips(index_bits, density):
    rng = np.random.default_rng(index_bits * 1000 + int(density * 100))
    numel = 5000
    positions, codes = random_pattern(rng, numel, density)
    gaps, out_codes = sparse.to_relative(positions, codes, index_bits, FILLER)
    ref_gaps, ref_codes = reference_to_relative(
        positions.tolist(), codes.tolist(), index_bits, FILLER
    )
    assert gaps.tolist() == ref_gaps and out_codes.tolist() == ref_codes

    # Fillers appear exactly where a gap overflows: (gap - 1) // 2**b of them per gap.
    loop_fillers = 0
    previous = -1
    for position in positions.tolist():
        loop_fillers += (position - previous - 1) // (1 << index_bits)
        previous = position
    assert int(np.count_nonzero(out_codes == FILLER)) == loop_fillers
    assert sparse.count_fillers(positions, index_bits) == loop_fillers

    decoded_positions, decoded_codes = sparse.from_relative(
        gaps, out_codes, index_bits, FILLER, numel
    )
    np.testing.assert_array_equal(decoded_positions, positions)
    np.testing.assert_array_equal(decoded_codes, codes)

    # With numel, the end of the tensor is bridged too: the loop reference with the end
    # sentinel, (numel - last - 1) >> b trailing fillers, and a stream that ends_covered accepts.
    gaps, out_codes = sparse.to_relative(positions, codes, index_bits, FILLER, numel=numel)
    ref_gaps, ref_codes = reference_to_relative(
        positions.tolist(), codes.tolist(), index_bits, FILLER, numel=numel
    )
    assert gaps.tolist() == ref_gaps and out_codes.tolist() == ref_codes
    last = int(positions[-1]) if positions.size else -1
    assert int(np.count_nonzero(out_codes == FILLER)) == loop_fillers + ((numel - last - 1) >> index_bits)
    entries = reference_positions(gaps)
    assert entries[-1] < numel and numel - entries[-1] <= 1 << index_bits
    decoded_positions, decoded_codes = sparse.from_relative(
        gaps, out_codes, index_bits, FILLER, numel, ends_covered=True
    )
    np.testing.assert_array_equal(decoded_positions, positions)
    np.testing.assert_array_equal(decoded_codes, codes)


@pytest.mark.parametrize("index_bits", [1, 3, 8])
def test_gap_of_exactly_max_makes_no_filler_and_one_more_makes_one(index_bits):
    widest = 1 << index_bits
    # First gap counts from -1, so position widest-1 is a gap of exactly 2**b.
    gaps, codes = sparse.to_relative([widest - 1], [0], index_bits, FILLER)
    assert gaps.tolist() == [widest - 1] and codes.tolist() == [0]
    gaps, codes = sparse.to_relative([widest], [0], index_bits, FILLER)
    assert gaps.tolist() == [widest - 1, 0] and codes.tolist() == [FILLER, 0]
    # The same between two entries.
    gaps, codes = sparse.to_relative([0, widest], [1, 2], index_bits, FILLER)
    assert gaps.tolist() == [0, widest - 1] and codes.tolist() == [1, 2]
    gaps, codes = sparse.to_relative([0, widest + 1], [1, 2], index_bits, FILLER)
    assert gaps.tolist() == [0, widest - 1, 0] and codes.tolist() == [1, FILLER, 2]


def test_leading_zeros_need_fillers_from_the_start():
    # 3-bit gaps, first entry at 20: fillers at 7 and 15, then the entry 5 after 15.
    gaps, codes = sparse.to_relative([20], [3], 3, FILLER)
    assert gaps.tolist() == [7, 7, 4]
    assert codes.tolist() == [FILLER, FILLER, 3]
    positions, decoded = sparse.from_relative(gaps, codes, 3, FILLER, numel=21)
    assert positions.tolist() == [20] and decoded.tolist() == [3]


def test_trailing_zeros_need_nothing_without_numel():
    # Without numel the old behaviour stays: nothing after the last kept weight.
    gaps, codes = sparse.to_relative([1, 2], [5, 6], 3, FILLER)
    assert gaps.tolist() == [1, 0]
    positions, decoded = sparse.from_relative(gaps, codes, 3, FILLER, numel=1000)
    assert positions.tolist() == [1, 2] and decoded.tolist() == [5, 6]


def test_empty_tensor():
    nothing = np.zeros(0, dtype=np.int64)
    gaps, codes = sparse.to_relative(nothing, nothing, 4, FILLER)
    assert gaps.size == codes.size == 0
    assert sparse.count_fillers([], 4) == 0
    positions, decoded = sparse.from_relative(gaps, codes, 4, FILLER, numel=100)
    assert positions.size == decoded.size == 0
    assert sparse.from_relative([], [], 4, FILLER, numel=0)[0].size == 0
    # A tensor of no elements needs no entries under the end rule either.
    gaps, codes = sparse.to_relative(nothing, nothing, 4, FILLER, numel=0)
    assert gaps.size == codes.size == 0
    assert sparse.from_relative(gaps, codes, 4, FILLER, numel=0, ends_covered=True)[0].size == 0


def test_dense_tensor_has_all_gap_symbols_zero():
    codes = np.arange(100) % FILLER
    gaps, out_codes = sparse.to_relative(np.arange(100), codes, 1, FILLER)
    assert gaps.tolist() == [0] * 100
    np.testing.assert_array_equal(out_codes, codes)


def test_two_dimensional_tensor_with_empty_and_dense_rows():
    rng = np.random.default_rng(7)
    weights = rng.integers(1, FILLER, (4, 20)) * (rng.random((4, 20)) < 0.3)
    weights[1] = 0  # an empty row: its 20 zeros need fillers at 3 bits
    weights[2] = rng.integers(1, FILLER, 20)  # a fully dense row
    positions = np.flatnonzero(weights)  # row-major flattening
    gaps, codes = sparse.to_relative(positions, weights.ravel()[positions], 3, FILLER)
    # Inside the dense row (flat positions 40..59) every entry after the first is gap 1.
    entry_positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    inside_dense_row = (entry_positions > 40) & (entry_positions < 60)
    assert np.count_nonzero(inside_dense_row) == 19
    assert np.all(gaps[inside_dense_row] == 0)
    # The empty row makes a gap of at least 21, which needs at least 2 fillers at 3 bits.
    assert np.count_nonzero(codes == FILLER) == sparse.count_fillers(positions, 3) >= 2

    decoded_positions, decoded_codes = sparse.from_relative(gaps, codes, 3, FILLER, weights.size)
    rebuilt = np.zeros(weights.size, dtype=np.int64)
    rebuilt[decoded_positions] = decoded_codes
    np.testing.assert_array_equal(rebuilt.reshape(weights.shape), weights)


def test_sixteen_bit_indices():
    positions = np.array([0, 65535, 65536, 300_000])
    gaps, codes = sparse.to_relative(positions, [1, 2, 3, 4], 16, FILLER)
    ref_gaps, ref_codes = reference_to_relative(positions.tolist(), [1, 2, 3, 4], 16, FILLER)
    assert gaps.tolist() == ref_gaps and codes.tolist() == ref_codes
    decoded_positions, _ = sparse.from_relative(gaps, codes, 16, FILLER, 300_001)
    np.testing.assert_array_equal(decoded_positions, positions)


@pytest.mark.parametrize(
    "positions, codes, index_bits, filler",
    [
        ([3, 3], [0, 0], 4, FILLER),  # not strictly increasing
        ([5, 2], [0, 0], 4, FILLER),
        ([-1, 2], [0, 0], 4, FILLER),  # negative
        ([1, 2], [0], 4, FILLER),  # length mismatch
        ([1, 2], [0, FILLER], 4, FILLER),  # a real code may not use the filler symbol
        ([1, 2], [0, -1], 4, FILLER),
        ([1], [0], 0, FILLER),  # index_bits out of range
        ([1], [0], 17, FILLER),
        ([1.0], [0], 4, FILLER),
    ],
)
def test_to_relative_rejects(positions, codes, index_bits, filler):
    with pytest.raises(ValueError):
        sparse.to_relative(np.array(positions), np.array(codes), index_bits, filler)


def test_from_relative_rejects_stream_past_numel():
    gaps, codes = sparse.to_relative([4, 15], [7, 9], 3, FILLER)
    with pytest.raises(FormatError, match="reaches position 15"):
        sparse.from_relative(gaps, codes, 3, FILLER, numel=15)
    # A trailing filler past the end is damage too, even though it holds no weight.
    with pytest.raises(FormatError):
        sparse.from_relative([4, 7], [7, FILLER], 3, FILLER, numel=10)


def test_from_relative_rejects_code_symbol_above_filler():
    with pytest.raises(FormatError, match="code symbol"):
        sparse.from_relative([0, 1], [0, FILLER + 1], 3, FILLER, numel=10)


def test_from_relative_rejects_gap_symbol_out_of_range():
    with pytest.raises(FormatError, match="gap symbol"):
        sparse.from_relative([0, 8], [0, 1], 3, FILLER, numel=100)
    with pytest.raises(FormatError, match="gap symbol"):
        sparse.from_relative(np.array([0, -1]), [0, 1], 3, FILLER, numel=100)


def test_from_relative_rejects_length_mismatch():
    with pytest.raises(FormatError, match="2 gaps but 1 codes"):
        sparse.from_relative([0, 1], [0], 3, FILLER, numel=100)


# ---------------------------------------------------------------- the end rule (docs/FORMAT.md)


def test_spec_example_with_end_of_tensor():
    # FORMAT.md: b = 3, kept at 4 and 15, n = 30 -> entries 4, 12 (filler), 15, 23 (filler);
    # 30 - 23 = 7 <= 8, so nothing more. Gap symbols: 4 (from -1), 7, 2, 7 (15 -> 23).
    gaps, codes = sparse.to_relative([4, 15], [7, 9], 3, FILLER, numel=30)
    assert gaps.tolist() == [4, 7, 2, 7]
    assert codes.tolist() == [7, FILLER, 9, FILLER]
    assert gaps.dtype == codes.dtype == np.uint16
    assert reference_positions(gaps) == [4, 12, 15, 23]
    positions, decoded = sparse.from_relative(gaps, codes, 3, FILLER, numel=30, ends_covered=True)
    assert positions.tolist() == [4, 15] and decoded.tolist() == [7, 9]
    # The same stream, read as a tensor one element longer, stops 8 short: still covered;
    # two longer, 9 short: not covered.
    sparse.from_relative(gaps, codes, 3, FILLER, numel=31, ends_covered=True)
    with pytest.raises(FormatError):
        sparse.from_relative(gaps, codes, 3, FILLER, numel=32, ends_covered=True)


@pytest.mark.parametrize("index_bits", [1, 3, 8])
@pytest.mark.parametrize("last", [0, 5, 100])
def test_end_exactly_max_needs_no_filler_and_one_more_needs_one(index_bits, last):
    widest = 1 << index_bits
    # n - p_last == 2**b: no trailing filler.
    gaps, codes = sparse.to_relative([last], [1], index_bits, FILLER, numel=last + widest)
    assert codes.tolist() == sparse.to_relative([last], [1], index_bits, FILLER)[1].tolist()
    assert codes.tolist()[-1] == 1 and int(np.count_nonzero(codes == FILLER)) == last >> index_bits
    # n - p_last == 2**b + 1: exactly one, at p_last + 2**b, with gap symbol 2**b - 1.
    gaps, codes = sparse.to_relative([last], [1], index_bits, FILLER, numel=last + widest + 1)
    assert codes.tolist()[-2:] == [1, FILLER] and gaps.tolist()[-1] == widest - 1
    assert reference_positions(gaps)[-1] == last + widest
    assert int(np.count_nonzero(codes == FILLER)) == (last >> index_bits) + 1
    # Last kept weight at the last element: nothing to bridge.
    gaps, codes = sparse.to_relative([last], [1], index_bits, FILLER, numel=last + 1)
    assert codes.tolist()[-1] == 1


@pytest.mark.parametrize("index_bits", [1, 2, 3, 8])
@pytest.mark.parametrize("numel", [0, 1, 2, 3, 4, 7, 8, 9, 16, 17, 255, 256, 257, 1000])
def test_all_zero_tensor_gets_n_shift_b_fillers(index_bits, numel):
    # No kept weights: the gap from p_{-1} = -1 to the end sentinel n is n + 1, which
    # needs ((n + 1) - 1) >> b = n >> b fillers, at 2**b - 1, 2 * 2**b - 1, ...
    widest = 1 << index_bits
    expected = numel >> index_bits
    nothing = np.zeros(0, dtype=np.int64)
    gaps, codes = sparse.to_relative(nothing, nothing, index_bits, FILLER, numel=numel)
    assert codes.tolist() == [FILLER] * expected
    assert gaps.tolist() == [widest - 1] * expected
    assert reference_positions(gaps) == [widest * (i + 1) - 1 for i in range(expected)]
    last = widest * expected - 1  # -1 when there are none
    assert numel - last <= widest and last < numel
    assert (gaps.tolist(), codes.tolist()) == reference_to_relative([], [], index_bits, FILLER, numel)
    positions, decoded = sparse.from_relative(gaps, codes, index_bits, FILLER, numel, ends_covered=True)
    assert positions.size == decoded.size == 0


def test_to_relative_with_numel_rejects_position_outside_tensor():
    with pytest.raises(ValueError):
        sparse.to_relative([4, 15], [7, 9], 3, FILLER, numel=15)
    with pytest.raises(ValueError):
        sparse.to_relative([0], [0], 3, FILLER, numel=0)


@pytest.mark.parametrize("index_bits", [1, 3, 8])
def test_from_relative_ends_covered_rejects_stream_that_stops_short(index_bits):
    widest = 1 << index_bits
    gaps, codes = sparse.to_relative([2], [5], index_bits, FILLER)  # written without numel
    assert reference_positions(gaps)[-1] == 2
    # 2 + 2**b is the farthest end it reaches; one past that is out of reach.
    sparse.from_relative(gaps, codes, index_bits, FILLER, numel=2 + widest, ends_covered=True)
    for numel in (2 + widest + 1, 2 + 5 * widest, 1 << 30):
        with pytest.raises(FormatError):
            sparse.from_relative(gaps, codes, index_bits, FILLER, numel=numel, ends_covered=True)
        # Without ends_covered the old, lenient reading still works.
        positions, decoded = sparse.from_relative(gaps, codes, index_bits, FILLER, numel=numel)
        assert positions.tolist() == [2] and decoded.tolist() == [5]
    # A stream whose last entry is a filler stops short the same way.
    gaps, codes = sparse.to_relative([2], [5], index_bits, FILLER, numel=2 + 3 * widest)
    assert codes.tolist()[-1] == FILLER
    sparse.from_relative(gaps, codes, index_bits, FILLER, numel=2 + 3 * widest, ends_covered=True)
    with pytest.raises(FormatError):
        sparse.from_relative(gaps, codes, index_bits, FILLER, numel=2 + 3 * widest + 1, ends_covered=True)


@pytest.mark.parametrize("index_bits", [1, 3, 8])
def test_from_relative_ends_covered_rejects_empty_stream_for_large_tensor(index_bits):
    widest = 1 << index_bits
    nothing = np.zeros(0, dtype=np.int64)
    # p_last = -1: n = 2**b - 1 is the largest tensor an empty stream covers.
    sparse.from_relative(nothing, nothing, index_bits, FILLER, numel=widest - 1, ends_covered=True)
    for numel in (widest + 1, 10 * widest, 1 << 40):
        with pytest.raises(FormatError):
            sparse.from_relative(nothing, nothing, index_bits, FILLER, numel=numel, ends_covered=True)
        assert sparse.from_relative(nothing, nothing, index_bits, FILLER, numel=numel)[0].size == 0


@pytest.mark.parametrize("index_bits", [1, 3, 8])
def test_from_relative_ends_covered_rejects_empty_stream_at_exactly_2_pow_b(index_bits):
    widest = 1 << index_bits
    assert len(sparse.to_relative([], [], index_bits, FILLER, numel=widest)[0]) == 1
    with pytest.raises(FormatError):
        sparse.from_relative([], [], index_bits, FILLER, numel=widest, ends_covered=True)
