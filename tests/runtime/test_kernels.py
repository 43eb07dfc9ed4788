"""Tests of deepzip.runtime.kernels against an independent dense reference.

Reference: the dense weight built by hand (zeros, then codebook[codes] at the flat
positions) and multiplied in float64 by numpy. Tolerance: 1e-5 relative in norm, and per
element 1e-5 of the sum of |w x| of that output (the scale of its rounding error).
"""

import numpy as np
import pytest
from random_weights import dense_reference, random_layer

from deepzip.errors import ConfigError
from deepzip.runtime import kernels

pytestmark = pytest.mark.usefixtures("batch_one_layouts")  # every batch-1 path meets the same checks

BATCHES = (1, 2, 7, 8, 9, 16, 33, 64, 65, 130)  # batch 1, and every tile width with a remainder


def assert_matches(y, x, weight, bias=None):
    ref = x.astype(np.float64) @ weight.T
    scale = np.abs(x.astype(np.float64)) @ np.abs(weight).T
    if bias is not None:
        ref += bias
        scale += np.abs(bias)
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert np.all(np.abs(y - ref) <= 1e-5 * scale + 1e-30)
    norm = np.linalg.norm(ref)
    if norm > 0:
        assert np.linalg.norm(y - ref) <= 1e-5 * norm


CASES = {
    "small": {"shape": (5, 7), "density": 0.5},
    "out=1": {"shape": (1, 300), "density": 0.3},
    "in=1": {"shape": (10, 1), "density": 0.5},
    "sparse": {"shape": (64, 200), "density": 0.1},
    "fully dense": {"shape": (33, 17), "density": 1.0},
    "all zero": {"shape": (8, 9), "density": 0.0},
    "single entry": {"shape": (6, 9), "density": 1 / 54},
    "empty rows": {"shape": (40, 50), "density": 0.3, "rows": [3, 4, 17, 39]},
    # several row groups (128 rows) and column blocks (2047 columns for 5-bit codes)
    "groups and blocks": {"shape": (300, 5000), "density": 0.02},
    "in > 65535": {"shape": (3, 70_000), "density": 0.01},
    "k = 16 (4095-column blocks)": {"shape": (20, 9000), "density": 0.05, "k": 16},
    "k = 256 (255-column blocks)": {"shape": (140, 600), "density": 0.3, "k": 256},
    "k > 256 (32-bit entries)": {"shape": (20, 5000), "density": 0.1, "k": 300},
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("batch", BATCHES)
def test_matmul_matches_dense_reference(case, batch):
    params = dict(CASES[case])
    shape = params.pop("shape")
    codebook, positions, codes = random_layer(shape, **params)
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    x = np.random.default_rng(batch).standard_normal((batch, shape[1])).astype(np.float32)
    assert_matches(kernels.matmul(packed, x), x, dense_reference(shape, codebook, positions, codes))


@pytest.mark.parametrize("batch", BATCHES)
def test_bias_is_added(batch):
    shape = (150, 40)
    codebook, positions, codes = random_layer(shape, 0.2, rows=list(range(0, 150, 2)))
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    bias = np.random.default_rng(5).standard_normal(150).astype(np.float32)
    x = np.random.default_rng(6).standard_normal((batch, 40)).astype(np.float32)
    assert_matches(kernels.matmul(packed, x, bias), x, dense_reference(shape, codebook, positions, codes), bias)


def test_non_contiguous_input_and_zero_batch():
    shape = (9, 11)
    codebook, positions, codes = random_layer(shape, 0.5)
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    wide = np.random.default_rng(3).standard_normal((8, 22)).astype(np.float32)
    x = wide[:, ::2]
    assert_matches(kernels.matmul(packed, x), x, dense_reference(shape, codebook, positions, codes))
    assert_matches(kernels.matmul(packed, x[:1]), x[:1], dense_reference(shape, codebook, positions, codes))
    assert kernels.matmul(packed, np.zeros((0, 11), np.float32)).shape == (0, 9)
    assert kernels.matmul(kernels.pack_linear((0, 11), codebook, [], []), x).shape == (8, 0)


@pytest.mark.parametrize("batch", (1, 8, 64))
def test_nan_and_inf_propagate_only_through_kept_weights(batch):
    # A NaN must not vanish (no 'nnan' fast-math), and padding reads a zero slot, not x:
    # a NaN at a column a row does not keep must not reach that row.
    shape = (4, 5)
    codebook = np.array([1.0, -2.0], np.float32)
    positions = np.array([0, 6, 12, 13])  # rows 0, 1, 2, 2 at columns 0, 1, 2, 3
    packed = kernels.pack_linear(shape, codebook, positions, np.array([0, 1, 0, 1]))
    x = np.ones((batch, 5), np.float32)
    x[:, 1] = np.nan
    x[:, 3] = np.inf
    y = kernels.matmul(packed, x)
    assert np.isnan(y[:, 1]).all() and np.isneginf(y[:, 2]).all()
    assert (y[:, 0] == 1).all() and (y[:, 3] == 0).all()


@pytest.mark.parametrize("batch", (1, 8))
def test_thread_count_gives_the_same_result_and_is_kept(batch):
    import numba

    shape = (300, 200)
    codebook, positions, codes = random_layer(shape, 0.1)
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    x = np.random.default_rng(4).standard_normal((batch, 200)).astype(np.float32)
    one = kernels.matmul(packed, x, num_threads=1)
    assert numba.get_num_threads() == 1
    many = kernels.matmul(packed, x, num_threads=64)  # capped at numba's maximum
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    np.testing.assert_array_equal(one, many)  # row groups are independent: no reduction across threads


# --------------------------------------------------------------------------- errors


@pytest.fixture
def packed():
    codebook, positions, codes = random_layer((6, 5), 0.5)
    return kernels.pack_linear((6, 5), codebook, positions, codes)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.ones((2, 5), np.float64), "float32"),
        (np.ones((2, 5), np.int32), "float32"),
        (np.ones((2, 4), np.float32), r"\(batch, 5\)"),
        (np.ones(5, np.float32), r"\(batch, 5\)"),
        (np.ones((1, 2, 5), np.float32), r"\(batch, 5\)"),
        ([[1.0] * 5], "numpy array"),
    ],
)
def test_bad_input_raises_config_error(packed, x, message):
    with pytest.raises(ConfigError, match=message):
        kernels.matmul(packed, x)


@pytest.mark.parametrize(
    "bias",
    [np.ones(5, np.float32), np.ones(6, np.float64), np.ones((1, 6), np.float32), [0.0] * 6],
)
def test_bad_bias_raises_config_error(packed, bias):
    with pytest.raises(ConfigError, match="bias"):
        kernels.matmul(packed, np.ones((1, 5), np.float32), bias)


def test_matmul_needs_packed_and_positive_threads(packed):
    with pytest.raises(ConfigError, match="PackedLinear"):
        kernels.matmul(np.ones((6, 5), np.float32), np.ones((1, 5), np.float32))
    with pytest.raises(ConfigError, match="num_threads"):
        kernels.matmul(packed, np.ones((1, 5), np.float32), num_threads=0)
