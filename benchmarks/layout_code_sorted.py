"""A measured alternative to the shipped batch-1 layout: entries sorted by code, no codebook read.

The shipped layout (`deepzip.runtime.packing`) stores each kept weight as a 2-byte entry
holding code and column, and the kernel pays per weight: unpacking the entry, a codebook
read, an x read and a fused multiply-add (about seven micro-ops; Zen 3 issues six a cycle).
Here, within each (row group, column block), the entries are split by code first: cell
(group, block, code) holds, for each row, the columns that use that code, as SELL-8
slices of rows sorted by their count in that cell. A slice then needs only x reads and
adds (entries are bare 16-bit columns, one zero-extending load each); each lane's sum is
multiplied by its code's centroid once, at the slice's end, and added into its row.

What it costs: every nonempty (cell, slice) adds 8 lane bytes x 2 and a start offset, and
the slices are shorter (a row's weights are spread over the codebook), so more of them.

    python benchmarks/layout_code_sorted.py [--threads 1,2] [--repeats 61]

Prints, per paper fc layer (random positions and uniform 5-bit codes, as fc_speed.py),
the hot median ms of the shipped kernel and of this one in the same process, interleaved,
the bytes of both layouts and both outputs' largest error relative to |W| |x| (float64
dense reference). Not used by the library: kept so the figure can be re-measured.
"""

from __future__ import annotations

import statistics
import time

import click
import numba
import numpy as np
from numba import njit, prange

from deepzip.runtime import kernels
from deepzip.runtime.packing import pack_linear

LANES = 8
LAYERS = {
    "alexnet-fc6": (4096, 9216, 0.09),
    "alexnet-fc7": (4096, 4096, 0.09),
    "alexnet-fc8": (1000, 4096, 0.25),
    "vgg16-fc6": (4096, 25088, 0.04),
    "vgg16-fc7": (4096, 4096, 0.04),
    "vgg16-fc8": (1000, 4096, 0.23),
}


def pack_code_sorted(shape, codebook, positions, codes, group_rows, col_bits=12):
    """The code-sorted layout of a (out, in) matrix given flat sorted positions and codes."""
    out, n_in = shape
    k = codebook.size
    zero_slot = (1 << col_bits) - 1
    n_blocks = max(1, -(-n_in // zero_slot))
    stride = -(-n_in // n_blocks)
    rows, cols = np.divmod(positions, n_in)
    block = cols // stride
    group, local = np.divmod(rows, group_rows)
    key = ((group * n_blocks + block) * k + codes) * group_rows + local  # one (cell, row) run
    order = np.lexsort((cols, key))
    key, in_block = key[order], (cols - block * stride)[order]
    n_cells = -(-out // group_rows) * n_blocks * k
    counts = np.bincount(key, minlength=n_cells * group_rows).reshape(n_cells, group_rows)
    lane_order = np.argsort(-counts, axis=1, kind="stable")
    rank = np.empty_like(lane_order)
    np.put_along_axis(rank, lane_order, np.arange(group_rows)[None, :], axis=1)
    lengths = np.take_along_axis(counts, lane_order, axis=1)[:, ::LANES]
    nonempty = lengths > 0
    cell_slices = np.zeros(n_cells + 1, np.uint64)
    np.cumsum(nonempty.sum(1), out=cell_slices[1:])
    starts = np.zeros(int(nonempty.sum()) + 1, np.int64)
    np.cumsum(lengths[nonempty] * LANES, out=starts[1:])
    slice_of = np.cumsum(nonempty.ravel()) - 1
    lanes = lane_order.reshape(n_cells, -1, LANES)[nonempty].ravel().astype(np.uint16)
    run_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    step = np.arange(key.size) - np.repeat(run_start, np.diff(np.r_[run_start, key.size]))
    cell, row = np.divmod(key, group_rows)
    slot = rank[cell, row]
    target = starts[slice_of[cell * (group_rows // LANES) + slot // LANES]] + step * LANES + slot % LANES
    entries = np.full(int(starts[-1]), zero_slot, np.uint16)
    entries[target] = in_block
    arrays = (entries, starts.astype(np.uint64), cell_slices, lanes, codebook.astype(np.float32))
    return arrays, (stride, n_blocks, k, group_rows, zero_slot)


@njit(parallel=True, fastmath={"contract"})
def matvec_code_sorted(entries, starts, cell_slices, lanes, codebook, stride, n_blocks, k, group_rows, zero_slot, x, y):
    """y = W x for the code-sorted layout (batch 1)."""
    xb = np.zeros((n_blocks, zero_slot + 1), np.float32)  # each block's x, then its zero slot
    for b in range(n_blocks):
        for c in range(min(stride, x.shape[0] - b * stride)):
            xb[b, c] = x[b * stride + c]
    one, eight = np.uint64(1), np.uint64(LANES)
    out = y.shape[0]
    for group in prange((out + group_rows - 1) // group_rows):
        sums = np.zeros(group_rows, np.float32)
        for b in range(n_blocks):
            xr = xb[b]
            for code in range(k):
                cell = np.uint64((group * n_blocks + b) * k + code)
                w = codebook[code]
                for s in range(cell_slices[cell], cell_slices[cell + one]):
                    j, stop = starts[s], starts[s + one]
                    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                    while j < stop:
                        a0 += xr[entries[j]]
                        a1 += xr[entries[j + np.uint64(1)]]
                        a2 += xr[entries[j + np.uint64(2)]]
                        a3 += xr[entries[j + np.uint64(3)]]
                        a4 += xr[entries[j + np.uint64(4)]]
                        a5 += xr[entries[j + np.uint64(5)]]
                        a6 += xr[entries[j + np.uint64(6)]]
                        a7 += xr[entries[j + np.uint64(7)]]
                        j += eight
                    f = s * eight
                    for i, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
                        sums[lanes[f + np.uint64(i)]] += w * a
        first = group * group_rows
        for r in range(min(group_rows, out - first)):
            y[first + r] = sums[r]


def median_ms(times):
    """Median of a list of seconds, in ms."""
    return 1e3 * statistics.median(times)


@click.command()
@click.option("--threads", "thread_counts", default="1,2", show_default=True)
@click.option("--repeats", type=int, default=61, show_default=True)
def main(thread_counts, repeats):
    """Time the code-sorted layout against the shipped kernel, hot, batch 1; print a table."""
    threads = [int(t) for t in thread_counts.split(",")]
    if min(threads) < 1 or repeats < 1:
        raise click.UsageError("threads and repeats must be >= 1")
    print("| layer | threads | shipped ms | code-sorted ms | speedup | shipped MB | code-sorted MB | max rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (out, n_in, kept) in LAYERS.items():
        rng = np.random.default_rng(0)
        positions = np.flatnonzero(rng.random((out, n_in), dtype=np.float32) < kept).astype(np.int64)
        codes = rng.integers(0, 32, positions.size)
        codebook = np.sort(rng.standard_normal(32) * (2.0 / n_in) ** 0.5).astype(np.float32)
        x = rng.standard_normal(n_in).astype(np.float32)
        shipped = pack_linear((out, n_in), codebook, positions, codes)
        arrays, layout = pack_code_sorted((out, n_in), codebook, positions, codes, shipped.group_rows)
        dense = np.zeros(out * n_in)
        dense[positions] = codebook[codes]
        dense = dense.reshape(out, n_in)
        reference, scale = dense @ x.astype(np.float64), np.abs(dense) @ np.abs(x.astype(np.float64))
        y = np.empty(out, np.float32)
        for t in threads:
            numba.set_num_threads(t)
            kernels.use_threads(t)
            matvec_code_sorted(*arrays, *layout, x, y)
            errors = [np.max(np.abs(y - reference) / scale), np.max(np.abs(kernels.matmul(shipped, x[None])[0] - reference) / scale)]
            new, old = [], []
            for _ in range(repeats):  # interleaved, so a slow moment of the machine hits both
                t0 = time.perf_counter()
                kernels.matmul(shipped, x[None])
                t1 = time.perf_counter()
                matvec_code_sorted(*arrays, *layout, x, y)
                old.append(t1 - t0)
                new.append(time.perf_counter() - t1)
            print(f"| {name} | {t} | {median_ms(old):.3f} | {median_ms(new):.3f} | {median_ms(old) / median_ms(new):.2f}x | "
                  f"{shipped.nbytes / 1e6:.2f} | {sum(a.nbytes for a in arrays) / 1e6:.2f} | {max(errors):.1e} |", flush=True)


if __name__ == "__main__":
    main()
