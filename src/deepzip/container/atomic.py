"""Atomic file writes: new bytes reach a path whole or not at all.

Everything deepzip writes (a .dzip file, a safetensors file, a checkpoint directory) is
built under a temporary name beside its target, fsynced, and renamed over the target only
once complete: a crash, a kill or a full disk never leaves a partial file at the target,
and an existing file survives any failure (the temporary is removed, except after a
kill, when a dead writer's `.<name>.<random>.tmp` may remain). Temporaries get the
permissions a plain open() would give under the umask (mkstemp and mkdtemp would make
them private, and the rename would keep that). Pure file-system helpers: no format here.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from deepzip.errors import DeepzipError


def check_overwrite(path: Path, overwrite: bool) -> None:
    """Refuse (DeepzipError) to replace an existing `path` unless `overwrite` is true."""
    if path.exists() and not overwrite:
        raise DeepzipError(f"{path} exists; pass overwrite=True (--force) to replace it")


def replace_file(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a new empty temporary file beside `path`, then rename it over `path`.

    `write` must leave the file complete and fsynced (see `write_bytes`, `fsync_file`). If it
    or the rename fails, the temporary is removed and `path` is left as it was.
    """
    tmp = new_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_directory(path: Path, build: Callable[[Path], None]) -> None:
    """Run `build(tmp)` on a new empty temporary directory beside `path`, then rename it to `path`.

    `path` must not exist or be an empty directory. If `build` or the rename fails, the
    temporary directory and all it holds are removed.
    """
    tmp = new_temp(path, directory=True)
    try:
        build(tmp)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def new_temp(path: Path, directory: bool = False) -> Path:
    """Create a new empty temporary file (or directory) beside `path`, with the umask's permissions.

    Its name, `.<name>.<random>.tmp`, is hidden and never that of a target.
    """
    path = Path(path)
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


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` (created or truncated) and fsync it before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    """Fsync a file that another library wrote and closed (safetensors' save_file, say)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
