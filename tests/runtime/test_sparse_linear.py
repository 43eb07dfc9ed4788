"""Tests of deepzip.runtime.sparse_linear: SparseLinear against a dense reference.

References: the weight decoded by `CodebookTensor.to_dense` (or by hand: zeros, then
codebook[codes] at the positions) in an nn.Linear, or a float64 matmul of it.
"""

import numpy as np
import pytest
import torch
from torch import nn

from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.runtime.sparse_linear import SparseLinear


def codebook_tensor(out, n_in, density, k=32, seed=0, dtype=torch.float32) -> CodebookTensor:
    rng = np.random.default_rng(seed)
    nnz = round(density * out * n_in)
    positions = np.sort(rng.choice(out * n_in, size=nnz, replace=False)).astype(np.int64)
    codes = rng.integers(0, k, size=nnz).astype(np.uint16)
    codebook = rng.standard_normal(k).astype(np.float32)
    return CodebookTensor((out, n_in), dtype, codebook, positions, codes)


def dense_linear(weight: CodebookTensor, bias) -> nn.Linear:
    dense = np.zeros(weight.numel, np.float32)
    dense[weight.positions] = weight.codebook[weight.codes]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(dense.reshape(weight.shape)))
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def assert_close(actual, expected, dtype=torch.float32):
    """Equal shape and dtype, and equal within 1e-5 of the reference's norm."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    error = (actual.double() - expected.double()).norm()
    assert error <= 1e-5 * expected.double().norm() + 1e-12


@pytest.mark.parametrize("with_bias", (True, False))
@pytest.mark.parametrize("input_shape", ((1, 40), (9, 40), (2, 3, 40), (40,)))
def test_sparse_linear_matches_dense_linear(with_bias, input_shape):
    weight = codebook_tensor(25, 40, 0.2)
    bias = torch.randn(25) if with_bias else None
    sparse, dense = SparseLinear(weight, bias), dense_linear(weight, bias)
    x = torch.randn(*input_shape)
    with torch.no_grad():
        assert_close(sparse(x), dense(x))


# ------------------------------------------------------------------ float16 / bfloat16 activations


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` just above |values| (float64), subnormals included."""
    info = torch.finfo(dtype)
    magnitude = values.double().abs().clamp_min(info.smallest_normal)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * info.eps


def weight_with_empty_rows(out=24, n_in=40, density=0.3, seed=1) -> CodebookTensor:
    """A (24, 40) weight whose rows 0, 5 and 23 keep nothing."""
    full = codebook_tensor(out, n_in, density, seed=seed)
    keep = ~np.isin(full.positions // n_in, [0, 5, 23])
    return CodebookTensor(full.shape, torch.float32, full.codebook, full.positions[keep], full.codes[keep])


CASES = {
    "batch 0": ((0, 40), lambda: codebook_tensor(24, 40, 0.3)),
    "batch 1": ((1, 40), lambda: codebook_tensor(24, 40, 0.3)),
    "3-D": ((2, 3, 40), lambda: codebook_tensor(24, 40, 0.3)),
    "empty rows": ((7, 40), weight_with_empty_rows),
    "empty rows, batch 1": ((1, 40), weight_with_empty_rows),  # batch 1 has layouts of its own
    "all-zero weight": ((5, 40), lambda: CodebookTensor((24, 40), torch.float32, np.ones(4, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint8))),
}


@pytest.mark.parametrize("with_bias", (True, False))
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_activations_in_each_dtype_match_a_float64_reference(dtype, case, with_bias):
    """The output is the float64 product of the same (dtype-rounded) input, rounded to dtype.

    float32: within 1e-5 of the reference's norm. float16/bfloat16: each entry within one
    unit in the last place of the output dtype (at the reference). That is what float32
    accumulation must give: its error, at most about 2 n 2^-24 sum_j |w_j x_j|, is far below
    half a unit of float16 (2^-11 relative) or bfloat16 (2^-8), so rounding the float32 sum
    lands on the correctly rounded reference or, when the sum lies near a rounding
    boundary, on its neighbour; never two units away. The error bound is added to the
    tolerance for the rare entry whose sum cancels to near zero, where a unit of the dtype
    is smaller than float32's error. Accumulating in the activation dtype, rounding the
    input differently, or returning float32 all fail it.
    """
    input_shape, make_weight = CASES[case]
    weight = make_weight()
    generator = torch.Generator().manual_seed(3)
    bias = torch.randn(24, generator=generator) if with_bias else None
    x = torch.randn(*input_shape, generator=generator).to(dtype)
    with torch.no_grad():
        y = SparseLinear(weight, bias)(x)
    assert y.dtype == dtype and y.shape == (*input_shape[:-1], 24)
    w64 = weight.to_dense().double()
    x64 = x.double()
    exact = x64 @ w64.T + (0 if bias is None else bias.double())
    reference = exact.to(dtype)
    if case == "all-zero weight":  # the bias alone, rounded once
        assert torch.equal(y, torch.zeros_like(y) if bias is None else bias.to(dtype).expand_as(y))
    if case.startswith("empty rows"):
        rows, batch = [0, 5, 23], input_shape[0]
        assert torch.equal(y[:, rows], torch.zeros(batch, 3, dtype=dtype) if bias is None else bias[rows].to(dtype).expand(batch, 3))
    if dtype == torch.float32:
        assert_close(y, reference)
        return
    magnitudes = x64.abs() @ w64.abs().T + (0 if bias is None else bias.double().abs())
    accumulation = 2 * (40 + 1) * 2.0**-24 * magnitudes
    error = (y.double() - reference.double()).abs()
    assert bool((error <= ulp(reference, dtype) + accumulation).all()), f"max error {error.max() if error.numel() else 0}"


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_a_half_record_uses_the_weights_the_dense_model_decodes_to(dtype):
    # A float16/bfloat16 record decodes to its codebook rounded to that dtype; so does SparseLinear.
    weight = codebook_tensor(24, 40, 0.5, dtype=dtype)
    rounded = weight.to_dense()
    assert rounded.dtype == dtype
    x = torch.randn(6, 40)
    with torch.no_grad():
        assert_close(SparseLinear(weight)(x), (x.double() @ rounded.double().T).float())


def test_a_model_cast_to_half_still_runs():
    # model.half() casts the bias buffer; forward widens it back to float32.
    weight, bias = codebook_tensor(24, 40, 0.3), torch.randn(24)
    for dtype in (torch.float16, torch.bfloat16):
        layer = SparseLinear(weight, bias).to(dtype)
        x = torch.randn(3, 40).to(dtype)
        with torch.no_grad():
            y = layer(x)
        expected = x.double() @ weight.to_dense().double().T + bias.to(dtype).double()
        assert y.dtype == dtype and torch.allclose(y.double(), expected, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ scales, transposed (Conv1D) weights


def scaled(weight: CodebookTensor, axis: int, seed=5) -> CodebookTensor:
    scale = np.random.default_rng(seed).uniform(0.5, 2.0, weight.shape[axis]).astype(np.float32)
    return CodebookTensor(weight.shape, weight.dtype, weight.codebook, weight.positions, weight.codes, None, scale, axis)


def dense_record(shape, k=16, seed=2) -> CodebookTensor:
    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal(k).astype(np.float32)
    return CodebookTensor(shape, torch.float32, codebook, None, rng.integers(0, k, int(np.prod(shape))).astype(np.uint8))


@pytest.mark.parametrize("axis", (0, 1))
def test_per_slice_scales_are_applied(axis):
    weight, bias = scaled(codebook_tensor(24, 40, 0.4), axis), torch.randn(24)
    x = torch.randn(5, 40)
    with torch.no_grad():
        y = SparseLinear(weight, bias)(x)
    assert_close(y, (x.double() @ weight.to_dense().double().T + bias.double()).float())


@pytest.mark.parametrize(
    "make",
    [
        lambda: codebook_tensor(40, 24, 0.3),  # [in, out], sparse
        lambda: dense_record((40, 24)),  # every entry kept: positions None
        lambda: scaled(codebook_tensor(40, 24, 0.3), 0),  # scales along in
        lambda: scaled(dense_record((40, 24)), 1),  # scales along out
        lambda: weight_with_empty_rows(40, 24),  # inputs 0, 5, 23 feed nothing
    ],
)
def test_from_conv1d_computes_x_at_w_plus_b(make):
    weight, bias = make(), torch.randn(24)
    layer = SparseLinear.from_conv1d(weight, bias)
    assert (layer.in_features, layer.out_features) == (40, 24)
    assert layer.packed.nnz == weight.kept
    x = torch.randn(2, 3, 40)
    with torch.no_grad():
        y = layer(x)
    assert_close(y, (x.double() @ weight.to_dense().double() + bias.double()).float())


def test_from_conv1d_matches_transformers_conv1d():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    weight, bias = codebook_tensor(40, 24, 0.3), torch.randn(24)
    conv = Conv1D(24, 40)  # nf (out), nx (in)
    with torch.no_grad():
        conv.weight.copy_(weight.to_dense())
        conv.bias.copy_(bias)
        x = torch.randn(4, 40)
        assert_close(SparseLinear.from_conv1d(weight, bias)(x), conv(x))


def test_from_conv1d_rejects_bad_weights():
    with pytest.raises(ConfigError, match="CodebookTensor"):
        SparseLinear.from_conv1d(torch.randn(4, 3))
    with pytest.raises(ConfigError, match=r"2-D \[in, out\]"):
        SparseLinear.from_conv1d(CodebookTensor((2, 2, 2), torch.float32, np.ones(1, np.float32), None, np.zeros(8, np.uint8)))
    with pytest.raises(ConfigError, match=r"bias must be a tensor of shape \(24,\)"):
        SparseLinear.from_conv1d(codebook_tensor(40, 24, 0.3), torch.zeros(40))


# ------------------------------------------------------------------ what it holds, what it refuses


def test_sparse_linear_holds_no_dense_weight():
    weight = codebook_tensor(30, 50, 0.1)
    layer = SparseLinear(weight, torch.zeros(30))
    assert list(layer.parameters()) == []
    assert not hasattr(layer, "weight")
    assert all(t.numel() < 30 * 50 for t in layer.state_dict().values())
    assert layer.packed.nnz == weight.positions.size
    text = repr(layer)
    assert "in_features=50" in text and "out_features=30" in text and "kept=10.00%" in text and "k=32" in text


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(3, 40, dtype=torch.float64), "float32, float16 or bfloat16, got torch.float64"),
        (torch.ones(3, 40, dtype=torch.int64), "float32, float16 or bfloat16, got torch.int64"),
        (torch.randn(3, 41), r"\(\.\.\., 40\)"),
        (torch.randn(3, 41, dtype=torch.float16), r"\(\.\.\., 40\)"),
        (torch.tensor(1.0), r"\(\.\.\., 40\)"),
        (np.ones((3, 40), np.float32), "torch.Tensor"),
    ],
)
def test_sparse_linear_rejects_bad_input(x, message):
    layer = SparseLinear(codebook_tensor(25, 40, 0.2))
    with pytest.raises(ConfigError, match=message):
        layer(x)


def test_sparse_linear_is_inference_only():
    layer = SparseLinear(codebook_tensor(25, 40, 0.2))
    x = torch.randn(2, 40, requires_grad=True)
    with pytest.raises(ConfigError, match="inference-only"):
        layer(x)
    with torch.no_grad():
        assert layer(x).grad_fn is None
    with torch.inference_mode():
        layer(torch.randn(2, 40))
        layer(torch.randn(2, 40, dtype=torch.bfloat16))


def test_sparse_linear_rejects_bad_construction():
    with pytest.raises(ConfigError, match="CodebookTensor"):
        SparseLinear(torch.randn(3, 4))
    with pytest.raises(ConfigError, match=r"2-D \(out, in\)"):
        SparseLinear(CodebookTensor((2, 2, 2), torch.float32, np.ones(1, np.float32), np.array([0]), np.array([0], np.uint16)))
    with pytest.raises(ConfigError, match="bias"):
        SparseLinear(codebook_tensor(25, 40, 0.2), torch.zeros(24))
