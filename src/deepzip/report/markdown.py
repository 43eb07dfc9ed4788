"""The Markdown report of a .dzip file: its table, the sensitivity scans and the figures, linked."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deepzip import container
from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.report.stats import layer_stats, summary
from deepzip.report.tables import format_table
from deepzip.train.sensitivity import SensitivityTable

if TYPE_CHECKING:
    import torch


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
    # Imported here: `import deepzip.report` (for `deepzip info`, `format_table`) needs no matplotlib.
    from deepzip.report import charts, plots

    dzip_path, out_dir = Path(dzip_path), Path(out_dir)
    if not dzip_path.is_file():
        raise ConfigError(f"{dzip_path}: no such file")
    data = dzip_path.read_bytes()
    model = container.from_bytes(data)
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
                    "labels give dense / file.", charts.bytes_per_stage(stats, out_dir / "bytes_per_stage.png")))  # fmt: skip
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
                        charts.sensitivity_curves(table, file, tolerance=tolerance)))  # fmt: skip

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


__all__ = ["write_report"]
