"""coremltools 9.0 post-training palettization (k-means LUTs) as a peer, with analytic sizes.

`PostTrainingPalettizer(model, PostTrainingPalettizerConfig.from_dict({"global_config":
{...}})).compress()` returns a copy of the module whose supported weights (Linear,
Embedding, Conv2d) hold LUT values, and which registers each LUT as a buffer named
`<module>._COREML_/weight/lut`. No Core ML file is written here (that needs macOS to be
useful), so the size is analytic: n_bits per element of every palettized weight, plus its
LUT entries in fp16, plus every other tensor of the original state dict in fp16.

per_grouped_channel silently skips a weight whose channel axis is not divisible by the group
size (coremltools only logs a warning): each weight without a LUT buffer is listed as
skipped in the point's notes, with coremltools' reason where it logged one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import time

import torch
from torch import nn

from peerlib.target import Point, Target

GROUP_SIZE = 16  # channels per LUT for per_grouped_channel (the size Apple's examples use)
DEFAULT_SETTINGS = tuple((g, b) for g in ("per_tensor", "per_grouped_channel") for b in range(3, 9))
QUICK_SETTINGS = (("per_tensor", 4), ("per_tensor", 6), ("per_tensor", 8), ("per_grouped_channel", 4), ("per_grouped_channel", 6))
LUT_SUFFIX = "._COREML_/weight/lut"
# coremltools.optimize.torch logs through its own handler and does not propagate to the root.
LOGGER = "coremltools.optimize.torch"


class _Warnings(logging.Handler):
    """Collects coremltools' WARNING records (e.g. 'axis_length=... is not divisible by group_size')."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def import_palettizer():
    """(PostTrainingPalettizer, PostTrainingPalettizerConfig), with coremltools' import chatter kept off the screen.

    On Linux coremltools logs that its native Core ML proxies are missing (they exist on macOS
    only and are not needed to palettize) and warns about untested torch/scikit-learn versions.
    """
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        from coremltools.optimize.torch.palettization import (
            PostTrainingPalettizer,
            PostTrainingPalettizerConfig,
        )
    return PostTrainingPalettizer, PostTrainingPalettizerConfig


def settings_label(granularity: str, n_bits: int) -> str:
    """How a setting reads in the table."""
    return f"{n_bits}-bit {granularity}" + (f" (group {GROUP_SIZE})" if granularity == "per_grouped_channel" else "")


def analytic_bytes(original: dict[str, torch.Tensor], luts: dict[str, torch.Tensor], n_bits: int) -> int:
    """n_bits x numel of palettized weights + LUT entries x 2 bytes + every other tensor x 2 bytes."""
    total_bits = 0
    for name, tensor in original.items():
        lut = luts.get(name)
        if lut is None:
            total_bits += 16 * tensor.numel()
        else:
            total_bits += n_bits * tensor.numel() + 16 * lut.numel()
    return math.ceil(total_bits / 8)


def run_point(target: Target, granularity: str, n_bits: int) -> Point:
    """Palettize a fresh fp32 module of the Target with one setting and score it."""
    palettizer_cls, config_cls = import_palettizer()
    point = Point(model=target.name, tool="coremltools", settings=settings_label(granularity, n_bits), analytic=True)
    config = {"n_bits": n_bits, "granularity": granularity}
    if granularity == "per_grouped_channel":
        config["group_size"] = GROUP_SIZE
    model = target.build(target.state_dict)
    logger = logging.getLogger(LOGGER)
    warnings = _Warnings()
    old_level = logger.level
    logger.addHandler(warnings)
    logger.setLevel(logging.WARNING)  # its INFO progress lines would drown the benchmark's
    start = time.perf_counter()
    try:
        # tqdm bars of the per-group k-means go to stderr; keep them off the screen too.
        with contextlib.redirect_stderr(io.StringIO()):
            palettized = palettizer_cls(model, config_cls.from_dict({"global_config": config})).compress()
    except Exception as error:  # noqa: BLE001 - reported as a failed point
        point.error = f"coremltools {point.settings} failed: {type(error).__name__}: {error}"
        return point
    finally:
        logger.removeHandler(warnings)
        logger.setLevel(old_level)
    point.seconds["compress"] = time.perf_counter() - start
    luts = _luts(palettized)
    point.bytes = analytic_bytes(target.state_dict, luts, n_bits)
    point.ratio = target.fp32_bytes / point.bytes
    skipped = [name for name in _candidates(palettized) if name not in luts]
    if skipped:
        point.notes.append(skipped_note(skipped, warnings.messages))
    start = time.perf_counter()
    point.metrics = target.evaluate(palettized)
    point.seconds["eval"] = time.perf_counter() - start
    return point


def skipped_note(skipped: list[str], messages: list[str]) -> str:
    """'skipped N weight(s), kept fp16: name (reason), ...', the reason from coremltools' warning."""
    reasons = {}
    for message in messages:
        name, _, reason = message.partition(":")
        found = re.fullmatch(r"\s*axis_length=(\d+) is not divisible by group_size=(\d+)", reason)
        reasons[name] = f"{found[1]} channels, not a multiple of {found[2]}" if found else reason.strip()
    shown = ", ".join(f"{name} ({reasons[name]})" if name in reasons else f"{name} (no reason logged)" for name in skipped)
    return f"skipped {len(skipped)} weight(s), kept fp16: {shown}"


def _luts(model: nn.Module) -> dict[str, torch.Tensor]:
    """{weight name: LUT tensor} of every weight coremltools palettized."""
    return {name[: -len(LUT_SUFFIX)] + ".weight": buf for name, buf in model.named_buffers() if name.endswith(LUT_SUFFIX)}


def _candidates(model: nn.Module) -> list[str]:
    """Weights of the module types coremltools palettizes (Linear, Embedding, Conv2d and subclasses)."""
    kinds = (nn.Linear, nn.Embedding, nn.Conv2d)
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, kinds)]
