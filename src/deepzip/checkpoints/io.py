"""Real checkpoints in and out: safetensors files, torch state dicts and transformers directories.

read_checkpoint -> compress_checkpoint -> fileformat.write (.dzip) -> fileformat.read ->
write_checkpoint. Reading never executes code: safetensors files are plain tensors, torch
files are loaded with `weights_only=True` only (a pickled model object is refused, not
unpickled), and the small files of a transformers directory are carried as bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import safetensors
import safetensors.torch
import torch

from deepzip.container import fileformat
from deepzip.train.post_training import compress_state_dict, setting_for
from deepzip.compressed import CodebookTensor, CompressedModel
from deepzip.errors import ConfigError, DeepzipError
from deepzip.limits import MAX_ATTACHED_FILE_BYTES, MAX_BITS
from deepzip.train.recipe import Recipe, load_recipe

Kind = Literal["safetensors", "torch", "transformers"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WEIGHTS_FILE = "model.safetensors"  # what write_checkpoint writes into a directory
# Files of a transformers directory that hold weights (read, or skipped as another format's
# copy of them), never carried as attached files. training_args.bin is a pickled object:
# its suffix keeps it out, and it is never loaded.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".tflite", ".ot")
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")
_STATE_DICT_KEYS = ("state_dict", "model")  # where training checkpoints nest the weights


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


# ---------------------------------------------------------------- reading


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
            or name.lower().endswith(_WEIGHT_SUFFIXES + _WEIGHT_INDEXES)
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
        fileformat.check_file_name(name, ConfigError)
    except ConfigError:
        return False
    return True


def _first_line(error: BaseException | str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------- tied tensors


def group_tied(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{name: canonical name}: tensors that are the same memory map to one name.

    Two entries are tied when they share storage at the same offset with the same shape,
    stride and dtype (a torch.save'd model with tied embeddings loads this way). The
    canonical name of a group is its first name in sorted order, the name the .dzip file
    stores it under. Empty tensors are never tied: they all report the same null pointer.
    Views of different parts of one storage are distinct tensors, not ties.
    """
    canonical: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if tensor.numel() == 0:
            canonical[name] = name
            continue
        key = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        canonical[name] = first.setdefault(key, name)
    return {name: canonical[name] for name in state_dict}


# ---------------------------------------------------------------- compression


def compress_checkpoint(
    checkpoint: Checkpoint,
    recipe: Recipe | str | os.PathLike | None = None,
    sparsity: float | Mapping[str, float] | None = None,
    bits: int | Mapping[str, int] | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    progress: Callable[[str], None] | None = None,
) -> CompressedModel:
    """Prune and quantize `checkpoint` post-training (see compress.compress_state_dict).

    Settings come from `recipe` (a Recipe, a shipped recipe's name or a YAML path: its
    sparsity, bits and index_bits rules) and from `sparsity` / `bits`, each one value or
    {pattern: value}. Explicit settings win: their patterns are tried before the recipe's,
    and a single explicit value applies to every tensor, replacing the recipe's rules for
    that setting. Tensors nothing matches get sparsity 0 and 8 bits.

    A pattern that matches no tensor is an error (a typo, almost always). Tied tensors (see
    group_tied) are compressed once, under their canonical name, and stay one record in the
    result, so every name of a tied group must get the same settings. `progress(name)` is
    called before each distinct tensor. The checkpoint's files are attached to the result.
    """
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    rules = recipe or Recipe()
    if rules.setting("quality"):
        raise ConfigError("recipe: quality is only supported by prune_ for now; give sparsity for compress")
    sparsity = _merged(sparsity, rules.setting("sparsity"), 0.0)
    bits = _merged(bits, rules.setting("bits"), 8)
    index_bits = rules.setting("index_bits")
    include = list(include) if include is not None else None
    exclude = list(exclude)
    _check_values(sparsity, bits, index_bits)

    state_dict = checkpoint.state_dict
    for name, tensor in state_dict.items():
        if tensor.dtype not in fileformat.DTYPE_CODES:
            raise ConfigError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in a .dzip file")
    canonical = group_tied(state_dict)
    settings = _for_distinct(
        {"sparsity": sparsity, "bits": bits, "index_bits": index_bits, "include": include, "exclude": exclude}, canonical
    )
    sparsity, bits, index_bits = settings["sparsity"], settings["bits"], settings["index_bits"]
    include, exclude = settings["include"], settings["exclude"]
    distinct = {name: tensor for name, tensor in state_dict.items() if canonical[name] == name}
    compressed = compress_state_dict(distinct, sparsity, bits, include=include, exclude=exclude, progress=progress)
    records = compressed.tensors
    for name, record in records.items():
        width = setting_for(name, index_bits, None)
        if width is not None and isinstance(record, CodebookTensor):
            records[name] = replace(record, index_bits=int(width))
    # Every tied name gets the very record object of its canonical name: stored once.
    tensors = {name: records[canonical[name]] for name in state_dict}
    return CompressedModel(tensors, dict(checkpoint.files))


def _merged(explicit, from_recipe: dict, default):
    """One setting: explicit patterns first, then the recipe's; a single explicit value alone."""
    if explicit is None:
        return from_recipe or default
    if not isinstance(explicit, Mapping):
        return explicit
    return {**explicit, **{p: v for p, v in from_recipe.items() if p not in explicit}}


def _check_values(sparsity, bits, index_bits) -> None:
    """Validate every value before the first tensor is compressed, not halfway through."""

    def values(setting):
        return setting.items() if isinstance(setting, Mapping) else [(None, setting)]

    def where(what, pattern):
        return what if pattern is None else f"{what}[{pattern!r}]"

    for pattern, value in values(sparsity):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where('sparsity', pattern)}: must be a number in [0, 1], got {value!r}")
    for what, setting, top in (("bits", bits, MAX_BITS), ("index_bits", index_bits, fileformat.MAX_INDEX_BITS)):
        for pattern, value in values(setting):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ConfigError(f"{where(what, pattern)}: must be an integer in 1..{top}, got {value!r}")


_DEFAULTS = {"sparsity": 0.0, "bits": 8, "index_bits": None}  # those of compress_state_dict


def _for_distinct(settings: dict[str, object], canonical: dict[str, str]) -> dict[str, object]:
    """Check the patterns against every name; return the settings for the canonical names only.

    A pattern must match some tensor, and the names of a tied group must resolve to the
    same value (one record cannot have two bit widths). Patterns that match only non-
    canonical names then change nothing and are dropped, so that compress_state_dict,
    which sees the canonical names alone, does not report them as matching no tensor.
    """
    result = dict(settings)
    for what, setting in settings.items():
        if isinstance(setting, Mapping):
            lookup, default = setting, _DEFAULTS[what]
        elif isinstance(setting, (list, tuple)):
            lookup, default = {p: "matched" for p in setting}, "not matched"
        else:
            continue  # one value for every tensor, or include=None
        for pattern in lookup:
            if not any(setting_for(name, {pattern: True}, False) for name in canonical):
                raise ConfigError(f"{what}: pattern {pattern!r} matches no tensor")
        for name, stored in canonical.items():
            ours, theirs = setting_for(name, lookup, default), setting_for(stored, lookup, default)
            if ours != theirs:
                ours, theirs = ("the default" if v is None else v for v in (ours, theirs))
                raise ConfigError(
                    f"{what}: {name!r} is tied to {stored!r} (one tensor, stored once) but gets {ours} where "
                    f"{stored!r} gets {theirs}: give both the same"
                )
        kept = [p for p in lookup if any(setting_for(n, {p: True}, False) for n in canonical if canonical[n] == n)]
        result[what] = {p: setting[p] for p in kept} if isinstance(setting, Mapping) else kept
    return result


# ---------------------------------------------------------------- writing


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
            fileformat.check_file_name(name, ConfigError)
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
        _atomic(out_path, lambda tmp: _save_safetensors(tensors, tmp))
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
    _fsync(path)


def _write_directory(tensors: dict[str, torch.Tensor], files: dict[str, bytes], out: Path) -> list[Path]:
    names = [WEIGHTS_FILE, *sorted(files)]
    if out.is_dir():
        root = out.resolve()
        stale = [
            e.name
            for e in sorted(out.iterdir())
            if e.name != WEIGHTS_FILE and e.name.lower().endswith(_WEIGHT_SUFFIXES + _WEIGHT_INDEXES)
        ]
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
                _atomic(target, lambda tmp: _save_safetensors(tensors, tmp))
            else:
                _atomic(target, lambda tmp, data=files[name]: _write_bytes(tmp, data))
        return targets
    tmp_dir = _new_temp(out, directory=True)
    try:
        _save_safetensors(tensors, tmp_dir / WEIGHTS_FILE)
        for name in sorted(files):
            target = tmp_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_bytes(target, files[name])
        os.replace(tmp_dir, out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return [out / name for name in names]


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write` on a temporary file next to `path`, then rename it over `path`."""
    tmp = _new_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_temp(path: Path, directory: bool = False) -> Path:
    """A new temporary file or directory beside `path`, with the umask's permissions.

    (mkstemp and mkdtemp would make it private to the user, and the rename keeps that.)
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            if directory:
                os.mkdir(tmp)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "Checkpoint",
    "MAX_ATTACHED_FILE_BYTES",
    "compress_checkpoint",
    "group_tied",
    "read_checkpoint",
    "target_kind",
    "write_checkpoint",
]
