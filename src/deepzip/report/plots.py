"""PNG figures of a compressed model in the style of the Deep Compression paper (Figures 4-8).

Each function draws one figure, writes it as a PNG and returns the path. Figures are built
on matplotlib's object API with the Agg canvas (`Figure` + `FigureCanvasAgg`), never
pyplot: no display is needed, no global backend is switched under the caller (a notebook
keeps its own), and no figure lingers in pyplot's registry after it is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepzip.codec import huffman, sparse
from deepzip.codec.layer import encode_layer_smallest
from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError

if TYPE_CHECKING:
    from deepzip.report.tables import LayerStats
    from deepzip.train.sensitivity import SensitivityTable

DPI = 110
BINS = 101  # odd, so that one bin is centred on 0 and the pruned gap shows symmetric
# Counts spanning more than this factor get a log y axis, or the small bars vanish.
LOG_SPAN = 30
COLORS = {"dense": "#9e9e9e", "pruned": "#1f77b4", "quantized": "#ff7f0e", "file": "#2ca02c"}


# ---------------------------------------------------------------- helpers


def _png_path(path: str | os.PathLike) -> Path:
    """`path` as a Path, checked before any drawing starts."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: plots are written as PNG; give a path ending in .png")
    return path


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)  # attaches itself to the figure
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _grid(n: int, columns: int, panel: tuple[float, float], title: str) -> tuple[Figure, list]:
    """A figure with `n` panels in rows of at most `columns`; returns (figure, axes used)."""
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    figure = Figure(figsize=(panel[0] * columns, panel[1] * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax in axes[n:]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize="large", fontweight="bold")
    return figure, list(axes[:n])


def _log_if_wide(ax, counts) -> None:
    """Log y scale when the nonzero counts span more than LOG_SPAN (decades of counts)."""
    positive = np.asarray(counts)[np.asarray(counts) > 0]
    if positive.size and positive.max() / positive.min() > LOG_SPAN:
        ax.set_yscale("log")


def _numpy(tensor) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().to(torch.float32).cpu().numpy().ravel()
    return np.asarray(tensor, dtype=np.float32).ravel()


def _edges(*arrays: np.ndarray) -> np.ndarray:
    """BINS equal bins symmetric around 0 that cover all `arrays`, so 0 sits in a bin's middle."""
    extent = max((float(np.abs(a).max()) for a in arrays if a is not None and a.size), default=0.0)
    extent = extent or 1.0
    return np.linspace(-extent, extent, BINS + 1) * (1 + 1e-6)


def _records(records: CodebookTensor | Mapping[str, CodebookTensor]) -> dict[str, CodebookTensor]:
    if isinstance(records, CodebookTensor):
        return {"weight": records}
    records = dict(records)
    if not records:
        raise ConfigError("no codebook tensor to plot")
    for name, record in records.items():
        if not isinstance(record, CodebookTensor):
            raise ConfigError(f"{name}: expected a CodebookTensor, got {type(record).__name__}")
    return records


def _usage(record: CodebookTensor) -> np.ndarray:
    """How many kept weights use each centroid (fillers excluded)."""
    return np.bincount(record.codes.astype(np.int64), minlength=len(record.codebook))


def _index_bits(record: CodebookTensor) -> int:
    """The record's gap width, or the one the writer would pick (smallest file) if unset."""
    if record.index_bits is not None:
        return record.index_bits
    return encode_layer_smallest(record.positions, record.codes, len(record.codebook), record.numel).index_bits


def _kept_fraction(kept: int, total: int) -> str:
    return f"{kept:,} of {total:,} kept ({100 * kept / max(total, 1):.1f}%)"


# ---------------------------------------------------------------- figures


def weight_histograms(
    before: Mapping[str, torch.Tensor] | None,
    after: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    columns: int = 3,
) -> Path:
    """Histogram of each layer's weights before pruning (all, dense) and after (nonzero only).

    One panel per entry of `after` (e.g. {"fc1.weight": tensor}); `before`, if given,
    supplies the dense weights under the same names (missing names: after only). The
    after-histogram counts only nonzero weights, so pruning shows as the empty band around
    0 of Han et al.'s Figure 4/5; quantized weights show as spikes at the centroids.
    """
    path = _png_path(path)
    after = dict(after)
    if not after:
        raise ConfigError("weight_histograms: no tensors to plot")
    before = dict(before or {})
    figure, axes = _grid(len(after), columns, (4.2, 3.0), "Weight distribution before and after compression")
    for ax, (name, tensor) in zip(axes, after.items()):
        kept = _numpy(tensor)
        kept = kept[kept != 0]
        dense = _numpy(before[name]) if name in before else None
        edges = _edges(dense, kept)
        counts_all = []
        if dense is not None:
            counts, _ = np.histogram(np.clip(dense, edges[0], edges[-1]), edges)
            ax.stairs(counts, edges, fill=True, color=COLORS["dense"], alpha=0.6, label="before (dense)")
            counts_all.append(counts)
        counts, _ = np.histogram(np.clip(kept, edges[0], edges[-1]), edges)
        ax.stairs(counts, edges, fill=True, color=COLORS["pruned"], alpha=0.85, label="after (nonzero)")
        counts_all.append(counts)
        _log_if_wide(ax, np.concatenate(counts_all))
        total = _numpy(tensor).size
        ax.set_title(f"{name}\n{_kept_fraction(kept.size, total)}", fontsize="medium")
        ax.set_xlabel("weight value")
        ax.set_ylabel("number of weights per bin")
        ax.legend(fontsize="small")
    return _save(figure, path)


def quantized_distribution(
    records: CodebookTensor | Mapping[str, CodebookTensor],
    path: str | os.PathLike,
    dense: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Per layer: how many kept weights share each centroid, and (with `dense`) what was clustered.

    After decoding, a CodebookTensor holds only centroid values and their codes, so the
    right-hand panel is a stem chart: one stem per centroid at its value, as tall as its
    usage count. With `dense` (the layer's weights before quantization, one tensor for a
    single record or {name: tensor}), a left-hand panel shows the continuous histogram of
    the weights at the kept positions with the centroids as vertical lines: the paper's
    weight distribution with its shared weights marked (Han et al., Figure 4/5).
    """
    path = _png_path(path)
    records = _records(records)
    if dense is not None and not isinstance(dense, Mapping):
        if len(records) != 1:
            raise ConfigError("quantized_distribution: give dense as {name: tensor} for several layers")
        dense = {next(iter(records)): dense}
    dense = dict(dense or {})
    for name, tensor in dense.items():
        if name in records and tuple(tensor.shape) != records[name].shape:
            raise ConfigError(f"{name}: dense shape {tuple(tensor.shape)} != the codebook tensor's {records[name].shape}")
    columns = 2 if any(name in dense for name in records) else 1
    figure = Figure(figsize=(5.2 * columns, 3.1 * len(records) + 0.6), layout="constrained")
    grid = figure.subplots(len(records), columns, squeeze=False)
    figure.suptitle("Weight sharing: centroids and how many weights use each", fontsize="large", fontweight="bold")
    for row, (name, record) in zip(grid, records.items()):
        k = len(record.codebook)
        usage = _usage(record)
        ax = row[-1]
        ax.vlines(record.codebook, 0, usage, color=COLORS["quantized"], linewidth=2)
        ax.plot(record.codebook, usage, "o", color=COLORS["quantized"], markersize=4, label=f"{k} centroids")
        _log_if_wide(ax, usage)
        if ax.get_yscale() == "log":
            ax.set_ylim(bottom=0.7)  # stems start below 1 so a count of 1 stays visible
        ax.set_title(f"{name}: {k} shared weights ({record.bits}-bit codes), {len(record.codes):,} kept", fontsize="medium")
        ax.set_xlabel("centroid value (shared weight)")
        ax.set_ylabel("weights using it")
        ax.legend(fontsize="small")
        if columns == 2:
            left = row[0]
            if name in dense:
                original = _numpy(dense[name])[record.positions]
                edges = _edges(original, record.codebook)
                counts, _ = np.histogram(np.clip(original, edges[0], edges[-1]), edges)
                left.stairs(counts, edges, fill=True, color=COLORS["pruned"], alpha=0.8, label="kept weights before sharing")
                for i, value in enumerate(record.codebook):
                    left.axvline(value, color=COLORS["quantized"], linewidth=0.8, alpha=0.9, label="centroids" if i == 0 else None)
                _log_if_wide(left, counts)
                left.set_title(f"{name}: original values of the kept weights", fontsize="medium")
                left.set_xlabel("weight value")
                left.set_ylabel("number of weights per bin")
                left.legend(fontsize="small")
                ax.sharex(left)
            else:
                left.set_visible(False)
    return _save(figure, path)


def stream_distributions(record: CodebookTensor, path: str | os.PathLike, name: str = "weight") -> Path:
    """The symbol distributions of a layer's two Huffman-coded streams, with their code lengths.

    Left: gap symbols of the relative index (symbol s = a step of s + 1 positions; the
    largest symbol also carries the filler entries). Right: weight codes, plus the
    filler symbol k. Bars are symbol counts (log y when they span decades); dots on the
    right axis are the Huffman code length of each used symbol, the dashed line the fixed
    width it replaces. Like the paper's Figure 8: skewed streams, short codes for the
    frequent symbols.
    """
    path = _png_path(path)
    if not isinstance(record, CodebookTensor):
        raise ConfigError(f"stream_distributions: expected a CodebookTensor, got {type(record).__name__}")
    k = len(record.codebook)
    index_bits = _index_bits(record)
    gaps, code_symbols = sparse.to_relative(record.positions, record.codes, index_bits, filler_symbol=k, numel=record.numel)
    fillers = int(np.count_nonzero(code_symbols == k))
    figure, (gap_ax, code_ax) = _grid(2, 2, (5.4, 3.6), f"{name}: symbol streams and their Huffman codes")
    panels = (
        (gap_ax, gaps, 1 << index_bits, index_bits, "gap symbol (positions to the next entry, minus 1)",
         f"relative index: {len(gaps):,} entries, {fillers:,} fillers"),
        (code_ax, code_symbols, k + 1, math.ceil(math.log2(k + 1)), f"weight code (0..{k - 1}; {k} = filler)",
         f"weight codes: {k} centroids + filler"),
    )  # fmt: skip
    legend = {}
    for ax, symbols, alphabet, fixed, xlabel, title in panels:
        counts = np.bincount(symbols.astype(np.int64), minlength=alphabet)
        lengths = huffman.code_lengths(counts)
        real = counts.copy()
        if ax is code_ax:
            real[k] = 0  # the filler bar is drawn in its own color below
        if alphabet <= 64:  # separate bars stay readable; beyond that they merge into noise
            ax.bar(np.arange(alphabet), real, width=0.8, color=COLORS["pruned"], label="symbol count")
        else:
            ax.stairs(real, np.arange(alphabet + 1) - 0.5, fill=True, color=COLORS["pruned"], label="symbol count")
        if ax is code_ax and fillers:
            ax.bar([k], [fillers], width=0.8, color="#d62728", label="filler (zero) entries")
        _log_if_wide(ax, counts)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("number of symbols")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        used = np.flatnonzero(counts)
        mean_bits = float((counts * lengths).sum() / max(counts.sum(), 1))
        ax.set_title(f"{title}\nHuffman {mean_bits:.2f} bits/symbol vs {fixed} fixed", fontsize="medium")
        lengths_ax = ax.twinx()
        lengths_ax.plot(used, lengths[used], "o", color="#111111", markersize=3, label="Huffman code length")
        lengths_ax.axhline(fixed, color="#111111", linestyle="--", linewidth=1, label="fixed-width code (bits)")
        lengths_ax.set_ylabel("code length (bits)")
        lengths_ax.set_ylim(0, max(int(lengths.max()), fixed) + 1)
        lengths_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        for axes in (ax, lengths_ax):
            for handle, label in zip(*axes.get_legend_handles_labels()):
                legend.setdefault(label, handle)
    # One legend below both panels: inside, it would hide the tallest bars.
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=len(legend), fontsize="small")
    return _save(figure, path)


def bytes_per_stage(stats: Sequence[LayerStats], path: str | os.PathLike) -> Path:
    """Grouped bars: bytes of each compressed layer at each stage (dense, pruned, quantized, file).

    Stage sizes follow `deepzip.report.LayerStats`. Tensors stored raw (biases...) are
    summed into one "raw tensors" group, and an "all tensors" group gives the totals
    (header excluded). Log y, since a layer shrinks by decades; each file bar is labeled
    with its ratio to dense.
    """
    path = _png_path(path)
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
        bars = ax.bar(x + (i - 1.5) * width, values, width, color=COLORS[stage], label=stage)
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
    return _save(figure, path)


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
    path = _png_path(path)
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
    return _save(figure, path)


__all__ = ["bytes_per_stage", "quantized_distribution", "sensitivity_curves", "stream_distributions", "weight_histograms"]
