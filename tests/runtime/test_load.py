"""Tests of deepzip.runtime: SparseLinear against nn.Linear, load_into sparse against dense.

References: an nn.Linear holding the weight decoded by hand (zeros, then codebook[codes]
at the positions), and the same file loaded with layout="dense".
"""

import numpy as np
import pytest
import torch
from torch import nn

import deepzip
from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.runtime import load as runtime
from deepzip.runtime.load import SparseLinear, load_into


def codebook_tensor(out, n_in, density, k=32, seed=0) -> CodebookTensor:
    rng = np.random.default_rng(seed)
    nnz = int(round(density * out * n_in))
    positions = np.sort(rng.choice(out * n_in, size=nnz, replace=False)).astype(np.int64)
    codes = rng.integers(0, k, size=nnz).astype(np.uint16)
    codebook = rng.standard_normal(k).astype(np.float32)
    return CodebookTensor((out, n_in), torch.float32, codebook, positions, codes)


def dense_linear(weight: CodebookTensor, bias) -> nn.Linear:
    dense = np.zeros(weight.numel, np.float32)
    dense[weight.positions] = weight.codebook[weight.codes]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(dense.reshape(weight.shape)))
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def assert_close(actual, expected):
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
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
        (torch.randn(3, 40, dtype=torch.float64), "float32"),
        (torch.ones(3, 40, dtype=torch.int64), "float32"),
        (torch.randn(3, 41), r"\(\.\.\., 40\)"),
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


def test_sparse_linear_rejects_bad_construction():
    with pytest.raises(ConfigError, match="CodebookTensor"):
        SparseLinear(torch.randn(3, 4))
    with pytest.raises(ConfigError, match="2-D"):
        SparseLinear(CodebookTensor((2, 2, 2), torch.float32, np.ones(1, np.float32), np.array([0]), np.array([0], np.uint16)))
    with pytest.raises(ConfigError, match="bias"):
        SparseLinear(codebook_tensor(25, 40, 0.2), torch.zeros(24))


# --------------------------------------------------------------------------- load_into


def make_model() -> nn.Sequential:
    """Conv2d 3->4 k3 on 3x3x7 inputs (-> 20 features), Linear 20->30, ReLU, Linear 30->5."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    deepzip.prune_(model, sparsity=0.7, min_size=0)
    deepzip.quantize_(model, bits=4, min_size=0)
    path = tmp_path / "model.dzip"
    deepzip.save(model, path)
    return path


def test_load_into_sparse_matches_dense(saved):
    dense = load_into(make_model(), saved, layout="dense")
    sparse = load_into(make_model(), saved, layout="sparse")
    assert isinstance(sparse[0], nn.Conv2d)  # conv layers stay dense
    for index in (2, 4):
        layer = sparse[index]
        assert isinstance(layer, SparseLinear)
        assert "weight" not in dict(layer.named_parameters()) and list(layer.parameters()) == []
        assert torch.equal(layer.bias, dense[index].bias.detach())
    assert torch.equal(sparse[0].weight, dense[0].weight)
    x = torch.randn(8, 3, 3, 7)
    with torch.no_grad():
        assert_close(sparse(x), dense(x))
        assert_close(sparse(x[:1]), dense(x[:1]))


def test_load_into_dense_equals_decoded_state_dict(saved):
    model = load_into(make_model(), saved)
    decoded = deepzip.load(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(value, decoded[key])


def test_unknown_layout_raises_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="layout"):
        load_into(make_model(), tmp_path / "does-not-exist.dzip", layout="csr")


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model]


def test_model_lacking_keys_is_named_and_left_unchanged(saved):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(20, 30))
    before, types = state(model)
    with pytest.raises(ConfigError, match=r"model has no keys 4\.bias, 4\.weight"):
        load_into(model, saved, layout="sparse")
    after, after_types = state(model)
    assert types == after_types and all(torch.equal(before[k], after[k]) for k in before)


def test_shape_mismatch_is_named_even_when_not_strict(saved):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(20, 31), nn.ReLU(), nn.Linear(30, 5))
    for strict in (True, False):
        with pytest.raises(ConfigError, match=r"2\.weight \(file \(30, 20\), model \(31, 20\)\)"):
            load_into(model, saved, layout="sparse", strict=strict)
    assert isinstance(model[2], nn.Linear)


def test_missing_keys_strict_and_not_strict(saved):
    def bigger():
        return nn.Sequential(*make_model(), nn.Linear(5, 2))

    with pytest.raises(ConfigError, match=r"file has no keys 5\.bias, 5\.weight"):
        load_into(bigger(), saved, layout="sparse")
    model = bigger()
    extra = model[5].weight.detach().clone()
    load_into(model, saved, layout="sparse", strict=False)
    assert isinstance(model[4], SparseLinear) and torch.equal(model[5].weight, extra)


def test_a_parametrized_model_takes_the_files_values(saved):
    # The file holds values under plain keys: a pruned model's mask gives way to them.
    model = make_model()
    deepzip.prune_(model, sparsity=0.5, min_size=0)
    load_into(model, saved)
    plain = load_into(make_model(), saved)
    assert not any(".parametrizations." in key for key in model.state_dict())
    mine, theirs = model.state_dict(), plain.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_layouts_constant():
    assert runtime.LAYOUTS == ("dense", "sparse")


def test_linear_subclasses_stay_dense(saved):
    class MyLinear(nn.Linear):
        pass

    model = make_model()
    model[4] = MyLinear(30, 5)
    load_into(model, saved, layout="sparse")
    assert isinstance(model[2], SparseLinear) and type(model[4]) is MyLinear
    dense = load_into(make_model(), saved)
    with torch.no_grad():
        x = torch.randn(4, 3, 3, 7)
        assert_close(model(x), dense(x))
