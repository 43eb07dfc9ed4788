"""The two batch-1 layouts side by side: the sliced one and the code-split one (`deepzip.runtime.by_code`).

The sliced layout (`deepzip.runtime.packing`) stores each kept weight as a 2-byte entry
holding code and column, and the kernel pays per weight: unpacking the entry, a codebook
read, an x read and a fused multiply-add (about seven micro-ops; Zen 3 issues six a cycle).
In the code-split layout, within each (row group, column block), the entries are split by code first: cell
(group, block, code) holds, for each row, the columns that use that code, as SELL-8
slices of rows sorted by their count in that cell. A slice then needs only x reads and
adds (entries are bare 16-bit columns, one zero-extending load each); each lane's sum is
multiplied by its code's centroid once, at the slice's end, and added into its row.

What it costs: every nonempty (cell, slice) adds 8 lane bytes x 2 and a start offset, and
the slices are shorter (a row's weights are spread over the codebook), so more of them.

    python benchmarks/layout_code_sorted.py [--threads 1,2] [--repeats 61]

Prints, per paper fc layer (random positions and uniform 5-bit codes, as fc_speed.py),
the hot median ms of both kernels in the same process, interleaved, whether `matmul` picks
the code-split one for that layer (`by_code.MIN_PER_CELL`), the bytes of both layouts and
both outputs' largest error relative to |W| |x| (float64 dense reference). This is the
measurement behind that threshold.
"""

from __future__ import annotations

import statistics
import time

import click
import numpy as np
from fc_speed import LAYERS, layer_with_reference  # the same layers and random weights as the cold benchmark

from deepzip.runtime import by_code, kernels


def median_ms(times):
    """Median of a list of seconds, in ms."""
    return 1e3 * statistics.median(times)


@click.command()
@click.option("--threads", "thread_counts", default="1,2", show_default=True)
@click.option("--repeats", type=int, default=61, show_default=True)
def main(thread_counts, repeats):
    """Time the code-split layout against the sliced one, hot, batch 1; print a table."""
    threads = [int(t) for t in thread_counts.split(",")]
    if min(threads) < 1 or repeats < 1:
        raise click.UsageError("threads and repeats must be >= 1")
    print("| layer | threads | sliced ms | code-split ms | speedup | matmul uses | sliced MB | code-split MB | max rel. error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (out, n_in, kept) in LAYERS.items():
        codebook, positions, codes, x, reference, scale = layer_with_reference(out, n_in, kept)
        packed = kernels.pack_linear((out, n_in), codebook, positions, codes)
        split = by_code.split_by_code(packed)
        chosen = "code-split" if by_code.by_code_layout(packed) is not None else "sliced"
        no_bias = np.zeros(0, np.float32)
        y = np.empty(out, np.float32)
        for t in threads:
            kernels.use_threads(t)
            sliced_y = np.empty(out, np.float32)
            kernels._by_code_matvec(split, x, no_bias, y)  # the two paths `matmul` chooses between
            kernels._sliced_matvec(packed, x, no_bias, sliced_y)
            errors = [np.max(np.abs(y - reference) / scale), np.max(np.abs(sliced_y - reference) / scale)]
            new, old = [], []
            for _ in range(repeats):  # interleaved, so a slow moment of the machine hits both
                t0 = time.perf_counter()
                kernels._sliced_matvec(packed, x, no_bias, sliced_y)
                t1 = time.perf_counter()
                kernels._by_code_matvec(split, x, no_bias, y)
                old.append(t1 - t0)
                new.append(time.perf_counter() - t1)
            print(f"| {name} | {t} | {median_ms(old):.3f} | {median_ms(new):.3f} | {median_ms(old) / median_ms(new):.2f}x | "
                  f"{chosen} | {packed.nbytes / 1e6:.2f} | {split.nbytes / 1e6:.2f} | {max(errors):.1e} |", flush=True)


if __name__ == "__main__":
    main()
