"""deepzip.budget.sizes: every way of writing a budget, and every wrong one."""

import pytest

from deepzip.budget.sizes import budget_bytes, parse_bytes
from deepzip.errors import ConfigError


@pytest.mark.parametrize(
    "text, expected",
    [("123456", 123456), ("12MB", 12_000_000), ("12mb", 12_000_000), ("2GiB", 2 << 30), ("1.5kB", 1500), ("3KiB", 3072), ("5GB", 5 * 10**9)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "0", "12 apples", "1e3x"])
def test_parse_bytes_refuses(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_ratio_and_bits_per_weight_against_the_fp32_size():
    assert budget_bytes("8x", 8_000_000) == 1_000_000
    assert budget_bytes("2.5x", 1000) == 400
    assert budget_bytes("11MiB", 1) == 11 << 20
    assert budget_bytes(None, 4000, bits_per_weight=4, numel=1000) == 500


@pytest.mark.parametrize(
    "size, bpw, numel",
    [("0.5x", None, None), ("nonsense", None, None), (None, None, None), ("8x", 4.0, 10), (None, 0.0, 10), (None, 4.0, None), (None, 100.0, 10), ("1e9x", None, None)],
)
def test_bad_budgets_are_config_errors(size, bpw, numel):
    with pytest.raises(ConfigError):
        budget_bytes(size, 1000, bpw, numel)
