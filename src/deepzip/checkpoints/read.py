"""Real checkpoints in: safetensors files, torch state dicts and transformers directories.

Reading never executes code: safetensors files are plain tensors, torch files are loaded
with `weights_only=True` only (a pickled model object is refused, not unpickled), and the
small files of a transformers directory are carried as bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import safetensors
import safetensors.torch
import torch

from deepzip import container
from deepzip.errors import ConfigError, DeepzipError
from deepzip.limits import MAX_ATTACHED_FILE_BYTES

Kind = Literal["safetensors", "torch", "transformers"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WEIGHTS_FILE = "model.safetensors"  # what write_checkpoint writes into a directory
# Files of a transformers directory that hold weights (read, or skipped as another format's
# copy of them), never carried as attached files. training_args.bin is a pickled object:
# its suffix keeps it out, and it is never loaded.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".tflite", ".ot")
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")
_STATE_DICT_KEYS = ("state_dict", "model")  # where training checkpoints nest the weights


def is_weight_file(name: str) -> bool:
    """Whether a file of a model directory holds weights or their index, in any format."""
    return name.lower().endswith(_WEIGHT_SUFFIXES + _WEIGHT_INDEXES)


@dataclass(frozen=True)
class Checkpoint:
    """A model read from disk: its tensors, the small files that travel with it, and its kind.

    `files` maps relative paths to bytes (a transformers directory's config.json, tokenizer
    files...). `skipped` names the entries of a directory that were not carried (weights in
    another format, subdirectories, files over MAX_ATTACHED_FILE_BYTES), so that a caller
    can say so instead of dropping them silently.
    """

    state_dict: dict[str, torch.Tensor]
    files: dict[str, bytes] = field(default_factory=dict)
    kind: Kind = "safetensors"
    skipped: tuple[str, ...] = ()


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a `.safetensors` file, a torch state dict (`.pt`, `.pth`, `.bin`, `.ckpt`) or a
    transformers model directory (config.json + model.safetensors, sharded safetensors with
    their index, or pytorch_model.bin).

    A torch file may hold a plain state dict or a training checkpoint that nests one under
    "state_dict" or "model" (its other entries are ignored). Only the top level of a
    directory is read; see `Checkpoint.skipped`. Dtypes are kept as stored.
    """
    path = Path(path)
    if path.is_dir():
        return _read_directory(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return Checkpoint(_read_safetensors(path), kind="safetensors")
    if suffix in TORCH_SUFFIXES:
        return Checkpoint(_read_torch(path), kind="torch")
    raise ConfigError(
        f"{path}: unknown kind of checkpoint (expected .safetensors, {', '.join(TORCH_SUFFIXES)} or a transformers directory)"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, ValueError, TypeError) as error:
        raise DeepzipError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None
    return _checked(state_dict, path)


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
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
    return _checked(_state_dict_of(loaded, path), path)


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


def _checked(state_dict: dict, path: Path) -> dict[str, torch.Tensor]:
    if not state_dict:
        raise ConfigError(f"{path}: holds no tensors")
    for name in state_dict:
        if not isinstance(name, str):
            raise ConfigError(f"{path}: tensor key {name!r} is not a string")
    return state_dict


def _read_directory(path: Path) -> Checkpoint:
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: a directory without config.json is not a transformers model")
    # transformers' own order of preference: one safetensors file, then shards, then torch.
    if (path / WEIGHTS_FILE).is_file():
        weight_files = [WEIGHTS_FILE]
        state_dict = _read_safetensors(path / WEIGHTS_FILE)
    elif (path / "model.safetensors.index.json").is_file():
        weight_files, state_dict = _read_shards(path / "model.safetensors.index.json", _read_safetensors)
    elif (path / "pytorch_model.bin").is_file():
        weight_files = ["pytorch_model.bin"]
        state_dict = _read_torch(path / "pytorch_model.bin")
    elif (path / "pytorch_model.bin.index.json").is_file():
        weight_files, state_dict = _read_shards(path / "pytorch_model.bin.index.json", _read_torch)
    else:
        raise ConfigError(
            f"{path}: no weights found (expected {WEIGHTS_FILE}, model.safetensors.index.json or pytorch_model.bin)"
        )
    files, skipped = {}, []
    for entry in sorted(path.iterdir()):
        name = entry.name
        if name in weight_files:
            continue
        # is_file() follows symlinks: the Hugging Face cache links every file to a blob.
        if (
            not entry.is_file()
            or is_weight_file(name)
            or entry.stat().st_size > MAX_ATTACHED_FILE_BYTES
            or not _plain_file_name(name)
        ):
            skipped.append(name + ("/" if entry.is_dir() else ""))
            continue
        files[name] = entry.read_bytes()
    return Checkpoint(state_dict, files, "transformers", tuple(skipped))


def _read_shards(index_path: Path, read: Callable[[Path], dict[str, torch.Tensor]]) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Merge the shards an index file lists; every tensor it names must be in its shard."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to file names")
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{index_path}: not a valid weight index ({_first_line(error)})") from None
    shards = list(dict.fromkeys(weight_map.values()))
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shards:
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise ConfigError(f"{index_path}: shard {shard!r} is not a file name in the model's directory")
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise ConfigError(f"{index_path}: shard {shard} is missing")
        for name, tensor in read(shard_path).items():
            if name in state_dict:
                raise ConfigError(f"{index_path}: tensor {name!r} is in more than one shard")
            state_dict[name] = tensor
    for name, shard in weight_map.items():
        if name not in state_dict:
            raise ConfigError(f"{index_path}: tensor {name!r} is not in its shard {shard}")
    return [index_path.name, *shards], state_dict


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
