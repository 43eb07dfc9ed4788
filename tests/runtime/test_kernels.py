"""Tests of deepzip.kernels against an independent dense reference.

Reference: the dense weight built by hand (zeros, then codebook[codes] at the flat
positions) and multiplied in float64 by numpy. Tolerance: 1e-5 relative in norm, and per
element 1e-5 of the sum of |w x| of that output (the scale of its rounding error).
"""

import numpy as np
import pytest

from deepzip.errors import ConfigError
from deepzip.runtime import kernels

BATCHES = (1, 2, 7, 64)


def random_layer(shape, density, k=32, seed=0, rows=None):
    """(codebook, positions, codes) of a random pruned, weight-shared matrix.

    `rows` restricts the kept weights to those rows (the others stay empty).
    """
    rng = np.random.default_rng(seed)
    out, n_in = shape
    allowed = np.arange(out * n_in).reshape(out, n_in)
    if rows is not None:
        allowed = allowed[rows]
    allowed = allowed.ravel()
    nnz = int(round(density * allowed.size))
    positions = np.sort(rng.choice(allowed, size=nnz, replace=False)).astype(np.int64)
    codes = rng.integers(0, k, size=nnz).astype(np.uint16)
    codebook = rng.standard_normal(k).astype(np.float32)
    return codebook, positions, codes


def dense_reference(shape, codebook, positions, codes) -> np.ndarray:
    weight = np.zeros(int(np.prod(shape)), dtype=np.float64)
    weight[positions] = codebook.astype(np.float64)[codes]
    return weight.reshape(shape)


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
    "small": dict(shape=(5, 7), density=0.5),
    "out=1": dict(shape=(1, 300), density=0.3),
    "in=1": dict(shape=(10, 1), density=0.5),
    "sparse": dict(shape=(64, 200), density=0.1),
    "fully dense": dict(shape=(33, 17), density=1.0),
    "all zero": dict(shape=(8, 9), density=0.0),
    "single entry": dict(shape=(6, 9), density=1 / 54),
    "empty rows": dict(shape=(40, 50), density=0.3, rows=[3, 4, 17, 39]),
    "in > 65535": dict(shape=(3, 70_000), density=0.01),
    "k > 256": dict(shape=(20, 30), density=0.6, k=300),
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
    shape = (50, 40)
    codebook, positions, codes = random_layer(shape, 0.2, rows=list(range(0, 50, 2)))
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    bias = np.random.default_rng(5).standard_normal(50).astype(np.float32)
    x = np.random.default_rng(6).standard_normal((batch, 40)).astype(np.float32)
    assert_matches(kernels.matmul(packed, x, bias), x, dense_reference(shape, codebook, positions, codes), bias)


def test_index_dtypes_follow_sizes():
    codebook, positions, codes = random_layer((2, 65_536), 0.001)
    narrow = kernels.pack_linear((2, 65_536), codebook, positions, codes)
    assert narrow.cols.dtype == np.uint16 and narrow.codes.dtype == np.uint8
    codebook, positions, codes = random_layer((2, 65_537), 0.001, k=257)
    wide = kernels.pack_linear((2, 65_537), codebook, positions, codes)
    assert wide.cols.dtype == np.uint32 and wide.codes.dtype == np.uint16


def test_unsorted_positions_are_sorted():
    shape = (12, 13)
    codebook, positions, codes = random_layer(shape, 0.4)
    order = np.random.default_rng(1).permutation(positions.size)
    packed = kernels.pack_linear(shape, codebook, positions[order], codes[order])
    x = np.random.default_rng(2).standard_normal((3, 13)).astype(np.float32)
    assert_matches(kernels.matmul(packed, x), x, dense_reference(shape, codebook, positions, codes))
    assert np.all(np.diff(packed.row_ptr.astype(np.int64)) >= 0)


def test_non_contiguous_input_and_zero_batch():
    shape = (9, 11)
    codebook, positions, codes = random_layer(shape, 0.5)
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    wide = np.random.default_rng(3).standard_normal((8, 22)).astype(np.float32)
    x = wide[:, ::2]
    assert_matches(kernels.matmul(packed, x), x, dense_reference(shape, codebook, positions, codes))
    assert kernels.matmul(packed, np.zeros((0, 11), np.float32)).shape == (0, 9)


@pytest.mark.parametrize("batch", (1, 8))
def test_nan_and_inf_propagate(batch):
    # The kernels use fastmath without 'nnan'/'ninf': a NaN input must not vanish.
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


def test_thread_count_gives_same_result_and_is_restored():
    import numba

    shape = (300, 200)
    codebook, positions, codes = random_layer(shape, 0.1)
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    x = np.random.default_rng(4).standard_normal((1, 200)).astype(np.float32)
    before = numba.get_num_threads()
    one = kernels.matmul(packed, x, num_threads=1)
    many = kernels.matmul(packed, x, num_threads=64)  # capped at numba's maximum
    assert numba.get_num_threads() == before
    np.testing.assert_array_equal(one, many)  # rows are independent: no reduction across threads


def test_bytes_per_call_counts_index_codes_codebook():
    shape = (10, 100)
    codebook, positions, codes = random_layer(shape, 0.25, k=16)
    packed = kernels.pack_linear(shape, codebook, positions, codes)
    nnz = positions.size
    expected = 8 * 11 + 2 * nnz + 1 * nnz + 4 * 16
    assert packed.nbytes == expected
    assert kernels.bytes_per_call(packed, batch=3) == {
        "weights": expected,
        "activations": 4 * 3 * 110,
        "total": expected + 4 * 3 * 110,
    }
    assert packed.nnz == nnz and packed.density == pytest.approx(nnz / 1000)


def test_packed_arrays_are_read_only():
    packed = kernels.pack_linear((3, 3), np.ones(2, np.float32), np.array([0, 4]), np.array([0, 1]))
    with pytest.raises(ValueError):
        packed.cols[0] = 2


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
    ],
)
def test_pack_linear_rejects_bad_input(args, message):
    shape, codebook, positions, codes = args
    with pytest.raises(ConfigError, match=message):
        kernels.pack_linear(shape, np.asarray(codebook, np.float32), np.asarray(positions), np.asarray(codes))


def test_hand_made_packed_linear_is_checked():
    # The compiled kernels do no bounds checks, so PackedLinear must refuse what would
    # make them read out of bounds.
    good = dict(
        shape=(2, 4),
        row_ptr=np.array([0, 1, 2], np.uint64),
        cols=np.array([3, 0], np.uint16),
        codes=np.array([0, 1], np.uint8),
        codebook=np.ones(2, np.float32),
    )
    kernels.PackedLinear(**good)
    for field, value, message in [
        ("cols", np.array([4, 0], np.uint16), "column index"),
        ("codes", np.array([0, 2], np.uint8), "code 2"),
        ("row_ptr", np.array([0, 2, 1], np.uint64), "never decrease"),
        ("row_ptr", np.array([0, 1, 3], np.uint64), "entries, expected 3"),
        ("row_ptr", np.array([0, 2], np.uint64), "entries, expected 3"),
        ("cols", np.array([3, 0], np.int64), "uint16 or uint32"),
        ("codebook", np.ones(2, np.float64), "float32"),
    ]:
        with pytest.raises(ConfigError, match=message):
            kernels.PackedLinear(**{**good, field: value})
