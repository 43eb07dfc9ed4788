"""Per-layer byte accounting of a .dzip file, stage by stage, in the paper's terms."""

from __future__ import annotations

from dataclasses import asdict, dataclass


from deepzip import fileformat
from deepzip.codec.sparse import count_fillers
from deepzip.compressed import CodebookTensor


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
    """Stats for every tensor of the .dzip file whose bytes are `data` (validated first)."""
    model = fileformat.from_bytes(data)
    sizes = fileformat.section_sizes(data)
    stats = []
    for name, record in model.tensors.items():
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
            stats.append(LayerStats(name, tuple(record.tensor.shape), numel, numel, None, None, 0, 4 * numel, stored, stored, stored))
    return stats


def _bytes(bits: int) -> int:
    return (bits + 7) // 8


def summary(data: bytes) -> dict:
    """Whole-file figures: dense fp32 bytes of all tensors, file bytes and their ratio."""
    stats = layer_stats(data)
    dense = sum(s.dense_bytes for s in stats)
    return {"dense_bytes": dense, "file_bytes": len(data), "ratio": dense / len(data), "layers": [asdict(s) for s in stats]}


def format_table(data: bytes) -> str:
    """The paper-style table: one row per tensor, then the totals measured on the file."""
    stats = layer_stats(data)
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
    rows.append(("header+crc", "", "", "", "", "", "", "", f"{overhead:,}", ""))
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


__all__ = ["LayerStats", "layer_stats", "summary", "format_table"]
