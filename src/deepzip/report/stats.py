"""Per-layer byte accounting of a .dzip file, stage by stage, in the paper's terms."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from deepzip.container import header
from deepzip.container.spec import DTYPE_ITEMSIZE, ENCODING_CODEBOOK, ENCODING_PLANES, ENCODING_RAW, FLAG_SIGNIFICANCE


@dataclass(frozen=True)
class LayerStats:
    """One tensor's sizes. Stage bytes follow the paper's accounting (Han et al., Table 2-4):

    - dense: fp32, 4 bytes per element;
    - pruned: each entry (kept weight or filler) as an fp32 value plus a fixed-width index;
    - quantized: each entry as a fixed-width code plus an index, plus the fp32 codebook;
    - file: the tensor's data section as written (Huffman-coded streams, tables, codebook).
    Raw tensors count their stored bytes at every stage. A record whose positions are
    significance flags (`significance`, index_bits None) has no fixed-width index: its
    stages count the flags' stream as stored in place of the indices.
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
    significance: bool = False

    @property
    def index_label(self) -> str:
        """How the positions are stored, for tables: the gap width, "ctx" (significance flags) or "-"."""
        return "ctx" if self.significance else "-" if self.index_bits is None else str(self.index_bits)

    @property
    def kept_fraction(self) -> float:
        """Fraction of the tensor's elements that are stored (kept), fillers excluded."""
        return self.kept / self.weights if self.weights else 0.0


def layer_stats(data: bytes) -> list[LayerStats]:
    """Stats for every stored tensor of the .dzip file whose bytes are `data` (validated first).

    A tied tensor counts once, under the name it is stored as; its aliases and any attached
    files count as overhead (see `deepzip.report.format_table`). A version-2 header says
    all of it; a version-1 codebook record's kept count is read from its gap stream (which
    needs the decoder, torch and numba: only old files pay for it).
    """
    records = header.parse(data, None).records
    stats = []
    for record in sorted(records, key=lambda r: r.name):
        numel = record.numel
        if record.encoding == ENCODING_CODEBOOK:
            kept = record.kept if record.kept is not None else _kept_from_streams(data, record.name)
            b, bits = record.index_bits, max(1, (record.k - 1).bit_length())
            entries = record.entries
            flags = bool(record.flags & FLAG_SIGNIFICANCE)
            positions = 8 * record.gap_bytes if flags else entries * b  # bits
            stats.append(
                LayerStats(
                    record.name, record.shape, numel, kept, bits, None if flags else b, entries - kept,
                    dense_bytes=4 * numel,
                    pruned_bytes=_bytes(entries * 32 + positions),
                    quantized_bytes=_bytes(entries * bits + positions) + 4 * record.k,
                    file_bytes=record.size,
                    significance=flags,
                )
            )  # fmt: skip
        elif record.encoding in (ENCODING_RAW, ENCODING_PLANES):
            # Byte planes are entropy coding: the stages before it hold the raw bytes.
            stored = numel * DTYPE_ITEMSIZE[record.dtype_code]
            stats.append(LayerStats(record.name, record.shape, numel, numel, None, None, 0, 4 * numel, stored, stored, record.size))
    return stats


def _kept_from_streams(data: bytes, name: str) -> int:
    from deepzip.container.reader import DzipFile

    return DzipFile(data, None).decode(name).kept


def _bytes(bits: int) -> int:
    return (bits + 7) // 8


def summary(data: bytes, stats: list[LayerStats] | None = None) -> dict:
    """Whole-file figures: dense fp32 bytes of all tensors, file bytes and their ratio.

    `stats` is `layer_stats(data)` when the caller has it already (it decodes the file).
    """
    stats = layer_stats(data) if stats is None else stats
    dense = sum(s.dense_bytes for s in stats)
    return {"dense_bytes": dense, "file_bytes": len(data), "ratio": dense / len(data), "layers": [asdict(s) for s in stats]}


__all__ = ["LayerStats", "layer_stats", "summary"]
