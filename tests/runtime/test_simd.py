"""Tests of deepzip.runtime.simd: the vector tile against a plain numpy computation."""

import numpy as np
import pytest
from numba import njit

from deepzip.runtime import simd

def runner(lanes, vectors):
    """A compiled function that calls the tile (intrinsics run only inside compiled code)."""
    tile = simd.lane_tile(lanes, vectors)

    @njit
    def run(*args):
        tile(*args)

    return run


RUNNERS = {shape: runner(*shape) for shape in [(8, 1), (4, 2), (2, 4), (1, 8)]}
_run_8x1 = RUNNERS[(8, 1)]


@pytest.mark.parametrize("lanes, vectors", list(RUNNERS))
@pytest.mark.parametrize("entry_dtype", [np.uint16, np.uint32])
def test_tile_adds_codebook_times_x_rows_into_its_lanes_rows(lanes, vectors, entry_dtype):
    rng = np.random.default_rng(lanes)
    width, col_bits, columns, steps = 8 * vectors, 5, 20, 6
    codebook = rng.standard_normal(7).astype(np.float32)
    codes = rng.integers(0, 7, size=(3 + steps, 8))
    cols = rng.integers(0, columns, size=(3 + steps, 8))
    entries = ((codes << col_bits) | cols).astype(entry_dtype).ravel()
    x_offset = 3 * width
    xt = rng.standard_normal(x_offset + columns * width).astype(np.float32)
    rows = rng.permutation(16).astype(np.uint16)
    row_base, start, lane0 = 8, 3 * 8, 8 - lanes  # the last `lanes` lanes of the slice
    acc = rng.standard_normal(16 * width).astype(np.float32)
    expected = acc.astype(np.float64).reshape(16, width)
    for i in range(lane0, 8):
        total = sum(codebook[codes[3 + t, i]] * xt[x_offset + width * cols[3 + t, i] :][:width].astype(np.float64)
                    for t in range(steps))
        expected[rows[row_base + i]] += total
    RUNNERS[(lanes, vectors)](entries, np.uint64(start), np.uint64(steps), np.uint64(lane0), np.uint64(col_bits),
                              codebook, xt, np.uint64(x_offset), rows, np.uint64(row_base), acc)
    np.testing.assert_allclose(acc.reshape(16, width), expected, rtol=1e-5, atol=1e-5)


def test_zero_steps_add_nothing():
    acc = np.ones(16 * 8, np.float32)
    _run_8x1(np.zeros(8, np.uint16), np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(5), np.ones(1, np.float32),
             np.ones(8, np.float32), np.uint64(0), np.arange(8, dtype=np.uint16), np.uint64(0), acc)
    assert (acc == 1).all()
