"""Tests of deepzip.runtime.packing: the sliced layout holds every kept weight exactly once.

Reference: an independent decoder written from PackedLinear's docstring (plain Python
loops over slices and lanes), which must give back the positions and codes packed.
"""

import numpy as np
import pytest
from random_weights import random_layer

from deepzip.errors import ConfigError
from deepzip.runtime import packing


def unpack(packed):
    """(positions, codes) of the kept weights, sorted, read back from the layout."""
    out, n_in = packed.shape
    per_group = packed.slices_per_group
    mask = packed.block_cols
    found = []
    for q in range(len(packed.slice_starts) - 1):
        group, rest = divmod(q, packed.n_blocks * per_group)
        block = rest // per_group
        start, stop = int(packed.slice_starts[q]), int(packed.slice_starts[q + 1])
        for j in range(start, stop):
            entry = int(packed.entries[j])
            col = entry & mask
            if col == mask:  # the zero slot: padding
                assert entry >> packed.col_bits == 0
                continue
            row = group * packed.group_rows + int(packed.lanes[8 * q + (j - start) % 8])
            column = block * packed.block_stride + col
            assert row < out and column < n_in
            found.append((row * n_in + column, entry >> packed.col_bits))
    found.sort()
    positions = np.array([p for p, _ in found], dtype=np.int64)
    codes = np.array([c for _, c in found], dtype=np.int64)
    return positions, codes


@pytest.mark.parametrize(
    "shape, density, k",
    [((5, 7), 0.5, 32), ((300, 5000), 0.01, 32), ((130, 600), 0.2, 256), ((20, 9000), 0.02, 16),
     ((3, 5000), 0.05, 300), ((40, 50), 0.0, 4), ((1, 1), 1.0, 1)],
)
def test_every_kept_weight_is_stored_once(shape, density, k):
    codebook, positions, codes = random_layer(shape, density, k=k)
    packed = packing.pack_linear(shape, codebook, positions, codes)
    got_positions, got_codes = unpack(packed)
    np.testing.assert_array_equal(got_positions, positions)
    np.testing.assert_array_equal(got_codes, codes)
    assert packed.nnz == positions.size
    # Lanes of a (group, block) are a permutation of its rows, longest first.
    lanes = packed.lanes.reshape(-1, packed.group_rows)
    assert all(sorted(row) == list(range(packed.group_rows)) for row in lanes.tolist())


def test_unsorted_positions_give_the_same_layout():
    shape = (12, 13)
    codebook, positions, codes = random_layer(shape, 0.4)
    order = np.random.default_rng(1).permutation(positions.size)
    a = packing.pack_linear(shape, codebook, positions, codes)
    b = packing.pack_linear(shape, codebook, positions[order], codes[order])
    np.testing.assert_array_equal(a.entries, b.entries)
    np.testing.assert_array_equal(a.lanes, b.lanes)


def test_padding_is_small_when_rows_are_alike():
    # Rows sorted by length before slicing: at the paper's densities the eight rows of a
    # slice differ by about one entry, so padding stays below 1% (0.3-0.6% measured on
    # the paper's fc shapes, packing.GROUP_ROWS).
    codebook, positions, codes = random_layer((4096, 2000), 0.09)
    packed = packing.pack_linear((4096, 2000), codebook, positions, codes)
    assert packed.group_rows == 512
    assert packed.entries.size < 1.01 * positions.size


def test_groups_leave_work_for_several_threads():
    for out, group_rows in [(4096, 512), (1000, 64), (384, 32), (50, 8), (3, 8)]:
        assert packing.pack_linear((out, 4), np.ones(1, np.float32), [], []).group_rows == group_rows


@pytest.mark.parametrize("k, bits, dtype", [(1, 12, np.uint16), (16, 12, np.uint16), (17, 11, np.uint16),
                                            (32, 11, np.uint16), (256, 8, np.uint16), (257, 12, np.uint32)])
def test_entry_width_follows_the_codebook(k, bits, dtype):
    assert packing.col_bits_for(k) == (bits, dtype)


def test_bytes_count_every_array():
    shape = (10, 100)
    codebook, positions, codes = random_layer(shape, 0.25, k=16)
    packed = packing.pack_linear(shape, codebook, positions, codes)
    assert packed.group_rows == 8  # 10 rows: groups of 8, the fewest rows a group has
    slices = 2  # two groups of one slice, one block
    expected = 2 * packed.entries.size + 8 * (slices + 1) + 2 * 8 * slices + 4 * 16
    assert packed.nbytes == expected
    assert packed.density == pytest.approx(positions.size / 1000)


def test_packed_arrays_are_read_only():
    packed = packing.pack_linear((3, 3), np.ones(2, np.float32), np.array([0, 4]), np.array([0, 1]))
    with pytest.raises(ValueError):
        packed.entries[0] = 2


@pytest.mark.parametrize(
    "args, message",
    [
        (((2, 3, 4), [1.0], [0], [0]), "2-D"),
        (((2, 3), [1.0], [6], [0]), "positions must lie"),
        (((2, 3), [1.0], [-1], [0]), "positions must lie"),
        (((2, 3), [1.0], [1, 1], [0, 0]), "unique"),
        (((2, 3), [1.0, 2.0], [1], [2]), "codes must lie"),
        (((2, 3), [1.0], [1, 2], [0]), "equal length"),
        (((2, 3), [1.0], [1.5], [0]), "integers"),
        (((2, 3), [], [], []), "codebook"),
        (((2, 3), [np.inf], [1], [0]), "finite"),
    ],
)
def test_pack_linear_rejects_bad_input(args, message):
    shape, codebook, positions, codes = args
    with pytest.raises(ConfigError, match=message):
        packing.pack_linear(shape, np.asarray(codebook, np.float32), np.asarray(positions), np.asarray(codes))


def test_hand_made_packed_linear_is_checked():
    # The compiled kernels do no bounds checks, so PackedLinear must refuse what would
    # make them read out of bounds.
    good = packing.pack_linear((2, 4), np.ones(2, np.float32), np.array([3, 4]), np.array([0, 1]))
    fields = {"shape": good.shape, "col_bits": good.col_bits, "group_rows": good.group_rows, "entries": good.entries.copy(),
                  "slice_starts": good.slice_starts.copy(), "lanes": good.lanes.copy(), "codebook": good.codebook.copy()}
    packing.PackedLinear(**fields)
    starts = fields["slice_starts"]
    bad_code = fields["entries"].copy()
    bad_code[0] = 2 << good.col_bits
    bad_lane = fields["lanes"].copy()
    bad_lane[0] = good.group_rows
    for field, value, message in [
        ("entries", bad_code, "code 2"),
        ("lanes", bad_lane, "lane row"),
        ("slice_starts", np.r_[starts[:-1], starts[-1] + 8].astype(np.uint64), "ends at"),
        ("slice_starts", np.r_[starts[:-1] + 1, starts[-1]].astype(np.uint64), "multiples of 8"),
        ("slice_starts", starts[:-1].copy(), "expected"),
        ("entries", fields["entries"].astype(np.int64), "uint16 or uint32"),
        ("codebook", np.ones(2, np.float64), "float32"),
        ("col_bits", 13, "col_bits"),
        ("group_rows", 100, "group_rows"),
    ]:
        with pytest.raises(ConfigError, match=message):
            packing.PackedLinear(**{**fields, field: value})
