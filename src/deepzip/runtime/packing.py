"""The inference layout of a pruned, weight-shared Linear weight: row slices over column blocks.

`pack_linear` turns the fields of a 2-D `CodebookTensor` (flat positions, codes, codebook)
into a `PackedLinear`, which `deepzip.runtime.kernels.matmul` multiplies by without ever
building the dense matrix. Every kept weight is one 16-bit entry (32-bit when the codebook
has more than 256 centroids): its code in the high bits, its column inside a block of
`2**col_bits - 1` columns in the low bits. 5-bit codes leave 11 bits: blocks of 2047
columns, whose 8 KiB of x stay in the L1 cache while the kernel reads them at random.

Layout, from the outside in:
- rows are cut into groups of `group_rows` (one thread's unit of work; a group's outputs
  are written by that thread only);
- within a group, columns are cut into blocks (x of one block stays in L1);
- within a (group, block), rows are sorted by how many weights they keep there and taken
  SLICE_ROWS at a time: a slice is a SELL-8 tile (Kreutzer et al. 2014) whose eight rows
  are stored interleaved, entry t of lane i at 8 * t + i, and padded to its longest row
  with an entry that reads a zero (column index `2**col_bits - 1`, the block's zero slot).

Why this and not plain CSR, measured on this project's slow-gather machine (AMD EPYC Zen 3,
AVX2, 1 thread, batch 1, ms; AlexNet fc6 / VGG-16 fc7 / AlexNet fc8, see the kernels
module): per-row CSR with 3 bytes per weight 2.9 / 0.48 / 0.77; column-blocked CSR with
2-byte entries 1.96 / 0.45 / 0.53 (x in L1 makes the random reads cheap, but every
(row, block) segment ends in a mispredicted loop exit and a partial group of four);
sliced (this) 1.50 / 0.31 / 0.42: one loop exit per eight rows, no remainder loop, and the
padding costs 0.05-0.1% of the entries at the paper's densities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deepzip.errors import ConfigError

__all__ = ["GROUP_ROWS", "MIN_GROUPS", "SLICE_ROWS", "PackedLinear", "col_bits_for", "column_blocks", "kept_weights", "pack_linear"]

SLICE_ROWS = 8
"""Rows of one slice, interleaved: eight independent sums in flight hide the latency of
the random x reads and of the adds (Zen 3: 3-cycle add, ~1 random L1 read per cycle)."""

GROUP_ROWS = (512, 256, 128, 64, 32, 16, 8)
"""Rows per group, the first that still gives MIN_GROUPS groups (else 8). A group is a
thread's unit of work and the rows sorted together inside a block: the more rows sorted
together, the closer a slice's eight lengths, so the less padding (random 4-9% kept
matrices: 1.1-2.1% padding with 128-row groups, 0.3-0.6% with 512)."""

MIN_GROUPS = 8
"""Groups a layer is cut into at least, where it has the rows: work for 8 threads."""

MAX_COL_BITS = 12
"""Blocks never exceed 4095 columns: 16 KiB of float32 x, half the L1 data cache, so the
streaming entries do not evict it."""


def col_bits_for(codebook_size: int) -> tuple[int, type]:
    """(column bits, entry dtype) for a codebook of that size: the code takes the high
    bits of a uint16 entry when it fits in 8 bits, else of a uint32 entry."""
    code_bits = max(0, int(codebook_size - 1).bit_length())
    if code_bits <= 8:
        return min(MAX_COL_BITS, 16 - code_bits), np.uint16
    return MAX_COL_BITS, np.uint32


def column_blocks(n_in: int, block_cols: int) -> tuple[int, int]:
    """(blocks, stride) for `n_in` columns in blocks of at most `block_cols`: at least one
    block, and the blocks share the columns evenly (4096 columns in blocks of at most 2047
    are three of 1366, not 2047 + 2047 + 2), since a sliver of a last block would hold
    slices of one entry each, mostly padding."""
    n_blocks = max(1, -(-n_in // block_cols))
    return n_blocks, max(1, -(-n_in // n_blocks))


@dataclass(frozen=True)
class PackedLinear:
    """A pruned, weight-shared (out x in) matrix in sliced codebook form, ready for `matmul`.

    Slice q (of `n_groups * n_blocks * slices_per_group`, group-major, then block, then
    slice) holds `entries[slice_starts[q]:slice_starts[q+1]]`, eight interleaved lanes;
    lane i's output row is `group * group_rows + lanes[8 * q + i]`. An entry e stands for
    `codebook[e >> col_bits]` at column `block * block_stride + (e & block_cols)`, where
    block_cols = 2**col_bits - 1; the in-block column `block_cols` is a zero (padding). Build it
    with `pack_linear`; a hand-made one is checked here, because the compiled kernels do
    no bounds checks. The arrays are made read-only so a packed layer cannot change
    under a running kernel.
    """

    shape: tuple[int, int]
    col_bits: int
    group_rows: int
    entries: np.ndarray  # uint16 or uint32 [8 * total slice length]
    slice_starts: np.ndarray  # uint64 [slices + 1]
    lanes: np.ndarray  # uint16 [8 * slices], group-local output row of each lane
    codebook: np.ndarray  # float32 [k]
    nnz: int = field(init=False)
    kernel_args: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.shape) != 2 or min(self.shape) < 0:
            raise ConfigError(f"PackedLinear shape must be (out, in), got {self.shape}")
        out, n_in = (int(d) for d in self.shape)
        object.__setattr__(self, "shape", (out, n_in))
        if not isinstance(self.col_bits, (int, np.integer)) or not 1 <= self.col_bits <= MAX_COL_BITS:
            raise ConfigError(f"PackedLinear col_bits must be 1..{MAX_COL_BITS}, got {self.col_bits}")
        object.__setattr__(self, "col_bits", int(self.col_bits))
        if self.group_rows not in GROUP_ROWS:
            raise ConfigError(f"PackedLinear group_rows must be one of {GROUP_ROWS}, got {self.group_rows}")
        object.__setattr__(self, "group_rows", int(self.group_rows))
        _check_array("codebook", self.codebook, (np.float32,), None)
        if self.codebook.size == 0:
            raise ConfigError("PackedLinear codebook must not be empty")
        slices = self.n_groups * self.n_blocks * self.slices_per_group
        _check_array("slice_starts", self.slice_starts, (np.uint64,), slices + 1)
        _check_array("lanes", self.lanes, (np.uint16,), SLICE_ROWS * slices)
        _check_array("entries", self.entries, (np.uint16, np.uint32), None)
        starts = self.slice_starts.astype(np.int64)
        steps = np.diff(starts)
        if starts[0] != 0 or np.any(steps < 0) or np.any(steps % SLICE_ROWS):
            raise ConfigError("PackedLinear slice_starts must start at 0 and grow by multiples of 8")
        if starts[-1] != self.entries.size:
            raise ConfigError(f"PackedLinear slice_starts ends at {starts[-1]}, but there are {self.entries.size} entries")
        if self.lanes.size and int(self.lanes.max()) >= self.group_rows:
            raise ConfigError(f"PackedLinear lane row {int(self.lanes.max())} >= group_rows {self.group_rows}")
        if self.entries.size:
            codes = self.entries >> self.entries.dtype.type(self.col_bits)
            if int(codes.max()) >= self.codebook.size:
                raise ConfigError(f"PackedLinear code {int(codes.max())} >= codebook size {self.codebook.size}")
        padding = self.entries == self.entries.dtype.type(self.block_cols)
        object.__setattr__(self, "nnz", int(self.entries.size - np.count_nonzero(padding)))
        for array in (self.entries, self.slice_starts, self.lanes, self.codebook):
            array.flags.writeable = False
        # The kernels' layout arguments, built once: a call's Python overhead is tens of
        # microseconds here, against 0.2-2 ms for a large layer.
        words = self.entries.view(np.uint64) if self.entries.dtype == np.uint16 and self.entries.size else None
        object.__setattr__(self, "kernel_args", (
            words if words is not None else self.entries, self.slice_starts, self.lanes, self.codebook,
            np.uint64(self.col_bits), self.block_stride, self.n_blocks, self.group_rows,
        ))

    @property
    def block_cols(self) -> int:
        """Columns per block; also the in-block index of the zero slot that padding reads."""
        return (1 << self.col_bits) - 1

    @property
    def n_blocks(self) -> int:
        """Column blocks (at least one; `column_blocks`)."""
        return column_blocks(self.shape[1], self.block_cols)[0]

    @property
    def block_stride(self) -> int:
        """Columns from one block's start to the next (`column_blocks`)."""
        return column_blocks(self.shape[1], self.block_cols)[1]

    @property
    def n_groups(self) -> int:
        """Row groups of group_rows rows (the last may be partial)."""
        return -(-self.shape[0] // self.group_rows)

    @property
    def slices_per_group(self) -> int:
        """Slices per (group, block)."""
        return self.group_rows // SLICE_ROWS

    @property
    def density(self) -> float:
        """Kept fraction of the out x in weights (0 for an empty matrix)."""
        numel = self.shape[0] * self.shape[1]
        return self.nnz / numel if numel else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weight: entries, slice starts, lanes and codebook."""
        return sum(a.nbytes for a in (self.entries, self.slice_starts, self.lanes, self.codebook))


def _check_array(name: str, array, dtypes: tuple, length: int | None) -> None:
    if not isinstance(array, np.ndarray) or array.ndim != 1 or not array.flags.c_contiguous:
        raise ConfigError(f"PackedLinear {name} must be a 1-D C-contiguous numpy array")
    if array.dtype.type not in dtypes:
        allowed = " or ".join(np.dtype(d).name for d in dtypes)
        raise ConfigError(f"PackedLinear {name} must be {allowed}, got {array.dtype}")
    if length is not None and array.shape[0] != length:
        raise ConfigError(f"PackedLinear {name} has {array.shape[0]} entries, expected {length}")


def _checked_fields(shape, codebook, positions, codes):
    """Validated (shape, codebook float32, positions int64 sorted, codes int64)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or min(shape) < 0:
        raise ConfigError(f"pack_linear needs a 2-D (out, in) shape, got {shape}")
    out, n_in = shape
    positions = np.asarray(positions)
    codes = np.asarray(codes)
    codebook = np.array(codebook, dtype=np.float32)  # a copy: PackedLinear makes it read-only
    if positions.ndim != 1 or codes.shape != positions.shape:
        raise ConfigError(f"positions and codes must be 1-D of equal length, got {positions.shape} and {codes.shape}")
    if positions.size and (positions.dtype.kind not in "iu" or codes.dtype.kind not in "iu"):
        raise ConfigError(f"positions and codes must be integers, got {positions.dtype} and {codes.dtype}")
    if codebook.ndim != 1 or codebook.size == 0:
        raise ConfigError(f"codebook must be a non-empty 1-D array, got shape {codebook.shape}")
    if not np.all(np.isfinite(codebook)):
        # Padding multiplies codebook[0] by a zero slot: an infinite centroid would make NaN.
        raise ConfigError("codebook values must be finite")
    positions = positions.astype(np.int64, copy=False)
    if positions.size:
        if positions.min() < 0 or positions.max() >= out * n_in:
            raise ConfigError(f"positions must lie in 0..{out * n_in - 1} for shape {shape}")
        if codes.min() < 0 or codes.max() >= codebook.size:
            raise ConfigError(f"codes must lie in 0..{codebook.size - 1} (codebook size {codebook.size})")
    if np.any(np.diff(positions) <= 0):
        # CodebookTensor positions are sorted already; sort only what is not.
        order = np.argsort(positions, kind="stable")
        positions, codes = positions[order], codes[order]
        if np.any(np.diff(positions) == 0):
            raise ConfigError("positions must be unique: a weight is listed twice")
    return shape, codebook, positions, codes


def pack_linear(shape, codebook, positions, codes) -> PackedLinear:
    """Pack a pruned, weight-shared (out x in) matrix for `matmul`.

    `positions` are flat row-major indices of the kept weights (any integer dtype, unique,
    sorted or not) and `codes` their indices into `codebook` (float, cast to float32):
    exactly the fields of a 2-D `deepzip.CodebookTensor`. Raises ConfigError for a shape
    that is not 2-D, positions out of range or repeated, or codes outside the codebook.
    """
    shape, codebook, positions, codes = _checked_fields(shape, codebook, positions, codes)
    out, n_in = shape
    col_bits, entry_dtype = col_bits_for(codebook.size)
    block_cols = (1 << col_bits) - 1
    n_blocks, stride = column_blocks(n_in, block_cols)
    group_rows = next((g for g in GROUP_ROWS if out >= MIN_GROUPS * g), GROUP_ROWS[-1])
    n_groups = -(-out // group_rows)
    per_group = group_rows // SLICE_ROWS

    # Per-entry index arrays are the memory peak (a 100 M-weight layer: 0.4-0.8 GB each
    # in int64), so they are int32 where the shape allows and freed as soon as used.
    small = np.int32 if max(out, n_in, n_groups * n_blocks * group_rows) < 2**31 else np.int64
    rows = (positions // n_in if n_in else positions).astype(small)
    cols = (positions - rows.astype(np.int64) * n_in).astype(small)
    del positions
    block = cols // small(stride)
    group, local = np.divmod(rows, small(group_rows))
    del rows
    cell = group * small(n_blocks) + block  # one (group, block) pair
    del group
    in_block = cols - block * small(stride)
    del cols, block
    key = cell * small(group_rows) + local  # one (row, block) run of entries
    counts = np.bincount(key, minlength=n_groups * n_blocks * group_rows).reshape(-1, group_rows)
    # Lanes hold the rows in decreasing count, so a slice's rows have nearly equal lengths.
    order = np.argsort(-counts, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(group_rows)[None, :], axis=1)
    lengths = np.take_along_axis(counts, order, axis=1)[:, ::SLICE_ROWS]  # longest row of each slice
    del counts
    slice_starts = np.zeros(lengths.size + 1, dtype=np.uint64)
    np.cumsum(lengths.ravel() * SLICE_ROWS, out=slice_starts[1:])

    # Positions are sorted by (row, column), so each (row, block) run is contiguous:
    # an entry's step inside its run is its distance from the run's first entry.
    run_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.zeros(0, np.int64)
    step = np.arange(key.size, dtype=np.int64) - np.repeat(run_start, np.diff(np.r_[run_start, key.size]))
    del key, run_start
    slot = rank[cell, local]
    del local
    target = slice_starts[cell.astype(np.int64) * per_group + slot // SLICE_ROWS].astype(np.int64)
    del cell
    target += step * SLICE_ROWS + slot % SLICE_ROWS
    del step, slot
    entries = np.full(int(slice_starts[-1]), block_cols, dtype=entry_dtype)
    entries[target] = (codes.astype(entry_dtype) << entry_dtype(col_bits)) | in_block.astype(entry_dtype)
    del target, in_block
    lanes = np.ascontiguousarray(order, dtype=np.uint16).ravel()
    return PackedLinear(shape, col_bits, group_rows, entries, slice_starts, lanes, codebook)


def kept_weights(packed: PackedLinear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, codes), int64, of the packed layer's kept weights, read back from its slices.

    Only the kept entries' indices are materialized, and each temporary is freed when
    used: the per-weight int64 arrays are the memory peak of building the other layouts."""
    entries = packed.entries
    padding = entries.dtype.type(packed.block_cols)  # the sliced layout's zero slot
    at = np.flatnonzero((entries & padding) != padding)
    values = entries[at].astype(np.int64)
    slice_of = np.searchsorted(packed.slice_starts, at.astype(np.uint64), side="right").astype(np.int64) - 1
    lane = packed.lanes[slice_of * SLICE_ROWS + at % SLICE_ROWS].astype(np.int64)
    del at
    group, rest = np.divmod(slice_of, packed.n_blocks * packed.slices_per_group)
    del slice_of
    rows = group * packed.group_rows + lane
    del group, lane
    cols = (rest // packed.slices_per_group) * packed.block_stride + (values & packed.block_cols)
    del rest
    return rows, cols, values >> packed.col_bits
