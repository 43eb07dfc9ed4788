"""Shared fixtures of the report tests: small compressed files and a PNG check."""

import numpy as np
import pytest
import torch
from matplotlib import image
from torch import nn

import deepzip
from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.train.sensitivity import SensitivityTable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_model() -> nn.Sequential:
    """The conv + fc model of the byte-accounting tests (compressed layers "0", "2", "4")."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


@pytest.fixture(scope="package")
def saved(tmp_path_factory):
    """(pruned + quantized model, the bytes of its .dzip file), with 3-bit gaps on layer "2"."""
    torch.manual_seed(0)
    model = make_model()
    deepzip.prune_(model, sparsity=0.7, min_size=0)
    deepzip.quantize_(model, bits=4, min_size=0)
    path = tmp_path_factory.mktemp("report") / "model.dzip"
    deepzip.save(model, path, index_bits={"2": 3})
    return model, path.read_bytes()


@pytest.fixture(scope="package")
def edge_file() -> bytes:
    """A file of an empty raw tensor, a 0-d int64 tensor and a 3x3 codebook tensor with nothing kept."""
    empty_codes = CodebookTensor((3, 3), torch.float32, np.zeros(1, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint16), 4)
    tensors = {"empty": RawTensor(torch.zeros(0, 3)), "scalar": RawTensor(torch.tensor(7, dtype=torch.int64)), "w": empty_codes}
    return container.to_bytes(CompressedModel(tensors))


@pytest.fixture(scope="package")
def tied_file() -> bytes:
    """A file whose one raw tensor is stored once under two names, plus an attached file."""
    shared = RawTensor(torch.ones(64, 32))
    return container.to_bytes(CompressedModel({"emb.weight": shared, "head.weight": shared}, {"config.json": b"{}" * 100}))


@pytest.fixture(scope="package")
def compressed(tmp_path_factory):
    """(dense state dict, .dzip path): a small conv + fc model pruned and quantized."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 20), nn.ReLU(), nn.Linear(20, 5))
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    deepzip.prune_(model, sparsity={"0": 0.3, "3": 0.9, "5": 0.6}, min_size=0)
    deepzip.quantize_(model, bits={"0": 4, "3": 4, "5": 3}, min_size=0)
    path = tmp_path_factory.mktemp("plots") / "model.dzip"
    deepzip.save(model, path, index_bits={"3": 2})  # 2-bit gaps at 10% kept: fillers appear
    return dense, path


def _assert_png(path, min_width=300, min_height=200):
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = image.imread(path)
    height, width, channels = pixels.shape
    assert channels in (3, 4)
    assert width >= min_width and height >= min_height
    assert width <= 4000 and height <= 8000
    assert pixels[..., :3].std() > 0.01  # something was drawn, not a blank canvas


@pytest.fixture
def assert_png():
    """assert_png(path): `path` is a PNG that matplotlib reads back as an image of a sensible size."""
    return _assert_png


def _scan_table(kind: str) -> SensitivityTable:
    settings = (0.0, 0.5, 0.9) if kind == "sparsity" else (2, 4, 8)
    return SensitivityTable(kind, 0.9, {"0": [(s, 0.9 - 0.1 * i) for i, s in enumerate(settings)], "3": [(s, 0.9) for s in settings]})


@pytest.fixture
def scan_table():
    """scan_table(kind): a two-layer SensitivityTable of kind "sparsity" or "bits"."""
    return _scan_table
