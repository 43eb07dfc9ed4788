"""Figures and the Markdown report: every function writes a real PNG, the report links resolve."""

import re

import pytest
import torch
from matplotlib import image
from torch import nn

import deepzip
from deepzip.container import fileformat
from deepzip.report import plots
from deepzip.compressed import CodebookTensor, CompressedModel
from deepzip.errors import ConfigError
from deepzip.report.tables import format_table, layer_stats, write_report
from deepzip.train.sensitivity import SensitivityTable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=300, min_height=200):
    """`path` is a PNG that matplotlib reads back as an RGBA image of a sensible size."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = image.imread(path)
    height, width, channels = pixels.shape
    assert channels in (3, 4)
    assert width >= min_width and height >= min_height
    assert width <= 4000 and height <= 8000
    assert pixels[..., :3].std() > 0.01  # something was drawn, not a blank canvas


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """(dense state dict, .dzip path): a small conv + fc model pruned and quantized."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 20), nn.ReLU(), nn.Linear(20, 5))
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    deepzip.prune_(model, sparsity={"0": 0.3, "3": 0.9, "5": 0.6})
    deepzip.quantize_(model, bits={"0": 4, "3": 4, "5": 3})
    path = tmp_path_factory.mktemp("plots") / "model.dzip"
    deepzip.save(model, path, index_bits={"3": 2})  # 2-bit gaps at 10% kept: fillers appear
    return dense, path


def records(path) -> dict[str, CodebookTensor]:
    return {n: r for n, r in fileformat.read(path).tensors.items() if isinstance(r, CodebookTensor)}


def scan_table(kind: str) -> SensitivityTable:
    settings = (0.0, 0.5, 0.9) if kind == "sparsity" else (2, 4, 8)
    return SensitivityTable(kind, 0.9, {"0": [(s, 0.9 - 0.1 * i) for i, s in enumerate(settings)], "3": [(s, 0.9) for s in settings]})


def test_weight_histograms(compressed, tmp_path):
    dense, path = compressed
    after = {name: record.to_dense() for name, record in records(path).items()}
    assert_png(plots.weight_histograms(dense, after, tmp_path / "both.png"))
    assert_png(plots.weight_histograms(None, after, tmp_path / "after.png"))


def test_quantized_distribution(compressed, tmp_path):
    dense, path = compressed
    layers = records(path)
    assert_png(plots.quantized_distribution(layers["3.weight"], tmp_path / "one.png", dense=dense["3.weight"]))
    assert_png(plots.quantized_distribution(layers, tmp_path / "all.png"))


def test_stream_distributions_with_fillers_and_unset_index_bits(compressed, tmp_path):
    _, path = compressed
    record = records(path)["3.weight"]
    assert record.index_bits == 2
    assert_png(plots.stream_distributions(record, tmp_path / "fillers.png", name="3.weight"))
    # An in-memory record with no width chosen yet: the writer's best width is used.
    torch.manual_seed(1)
    layer = nn.Linear(30, 10)
    deepzip.prune_(layer, sparsity=0.8)
    deepzip.quantize_(layer, bits=3)
    unset = CompressedModel.from_module(layer).tensors["weight"]
    assert unset.index_bits is None
    assert_png(plots.stream_distributions(unset, tmp_path / "unset.png"))


def test_bytes_per_stage(compressed, tmp_path):
    _, path = compressed
    assert_png(plots.bytes_per_stage(layer_stats(path.read_bytes()), tmp_path / "bytes.png"))


@pytest.mark.parametrize("kind", ["sparsity", "bits"])
def test_sensitivity_curves(kind, tmp_path):
    assert_png(plots.sensitivity_curves(scan_table(kind), tmp_path / f"{kind}.png", tolerance=0.05, metric="accuracy"))


def test_plot_inputs_are_checked(compressed, tmp_path):
    dense, path = compressed
    layers = records(path)
    with pytest.raises(ConfigError, match="PNG"):
        plots.bytes_per_stage(layer_stats(path.read_bytes()), tmp_path / "bytes.jpg")
    with pytest.raises(ConfigError, match="no tensors"):
        plots.weight_histograms(None, {}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="dense shape"):
        plots.quantized_distribution(layers, tmp_path / "x.png", dense={"3.weight": dense["5.weight"]})
    with pytest.raises(ConfigError, match="several layers"):
        plots.quantized_distribution(layers, tmp_path / "x.png", dense=dense["3.weight"])
    with pytest.raises(ConfigError, match="tolerance"):
        plots.sensitivity_curves(scan_table("bits"), tmp_path / "x.png", tolerance=-1)
    assert not list(tmp_path.iterdir())  # nothing written on a rejected call


def linked_images(report) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def test_write_report_with_dense_weights_and_scans(compressed, tmp_path):
    dense, path = compressed
    report = write_report(path, tmp_path / "report", dense, [scan_table("sparsity"), scan_table("bits")], tolerance=0.05)
    assert report == tmp_path / "report" / "report.md"
    text = report.read_text()
    assert format_table(path.read_bytes()) in text
    dense_bytes = 4 * sum(v.numel() for v in dense.values())
    size = path.stat().st_size
    assert f"dense fp32 size: {dense_bytes:,} bytes" in text
    assert f"file size: {size:,} bytes" in text and f"**{dense_bytes / size:.1f}x**" in text
    assert "## Sensitivity (sparsity)" in text and "## Sensitivity (bits)" in text
    links = linked_images(report)
    assert set(links) == {
        "bytes_per_stage.png", "weight_histograms.png", "centroids.png", "streams_0_weight.png",
        "streams_3_weight.png", "streams_5_weight.png", "sensitivity_sparsity.png", "sensitivity_bits.png",
    }  # fmt: skip
    for link in links:
        assert (report.parent / link).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in report.parent.iterdir()) == sorted([*links, "report.md"])


def test_write_report_from_the_file_alone(compressed, tmp_path):
    _, path = compressed
    report = write_report(path, tmp_path)
    assert "after compression (nonzero decoded weights only)" in report.read_text()
    for link in linked_images(report):
        assert_png(tmp_path / link)


def test_write_report_rejects_mismatched_dense_weights(compressed, tmp_path):
    dense, path = compressed
    with pytest.raises(ConfigError, match="dense_state_dict"):
        write_report(path, tmp_path, {"3.weight": torch.zeros(3, 3)})
    with pytest.raises(ConfigError, match="no such file"):
        write_report(tmp_path / "missing.dzip", tmp_path)


def test_write_report_gives_colliding_tensor_names_distinct_files(compressed, tmp_path):
    _, path = compressed
    record = records(path)["5.weight"]
    model = CompressedModel({"a.b": record, "a_b": record, "a.b_": record})
    fileformat.write(model, tmp_path / "names.dzip")
    report = write_report(tmp_path / "names.dzip", tmp_path / "out")
    streams = sorted(link for link in linked_images(report) if link.startswith("streams_"))
    assert streams == ["streams_a_b.png", "streams_a_b_2.png", "streams_a_b_3.png"]
