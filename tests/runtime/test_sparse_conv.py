"""Tests of deepzip.runtime.sparse_conv (the kernel, then SparseConv2d) against torch's F.conv2d in float64.

Reference: F.conv2d in float64 of the same (float32) weights, input and bias; for
SparseConv2d, of the weight `CodebookTensor.to_dense` decodes. Tolerance: 1e-5 relative in
norm, and per element 1e-5 of F.conv2d(|x|, |W|) + |bias| (the scale of that output's
float32 rounding error); float16/bfloat16 outputs within one unit in their last place.
"""

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.runtime import sparse_conv
from deepzip.runtime.sparse_conv import SparseConv2d
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


# --------------------------------------------------------------------------- SparseConv2d


def codebook_conv(shape, density=0.35, dtype=torch.float32, scale_axis=None, seed=0) -> CodebookTensor:
    """A random pruned, weight-shared (out, in, kh, kw) record, with scales along `scale_axis` if given."""
    rng = np.random.default_rng(seed)
    numel = int(np.prod(shape))
    positions = np.sort(rng.choice(numel, size=round(density * numel), replace=False)).astype(np.int64)
    codebook = rng.standard_normal(16).astype(np.float32)
    codes = rng.integers(0, 16, size=positions.size).astype(np.uint8)
    scale = None if scale_axis is None else rng.uniform(0.5, 2.0, shape[scale_axis]).astype(np.float32)
    return CodebookTensor(tuple(shape), dtype, codebook, positions, codes, None, scale, scale_axis)


def module_reference(record, x, bias, stride, padding):
    """(F.conv2d in float64 of to_dense()'s weight, the per-element error scale), as `reference`."""
    w, xs = record.to_dense().double(), x.double()
    b = None if bias is None else bias.double()
    expected = F.conv2d(xs, w, b, stride=stride, padding=padding)
    scale = F.conv2d(xs.abs(), w.abs(), None if b is None else b.abs(), stride=stride, padding=padding)
    return expected, scale


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` just above |values| (float64), subnormals included."""
    info = torch.finfo(dtype)
    return torch.exp2(torch.floor(torch.log2(values.double().abs().clamp_min(info.smallest_normal)))) * info.eps


@pytest.mark.parametrize("stride, padding", [(1, 0), (1, 1), (2, 0), (2, 1), ((2, 1), (0, 2))])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_sparse_conv2d_matches_a_float64_conv(stride, padding, batched, with_bias):
    record = codebook_conv((10, 6, 3, 3), seed=1)
    generator = torch.Generator().manual_seed(2)
    bias = torch.randn(10, generator=generator) if with_bias else None
    x = torch.randn(*((2,) if batched else ()), 6, 9, 11, generator=generator)
    with torch.no_grad():
        y = SparseConv2d(record, bias, stride, padding)(x)
    expected, scale = module_reference(record, x if batched else x[None], bias, stride, padding)
    expected, scale = (expected, scale) if batched else (expected[0], scale[0])
    assert y.dtype == torch.float32 and y.shape == expected.shape
    error = y.double() - expected
    assert error.norm() <= 1e-5 * expected.norm() + 1e-12
    assert bool((error.abs() <= 1e-5 * scale + 1e-30).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_within_one_unit_of_the_rounded_reference(dtype):
    """The float64 conv of the same (dtype) input, rounded to dtype: float32 accumulation
    errs by at most about 2 n 2^-24 sum |w x|, far below half a unit of float16/bfloat16,
    so the result is the rounded reference or its neighbour (see test_sparse_linear)."""
    record = codebook_conv((12, 5, 3, 3), seed=3)
    generator = torch.Generator().manual_seed(4)
    bias = torch.randn(12, generator=generator)
    x = torch.randn(2, 5, 10, 10, generator=generator).to(dtype)
    with torch.no_grad():
        y = SparseConv2d(record, bias, stride=2, padding=1)(x)
    exact, magnitudes = module_reference(record, x, bias, 2, 1)
    reference = exact.to(dtype)
    assert y.dtype == dtype and y.shape == reference.shape
    accumulation = 2 * (5 * 3 * 3 + 1) * 2.0**-24 * magnitudes
    error = (y.double() - reference.double()).abs()
    assert bool((error <= ulp(reference, dtype) + accumulation).all()), f"max error {error.max()}"


@pytest.mark.parametrize("record_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale_axis", [None, 0, 1])
def test_weights_are_exactly_what_to_dense_decodes(record_dtype, scale_axis):
    # Rounding to the record's dtype and per-channel scales: the packed values are to_dense()'s.
    record = codebook_conv((8, 6, 3, 2), 0.4, record_dtype, scale_axis, seed=5)
    layer = SparseConv2d(record)
    packed = layer.packed
    unpacked = np.zeros((8, 6 * 3 * 2), dtype=np.float32)
    rows = np.repeat(np.arange(8), np.diff(packed.row_ptr.astype(np.int64)))
    unpacked[rows, packed.cols.astype(np.int64)] = packed.values
    assert torch.equal(torch.from_numpy(unpacked).view(8, 6, 3, 2), record.to_dense().float())
    x = torch.randn(1, 6, 7, 7)
    with torch.no_grad():
        expected, _ = module_reference(record, x, None, 1, 1)
        assert (SparseConv2d(record, padding=1)(x).double() - expected).norm() <= 1e-5 * expected.norm()


@pytest.mark.parametrize("padding, kernel", [("same", (3, 3)), ("same", (1, 5)), ("valid", (2, 3))])
def test_string_padding_matches_nn_conv2d(padding, kernel):
    record = codebook_conv((4, 3, *kernel), 0.6, seed=6)
    conv = nn.Conv2d(3, 4, kernel, padding=padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(record.to_dense())
        x = torch.randn(2, 3, 8, 9)
        y = SparseConv2d(record, padding=padding)(x)
        expected = conv(x)
    assert y.shape == expected.shape and torch.allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_module_is_inference_only_and_follows_torch_threads():
    layer = SparseConv2d(codebook_conv((4, 3, 3, 3)), torch.randn(4))
    assert list(layer.parameters()) == [] and set(dict(layer.named_buffers())) == {"bias"}
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    with pytest.raises(ConfigError, match="inference-only"):
        layer(x)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            assert layer(x).grad_fn is None
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
    with torch.inference_mode():
        channels_last = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
        assert torch.equal(layer(channels_last), layer(channels_last.contiguous()))
        half = layer.to(torch.float16)  # model.half() casts the bias buffer; forward widens it
        assert half(torch.randn(3, 6, 6, dtype=torch.float16)).dtype == torch.float16
    assert "kept=35.19%" in repr(layer) and "stride=(1, 1)" in repr(layer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"groups": 2}, "groups=1"),
        ({"dilation": 2}, "dilation 1"),
        ({"dilation": (1, 2)}, "dilation 1"),
        ({"padding_mode": "reflect"}, "padding_mode='zeros'"),
        ({"padding": "full"}, "'valid' or 'same'"),
        ({"padding": "same", "stride": 2}, "stride 1 and odd kernel"),
        ({"padding": -1}, "padding must be"),
        ({"stride": 0}, "stride must be"),
        ({"bias": torch.zeros(5)}, r"bias must be a float tensor of shape \(4,\)"),
        ({"bias": torch.zeros(4, dtype=torch.int64)}, "bias must be"),
    ],
)
def test_sparse_conv2d_rejects_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SparseConv2d(codebook_conv((4, 3, 3, 3)), **kwargs)


def test_sparse_conv2d_rejects_bad_weights():
    with pytest.raises(ConfigError, match="CodebookTensor"):
        SparseConv2d(torch.randn(4, 3, 3, 3))
    with pytest.raises(ConfigError, match=r"4-D \(out, in, kh, kw\)"):
        SparseConv2d(CodebookTensor((4, 27), torch.float32, np.ones(1, np.float32), None, np.zeros(108, np.uint8)))
    with pytest.raises(ConfigError, match="same"):  # an even kernel pads one side more
        SparseConv2d(codebook_conv((4, 3, 2, 3)), padding="same")


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(1, 3, 6, 6, dtype=torch.float64), "float32, float16 or bfloat16, got torch.float64"),
        (torch.randn(1, 4, 6, 6), r"\(N, 3, H, W\) or \(3, H, W\)"),
        (torch.randn(3, 6), r"\(N, 3, H, W\)"),
        (torch.randn(1, 1, 3, 6, 6), r"\(N, 3, H, W\)"),
        (np.zeros((1, 3, 6, 6), np.float32), "torch.Tensor"),
        (torch.randn(1, 3, 2, 6), "smaller than the 3x3 kernel"),
    ],
)
def test_sparse_conv2d_rejects_bad_input(x, message):
    with torch.no_grad(), pytest.raises(ConfigError, match=message):
        SparseConv2d(codebook_conv((4, 3, 3, 3)))(x)
