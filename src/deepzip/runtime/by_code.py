"""The batch-1 layout that needs no codebook read: a packed layer's entries split by code.

Within each (row group, column block) of a `PackedLinear`, cell (group, block, code)
holds, for every row, the columns whose weight uses that code, as SELL-8 slices of the
rows sorted by their count in the cell; entries are bare 16-bit in-block columns. A
slice costs one entry load, one x read and one add per weight, where the sliced layout
pays an unpack, a codebook read, an x read and a multiply-add; each lane's sum meets its
centroid once, at the slice's end (`benchmarks/layout_code_sorted.py` measured both). The
kernel that runs it is `deepzip.runtime.kernels`' `_matvec_by_code`, beside the sliced one.

It pays where a cell's slices are long, so `by_code_layout` builds it only when a layer
keeps at least MIN_PER_CELL weights per (row, block, code) on average. Measured on the
paper's fc layers (`benchmarks/layout_code_sorted.py`; AMD EPYC Zen 4, 2.6 GHz, hot, with
4096-column blocks): 1.21-1.48x faster with 1 thread and 1.24-1.57x with 2 at 5.8-16
weights a cell (AlexNet fc6, fc7, fc8, VGG-16 fc8), 1.06x / 1.32x at 5.1 (VGG-16 fc7, one
block); 0.92x / 1.20x at 4.5 (VGG-16 fc6, where it is not built), where its shorter, more
numerous slices cost about what the codebook reads they save. It stores 15-26% more
bytes than the sliced layout on the layers it is built for. It is built from the packed
layer on its first batch-1 product and then kept beside it (`matmul` with B > 1 uses the
sliced layout only). Building costs about 0.4 us and 40 bytes of temporary memory per kept
weight (AlexNet fc6, 3.4 M weights: 1.4 s, 130 MB), once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepzip.runtime.packing import MAX_COL_BITS, SLICE_ROWS, PackedLinear, column_blocks, kept_weights

__all__ = ["MIN_PER_CELL", "ZERO_SLOT", "ByCodeLinear", "by_code_layout", "split_by_code"]

MIN_PER_CELL = 5.0
"""Mean kept weights per (row, column block, code) from which the layout is built."""

ZERO_SLOT = 1 << MAX_COL_BITS
"""Columns per block (4096: x's block is 16 KiB, half of an L1 data cache), and the
in-block column, just past them, that padding entries read (a zero). Entries hold the
column only, so blocks can be as wide as the cache allows: 4096-column layers (AlexNet and
VGG-16 fc7 and fc8) are one block, not two of 2048, which made their batch-1 products
1.05-1.20x faster (Zen 4, 1 and 2 threads) and lets VGG-16 fc7 (4% kept) reach
MIN_PER_CELL."""


@dataclass(frozen=True)
class ByCodeLinear:
    """A (out x in) matrix split by code; see the module docstring. Built by `by_code_layout`
    from a checked `PackedLinear`, never by hand: the kernel does no bounds checks."""

    entries: np.ndarray  # uint16 in-block columns; the zero slot is padding
    slice_starts: np.ndarray  # uint64 [slices + 1]
    cell_slices: np.ndarray  # uint64 [cells + 1]: cell c holds slices cell_slices[c]:cell_slices[c + 1]
    lanes: np.ndarray  # uint16 [8 * slices], group-local output row of each lane
    codebook: np.ndarray  # float32 [k]
    block_stride: int
    n_blocks: int
    group_rows: int

    @property
    def nbytes(self) -> int:
        """Bytes of the layout: entries, slice and cell starts, lanes and codebook."""
        return sum(a.nbytes for a in (self.entries, self.slice_starts, self.cell_slices, self.lanes, self.codebook))


def by_code_layout(packed: PackedLinear) -> ByCodeLinear | None:
    """The packed layer's code-split layout, built on first use and kept on it; None
    where it would not pay (fewer than MIN_PER_CELL weights a cell, or no weights)."""
    cached = packed.__dict__.get("_by_code", False)
    if cached is not False:
        return cached
    out, n_in = packed.shape
    cells = out * column_blocks(n_in, ZERO_SLOT)[0] * packed.codebook.size
    layout = split_by_code(packed) if packed.nnz and packed.nnz >= MIN_PER_CELL * cells else None
    object.__setattr__(packed, "_by_code", layout)  # frozen dataclass: a cache, not a field
    return layout


def split_by_code(packed: PackedLinear) -> ByCodeLinear:
    """The code-split layout of a packed layer, built whether or not it pays (see
    `by_code_layout` for the cached choice `matmul` makes)."""
    n_blocks, stride = column_blocks(packed.shape[1], ZERO_SLOT)
    rows, cols, codes = kept_weights(packed)
    k, group_rows = packed.codebook.size, packed.group_rows
    block = cols // stride
    group, local = np.divmod(rows, group_rows)
    key = ((group * n_blocks + block) * k + codes) * group_rows + local  # one (cell, row) run
    order = np.lexsort((cols, key))
    key, in_block = key[order], (cols - block * stride)[order]
    del rows, cols, codes, block, group, local, order
    n_cells = packed.n_groups * n_blocks * k
    counts = np.bincount(key, minlength=n_cells * group_rows).reshape(n_cells, group_rows)
    # As in the sliced layout: lanes hold rows in decreasing count, so a slice's eight
    # lengths are close; slices of rows with nothing in the cell are not stored at all.
    lane_order = np.argsort(-counts, axis=1, kind="stable")
    rank = np.empty_like(lane_order)
    np.put_along_axis(rank, lane_order, np.arange(group_rows)[None, :], axis=1)
    lengths = np.take_along_axis(counts, lane_order, axis=1)[:, ::SLICE_ROWS]
    del counts
    nonempty = lengths > 0
    cell_slices = np.zeros(n_cells + 1, dtype=np.uint64)
    np.cumsum(nonempty.sum(axis=1), out=cell_slices[1:])
    starts = np.zeros(int(nonempty.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[nonempty] * SLICE_ROWS, out=starts[1:])
    slice_of = np.cumsum(nonempty.ravel()) - 1  # stored slice of each (cell, slice) pair
    lanes = np.ascontiguousarray(lane_order.reshape(n_cells, -1, SLICE_ROWS)[nonempty], dtype=np.uint16).ravel()
    run_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    step = np.arange(key.size) - np.repeat(run_start, np.diff(np.r_[run_start, key.size]))
    cell, row = np.divmod(key, group_rows)
    slot = rank[cell, row]
    target = starts[slice_of[cell * (group_rows // SLICE_ROWS) + slot // SLICE_ROWS]] + step * SLICE_ROWS + slot % SLICE_ROWS
    entries = np.full(int(starts[-1]), ZERO_SLOT, dtype=np.uint16)
    entries[target] = in_block
    layout = ByCodeLinear(entries, starts.astype(np.uint64), cell_slices, lanes, packed.codebook, stride, n_blocks, group_rows)
    for array in (layout.entries, layout.slice_starts, layout.cell_slices, layout.lanes):
        array.flags.writeable = False
    return layout
