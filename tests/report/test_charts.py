"""Bytes-per-stage and sensitivity charts: real PNGs, inputs checked before anything is written."""

import pytest

from deepzip.errors import ConfigError
from deepzip.report import charts
from deepzip.report.stats import layer_stats
from deepzip.train.sensitivity import SensitivityTable


def test_bytes_per_stage(compressed, assert_png, tmp_path):
    _, path = compressed
    assert_png(charts.bytes_per_stage(layer_stats(path.read_bytes()), tmp_path / "bytes.png"))


@pytest.mark.parametrize("kind", ["sparsity", "bits"])
def test_sensitivity_curves(kind, scan_table, assert_png, tmp_path):
    assert_png(charts.sensitivity_curves(scan_table(kind), tmp_path / f"{kind}.png", tolerance=0.05, metric="accuracy"))


def test_chart_inputs_are_checked(compressed, scan_table, tmp_path):
    _, path = compressed
    with pytest.raises(ConfigError, match="PNG"):
        charts.bytes_per_stage(layer_stats(path.read_bytes()), tmp_path / "bytes.jpg")
    with pytest.raises(ConfigError, match="no layer stats"):
        charts.bytes_per_stage([], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="tolerance"):
        charts.sensitivity_curves(scan_table("bits"), tmp_path / "x.png", tolerance=-1)
    with pytest.raises(ConfigError, match="no layers"):
        charts.sensitivity_curves(SensitivityTable("bits", 0.9, {}), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())  # nothing written on a rejected call
