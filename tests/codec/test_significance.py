"""Context-coded significance flags (docs/FORMAT.md, "Significance flags (version 4)").

The production coder is checked against a plain-Python model and rANS coder written from
the spec's text (the contexts, the counts' frequencies, the stream), against the model's
information content, and on damaged streams.
"""

import math

import numpy as np
import pytest

from deepzip.codec import significance
from deepzip.codec.layer import SIGNIFICANCE, decode_layer, encode_layer_smallest
from deepzip.codec.streams import ANS, HUFFMAN
from deepzip.errors import FormatError

# ---------------------------------------------------------------- the spec, in plain Python


def ref_octave(count: int, seen: int) -> int:
    """The largest j in 0..8 with (2 count + 1) 2^j <= 2 seen + 2."""
    return max(j for j in range(9) if (2 * count + 1) * 2**j <= 2 * seen + 2)


def ref_grid(shape) -> tuple[int, int]:
    n = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    return rows, (n // rows if rows else 0)


def ref_model(flags: list[int], shape) -> list[tuple[int, int]]:
    """(context, f1) of every flag, in coding order."""
    rows, cols = ref_grid(shape)
    zeros, ones, column = [0] * 162, [0] * 162, [0] * cols
    out = []
    for r in range(rows):
        left = row = 0
        for c in range(cols):
            bit = flags[r * cols + c]
            x = (9 * ref_octave(column[c], r) + ref_octave(row, c)) * 2 + left
            out.append((x, max(1, (2 * ones[x] + 1) * 2**16 // (2 * (zeros[x] + ones[x]) + 2))))
            zeros[x] += 1 - bit
            ones[x] += bit
            column[c] += bit
            row += bit
            left = bit
    return out


def ref_encode(flags: list[int], shape) -> bytes:
    """rANS at P = 16 with each flag's own two-symbol table, last flag first, from x = 0."""
    x, words = 0, []
    for bit, (_, f1) in zip(reversed(flags), reversed(ref_model(flags, shape))):
        f, start = (f1, 2**16 - f1) if bit else (2**16 - f1, 0)
        if x >= f << 48:
            words.append(x & 0xFFFFFFFF)
            x >>= 32
        x = (x // f) * 2**16 + x % f + start
    return x.to_bytes((x.bit_length() + 7) // 8, "little") + b"".join(w.to_bytes(4, "little") for w in reversed(words))


def ref_information_bits(flags: list[int], shape) -> float:
    return sum(-math.log2((f1 if bit else 2**16 - f1) / 2**16) for bit, (_, f1) in zip(flags, ref_model(flags, shape)))


def flags_of(positions, n) -> list[int]:
    flags = [0] * n
    for p in positions:
        flags[int(p)] = 1
    return flags


def structured_mask(rng, shape, live_fraction=0.3, density=0.3) -> np.ndarray:
    """Kept positions of a mask whose columns are live or dead, like a pruned image layer."""
    rows, cols = ref_grid(shape)
    live = rng.random(cols) < live_fraction
    return np.flatnonzero(((rng.random((rows, cols)) < density) & live).ravel())


SHAPES = [(0,), (1,), (7,), (1, 1), (3, 4), (2, 0, 3), (9, 13), (6, 2, 3, 3), (40, 30)]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.03, 0.3, 0.9, 1.0])
def test_bytes_are_the_reference_coders_and_decode_back(shape, density):
    rng = np.random.default_rng(len(shape) * 100 + int(density * 10))
    n = math.prod(shape)
    positions = np.flatnonzero(rng.random(n) < density)
    data = significance.encode(positions, shape)
    assert data == ref_encode(flags_of(positions, n), shape)
    back = significance.decode(data, shape, positions.size)
    assert back.dtype == np.int64 and back.tolist() == positions.tolist()


def test_the_spec_example():
    # docs/FORMAT.md: shape [2, 4], kept 1, 2, 6.
    flags = [0, 1, 1, 0, 0, 0, 1, 0]
    assert ref_model(flags, (2, 4)) == [(20, 32768), (22, 32768), (21, 32768), (19, 32768), (38, 32768), (4, 32768), (4, 16384), (39, 32768)]
    assert significance.encode(np.array([1, 2, 6]), (2, 4)) == bytes([0x00, 0x40, 0x23])


@pytest.mark.parametrize("seed", range(4))
def test_size_is_the_models_information_content(seed):
    # The rANS bound of the spec ("Stream size") with P = 16: within a few bytes of I / 8.
    rng = np.random.default_rng(seed)
    shape = (30, 50)
    positions = structured_mask(rng, shape)
    information = ref_information_bits(flags_of(positions, 1500), shape) / 8
    size = len(significance.encode(positions, shape))
    assert information - 1 <= size <= information + 8


def test_context_model_beats_gaps_on_a_mask_with_dead_columns_and_not_on_a_full_one():
    # On what pruning leaves in an image layer the flags cost less than the best gaps of
    # any width and coder; a tensor with every weight kept has no use for them.
    rng = np.random.default_rng(7)
    shape = (200, 196)
    positions = structured_mask(rng, shape)
    codes = rng.integers(0, 8, positions.size)
    gaps = encode_layer_smallest(positions, codes, 8, 200 * 196)
    chosen = encode_layer_smallest(positions, codes, 8, 200 * 196, shape=shape)
    assert chosen.gap_coder == SIGNIFICANCE and chosen.index_bits == 0 and chosen.entry_count == positions.size
    assert chosen.nbytes < 0.8 * gaps.nbytes
    back_positions, back_codes = decode_layer(chosen, 8, 200 * 196, shape)
    assert back_positions.tolist() == positions.tolist() and back_codes.tolist() == codes.tolist()


def test_significance_needs_rans_and_an_open_width():
    rng = np.random.default_rng(8)
    shape = (200, 196)
    positions = structured_mask(rng, shape)
    codes = rng.integers(0, 8, positions.size)
    huffman_only = encode_layer_smallest(positions, codes, 8, 200 * 196, coders=(HUFFMAN,), shape=shape)
    fixed_width = encode_layer_smallest(positions, codes, 8, 200 * 196, index_bits=6, shape=shape)
    assert huffman_only.gap_coder == HUFFMAN and fixed_width.index_bits == 6
    assert encode_layer_smallest(positions, codes, 8, 200 * 196, coders=(ANS,), shape=shape).gap_coder == SIGNIFICANCE
    chosen = encode_layer_smallest(positions, codes, 8, 200 * 196, shape=shape)
    with pytest.raises(ValueError, match="shape"):
        decode_layer(chosen, 8, 200 * 196)


def test_all_zero_flags_cost_nothing():
    assert significance.encode(np.zeros(0, np.int64), (500, 700)) == b""
    assert significance.decode(b"", (500, 700), 0).size == 0


def test_invalid_positions_are_value_errors():
    for bad in ([3, 2], [1, 1], [-1], [12]):
        with pytest.raises(ValueError):
            significance.encode(np.array(bad), (3, 4))
    with pytest.raises(ValueError):
        significance.encode(np.array([0.5]), (3, 4))


def test_a_wrong_kept_count_is_a_format_error():
    data = significance.encode(np.array([1, 5, 6]), (3, 4))
    for kept in (0, 2, 4):
        with pytest.raises(FormatError, match="flags"):
            significance.decode(data, (3, 4), kept)


@pytest.mark.parametrize("seed", range(40))
def test_damaged_streams_are_format_errors_or_the_encoders_stream_of_what_they_decode_to(seed):
    # Like rANS's static streams: a damaged stream either fails a check or decodes to flags
    # whose stream is exactly those bytes (the crc32 of the section is what detects damage).
    rng = np.random.default_rng(seed)
    shape = (20, 30)
    positions = structured_mask(rng, shape)
    data = bytearray(significance.encode(positions, shape))
    kind = seed % 3
    if kind == 0 and data:
        data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        data = data[: int(rng.integers(len(data) + 1))]
    else:
        data += bytes(rng.integers(0, 256, int(rng.integers(1, 6)), dtype=np.uint8))
    for kept in {positions.size, positions.size + 1, max(positions.size - 1, 0)}:
        try:
            back = significance.decode(bytes(data), shape, kept)
        except FormatError:
            continue
        assert significance.encode(back, shape) == bytes(data)
