"""Tests of deepzip.runtime.sparse_conv against torch's F.conv2d in float64.

Reference: F.conv2d in float64 of the same (float32) weights, input and bias. Tolerance:
1e-5 relative in norm, and per element 1e-5 of F.conv2d(|x|, |W|) + |bias| (the scale of
that output's float32 rounding error).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepzip.errors import ConfigError
from deepzip.runtime import sparse_conv
from deepzip.train.post_training import compress_tensor


def random_weight(shape, density, seed=0, empty_channels=()):
    """A float32 (out, in, kh, kw) weight with about `density` of it nonzero."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(shape).astype(np.float32)
    weight[rng.random(shape) >= density] = 0.0
    weight[list(empty_channels)] = 0.0
    return weight


def reference(weight, x, bias, stride, padding):
    """(F.conv2d in float64, the per-element error scale F.conv2d(|x|, |W|) + |bias|)."""
    w, xs = torch.from_numpy(weight).double(), torch.from_numpy(x).double()
    b = None if bias is None else torch.from_numpy(bias).double()
    expected = F.conv2d(xs, w, b, stride=stride, padding=padding).numpy()
    scale = F.conv2d(xs.abs(), w.abs(), None if b is None else b.abs(), stride=stride, padding=padding).numpy()
    return expected, scale


def assert_matches(weight, x, bias=None, stride=1, padding=0):
    actual = sparse_conv.conv2d(sparse_conv.pack_conv(weight), x, bias, stride=stride, padding=padding)
    expected, scale = reference(weight, x, bias, stride, padding)
    assert isinstance(actual, np.ndarray) and actual.dtype == np.float32
    assert actual.shape == expected.shape
    error = actual.astype(np.float64) - expected
    assert np.linalg.norm(error) <= 1e-5 * np.linalg.norm(expected) + 1e-12
    assert np.all(np.abs(error) <= 1e-5 * scale + 1e-30)
    return actual


# (out, in, kh, kw, h, w): odd and even sizes, channel counts that leave 0-7 weights past
# the last group of eight, a rectangular kernel and a non-square input.
SHAPES = [(8, 3, 3, 3, 9, 9), (13, 7, 3, 3, 10, 12), (6, 5, 5, 5, 11, 11), (9, 16, 2, 3, 8, 13), (5, 4, 1, 1, 7, 6)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_dense_conv(shape, stride, padding, batch):
    out, n_in, kh, kw, h, w = shape
    weight = random_weight((out, n_in, kh, kw), 0.35, seed=out + stride)
    x = np.random.default_rng(batch).standard_normal((batch, n_in, h, w)).astype(np.float32)
    bias = np.random.default_rng(1).standard_normal(out).astype(np.float32) if batch == 3 else None
    assert_matches(weight, x, bias, stride, padding)


@pytest.mark.parametrize("stride, padding", [((2, 1), (0, 2)), ((1, 3), (1, 0)), (3, 1)])
def test_pairs_and_larger_strides(stride, padding):
    weight = random_weight((7, 6, 3, 4), 0.5, seed=3)
    x = np.random.default_rng(2).standard_normal((2, 6, 11, 10)).astype(np.float32)
    assert_matches(weight, x, None, stride, padding)


@pytest.mark.parametrize("density", [1.0, 0.05])
def test_dense_and_very_sparse_weights(density):
    weight = random_weight((11, 9, 3, 3), density, seed=4)
    x = np.random.default_rng(5).standard_normal((1, 9, 12, 12)).astype(np.float32)
    assert_matches(weight, x, None, 1, 1)


def test_all_zero_weight_gives_the_bias():
    weight = np.zeros((4, 3, 3, 3), dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    bias = np.array([1.5, -2.0, 0.0, 3.25], dtype=np.float32)
    packed = sparse_conv.pack_conv(weight)
    assert packed.nnz == 0 and packed.density == 0.0
    y = sparse_conv.conv2d(packed, x, bias, stride=2, padding=1)
    assert y.shape == (2, 4, 3, 3)
    assert np.array_equal(y, np.broadcast_to(bias.reshape(1, 4, 1, 1), y.shape))
    assert not np.any(sparse_conv.conv2d(packed, x))


def test_empty_output_channels():
    weight = random_weight((10, 8, 3, 3), 0.4, seed=6, empty_channels=(0, 3, 4, 9))
    x = np.random.default_rng(7).standard_normal((3, 8, 9, 9)).astype(np.float32)
    bias = np.arange(10, dtype=np.float32)
    y = assert_matches(weight, x, bias, 1, 1)
    for channel in (0, 3, 4, 9):
        assert np.all(y[:, channel] == bias[channel])
    assert np.all(np.diff(sparse_conv.pack_conv(weight).row_ptr.astype(np.int64))[[0, 3, 4, 9]] == 0)


def test_one_by_one_kernel_is_a_channel_matmul():
    weight = random_weight((12, 20, 1, 1), 0.3, seed=8)
    x = np.random.default_rng(9).standard_normal((1, 20, 5, 7)).astype(np.float32)
    y = assert_matches(weight, x, None, 1, 0)
    expected = np.einsum("oi,nihw->nohw", weight[:, :, 0, 0].astype(np.float64), x.astype(np.float64))
    assert np.allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert_matches(weight, x, None, 2, 2)  # 1x1 stride 2 with padding: zero rows and columns


def test_torch_tensors_and_codebook_tensor():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3)
    record = compress_tensor(weight, sparsity=0.6, bits=5)
    packed = sparse_conv.pack_conv(record)
    dense = record.to_dense()
    assert packed.shape == (6, 4, 3, 3)
    assert packed.nnz == int((dense != 0).sum())
    x = torch.randn(2, 4, 8, 8)
    bias = torch.randn(6)
    y = sparse_conv.conv2d(packed, x, bias, stride=1, padding=1)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    expected = F.conv2d(x.double(), dense.double(), bias.double(), padding=1)
    assert (y.double() - expected).norm() <= 1e-5 * expected.norm()
    assert torch.equal(sparse_conv.conv2d(sparse_conv.pack_conv(dense), x, bias, padding=1), y)
    half = sparse_conv.conv2d(packed, x, bias.to(torch.bfloat16), padding=1)  # bias widened to float32
    assert torch.equal(half, sparse_conv.conv2d(packed, x, bias.to(torch.bfloat16).float(), padding=1))


def test_thread_count_does_not_change_results():
    import numba

    weight = random_weight((16, 12, 3, 3), 0.35, seed=10)
    x = np.random.default_rng(11).standard_normal((2, 12, 9, 9)).astype(np.float32)
    packed = sparse_conv.pack_conv(weight)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sparse_conv.conv2d(packed, x, padding=1)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = sparse_conv.conv2d(packed, x, padding=1)
    finally:
        numba.set_num_threads(previous)
    assert np.array_equal(one, many)


def test_packed_arrays_are_read_only():
    packed = sparse_conv.pack_conv(random_weight((3, 2, 3, 3), 0.5))
    with pytest.raises(ValueError):
        packed.values[0] = 1.0


def test_hand_made_packed_conv_is_checked():
    good = sparse_conv.pack_conv(random_weight((3, 2, 3, 3), 0.5))
    fields = {"shape": good.shape, "row_ptr": good.row_ptr.copy(), "cols": good.cols.copy(), "values": good.values.copy()}
    assert sparse_conv.PackedConv(**fields).nnz == good.nnz
    bad_cols = fields["cols"].copy()
    bad_cols[-1] = 18  # one past the 2x3x3 kernel
    bad_ptr = fields["row_ptr"].copy()
    bad_ptr[1] = bad_ptr[2] + 1
    for change in (
        {"shape": (3, 2, 3)},
        {"shape": (3, 0, 3, 3)},
        {"cols": bad_cols},
        {"cols": fields["cols"].astype(np.int64)},
        {"row_ptr": bad_ptr},
        {"row_ptr": fields["row_ptr"][:-1]},
        {"values": fields["values"][:-1]},
        {"values": fields["values"].astype(np.float64)},
    ):
        with pytest.raises(ConfigError):
            sparse_conv.PackedConv(**(fields | change))


GOOD_X = np.zeros((1, 2, 5, 5), dtype=np.float32)


@pytest.mark.parametrize(
    "weight",
    [
        np.zeros((3, 2, 3), dtype=np.float32),  # 3-D
        np.zeros((0, 2, 3, 3), dtype=np.float32),  # empty
        np.zeros((3, 2, 3, 3), dtype=np.int32),  # integer
        torch.zeros(3, 2, 3, 3, dtype=torch.int64),
        [[[[1.0]]]],  # not an array
    ],
)
def test_bad_weight_raises(weight):
    with pytest.raises(ConfigError):
        sparse_conv.pack_conv(weight)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"x": GOOD_X.astype(np.float64)},  # dtype
        {"x": torch.zeros(1, 2, 5, 5, dtype=torch.float64)},
        {"x": np.zeros((2, 5, 5), dtype=np.float32)},  # 3-D
        {"x": np.zeros((1, 3, 5, 5), dtype=np.float32)},  # channel count
        {"x": [[1.0]]},
        {"stride": 0},
        {"stride": (1, 0)},
        {"stride": True},
        {"stride": 1.5},
        {"stride": (1, 1, 1)},
        {"padding": -1},
        {"padding": (0, -2)},
        {"x": np.zeros((1, 2, 2, 5), dtype=np.float32)},  # smaller than the kernel
        {"bias": np.zeros(4, dtype=np.float32)},
        {"bias": np.zeros((3, 1), dtype=np.float32)},
        {"bias": np.zeros(3, dtype=np.int32)},
        {"bias": [0.0, 0.0, 0.0]},
        {"bias": torch.zeros(3, dtype=torch.int64)},
        {"bias": torch.zeros(4)},
    ],
)
def test_bad_call_raises(kwargs):
    packed = sparse_conv.pack_conv(random_weight((3, 2, 3, 3), 0.5))
    call = {"x": GOOD_X, "bias": None, "stride": 1, "padding": 0} | kwargs
    with pytest.raises(ConfigError):
        sparse_conv.conv2d(packed, call["x"], call["bias"], stride=call["stride"], padding=call["padding"])


def test_not_packed_and_grad_raise():
    weight = random_weight((3, 2, 3, 3), 0.5)
    with pytest.raises(ConfigError):
        sparse_conv.conv2d(weight, GOOD_X)
    x = torch.zeros(1, 2, 5, 5, requires_grad=True)
    with pytest.raises(ConfigError):
        sparse_conv.conv2d(sparse_conv.pack_conv(weight), x)
    with torch.no_grad():
        assert sparse_conv.conv2d(sparse_conv.pack_conv(weight), x).shape == (1, 3, 3, 3)
