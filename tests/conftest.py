"""Shared fixtures: a tiny MNIST-format data set on disk, so no test needs the real one."""

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

# The fuzz harness lives beside the benchmark that drives it, outside the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """IDX files with 10,200 training images (200 train + 10k valid) and 300 test images.

    Each class is a fixed random pattern plus noise, so a model can learn it in an epoch.
    """
    root = tmp_path_factory.mktemp("tiny-mnist")
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(10, 28, 28))

    def make(n):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        noise = rng.integers(-40, 40, size=(n, 28, 28))
        return np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8), labels

    for prefix, n in (("train", 10_200), ("t10k", 300)):
        images, labels = make(n)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(_idx(images, 0x803))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels, 0x801))
    return root
