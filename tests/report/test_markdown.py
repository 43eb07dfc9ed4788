"""The Markdown report: its numbers match the file, every linked figure exists and is a PNG."""

import re

import pytest
import torch

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel
from deepzip.errors import ConfigError
from deepzip.report import format_table, write_report


def linked_images(report) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def test_write_report_with_dense_weights_and_scans(compressed, scan_table, assert_png, tmp_path):
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
        assert_png(report.parent / link)
    assert sorted(p.name for p in report.parent.iterdir()) == sorted([*links, "report.md"])


def test_write_report_from_the_file_alone(compressed, assert_png, tmp_path):
    _, path = compressed
    report = write_report(path, tmp_path)
    assert "after compression (nonzero decoded weights only)" in report.read_text()
    for link in linked_images(report):
        assert_png(tmp_path / link)


def test_two_scans_of_one_kind_get_distinct_files(compressed, scan_table, tmp_path):
    _, path = compressed
    report = write_report(path, tmp_path, sensitivity=[scan_table("bits"), scan_table("bits")])
    assert {"sensitivity_bits_0.png", "sensitivity_bits_1.png"} <= set(linked_images(report))


def test_write_report_rejects_mismatched_dense_weights(compressed, tmp_path):
    dense, path = compressed
    with pytest.raises(ConfigError, match="dense_state_dict"):
        write_report(path, tmp_path, {"3.weight": torch.zeros(3, 3)})
    with pytest.raises(ConfigError, match="no such file"):
        write_report(tmp_path / "missing.dzip", tmp_path)


def test_write_report_gives_colliding_tensor_names_distinct_files(compressed, tmp_path):
    _, path = compressed
    record = next(r for n, r in container.read(path).tensors.items() if n == "5.weight")
    assert isinstance(record, CodebookTensor)
    model = CompressedModel({"a.b": record, "a_b": record, "a.b_": record})
    container.write(model, tmp_path / "names.dzip")
    report = write_report(tmp_path / "names.dzip", tmp_path / "out")
    streams = sorted(link for link in linked_images(report) if link.startswith("streams_"))
    assert streams == ["streams_a_b.png", "streams_a_b_2.png", "streams_a_b_3.png"]
