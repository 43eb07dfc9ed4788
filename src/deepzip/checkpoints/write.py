"""Real checkpoints out: a CompressedModel decoded to a safetensors file or a transformers directory.

Every file is written atomically (`deepzip.container.atomic`), with the umask's permissions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import safetensors.torch
import torch

from deepzip import container
from deepzip.checkpoints.read import WEIGHTS_FILE, Kind, is_weight_file
from deepzip.compressed import CompressedModel
from deepzip.container import atomic
from deepzip.errors import ConfigError, DeepzipError


def target_kind(compressed: CompressedModel, out_path: str | os.PathLike) -> Kind:
    """What write_checkpoint writes at `out_path` when no kind is given.

    A path ending in `.safetensors` gets one safetensors file (attached files are then not
    written); otherwise a model with attached files, or an existing directory, gets a
    transformers-style directory; anything else one safetensors file at that path.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() == ".safetensors":
        return "safetensors"
    if compressed.files or out_path.is_dir():
        return "transformers"
    return "safetensors"


def write_checkpoint(
    compressed: CompressedModel,
    out_path: str | os.PathLike,
    kind: Literal["safetensors", "transformers"] | None = None,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Decode `compressed` to dense tensors in their own dtypes and write them; return the paths.

    kind "safetensors" writes one safetensors file at `out_path`. kind "transformers"
    writes a directory: `model.safetensors` plus every attached file at its relative path
    (which must stay inside the directory), so `from_pretrained(out_path)` loads it. None
    picks one with `target_kind`. Tied tensors are written under each of their names as
    equal copies, since safetensors refuses shared memory: any loader finds every key, and
    transformers re-ties them on load.

    Writes are atomic: a file goes to a temporary name and is renamed into place, and a new
    directory is built under a temporary name and renamed whole. An existing file, or a
    non-empty directory, is written over only with `overwrite=True`; in an existing
    directory only deepzip's files are replaced, and weights of another layout there
    (shards, pytorch_model.bin) are an error since a loader could pick them up instead.
    """
    out_path = Path(out_path)
    kind = kind or target_kind(compressed, out_path)
    if kind not in ("safetensors", "transformers"):
        raise ConfigError(f"cannot write a checkpoint of kind {kind!r} (safetensors or transformers)")
    if kind == "transformers":
        for name in compressed.files:
            container.check_file_name(name, ConfigError)
            if name == WEIGHTS_FILE:
                raise ConfigError(f"attached file {name!r} would overwrite the model's weights")
    if out_path.exists():
        if kind == "safetensors" and out_path.is_dir():
            raise ConfigError(f"{out_path} is a directory; give a file path ending in .safetensors")
        if kind == "transformers" and not out_path.is_dir():
            raise ConfigError(f"{out_path} exists and is not a directory")
        if not overwrite and (kind == "safetensors" or any(out_path.iterdir())):
            raise DeepzipError(f"{out_path} exists; pass overwrite=True (--force) to replace it")
    tensors = _unshared(compressed.state_dict())
    if kind == "safetensors":
        atomic.replace_file(out_path, lambda tmp: _save_safetensors(tensors, tmp))
        return [out_path]
    return _write_directory(tensors, compressed.files, out_path)


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors of which no two share memory (tied names become equal copies)."""
    seen: set[int] = set()
    result = {}
    for name, tensor in state_dict.items():
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel():
            if pointer in seen:
                tensor = tensor.clone()
                pointer = tensor.untyped_storage().data_ptr()
            seen.add(pointer)
        result[name] = tensor
    return result


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    # save_file makes its file private (0600): restore the mode that open() gives under
    # the umask, as for every other file written here.
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
    mode = os.stat(path).st_mode & 0o777
    # transformers refuses a safetensors file without format metadata in some versions.
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, mode)
    atomic.fsync_file(path)


def _write_directory(tensors: dict[str, torch.Tensor], files: dict[str, bytes], out: Path) -> list[Path]:
    names = [WEIGHTS_FILE, *sorted(files)]
    if out.is_dir():
        root = out.resolve()
        stale = [e.name for e in sorted(out.iterdir()) if e.name != WEIGHTS_FILE and is_weight_file(e.name)]
        if stale:
            raise ConfigError(
                f"{out} holds other weight files ({', '.join(stale)}) that a loader could pick up instead: "
                "remove them or choose another directory"
            )
        targets = [out / name for name in names]
        for target in targets:
            # A symlinked subdirectory of an existing directory could lead a name elsewhere.
            # (The last part may be a link: os.replace replaces the link, not its target.)
            if not target.parent.resolve().is_relative_to(root):
                raise ConfigError(f"attached file {target.relative_to(out).as_posix()!r} would be written outside {out}")
        for name, target in zip(names, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            if name == WEIGHTS_FILE:
                atomic.replace_file(target, lambda tmp: _save_safetensors(tensors, tmp))
            else:
                atomic.replace_file(target, lambda tmp, data=files[name]: atomic.write_bytes(tmp, data))
        return targets

    def build(tmp_dir: Path) -> None:
        _save_safetensors(tensors, tmp_dir / WEIGHTS_FILE)
        for name in sorted(files):
            target = tmp_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(target, files[name])

    atomic.replace_directory(out, build)
    return [out / name for name in names]
