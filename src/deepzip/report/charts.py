"""PNG charts of numbers computed elsewhere: bytes per stage (from the file) and sensitivity scans.

Each function draws one chart, writes it as a PNG and returns the path;
`deepzip.report.plots` draws the weights and streams themselves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepzip.errors import ConfigError
from deepzip.report import canvas

if TYPE_CHECKING:
    from deepzip.report.stats import LayerStats
    from deepzip.train.sensitivity import SensitivityTable


def bytes_per_stage(stats: Sequence[LayerStats], path: str | os.PathLike) -> Path:
    """Grouped bars: bytes of each compressed layer at each stage (dense, pruned, quantized, file).

    Stage sizes follow `deepzip.report.LayerStats`. Tensors stored raw (biases...) are
    summed into one "raw tensors" group, and an "all tensors" group gives the totals
    (header excluded). Log y, since a layer shrinks by decades; each file bar is labeled
    with its ratio to dense.
    """
    path = canvas.png_path(path)
    stats = list(stats)
    if not stats:
        raise ConfigError("bytes_per_stage: no layer stats to plot")
    stages = ("dense", "pruned", "quantized", "file")
    groups: list[tuple[str, list[int]]] = []
    raw = [s for s in stats if s.weight_bits is None]
    for s in stats:
        if s.weight_bits is not None:
            groups.append((s.name, [s.dense_bytes, s.pruned_bytes, s.quantized_bytes, s.file_bytes]))
    if raw:
        groups.append((f"raw tensors ({len(raw)})", [sum(getattr(s, f"{st}_bytes") for s in raw) for st in stages]))
    if len(groups) > 1:
        groups.append(("all tensors", [sum(g[1][i] for g in groups) for i in range(len(stages))]))
    width = 0.2
    figure = Figure(figsize=(max(6.0, 1.3 * len(groups) + 2), 4.6), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(groups))
    for i, stage in enumerate(stages):
        values = [g[1][i] for g in groups]
        bars = ax.bar(x + (i - 1.5) * width, values, width, color=canvas.COLORS[stage], label=stage)
        if stage == "file":
            ratios = [f"{g[1][0] / v:.1f}x" if v else "" for g, v in zip(groups, values)]
            ax.bar_label(bars, ratios, fontsize="x-small", padding=2)
    ax.set_yscale("log")
    ax.set_xticks(x, [g[0] for g in groups], rotation=30 if len(groups) > 5 else 0, ha="right" if len(groups) > 5 else "center")
    ax.set_ylabel("bytes (log scale)")
    ax.set_xlabel("tensor")
    total = groups[-1][1]
    ax.set_title(
        f"Bytes per stage: dense {total[0]:,} B -> file {total[3]:,} B ({total[0] / max(total[3], 1):.1f}x, headers excluded)",
        fontsize="medium",
    )
    ax.legend(title="stage", fontsize="small")
    ax.margins(y=0.15)
    return canvas.save(figure, path)


def sensitivity_curves(
    table: SensitivityTable,
    path: str | os.PathLike,
    tolerance: float | None = None,
    metric: str = "metric",
) -> Path:
    """Metric vs. setting for each layer of a sensitivity scan, with the baseline and tolerance.

    One line per layer (only that layer pruned or quantized, no retraining). The dashed
    line is the baseline; with `tolerance`, the shaded band is the range of metric values
    that `recipe_from_sensitivity` accepts (loss <= tolerance). `metric` names the y axis
    (e.g. "test accuracy").
    """
    path = canvas.png_path(path)
    if not table.curves:
        raise ConfigError("sensitivity_curves: the table has no layers")
    if tolerance is not None and not tolerance >= 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = figure.subplots()
    for name, pairs in table.curves.items():
        settings = [s for s, _ in pairs]
        values = [m for _, m in pairs]
        ax.plot(settings, values, "o-", markersize=4, linewidth=1.5, label=name)
    ax.axhline(table.baseline, color="black", linestyle="--", linewidth=1, label=f"baseline {table.baseline:.4g}")
    if tolerance is not None:
        ax.axhspan(table.baseline - tolerance, table.baseline, color="#2ca02c", alpha=0.15,
                   label=f"within tolerance ({tolerance:g})")  # fmt: skip
    if table.kind == "sparsity":
        ax.set_xlabel("sparsity of the one layer pruned (fraction of its weights set to 0)")
        ax.set_title("Pruning sensitivity: one layer at a time, no retraining", fontsize="medium")
    else:
        ax.set_xlabel("bits per weight of the one layer quantized (2^bits shared values)")
        ax.set_title("Weight-sharing sensitivity: one layer at a time, no fine-tuning", fontsize="medium")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (higher is better)")
    ax.grid(alpha=0.3)
    columns = 1 if len(table.curves) <= 12 else 2
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), ncols=columns, title="layer")
    return canvas.save(figure, path)


__all__ = ["bytes_per_stage", "sensitivity_curves"]
