"""Per-layer byte accounting of a .dzip file, stage by stage, in the paper's terms."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deepzip.container import fileformat
from deepzip.codec.sparse import count_fillers
from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from deepzip.train.sensitivity import SensitivityTable


@dataclass(frozen=True)
class LayerStats:
    """One tensor's sizes. Stage bytes follow the paper's accounting (Han et al., Table 2-4):

    - dense: fp32, 4 bytes per element;
    - pruned: each entry (kept weight or filler) as an fp32 value plus a fixed-width index;
    - quantized: each entry as a fixed-width code plus an index, plus the fp32 codebook;
    - file: the tensor's data section as written (Huffman-coded streams, tables, codebook).
    Raw tensors count their stored bytes at every stage.
    """

    name: str
    shape: tuple[int, ...]
    weights: int
    kept: int
    weight_bits: int | None
    index_bits: int | None
    fillers: int
    dense_bytes: int
    pruned_bytes: int
    quantized_bytes: int
    file_bytes: int

    @property
    def kept_fraction(self) -> float:
        """Fraction of the tensor's elements that are stored (kept), fillers excluded."""
        return self.kept / self.weights if self.weights else 0.0


def layer_stats(data: bytes) -> list[LayerStats]:
    """Stats for every stored tensor of the .dzip file whose bytes are `data` (validated first).

    A tied tensor counts once, under the name it is stored as; its aliases and any attached
    files count as overhead (see `format_table`).
    """
    model = fileformat.from_bytes(data)
    sizes = fileformat.section_sizes(data)
    stats = []
    seen: set[int] = set()
    for name, record in sorted(model.tensors.items()):
        if id(record) in seen:
            continue  # an alias: the stored tensor was counted under its first name
        seen.add(id(record))
        if isinstance(record, CodebookTensor):
            numel, kept = record.numel, len(record.positions)
            fillers = count_fillers(record.positions, record.index_bits)
            entries, b, bits = kept + fillers, record.index_bits, record.bits
            stats.append(
                LayerStats(
                    name, record.shape, numel, kept, bits, b, fillers,
                    dense_bytes=4 * numel,
                    pruned_bytes=_bytes(entries * (32 + b)),
                    quantized_bytes=_bytes(entries * (bits + b)) + 4 * len(record.codebook),
                    file_bytes=sizes[name],
                )
            )  # fmt: skip
        else:
            numel = record.tensor.numel()
            stored = sizes[name]
            stats.append(LayerStats(name, record.shape, numel, numel, None, None, 0, 4 * numel, stored, stored, stored))
    return stats


def _bytes(bits: int) -> int:
    return (bits + 7) // 8


def summary(data: bytes, stats: list[LayerStats] | None = None) -> dict:
    """Whole-file figures: dense fp32 bytes of all tensors, file bytes and their ratio.

    `stats` is `layer_stats(data)` when the caller has it already (it decodes the file).
    """
    stats = layer_stats(data) if stats is None else stats
    dense = sum(s.dense_bytes for s in stats)
    return {"dense_bytes": dense, "file_bytes": len(data), "ratio": dense / len(data), "layers": [asdict(s) for s in stats]}


def format_table(data: bytes, stats: list[LayerStats] | None = None) -> str:
    """The paper-style table: one row per tensor, then the totals measured on the file."""
    stats = layer_stats(data) if stats is None else stats
    header = ("tensor", "weights", "kept", "w bits", "idx bits", "dense B", "pruned B", "quant B", "file B", "ratio")
    rows = []
    for s in stats:
        rows.append(
            (
                s.name,
                f"{s.weights:,}",
                f"{100 * s.kept_fraction:.1f}%",
                "-" if s.weight_bits is None else str(s.weight_bits),
                "-" if s.index_bits is None else str(s.index_bits),
                f"{s.dense_bytes:,}",
                f"{s.pruned_bytes:,}",
                f"{s.quantized_bytes:,}",
                f"{s.file_bytes:,}",
                f"{s.dense_bytes / s.file_bytes:.1f}x" if s.file_bytes else "-",
            )
        )
    dense = sum(s.dense_bytes for s in stats)
    kept = sum(s.kept for s in stats)
    weights = sum(s.weights for s in stats)
    sections = sum(s.file_bytes for s in stats)
    overhead = len(data) - sections
    rows.append(("header+crc+aliases+files", "", "", "", "", "", "", "", f"{overhead:,}", ""))
    rows.append(
        (
            "total",
            f"{weights:,}",
            f"{100 * kept / max(weights, 1):.1f}%",
            "", "",
            f"{dense:,}",
            f"{sum(s.pruned_bytes for s in stats) + overhead:,}",
            f"{sum(s.quantized_bytes for s in stats) + overhead:,}",
            f"{len(data):,}",
            f"{dense / len(data):.1f}x",
        )
    )  # fmt: skip
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 2, "-" * len(lines[0]))
    return "\n".join(lines)


def write_report(
    dzip_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    dense_state_dict: Mapping[str, torch.Tensor] | None = None,
    sensitivity: SensitivityTable | Sequence[SensitivityTable] | None = None,
    *,
    tolerance: float | None = None,
    clustered_state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write `report.md` and its PNG figures for the .dzip file at `dzip_path` into `out_dir`.

    Everything about the compressed model is read from the file alone. `dense_state_dict`
    (the trained model's weights before pruning, under the file's plain keys such as
    `fc1.weight`; other keys are ignored) adds the "before"
    side of the weight histograms and the clustered values to the centroid plots;
    `sensitivity` (one table or several, e.g. a pruning and a bits scan) adds their
    curves, with the `tolerance` band if given. `clustered_state_dict` (the weights just
    before quantization, when retraining changed them since `dense_state_dict`) replaces
    it in the centroid plots. Existing files of the same names are
    replaced. Returns the path of report.md. Needs matplotlib.
    """
    # Imported here: `info` and `format_table` need neither matplotlib nor the scans.
    from deepzip.report import plots
    from deepzip.train.sensitivity import SensitivityTable

    dzip_path, out_dir = Path(dzip_path), Path(out_dir)
    if not dzip_path.is_file():
        raise ConfigError(f"{dzip_path}: no such file")
    data = dzip_path.read_bytes()
    model = fileformat.from_bytes(data)
    stats = layer_stats(data)
    totals = summary(data, stats)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {name: r for name, r in model.tensors.items() if isinstance(r, CodebookTensor)}
    dense = dict(dense_state_dict or {})
    for name, record in records.items():
        if name in dense and tuple(dense[name].shape) != record.shape:
            raise ConfigError(f"dense_state_dict[{name!r}] has shape {tuple(dense[name].shape)}, the file's tensor {record.shape}")
    dense = {name: dense[name] for name in records if name in dense}
    clustered = {n: t for n, t in (clustered_state_dict or {}).items() if n in records and tuple(t.shape) == records[n].shape}
    clustered = clustered or dense
    tables = [] if sensitivity is None else [sensitivity] if isinstance(sensitivity, SensitivityTable) else list(sensitivity)

    figures: list[tuple[str, Path]] = []  # (caption, file), in the order the report shows them
    figures.append(("Bytes of each layer at each stage (dense fp32, pruned, quantized, as written); log scale, "
                    "labels give dense / file.", plots.bytes_per_stage(stats, out_dir / "bytes_per_stage.png")))  # fmt: skip
    if records:
        after = {name: record.to_dense() for name, record in records.items()}
        caption = ("Weight distribution per layer: before pruning (dense) and after compression (nonzero decoded weights)."
                   if dense else "Weight distribution per layer after compression (nonzero decoded weights only).")  # fmt: skip
        figures.append((caption, plots.weight_histograms(dense or None, after, out_dir / "weight_histograms.png")))
        figures.append(("Shared weights per layer: each centroid and how many kept weights use it"
                        + (", beside the values that were clustered." if clustered else "."),
                        plots.quantized_distribution(records, out_dir / "centroids.png", dense=clustered or None)))  # fmt: skip
        stems: set[str] = set()
        for name, record in records.items():
            stem = base = _file_stem(name)
            copy = 1
            while stem in stems:  # `a.b` and `a_b` would share a file name
                copy += 1
                stem = f"{base}_{copy}"
            stems.add(stem)
            file = out_dir / f"streams_{stem}.png"
            figures.append((f"`{name}`: distribution of the gap symbols and weight codes, with their Huffman code lengths.",
                            plots.stream_distributions(record, file, name=name)))  # fmt: skip
    kinds = [t.kind for t in tables]
    for i, table in enumerate(tables):
        suffix = "" if kinds.count(table.kind) == 1 else f"_{i}"
        file = out_dir / f"sensitivity_{table.kind}{suffix}.png"
        what = "pruned to each sparsity" if table.kind == "sparsity" else "quantized to each bit width"
        figures.append((f"Sensitivity: the metric with one layer at a time {what}, no retraining.",
                        plots.sensitivity_curves(table, file, tolerance=tolerance)))  # fmt: skip

    kept = sum(s.kept for s in stats if s.weight_bits is not None)
    weights = sum(s.weights for s in stats if s.weight_bits is not None)
    lines = [
        f"# deepzip report: `{dzip_path.name}`",
        "",
        f"- dense fp32 size: {totals['dense_bytes']:,} bytes",
        f"- file size: {totals['file_bytes']:,} bytes",
        f"- compression ratio: **{totals['ratio']:.1f}x**",
    ]
    if records:
        lines.append(f"- compressed layers: {len(records)}, keeping {kept:,} of {weights:,} weights ({100 * kept / max(weights, 1):.1f}%)")
    lines += ["", "## Per-tensor sizes", "", "```text", format_table(data), "```", ""]
    for table in tables:
        lines += [f"## Sensitivity ({table.kind})", "", table.to_markdown(), ""]
    lines += ["## Figures", ""]
    for caption, file in figures:
        link = file.relative_to(out_dir).as_posix()
        lines += [f"![{file.stem}]({link})", "", f"*{caption}*", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def _file_stem(name: str) -> str:
    """A tensor name as a safe file-name part: `features.0.weight` -> `features_0_weight`."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "tensor"


__all__ = ["LayerStats", "layer_stats", "summary", "format_table", "write_report"]
