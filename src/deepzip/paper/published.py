"""The paper's own per-layer figures for its MNIST networks, and a table that sets a run beside them.

From Han, Mao, Dally, "Deep Compression", ICLR 2016: Table 1 (errors, sizes, ratios) and
Table 2 (weights kept, weight bits and index bits per layer, before Huffman coding).
`deepzip reproduce --paper` runs exactly these per-layer settings; both modes print
`side_by_side` so that every layer can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepzip.report.stats import LayerStats
from deepzip.report.tables import aligned


@dataclass(frozen=True)
class PublishedLayer:
    """One row of the paper's Table 2."""

    layer: str  # our module name
    paper_name: str  # the paper's (Caffe's) layer name
    kept: float  # fraction of weights kept after pruning
    weight_bits: int
    index_bits: int


@dataclass(frozen=True)
class PublishedModel:
    """The paper's result on one network (Tables 1 and 2)."""

    layers: tuple[PublishedLayer, ...]
    error_before: float  # top-1 test error, fractions
    error_after: float
    ratio: float  # compression ratio after pruning, quantization and Huffman coding


PUBLISHED = {
    "lenet-300-100": PublishedModel(
        (
            PublishedLayer("fc1", "ip1", 0.08, 6, 5),
            PublishedLayer("fc2", "ip2", 0.09, 6, 5),
            PublishedLayer("fc3", "ip3", 0.26, 6, 5),
        ),
        error_before=0.0164,
        error_after=0.0158,
        ratio=40.0,
    ),
    "lenet-5": PublishedModel(
        (
            PublishedLayer("conv1", "conv1", 0.66, 8, 5),
            PublishedLayer("conv2", "conv2", 0.12, 8, 5),
            PublishedLayer("fc1", "ip1", 0.08, 5, 5),
            PublishedLayer("fc2", "ip2", 0.19, 5, 5),
        ),
        error_before=0.0080,
        error_after=0.0074,
        ratio=39.0,
    ),
}


def side_by_side(name: str, stats: list[LayerStats], file_bytes: int, dense_error: float, error: float) -> str:
    """The paper's per-layer settings beside this run's, then both totals, as a text table.

    `stats` are the run's file's layer statistics (`deepzip.report.layer_stats`); a row
    per weight tensor the paper lists, then a line with both ratios and errors.
    """
    published = PUBLISHED[name]
    by_layer = {s.name.removesuffix(".weight"): s for s in stats if s.name.endswith(".weight")}
    header = ("layer", "paper kept", "kept", "paper w bits", "w bits", "paper idx bits", "idx bits", "file B")
    rows = []
    for p in published.layers:
        s = by_layer.get(p.layer)
        rows.append(
            (
                f"{p.layer} ({p.paper_name})",
                f"{100 * p.kept:.0f}%",
                "-" if s is None else f"{100 * s.kept_fraction:.1f}%",
                str(p.weight_bits),
                "-" if s is None or s.weight_bits is None else str(s.weight_bits),
                str(p.index_bits),
                "-" if s is None else s.index_label,
                "-" if s is None else f"{s.file_bytes:,}",
            )
        )
    lines = aligned([header, *rows])
    lines.insert(1, "-" * len(lines[0]))
    dense = sum(s.dense_bytes for s in stats)
    lines.append(
        f"paper: {published.ratio:.0f}x, test error {100 * published.error_before:.2f}% -> {100 * published.error_after:.2f}%; "
        f"this run: {dense / file_bytes:.1f}x ({file_bytes:,} bytes), test error {100 * dense_error:.2f}% -> {100 * error:.2f}%"
    )
    return "\n".join(lines)
