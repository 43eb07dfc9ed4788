"""A size budget as the user writes it (`8x`, `12MB`, `11.5MiB`, `3.5` bits a weight) -> bytes.

Pure functions, no torch. A ratio is against the fp32 size of the original parameters,
the same reference every ratio deepzip prints is measured against.
"""

from __future__ import annotations

import re

from deepzip.errors import ConfigError

_BYTES = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(?:([kmgt])(i)?)?b?\s*$", re.IGNORECASE)
_RATIO = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*x\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """Bytes from '64GB', '2GiB', '500MB', '123456': decimal units, binary with an i; ValueError otherwise."""
    match = _BYTES.match(text)
    if not match or not float(match.group(1)) > 0:
        raise ValueError("give a positive size such as 500MB, 2GB or 64GiB")
    number, unit, binary = match.groups()
    power = "kmgt".index(unit.lower()) + 1 if unit else 0
    return int(float(number) * ((1024 if binary else 1000) ** power))


def budget_bytes(size: str | None, fp32_bytes: int, bits_per_weight: float | None = None, numel: int | None = None) -> int:
    """The file-size budget in bytes from `size` (`8x`, `12MB`, `12MiB`, `900000`) or `bits_per_weight`.

    Exactly one of the two must be given. `8x` means fp32_bytes / 8; bits per weight
    count every byte of the file against the `numel` parameters. ConfigError for anything
    unparseable, non-positive, or a budget below one byte.
    """
    if (size is None) == (bits_per_weight is None):
        raise ConfigError("give one of a size (8x, 12MB) and bits per weight")
    if bits_per_weight is not None:
        if isinstance(bits_per_weight, bool) or not isinstance(bits_per_weight, (int, float)) or not 0 < bits_per_weight <= 64:
            raise ConfigError(f"bits per weight must be a number in (0, 64], got {bits_per_weight!r}")
        if not numel:
            raise ConfigError("bits per weight needs the parameter count")
        return _at_least_one(int(bits_per_weight * numel / 8), f"{bits_per_weight} bits per weight")
    ratio = _RATIO.match(str(size))
    if ratio:
        value = float(ratio.group(1))
        if value < 1:
            raise ConfigError(f"size {size!r}: a ratio below 1x is larger than the fp32 model")
        return _at_least_one(int(fp32_bytes / value), size)
    try:
        return _at_least_one(parse_bytes(str(size)), size)
    except ValueError:
        raise ConfigError(f"size {size!r}: write a ratio (8x) or a size in bytes (12MB, 11.5MiB, 900000)") from None


def _at_least_one(n: int, what) -> int:
    if n < 1:
        raise ConfigError(f"size {what!r} is under one byte")
    return n
