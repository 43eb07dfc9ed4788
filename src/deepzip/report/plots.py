"""PNG figures of a layer's weights and streams in the style of the Deep Compression paper.

Weight histograms before and after pruning (Han et al., Figures 4/5), the shared weights
and their usage, and the symbol streams with their Huffman code lengths (Figure 8). Each
function draws one figure, writes it as a PNG and returns the path; `deepzip.report.charts`
draws the byte totals and sensitivity scans.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepzip.codec import sparse
from deepzip.codec.layer import encode_layer_smallest, stream_code_lengths
from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.report import canvas


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
    return encode_layer_smallest(record.flat_positions(), record.codes, len(record.codebook), record.numel).index_bits


def _kept_fraction(kept: int, total: int) -> str:
    return f"{kept:,} of {total:,} kept ({100 * kept / max(total, 1):.1f}%)"


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
    path = canvas.png_path(path)
    after = dict(after)
    if not after:
        raise ConfigError("weight_histograms: no tensors to plot")
    before = dict(before or {})
    figure, axes = canvas.grid(len(after), columns, (4.2, 3.0), "Weight distribution before and after compression")
    for ax, (name, tensor) in zip(axes, after.items()):
        kept = canvas.as_numpy(tensor)
        kept = kept[kept != 0]
        dense = canvas.as_numpy(before[name]) if name in before else None
        edges = canvas.symmetric_edges(dense, kept)
        counts_all = []
        if dense is not None:
            counts, _ = np.histogram(np.clip(dense, edges[0], edges[-1]), edges)
            ax.stairs(counts, edges, fill=True, color=canvas.COLORS["dense"], alpha=0.6, label="before (dense)")
            counts_all.append(counts)
        counts, _ = np.histogram(np.clip(kept, edges[0], edges[-1]), edges)
        ax.stairs(counts, edges, fill=True, color=canvas.COLORS["pruned"], alpha=0.85, label="after (nonzero)")
        counts_all.append(counts)
        canvas.log_if_wide(ax, np.concatenate(counts_all))
        total = canvas.as_numpy(tensor).size
        ax.set_title(f"{name}\n{_kept_fraction(kept.size, total)}", fontsize="medium")
        ax.set_xlabel("weight value")
        ax.set_ylabel("number of weights per bin")
        ax.legend(fontsize="small")
    return canvas.save(figure, path)


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
    path = canvas.png_path(path)
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
        ax.vlines(record.codebook, 0, usage, color=canvas.COLORS["quantized"], linewidth=2)
        ax.plot(record.codebook, usage, "o", color=canvas.COLORS["quantized"], markersize=4, label=f"{k} centroids")
        canvas.log_if_wide(ax, usage)
        if ax.get_yscale() == "log":
            ax.set_ylim(bottom=0.7)  # stems start below 1 so a count of 1 stays visible
        ax.set_title(f"{name}: {k} shared weights ({record.bits}-bit codes), {len(record.codes):,} kept", fontsize="medium")
        ax.set_xlabel("centroid value (shared weight)")
        ax.set_ylabel("weights using it")
        ax.legend(fontsize="small")
        if columns == 2:
            left = row[0]
            if name in dense:
                original = canvas.as_numpy(dense[name])[record.flat_positions()]
                edges = canvas.symmetric_edges(original, record.codebook)
                counts, _ = np.histogram(np.clip(original, edges[0], edges[-1]), edges)
                left.stairs(counts, edges, fill=True, color=canvas.COLORS["pruned"], alpha=0.8, label="kept weights before sharing")
                for i, value in enumerate(record.codebook):
                    left.axvline(value, color=canvas.COLORS["quantized"], linewidth=0.8, alpha=0.9, label="centroids" if i == 0 else None)
                canvas.log_if_wide(left, counts)
                left.set_title(f"{name}: original values of the kept weights", fontsize="medium")
                left.set_xlabel("weight value")
                left.set_ylabel("number of weights per bin")
                left.legend(fontsize="small")
                ax.sharex(left)
            else:
                left.set_visible(False)
    return canvas.save(figure, path)


def stream_distributions(record: CodebookTensor, path: str | os.PathLike, name: str = "weight") -> Path:
    """The symbol distributions of a layer's two Huffman-coded streams, with their code lengths.

    Left: gap symbols of the relative index (symbol s = a step of s + 1 positions; the
    largest symbol also carries the filler entries). Right: weight codes, plus the
    filler symbol k. Bars are symbol counts (log y when they span decades); dots on the
    right axis are the Huffman code length of each used symbol, the dashed line the fixed
    width it replaces. Like the paper's Figure 8: skewed streams, short codes for the
    frequent symbols.
    """
    path = canvas.png_path(path)
    if not isinstance(record, CodebookTensor):
        raise ConfigError(f"stream_distributions: expected a CodebookTensor, got {type(record).__name__}")
    k = len(record.codebook)
    index_bits = _index_bits(record)
    gaps, code_symbols = sparse.to_relative(record.flat_positions(), record.codes, index_bits, filler_symbol=k, numel=record.numel)
    fillers = int(np.count_nonzero(code_symbols == k))
    figure, (gap_ax, code_ax) = canvas.grid(2, 2, (5.4, 3.6), f"{name}: symbol streams and their Huffman codes")
    panels = (
        (gap_ax, gaps, 1 << index_bits, index_bits, "gap symbol (positions to the next entry, minus 1)",
         f"relative index: {len(gaps):,} entries, {fillers:,} fillers"),
        (code_ax, code_symbols, k + 1, math.ceil(math.log2(k + 1)), f"weight code (0..{k - 1}; {k} = filler)",
         f"weight codes: {k} centroids + filler"),
    )  # fmt: skip
    legend = {}
    for ax, symbols, alphabet, fixed, xlabel, title in panels:
        counts = np.bincount(symbols.astype(np.int64), minlength=alphabet)
        lengths = stream_code_lengths(counts)  # exactly what the file's coder uses
        real = counts.copy()
        if ax is code_ax:
            real[k] = 0  # the filler bar is drawn in its own color below
        if alphabet <= 64:  # separate bars stay readable; beyond that they merge into noise
            ax.bar(np.arange(alphabet), real, width=0.8, color=canvas.COLORS["pruned"], label="symbol count")
        else:
            ax.stairs(real, np.arange(alphabet + 1) - 0.5, fill=True, color=canvas.COLORS["pruned"], label="symbol count")
        if ax is code_ax and fillers:
            ax.bar([k], [fillers], width=0.8, color="#d62728", label="filler (zero) entries")
        canvas.log_if_wide(ax, counts)
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
    return canvas.save(figure, path)


__all__ = ["quantized_distribution", "stream_distributions", "weight_histograms"]
