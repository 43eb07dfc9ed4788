"""Real checkpoints out: a CompressedModel decoded to a safetensors file or a transformers directory.

Tensors are decoded and written one at a time (`write_sharded`), so a model of any size is
written in bounded memory, as one file or as shards with their index. Every file is
written atomically (`deepzip.container.atomic`), with the umask's permissions.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from deepzip import container
from deepzip.checkpoints.read import (
    SAFETENSORS_DTYPES,
    SAFETENSORS_INDEX,
    WEIGHTS_FILE,
    Kind,
    is_weight_file,
)
from deepzip.compressed import CompressedModel
from deepzip.container import atomic
from deepzip.container.dtypes import DTYPES
from deepzip.container.reader import DzipFile
from deepzip.errors import ConfigError, DeepzipError
from deepzip.limits import DEFAULT_SHARD_BYTES, MIN_SHARD_BYTES

Entry = tuple[str, torch.dtype, tuple[int, ...]]  # (name, dtype, shape) of a tensor to write

# The Hub's usual shard size: save_pretrained's max_shard_size "5GB" before transformers 5.
_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def target_kind(compressed: CompressedModel | DzipFile, out_path: str | os.PathLike) -> Kind:
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
    compressed: CompressedModel | DzipFile,
    out_path: str | os.PathLike,
    kind: Literal["safetensors", "transformers"] | None = None,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> list[Path]:
    """Decode `compressed` to dense tensors in their own dtypes and write them; return the paths.

    `compressed` is a CompressedModel, or an open .dzip file (`deepzip.container.open_file`)
    whose records are decoded only as they are written. kind "safetensors" writes one
    safetensors file at `out_path`. kind "transformers" writes a directory of safetensors
    shards of at most `shard_bytes` each (one shard: `model.safetensors`; more: numbered
    shards and `model.safetensors.index.json`) plus every attached file at its relative path
    (which must stay inside the directory), so `from_pretrained(out_path)` loads it; see
    `write_sharded`. None picks the kind with `target_kind`. One tensor at a time is decoded
    and in memory. Tied tensors are written under
    each of their names as equal copies, since safetensors refuses shared memory: any
    loader finds every key, and transformers re-ties them on load.

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
    if isinstance(compressed, DzipFile):
        records = {r.name: r for r in compressed.header.records}
        entries = [(name, DTYPES[records[name].dtype_code], records[name].shape) for name in compressed.tensor_names]

        def produce(name: str) -> torch.Tensor:
            return compressed.decode(name).to_dense()

    else:
        entries = [(name, record.dtype, tuple(record.shape)) for name, record in compressed.tensors.items()]

        def produce(name: str) -> torch.Tensor:
            return compressed.tensors[name].to_dense()

    if kind == "transformers":
        return write_sharded(out_path, entries, produce, compressed.files, shard_bytes=shard_bytes, overwrite=overwrite)
    if out_path.is_dir():
        raise ConfigError(f"{out_path} is a directory; give a file path ending in .safetensors")
    _check_entries(entries)
    atomic.check_overwrite(out_path, overwrite)
    atomic.replace_file(out_path, lambda tmp: _write_safetensors(tmp, entries, produce))
    return [out_path]


def write_sharded(
    out_dir: str | os.PathLike,
    entries: Sequence[Entry],
    produce: Callable[[str], torch.Tensor],
    files: Mapping[str, bytes] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> list[Path]:
    """Write a transformers-style directory of safetensors shards, one tensor in memory at a time.

    `entries` lists every tensor as (name, dtype, shape) up front; `produce(name)` returns
    that tensor (decoding it, say) when its bytes are due, and it is let go once written.
    The shards are planned from the sizes alone (`plan_shards`): with one shard the weights
    are `model.safetensors`, with N > 1 `model-00001-of-0000N.safetensors`... plus
    `model.safetensors.index.json` ({"metadata": {"total_size": bytes}, "weight_map":
    {name: shard}}), as transformers writes and reads them. `files` (relative path ->
    bytes) are written at their paths, which must stay inside the directory. Return the
    paths written: weights, index, then attached files.

    The directory is built under a temporary name and renamed whole; an existing non-empty
    one is written into only with `overwrite=True`, as `write_checkpoint` describes.
    """
    out_dir, files = Path(out_dir), dict(files or {})
    if shard_bytes < MIN_SHARD_BYTES:
        raise ConfigError(f"shard size {shard_bytes:,} bytes is below the minimum of {MIN_SHARD_BYTES:,} (1 MiB)")
    _check_entries(entries)
    shards = plan_shards(entries, shard_bytes)
    if len(shards) == 1:
        layout = {WEIGHTS_FILE: shards[0]}
    else:
        layout = {f"model-{i:05d}-of-{len(shards):05d}.safetensors": shard for i, shard in enumerate(shards, 1)}
    weight_names = list(layout) + ([SAFETENSORS_INDEX] if len(shards) > 1 else [])
    for name in files:
        container.check_file_name(name, ConfigError)
        if name in weight_names:
            raise ConfigError(f"attached file {name!r} would overwrite the model's weights")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"{out_dir} exists and is not a directory")
        if not overwrite and any(out_dir.iterdir()):
            raise DeepzipError(f"{out_dir} exists; pass overwrite=True (--force) to replace it")

    index = {
        "metadata": {"total_size": sum(_nbytes(entry) for entry in entries)},
        "weight_map": {name: shard_name for shard_name, shard in layout.items() for name, _, _ in shard},
    }

    def write_all(directory: Path) -> None:
        # Each file atomically, so that in an existing directory a failure leaves every file
        # whole; the index last, so that it never names a shard not yet written.
        for shard_name, shard in layout.items():
            atomic.replace_file(directory / shard_name, lambda tmp, shard=shard: _write_safetensors(tmp, shard, produce))
        for name in sorted(files):
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            atomic.replace_file(directory / name, lambda tmp, data=files[name]: atomic.write_bytes(tmp, data))
        if len(shards) > 1:
            data = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
            atomic.replace_file(directory / SAFETENSORS_INDEX, lambda tmp: atomic.write_bytes(tmp, data))

    if out_dir.is_dir():
        _check_existing(out_dir, weight_names, files)
        write_all(out_dir)
    else:
        atomic.replace_directory(out_dir, write_all)
    return [out_dir / name for name in weight_names + sorted(files)]


def plan_shards(entries: Sequence[Entry], shard_bytes: int) -> list[list[Entry]]:
    """Entries split into shards, greedily in their order: a shard takes entries while its
    tensors' bytes stay within `shard_bytes`; a tensor bigger than that is a shard alone."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        nbytes = _nbytes(entry)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def _check_entries(entries: Sequence[Entry]) -> None:
    seen = set()
    for name, dtype, _ in entries:
        if name in seen:
            raise ConfigError(f"tensor {name!r} is listed twice")
        if name == "__metadata__":  # the header's own key
            raise ConfigError("a tensor cannot be named '__metadata__' in a safetensors file")
        seen.add(name)
        if dtype not in _CODES:
            raise ConfigError(f"tensor {name!r}: dtype {dtype} cannot be written to a safetensors file")


def _nbytes(entry: Entry) -> int:
    _, dtype, shape = entry
    count = 1
    for size in shape:
        count *= size
    return count * dtype.itemsize


def _write_safetensors(path: Path, entries: Sequence[Entry], produce: Callable[[str], torch.Tensor]) -> None:
    """One safetensors file: the header from the entries first, then each tensor's bytes as produced.

    Written by hand, since the safetensors library only saves a whole dict of tensors held
    in memory. The format: an 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and [begin, end) offsets into the data (plus "__metadata__",
    which some transformers versions require to say "format": "pt"), padded with spaces
    to a multiple of 8, then the tensors' raw little-endian bytes back to back.
    """
    # Widest dtypes first, as the library orders them: the data starts 8-aligned, so every
    # tensor then starts aligned to its element size, for loaders that map it in place.
    ordered = sorted(entries, key=lambda entry: -entry[1].itemsize)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in ordered:
        name, dtype, shape = entry
        header[name] = {
            "dtype": _CODES[dtype],
            "shape": [int(size) for size in shape],
            "data_offsets": [offset, offset + _nbytes(entry)],
        }
        offset += _nbytes(entry)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, dtype, shape in ordered:
            tensor = produce(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise DeepzipError(
                    f"tensor {name!r}: produced {tensor.dtype} {tuple(tensor.shape)}, but {dtype} {tuple(shape)} was planned"
                )
            # Raw bytes through a uint8 view: numpy has no bfloat16, and this copies nothing.
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            del tensor  # before the next one is produced
        f.flush()
        os.fsync(f.fileno())


def _check_existing(out: Path, weight_names: list[str], files: dict[str, bytes]) -> None:
    """Refuse to write into an existing directory where a loader could read something else."""
    root = out.resolve()
    stale = [
        e.name for e in sorted(out.iterdir()) if e.name not in weight_names and e.name not in files and is_weight_file(e.name)
    ]
    if stale:
        raise ConfigError(
            f"{out} holds other weight files ({', '.join(stale)}) that a loader could pick up instead: "
            "remove them or choose another directory"
        )
    for name in files:
        # A symlinked subdirectory of an existing directory could lead a name elsewhere.
        # (The last part may be a link: os.replace replaces the link, not its target.)
        if not (out / name).parent.resolve().is_relative_to(root):
            raise ConfigError(f"attached file {name!r} would be written outside {out}")
