"""The paper-style text table of a .dzip file: one row per tensor, then the measured totals."""

from __future__ import annotations

from deepzip.report.stats import LayerStats, layer_stats


def format_table(data: bytes, stats: list[LayerStats] | None = None) -> str:
    """The paper-style table: one row per tensor, then the totals measured on the file.

    `stats` is `layer_stats(data)` when the caller has it already (it decodes the file).
    """
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
                s.index_label,
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
    lines = aligned([header, *rows])
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 2, "-" * len(lines[0]))
    return "\n".join(lines)


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Text rows as lines of columns two spaces apart: the first left-aligned, the others right."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


__all__ = ["aligned", "format_table"]
