"""Tests of deepzip.runtime.by_code: the code-split batch-1 layout, against a float64 dense
reference (the same one as test_kernels) and against the positions it was built from."""

import numpy as np
import pytest
from random_weights import dense_reference, packed_layer, random_layer
from test_kernels import assert_matches

from deepzip.runtime import by_code, kernels
from deepzip.runtime.packing import kept_weights

pytestmark = pytest.mark.usefixtures("no_permute")  # matmul would run the register-permute layout instead

# Cases where the layout is built: at least MIN_PER_CELL weights per (row, block, code).
BUILT = {
    "one block": {"shape": (40, 900), "density": 0.3},
    "groups and blocks": {"shape": (300, 9000), "density": 0.2},
    "partial last group": {"shape": (77, 1000), "density": 0.25},
    "empty rows": {"shape": (64, 1000), "density": 0.3, "rows": [r for r in range(64) if r not in (0, 5, 6, 63)]},
    "k = 4": {"shape": (30, 500), "density": 0.2, "k": 4},
    "k = 256": {"shape": (50, 2000), "density": 0.8, "k": 256},
    "fully dense": {"shape": (33, 700), "density": 1.0},
    "one full block (the last column next to the zero slot)": {"shape": (16, 4096), "density": 0.3},
    "one column past a block": {"shape": (16, 4097), "density": 0.3},
}


def packed_case(name):
    return packed_layer(BUILT[name])


@pytest.mark.parametrize("case", BUILT)
@pytest.mark.parametrize("with_bias", (False, True))
def test_batch_one_matches_dense_reference(case, with_bias):
    shape, codebook, positions, codes, packed = packed_case(case)
    assert by_code.by_code_layout(packed) is not None
    x = np.random.default_rng(1).standard_normal((1, shape[1])).astype(np.float32)
    bias = np.random.default_rng(2).standard_normal(shape[0]).astype(np.float32) if with_bias else None
    y = kernels.matmul(packed, x, bias)
    assert_matches(y, x, dense_reference(shape, codebook, positions, codes), bias)


@pytest.mark.parametrize("case", BUILT)
def test_weights_read_back_from_the_slices_are_the_packed_ones(case):
    shape, _, positions, codes, packed = packed_case(case)
    rows, cols, read_codes = kept_weights(packed)
    order = np.argsort(rows * shape[1] + cols)
    np.testing.assert_array_equal((rows * shape[1] + cols)[order], positions)
    np.testing.assert_array_equal(read_codes[order], codes)
    layout = by_code.by_code_layout(packed)
    assert np.count_nonzero(layout.entries != by_code.ZERO_SLOT) == positions.size  # every weight once, padding apart


def test_a_4096_column_layer_is_one_block():
    shape, _, positions, _, packed = packed_case("one full block (the last column next to the zero slot)")
    assert (positions % shape[1] == shape[1] - 1).any()  # column 4095 is kept: it is no zero slot
    assert by_code.by_code_layout(packed).n_blocks == 1
    *_, wider = packed_case("one column past a block")
    assert by_code.by_code_layout(wider).n_blocks == 2


def test_layout_is_built_once_and_only_where_it_pays():
    *_, packed = packed_case("one block")
    assert by_code.by_code_layout(packed) is by_code.by_code_layout(packed)
    shape = (64, 2000)  # 4% kept of 2000 columns, 32 codes: 2.5 weights a cell
    sparse = kernels.pack_linear(shape, *random_layer(shape, 0.04))
    assert by_code.by_code_layout(sparse) is None
    empty = kernels.pack_linear((8, 9), *random_layer((8, 9), 0.0))
    assert by_code.by_code_layout(empty) is None


def test_bytes_per_call_counts_the_layout_batch_one_reads():
    *_, packed = packed_case("one block")
    layout = by_code.by_code_layout(packed)
    assert layout.nbytes == sum(a.nbytes for a in (layout.entries, layout.slice_starts, layout.cell_slices,
                                                    layout.lanes, layout.codebook))
    activations = 4 * (40 + 900)
    assert kernels.bytes_per_call(packed, batch=1) == {"weights": layout.nbytes, "activations": activations,
                                                      "total": layout.nbytes + activations}
    assert kernels.bytes_per_call(packed, batch=3)["weights"] == packed.nbytes


def test_nan_and_inf_reach_only_the_rows_that_keep_them():
    shape = (16, 400)
    codebook, positions, codes = random_layer(shape, 0.5, k=4, rows=list(range(8)))  # rows 8-15 empty
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    assert by_code.by_code_layout(packed) is not None
    dense = dense_reference(shape, codebook, positions, codes)
    x = np.ones((1, 400), np.float32)
    column = int(np.flatnonzero(dense[0])[0])
    x[0, column] = np.nan
    y = kernels.matmul(packed, x)[0]
    np.testing.assert_array_equal(np.isnan(y), dense[:, column] != 0)
    assert (y[8:] == 0).all()
