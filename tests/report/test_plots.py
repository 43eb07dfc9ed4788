"""Weight and stream figures: every function writes a real PNG and checks its inputs first."""

import pytest
import torch
from torch import nn

import deepzip
from deepzip import container
from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.report import plots


def records(path) -> dict[str, CodebookTensor]:
    return {n: r for n, r in container.read(path).tensors.items() if isinstance(r, CodebookTensor)}


def test_weight_histograms(compressed, assert_png, tmp_path):
    dense, path = compressed
    after = {name: record.to_dense() for name, record in records(path).items()}
    assert_png(plots.weight_histograms(dense, after, tmp_path / "both.png"))
    assert_png(plots.weight_histograms(None, after, tmp_path / "after.png"))


def test_quantized_distribution(compressed, assert_png, tmp_path):
    dense, path = compressed
    layers = records(path)
    assert_png(plots.quantized_distribution(layers["3.weight"], tmp_path / "one.png", dense=dense["3.weight"]))
    assert_png(plots.quantized_distribution(layers, tmp_path / "all.png"))


def test_stream_distributions_with_fillers_and_unset_index_bits(compressed, assert_png, tmp_path):
    _, path = compressed
    record = records(path)["3.weight"]
    assert record.index_bits == 2
    assert_png(plots.stream_distributions(record, tmp_path / "fillers.png", name="3.weight"))
    # An in-memory record with no width chosen yet: the writer's best width is used.
    torch.manual_seed(1)
    layer = nn.Linear(30, 10)
    deepzip.prune_(layer, sparsity=0.8, min_size=0)
    deepzip.quantize_(layer, bits=3, min_size=0)
    unset = deepzip.export(layer).tensors["weight"]
    assert unset.index_bits is None
    assert_png(plots.stream_distributions(unset, tmp_path / "unset.png"))


def test_plot_inputs_are_checked(compressed, tmp_path):
    dense, path = compressed
    layers = records(path)
    with pytest.raises(ConfigError, match="PNG"):
        plots.weight_histograms(None, {"w": dense["3.weight"]}, tmp_path / "w.jpg")
    with pytest.raises(ConfigError, match="no tensors"):
        plots.weight_histograms(None, {}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="dense shape"):
        plots.quantized_distribution(layers, tmp_path / "x.png", dense={"3.weight": dense["5.weight"]})
    with pytest.raises(ConfigError, match="several layers"):
        plots.quantized_distribution(layers, tmp_path / "x.png", dense=dense["3.weight"])
    with pytest.raises(ConfigError, match="CodebookTensor"):
        plots.stream_distributions(dense["3.weight"], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())  # nothing written on a rejected call
