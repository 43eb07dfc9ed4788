"""Post-training compression of state dicts: magnitude selection, dtypes, patterns."""

import numpy as np
import pytest
import torch

from deepzip.compressed import CodebookTensor, RawTensor
from deepzip.container import from_bytes, to_bytes
from deepzip.errors import ConfigError
from deepzip.train.post_training import compress_state_dict, compress_tensor


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
