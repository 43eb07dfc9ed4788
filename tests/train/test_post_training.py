"""Post-training compression of state dicts: magnitude selection, dtypes, patterns."""

import tracemalloc

import numpy as np
import pytest
import torch

from deepzip.compressed import CodebookTensor, RawTensor
from deepzip.container import from_bytes, to_bytes
from deepzip.errors import ConfigError
from deepzip.train import kmeans, lloyd, masks, sharing
from deepzip.train.post_training import compress_state_dict, compress_tensor
from deepzip.train.sharing import share_tensor, share_values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_compress_tensor_keeps_dtype_and_kept_fraction(dtype):
    weight = torch.randn(64, 50).to(dtype)
    record = compress_tensor(weight, sparsity=0.8, bits=4)
    decoded = record.to_dense()
    assert decoded.dtype == dtype and decoded.shape == weight.shape
    assert int((decoded != 0).sum()) == 640
    assert len(torch.unique(decoded[decoded != 0])) <= 16
    # Every kept value is its nearest centroid, in the tensor's own dtype.
    kept = weight.flatten()[torch.from_numpy(record.positions)].double()
    centroids = torch.from_numpy(record.codebook).double()
    nearest = (kept[:, None] - centroids[None, :]).abs().argmin(1)
    assert torch.equal(nearest, torch.from_numpy(record.codes.astype(np.int64)))


def assert_nearest_codes(values: torch.Tensor, record) -> None:
    """Each code is the nearest centroid in float64, ties to the lower one (argmin's rule)."""
    centroids = torch.from_numpy(record.codebook).double()
    nearest = (values.double()[:, None] - centroids[None, :]).abs().argmin(1)
    assert torch.equal(nearest, torch.from_numpy(record.codes.astype(np.int64)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("sparsity", [0.0, 1e-9])
def test_keeping_every_weight_gives_a_dense_record(dtype, sparsity):
    weight = (torch.randn(96, 70) * 0.05).to(dtype)
    record = compress_tensor(weight, sparsity=sparsity, bits=5)
    assert record.positions is None and record.kept == weight.numel()
    assert record.codes.dtype == np.uint8 and len(record.codebook) <= 32
    assert_nearest_codes(weight.flatten(), record)
    decoded = record.to_dense()
    assert decoded.dtype == dtype
    assert torch.equal(decoded.flatten(), torch.from_numpy(record.codebook).to(dtype)[torch.from_numpy(record.codes.astype(np.int64))])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_16_bit_weights_cluster_through_their_histogram_like_their_values(dtype, init):
    g = torch.Generator().manual_seed(7)
    for bits in (2, 4, 8):
        values = (torch.randn(40_000, generator=g) * 0.03).to(dtype)
        codebook, codes = share_tensor(values, bits, init)
        expected_codebook, expected_codes = share_values(values.double().numpy(), bits, init)
        np.testing.assert_allclose(codebook, expected_codebook, rtol=1e-6)
        assert np.array_equal(codes, expected_codes)


def test_fp32_weights_cluster_as_before():
    # fp32 goes in without a float64 copy; the clustering of the copy is what it used to be.
    weight = torch.randn(300, 200) * 0.02
    record = compress_tensor(weight, bits=6)
    codebook, codes = share_values(weight.double().flatten().numpy(), 6)
    assert record.codebook.tobytes() == codebook.tobytes() and np.array_equal(record.codes, codes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_non_finite_weights_are_errors(dtype):
    for bad in (float("nan"), float("inf")):
        weight = torch.randn(50, 40).to(dtype)
        weight[3, 4] = bad
        for sparsity in (0.0, 0.5):
            with pytest.raises(ConfigError):
                compress_tensor(weight, sparsity=sparsity)


def numpy_peak(function) -> int:
    """Peak bytes numpy (and Python) allocated while `function` ran."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk sizes far below the test tensors' size, so full-size temporaries would show."""
    monkeypatch.setattr(sharing, "_COUNT_CHUNK", 1 << 14)
    monkeypatch.setattr(kmeans, "_ASSIGN_CHUNK", 1 << 14)
    monkeypatch.setattr(kmeans, "_TABLE_CHUNK", 1 << 14)
    monkeypatch.setattr(lloyd, "_FULL_PREFIX", 1 << 14)
    monkeypatch.setattr(lloyd, "_SUM_CHUNK", 1 << 14)
    monkeypatch.setattr(masks, "_CHUNK", 1 << 14)


@pytest.mark.parametrize(
    "dtype, sparsity, per_weight",
    [
        (torch.float16, 0.0, 1.1),  # the uint8 codes, nothing else of the tensor's size
        (torch.bfloat16, 0.0, 1.1),
        (torch.float32, 0.0, 5.6),  # the float32 sort (4), the stored sums (0.5), the codes
        (torch.float64, 0.0, 9.6),  # the float64 sort (8), the stored sums, the codes
        (torch.float16, 0.9, 1.2),  # kept: int64 positions (0.8), uint8 codes (fp16 values: torch's)
        (torch.float32, 0.9, 1.8),  # and the kept values' float32 sort (0.4)
    ],
)
def test_temporaries_stay_below_the_tensors_size(small_chunks, dtype, sparsity, per_weight):
    # numpy's allocations only (torch's are not traced): a bool mask, an intp copy or a
    # float64 copy of the whole tensor would each exceed the bound.
    weight = (torch.randn(2048, 1024) * 0.02).to(dtype)
    peak = numpy_peak(lambda: compress_tensor(weight, sparsity=sparsity, bits=4))
    assert peak < per_weight * weight.numel() + (2 << 20)


def test_state_dict_selection_patterns_and_raw_tensors():
    state = {
        "embed.weight": torch.randn(100, 32),
        "fc.weight": torch.randn(64, 32),
        "fc.bias": torch.randn(64),
        "norm.weight": torch.randn(32),
        "tiny.weight": torch.randn(4, 4),
        "steps": torch.tensor(7),
    }
    model = compress_state_dict(state, {"fc": 0.5, "embed*": 0.0}, {"fc": 3}, exclude=["embed*"])
    assert isinstance(model.tensors["fc.weight"], CodebookTensor)
    assert len(model.tensors["fc.weight"].positions) == 1024
    assert len(model.tensors["fc.weight"].codebook) <= 8
    for raw in ("embed.weight", "fc.bias", "norm.weight", "tiny.weight", "steps"):
        assert isinstance(model.tensors[raw], RawTensor)
        assert torch.equal(model.tensors[raw].tensor, state[raw])
    back = from_bytes(to_bytes(model)).state_dict()
    assert torch.equal(back["fc.weight"], model.tensors["fc.weight"].to_dense())


@pytest.mark.parametrize("kwargs", [{"sparsity": {"fc9": 0.5}}, {"bits": {"nope*": 4}}, {"include": ["x"]}, {"exclude": ["y"]}])
def test_a_pattern_that_matches_nothing_is_an_error(kwargs):
    with pytest.raises(ConfigError):
        compress_state_dict({"fc.weight": torch.randn(64, 32)}, **kwargs)


def test_bad_values_are_errors():
    with pytest.raises(ConfigError):
        compress_tensor(torch.randn(10, 10), sparsity=1.5)
    with pytest.raises(ConfigError):
        compress_tensor(torch.randn(10, 10), bits=0)
    with pytest.raises(ConfigError):
        compress_tensor(torch.ones(10, 10, dtype=torch.int64))
    with pytest.raises(ConfigError):
        compress_tensor(torch.full((10, 10), float("nan")))
