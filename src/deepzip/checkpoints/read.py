"""Real checkpoints in: safetensors files, torch state dicts and transformers directories.

`open_checkpoint` opens any of them lazily: names, dtypes and shapes come from the files'
headers, and a tensor is loaded only when asked for, one at a time, so a checkpoint of any
size is read in bounded memory. `read_checkpoint` loads everything at once on top of it.

Reading never executes code: safetensors files are plain tensors, torch files are loaded
with `weights_only=True` only (a pickled model object is refused, not unpickled), and the
small files of a transformers directory are carried as bytes. A directory's symlinks
never lead reading outside it (`deepzip.checkpoints.directory`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

import safetensors
import torch

from deepzip import container
from deepzip.checkpoints.directory import walk
from deepzip.errors import ConfigError, DeepzipError
from deepzip.limits import MAX_ATTACHED_FILE_BYTES
from deepzip.train.ties import group_tied

Kind = Literal["safetensors", "torch", "transformers"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WEIGHTS_FILE = "model.safetensors"  # what write_checkpoint writes into a directory
SAFETENSORS_INDEX = "model.safetensors.index.json"
# transformers' own order of preference among the layouts of a directory's weights.
_LAYOUTS = (WEIGHTS_FILE, SAFETENSORS_INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json")
# Files of a transformers directory that hold weights (read, or skipped as another format's
# copy of them), never carried as attached files. training_args.bin is a pickled object:
# its suffix keeps it out, and it is never loaded.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".tflite", ".ot")
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")
_STATE_DICT_KEYS = ("state_dict", "model")  # where training checkpoints nest the weights
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6; only it can be memory-mapped

# The safetensors format's dtype names (its header's "dtype" field).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def is_weight_file(name: str) -> bool:
    """Whether a file of a model directory holds weights or their index, in any format."""
    return name.lower().endswith(_WEIGHT_SUFFIXES + _WEIGHT_INDEXES)


@dataclass(frozen=True)
class Checkpoint:
    """A model read from disk: its tensors, the small files that travel with it, and its kind.

    `files` maps relative paths ('/'-separated) to bytes (a transformers directory's
    config.json, tokenizer files, `1_Pooling/config.json`...). `skipped` names the entries
    of a directory that were not carried (weights in another format, symlinks leading
    outside it, files over MAX_ATTACHED_FILE_BYTES; a directory's name ends in '/'), so
    that a caller can say so instead of dropping them silently; `CheckpointSource.skipped`
    gives each one's reason.
    """

    state_dict: dict[str, torch.Tensor]
    files: dict[str, bytes] = field(default_factory=dict)
    kind: Kind = "safetensors"
    skipped: tuple[str, ...] = ()


class _SafetensorsFile:
    """One safetensors file: its header read once, each tensor read through a mapping of its own.

    The file is mapped only while one tensor is read and unmapped right after: a mapping
    kept open would keep every page ever read resident (a 6 GB checkpoint showed a 6.3 GB
    RSS for 0.8 GB of anonymous memory), which no one could tell from a real leak.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            with safetensors.safe_open(str(path), framework="pt", device="cpu") as opened:
                self.names = list(opened.keys())
                self._metas = {name: (opened.get_slice(name).get_dtype(), tuple(opened.get_slice(name).get_shape())) for name in self.names}
        except (safetensors.SafetensorError, ValueError, TypeError, OSError) as error:
            raise DeepzipError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None
        _checked(self.names, path)

    def meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        stored, shape = self._metas[name]
        dtype = SAFETENSORS_DTYPES.get(stored)
        if dtype is None:
            raise ConfigError(f"{self.path}: tensor {name!r} has dtype {stored}, which deepzip does not read")
        return dtype, shape

    def tensor(self, name: str) -> torch.Tensor:
        try:
            with safetensors.safe_open(str(self.path), framework="pt", device="cpu") as opened:
                return opened.get_tensor(name)
        except (safetensors.SafetensorError, OSError) as error:
            raise DeepzipError(f"{self.path}: cannot read tensor {name!r} ({_first_line(error)})") from None


class _TorchFile:
    """One torch file, loaded with its storages memory-mapped: a tensor's bytes are read when used."""

    def __init__(self, path: Path):
        self.tensors = _state_dict_of(_load_torch(path), path)
        self.names = list(self.tensors)
        _checked(self.names, path)

    def meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        tensor = self.tensors[name]
        return tensor.dtype, tuple(tensor.shape)

    def tensor(self, name: str) -> torch.Tensor:
        return self.tensors[name]


class CheckpointSource:
    """A checkpoint opened lazily (see `open_checkpoint`): names and metadata now, tensors on request.

    `kind` and `path` (absolute) say what was opened; `names` are the tensor names, sorted.
    `meta(name)` gives (dtype, shape) without loading the tensor; `tensor(name)` loads that
    one tensor (a safetensors tensor is read into memory, a torch file's is a view of its
    memory-mapped storage). `ties` maps each name to its canonical name as
    `deepzip.train.ties.group_tied` computes it: entries of a torch file that share storage
    are one tensor; safetensors files have no ties. `files` maps the attached small files'
    relative paths to bytes, and `skipped` maps each entry not carried to the reason.

    A source holds open files: close it (or use it as a context manager). It cannot cross
    a process boundary as such: pickling it pickles its path, and unpickling reopens it
    with `open_checkpoint`, so a worker process reads the same checkpoint.
    """

    def __init__(
        self,
        path: Path,
        kind: Kind,
        weights: list[_SafetensorsFile | _TorchFile],
        files: dict[str, bytes],
        skipped: dict[str, str],
    ):
        self.path = path
        self.kind = kind
        self.files = files
        self.skipped = skipped
        # Name -> the file holding it, in the files' own order (read_checkpoint keeps it).
        self._where: dict[str, _SafetensorsFile | _TorchFile] = {}
        for weight_file in weights:
            self._where.update(dict.fromkeys(weight_file.names, weight_file))
        self.names = tuple(sorted(self._where))
        mapped = {name: f.tensors[name] for name, f in self._where.items() if isinstance(f, _TorchFile)}
        tied = group_tied(mapped)  # data pointers of mapped storages: nothing is read
        self.ties = {name: tied.get(name, name) for name in self.names}

    def meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """(dtype, shape) of tensor `name`, from the file's header; nothing is loaded."""
        return self._file_of(name).meta(name)

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name`, and only it, loaded from its file (on the CPU, in its stored dtype)."""
        return self._file_of(name).tensor(name)

    def _file_of(self, name: str) -> _SafetensorsFile | _TorchFile:
        if not self._where and self.names:
            raise DeepzipError(f"{self.path}: the checkpoint source is closed")
        if name not in self._where:
            raise ConfigError(f"{self.path}: no tensor named {name!r}")
        return self._where[name]

    def close(self) -> None:
        """Let go of the open files (tensors already returned stay valid)."""
        self._where = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __reduce__(self):
        # Open handles do not cross processes: the other side reopens from the path.
        return open_checkpoint, (self.path,)

    def __repr__(self) -> str:
        return f"CheckpointSource({str(self.path)!r}, kind={self.kind!r}, {len(self.names)} tensors)"


def open_checkpoint(path: str | os.PathLike) -> CheckpointSource:
    """Open a checkpoint lazily: a `.safetensors` file, a torch state dict (`.pt`, `.pth`,
    `.bin`, `.ckpt`) or a transformers model directory (config.json + model.safetensors,
    sharded safetensors with model.safetensors.index.json, pytorch_model.bin, or sharded
    torch files with pytorch_model.bin.index.json); see CheckpointSource.

    Use it as a context manager: `with open_checkpoint(path) as source: ...`. Opening
    reads headers only: safetensors headers, and the small pickle of a torch file, whose
    storages are memory-mapped (torch files of the legacy pre-1.6 format cannot be mapped
    and are loaded whole). A torch file may hold a plain state dict or a training
    checkpoint that nests one under "state_dict" or "model" (its other entries are
    ignored). In a directory, every file in it and its subdirectories that is no weight
    file travels as an attached file, under its relative path; symlinks leading outside
    the directory are refused (`deepzip.checkpoints.directory`), and a weights file that
    is one is an error. Dtypes are kept as stored.
    """
    path = Path(path).absolute()  # absolute: a worker with another working directory reopens it
    if path.is_dir():
        return _open_directory(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return CheckpointSource(path, "safetensors", [_SafetensorsFile(path)], {}, {})
    if suffix in TORCH_SUFFIXES:
        return CheckpointSource(path, "torch", [_TorchFile(path)], {}, {})
    raise ConfigError(
        f"{path}: unknown kind of checkpoint (expected .safetensors, {', '.join(TORCH_SUFFIXES)} or a transformers directory)"
    )


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint whole: every tensor, in the order its files store them (see open_checkpoint).

    Tied entries of a torch file stay one tensor under several names; a torch file's
    tensors are views of its memory-mapped storage.
    """
    with open_checkpoint(path) as source:
        state_dict = {name: source.tensor(name) for name in source._where}
        return Checkpoint(state_dict, dict(source.files), source.kind, tuple(source.skipped))


def _load_torch(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            mappable = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        # mmap: the storages map the file, so loading reads the pickle and no tensor data.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mappable)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:  # weights_only refused a class or function: the file pickles an object
            raise ConfigError(
                f"{path}: the file is a pickled Python object ({found.group(1)}), not a state dict of tensors; "
                "deepzip will not unpickle it (that could run code): save model.state_dict() with torch.save "
                "(or safetensors) and pass that"
            ) from None
        detail = str(error).partition("WeightsUnpickler error:")[2].strip() or str(error)
        raise DeepzipError(f"{path}: not a readable torch checkpoint ({_first_line(detail)})") from None
    except Exception as error:  # damaged files raise any of KeyError, EOFError, RuntimeError, ...
        raise DeepzipError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {_first_line(error)})") from None


def _state_dict_of(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in what torch.load returned: the object itself or a nested entry."""
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    if isinstance(loaded, Mapping):
        for key in _STATE_DICT_KEYS:
            nested = loaded.get(key)
            if isinstance(nested, Mapping) and nested and all(isinstance(v, torch.Tensor) for v in nested.values()):
                return dict(nested)
    raise ConfigError(
        f"{path}: no state dict found (expected a dict of tensors, or a dict whose "
        f"{' or '.join(repr(k) for k in _STATE_DICT_KEYS)} entry is one)"
    )


def _checked(names: list, path: Path) -> None:
    if not names:
        raise ConfigError(f"{path}: holds no tensors")
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"{path}: tensor key {name!r} is not a string")


def _open_directory(path: Path) -> CheckpointSource:
    tree = walk(path)

    def present(name: str) -> bool:
        """Whether top-level file `name` is there to read; one refused is an error, not absent."""
        if name in tree.refused:
            raise ConfigError(f"{path / name}: {tree.refused[name]}")
        return name in tree.found

    if not present("config.json"):
        raise ConfigError(f"{path}: a directory without config.json is not a transformers model")
    layout = next((name for name in _LAYOUTS if present(name)), None)
    if layout is None:
        raise ConfigError(f"{path}: no weights found (expected {WEIGHTS_FILE}, {SAFETENSORS_INDEX} or pytorch_model.bin)")
    # Opened under the directory's path, not the resolved one: messages name what the user gave.
    opener = _SafetensorsFile if layout.startswith("model.safetensors") else _TorchFile
    if layout.endswith(".index.json"):
        read, weights = _open_shards(path / layout, opener, present)
    else:
        read, weights = [layout], [opener(path / layout)]
    files, skipped = {}, dict(tree.refused)
    for name, real in tree.found.items():
        if name in read:
            continue
        if is_weight_file(name.rpartition("/")[2]):
            skipped[name] = "weights (or a pickled object) by its name, not attached"
        elif not _plain_file_name(name):
            skipped[name] = "a name a .dzip file cannot store, not attached"
        else:
            with open(real, "rb") as f:
                data = f.read(MAX_ATTACHED_FILE_BYTES + 1)  # never more than the limit in memory
            if len(data) > MAX_ATTACHED_FILE_BYTES:
                skipped[name] = f"larger than {MAX_ATTACHED_FILE_BYTES:,} bytes, the limit of an attached file"
            else:
                files[name] = data
    return CheckpointSource(path, "transformers", weights, files, dict(sorted(skipped.items())))


def _open_shards(index_path: Path, opener: Callable[[Path], _SafetensorsFile | _TorchFile], present: Callable[[str], bool]):
    """(files read, opened shards) of an index file; every tensor it names must be in its shard."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to file names")
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{index_path}: not a valid weight index ({_first_line(error)})") from None
    shards = list(dict.fromkeys(weight_map.values()))
    opened, seen = [], set()
    for shard in shards:
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise ConfigError(f"{index_path}: shard {shard!r} is not a file name in the model's directory")
        if not present(shard):
            raise ConfigError(f"{index_path}: shard {shard} is missing")
        weight_file = opener(index_path.parent / shard)
        for name in weight_file.names:
            if name in seen:
                raise ConfigError(f"{index_path}: tensor {name!r} is in more than one shard")
            seen.add(name)
        opened.append(weight_file)
    for name, shard in weight_map.items():
        if name not in seen:
            raise ConfigError(f"{index_path}: tensor {name!r} is not in its shard {shard}")
    return [index_path.name, *shards], opened


def _plain_file_name(name: str) -> bool:
    """Whether a .dzip file record may carry `name` (no backslash, no drive-like colon...)."""
    try:
        container.check_file_name(name, ConfigError)
    except ConfigError:
        return False
    return True


def _first_line(error: BaseException | str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
