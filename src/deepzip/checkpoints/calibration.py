"""Calibration inputs for a transformers directory: sentences through its tokenizer, or saved batches.

`--calibration-text FILE` takes one text a line, tokenized by the directory's own
tokenizer; `--calibration FILE.safetensors` takes tensors the model's forward accepts as
keyword arguments (`input_ids`, `attention_mask`, `pixel_values`...), batched along their
first dimension. The model is the directory's `AutoModel`, loaded from its own files with
no network access. transformers is needed for this, and only for this.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from deepzip.budget.sensitivity import OutputDistortion
from deepzip.errors import ConfigError

BATCH_SIZE = 32
MAX_LENGTH = 128
MAX_TEXTS = 256  # calibration beyond this changes the sensitivities little and costs time


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("calibration of a transformers model needs the transformers package (pip install transformers)") from None
    return transformers


def model_of(directory: str | os.PathLike) -> torch.nn.Module:
    """The directory's transformers AutoModel in fp32 and eval mode, from its own files only."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConfigError(f"{directory}: calibration needs a transformers directory (with config.json); from Python, pass your own model")
    transformers = _transformers()
    try:
        return transformers.AutoModel.from_pretrained(str(directory), local_files_only=True).float().eval()
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{directory}: transformers cannot build the model: {error}") from None


def text_batches(directory: str | os.PathLike, text_file: str | os.PathLike, limit: int | None = MAX_TEXTS) -> list[dict[str, torch.Tensor]]:
    """Batches of the directory's tokenizer's inputs for the first `limit` (all: None) non-empty lines of `text_file`."""
    path = Path(text_file)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read calibration text: {error}") from None
    if not lines:
        raise ConfigError(f"{path}: no text to calibrate on")
    try:
        tokenizer = _transformers().AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{directory}: no usable tokenizer for --calibration-text: {error}") from None
    lines = lines[:limit]
    return [
        dict(tokenizer(lines[i : i + BATCH_SIZE], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
        for i in range(0, len(lines), BATCH_SIZE)
    ]


def tensor_batches(inputs_file: str | os.PathLike) -> list[dict[str, torch.Tensor]]:
    """Batches of BATCH_SIZE along the first dimension of every tensor in a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(inputs_file))
    except (OSError, SafetensorError) as error:
        raise ConfigError(f"{inputs_file}: cannot read calibration inputs: {error}") from None
    if not tensors:
        raise ConfigError(f"{inputs_file}: holds no tensors")
    sizes = {t.shape[0] if t.dim() else None for t in tensors.values()}
    if len(sizes) != 1 or None in sizes:
        raise ConfigError(f"{inputs_file}: every tensor needs the same first (batch) dimension")
    (count,) = sizes
    return [{k: t[i : i + BATCH_SIZE] for k, t in tensors.items()} for i in range(0, count, BATCH_SIZE)]


def transformers_probe(directory: str | os.PathLike, text_file=None, inputs_file=None) -> OutputDistortion:
    """The OutputDistortion of the directory's model on calibration text or saved input batches."""
    if (text_file is None) == (inputs_file is None):
        raise ConfigError("give one of calibration text and calibration inputs")
    directory = Path(directory)
    batches = text_batches(directory, text_file) if text_file is not None else tensor_batches(inputs_file)
    model = model_of(directory)
    try:
        return OutputDistortion(model, batches)
    except TypeError as error:  # the forward does not take these keyword arguments
        raise ConfigError(f"the model's forward does not take the calibration inputs: {error}") from None
