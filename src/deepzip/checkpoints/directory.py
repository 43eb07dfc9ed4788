"""Walking a model directory: every file in it, and the entries that are refused, with a reason.

A model directory comes from anywhere (a download, a colleague's share), and what it holds
travels inside the .dzip file. So the walk never follows a symlink out of the directory: a
link whose resolved path leaves it (`id_rsa -> ~/.ssh/id_rsa`) is listed as refused, not
read. Links that stay inside are followed. One exception keeps the Hugging Face cache
working: in `<repo>/snapshots/<rev>/` every file is a link into `<repo>/blobs/`, and such
links are fine. The walk is os.walk(followlinks=False) in spirit: each entry is checked
before it is read or descended into, and directory links are followed only inside the tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from deepzip.limits import MAX_FILE_NAME_PARTS

OUTSIDE = "symlink to a path outside the model directory, not read"


@dataclass
class Walk:
    """What a walk found: `found` maps relative names ('/'-separated) to the resolved paths
    of regular files to read; `refused` maps names to why they are not read (a directory's
    name ends in '/')."""

    found: dict[str, Path] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def walk(root: Path) -> Walk:
    """Every regular file under `root` that may be read, and every entry refused (see module doc).

    Hidden directories (.git, .cache) are not entered: a git clone's .git holds the
    weights again and its hooks, nothing a model needs. Nothing deeper than a .dzip file
    name may be (MAX_FILE_NAME_PARTS parts) is entered either.
    """
    real_root = root.resolve()
    # A Hugging Face cache snapshot: <repo>/snapshots/<rev>/ with links into <repo>/blobs/.
    blobs = real_root.parent.parent / "blobs" if real_root.parent.name == "snapshots" else None
    result = Walk()
    _visit(real_root, "", frozenset({real_root}), real_root, blobs, result)
    return result


def _visit(directory: Path, prefix: str, ancestors: frozenset[Path], root: Path, blobs: Path | None, result: Walk) -> bool:
    """Walk one directory (a resolved path) into `result`; return whether it held anything."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as error:
        result.refused[prefix or "./"] = f"directory not readable ({error.strerror or error})"
        return True
    for entry in entries:
        name = prefix + entry.name
        target = Path(entry.path)
        if entry.is_symlink():
            try:
                target = target.resolve()
            except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
                result.refused[name] = "symlink that cannot be resolved, not read"
                continue
            inside = target.is_relative_to(root)
            if not inside and not (blobs is not None and target.is_relative_to(blobs) and target.is_file()):
                result.refused[name] = OUTSIDE
                continue
            if not target.exists():
                result.refused[name] = "broken symlink, not read"
                continue
        if target.is_dir():
            if entry.name.startswith("."):
                result.refused[name + "/"] = "hidden directory, not read"
            elif target in ancestors:
                result.refused[name + "/"] = "symlink to a directory that contains it, not followed"
            elif name.count("/") + 2 > MAX_FILE_NAME_PARTS:
                result.refused[name + "/"] = f"deeper than the {MAX_FILE_NAME_PARTS} parts a file name may have, not read"
            elif not _visit(target, name + "/", ancestors | {target}, root, blobs, result):
                result.refused[name + "/"] = "empty directory, not recreated"
        elif target.is_file():
            result.found[name] = target
        else:
            result.refused[name] = "not a regular file, not read"
    return bool(entries)
