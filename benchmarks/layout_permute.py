"""Feasibility: a batch-1 kernel that keeps x in vector registers, against the library's one.

Every batch-1 layout deepzip ships pays at least two loads per kept weight (its entry and
x at that column), and these cores issue three loads a cycle: at 2.6 GHz that caps any such
kernel near 24% of the memory floor (README, issue 13). This kernel (kernels_c/permute_matvec.c,
AVX-512F) loads 16 entries at once and finds their x values and centroids with register
permutes: 63 columns of x in four registers, 32 centroids in two. It pays for lanes that
run out early with padding entries (column 63, whose x is 0): a (16-row slice, 63-column
block) holds as many steps as its fullest row.

    python benchmarks/layout_permute.py [--repeats 61] [--cold-mib 128]

Needs gcc and an AVX-512 CPU; compiles the kernel into a temporary folder. Prints, per
paper fc layer (fc_speed.py's random weights, 5-bit codes), hot and cold medians of both
kernels (one thread, in fc_speed.time_rounds' interleaved rounds; cold rotates copies of each layout, at
least `--cold-mib` of them, 4x this machine's LLC by default), both layouts' bytes, the padding and both outputs'
largest error relative to |W| |x| against a float64 dense reference.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
from fc_speed import LAYERS, copies_for, layer_with_reference, time_rounds

from deepzip.runtime import by_code, kernels

ROWS, WIDTH = 16, 63  # lanes a slice; columns a block (the 64th register slot holds x = 0)


def permute_layout(shape, positions, codes):
    """(entries uint16, depth uint8 per (slice, block), slices, blocks) for permute_matvec.c."""
    out, n_in = shape
    rows, cols = np.divmod(positions.astype(np.int64), n_in)
    slices, blocks = -(-out // ROWS), -(-n_in // WIDTH)
    cell = (rows // ROWS) * blocks + cols // WIDTH
    lane = rows % ROWS
    order = np.lexsort((cols, lane, cell))
    cell, lane, cols, code = cell[order], lane[order], cols[order], codes.astype(np.int64)[order]
    group = cell * ROWS + lane
    first = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    step = np.arange(len(group)) - np.repeat(first, np.diff(np.r_[first, len(group)]))
    depth = np.zeros(slices * blocks, np.int64)
    np.maximum.at(depth, cell, step + 1)
    depth += depth % 2  # steps go in pairs: lane l's 32 bits hold its entries of steps 2u and 2u + 1
    offsets = np.r_[0, np.cumsum(depth * ROWS)[:-1]]
    entries = np.full(int(depth.sum()) * ROWS, WIDTH, np.uint16)  # padding: column 63, code 0
    entries[offsets[cell] + (step // 2) * 2 * ROWS + lane * 2 + step % 2] = (cols % WIDTH) | (code << 6)
    return entries, depth.astype(np.uint8), slices, blocks


def compile_kernel(folder: Path):
    """Build the shared library with gcc; return the ctypes function."""
    source = Path(__file__).parent / "kernels_c" / "permute_matvec.c"
    library = folder / "permute_matvec.so"
    subprocess.run(["gcc", "-O3", "-mavx512f", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    function = ctypes.CDLL(str(library)).permute_matvec
    function.restype = None
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    return function


def permute_matvec(kernel, layout, codebook32, x, y):
    """y[: slices * 16] = W x through the compiled `kernel`, `layout` from permute_layout, 32 float32 centroids."""
    entries, depth, slices, blocks = layout
    kernel(entries.ctypes.data, depth.ctypes.data, codebook32.ctypes.data, x.ctypes.data, len(x), slices, blocks, y.ctypes.data)


@click.command()
@click.option("--repeats", type=int, default=61, show_default=True)
@click.option("--cold-mib", type=int, default=128, show_default=True, help="MiB of layout copies each kernel rotates through, cold")
def main(repeats, cold_mib):
    """Time the register-permute kernel against deepzip's batch-1 one, hot and cold, one thread."""
    if repeats < 1 or cold_mib < 1:
        raise click.UsageError("repeats and cold-mib must be >= 1")
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        sys.exit("layout_permute: this CPU has no AVX-512F")
    kernels.use_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        permute = compile_kernel(Path(folder))
        print("| layer | deepzip hot ms | permute hot ms | hot speedup | deepzip cold ms | permute cold ms | cold speedup | deepzip MB | permute MB | padding | max rel. error (deepzip, permute) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, (out, n_in, kept) in LAYERS.items():
            codebook, positions, codes, x, reference, scale = layer_with_reference(out, n_in, kept)
            # What matmul runs at batch 1: the code-split layout, or the sliced one below its threshold.
            code_split = by_code.by_code_layout(kernels.pack_linear((out, n_in), codebook, positions, codes)) is not None
            library_kernel = kernels._by_code_matvec if code_split else kernels._sliced_matvec

            def library_layout():
                packed = kernels.pack_linear((out, n_in), codebook, positions, codes)
                return by_code.split_by_code(packed) if code_split else packed

            layout = library_layout()
            entries, depth, slices, blocks = permute_layout((out, n_in), positions, codes)
            table = np.zeros(32, np.float32)
            table[: len(codebook)] = codebook
            no_bias, y, wide = np.zeros(0, np.float32), np.empty(out, np.float32), np.empty(slices * ROWS, np.float32)
            cold_bytes = cold_mib * 2**20
            ours = [(layout,)] + [(library_layout(),) for _ in range(copies_for(layout.nbytes, cold_bytes) - 1)]
            theirs = [(entries,)] + [(entries.copy(),) for _ in range(copies_for(entries.nbytes, cold_bytes) - 1)]

            def run_ours(layout):
                library_kernel(layout, x, no_bias, y)

            def run_theirs(entries):
                permute_matvec(permute, (entries, depth, slices, blocks), table, x, wide)

            run_ours(layout)
            run_theirs(entries)
            errors = (np.max(np.abs(y - reference) / scale), np.max(np.abs(wide[:out] - reference) / scale))
            # fc_speed's interleaved rounds: in each, both kernels in turn, cold calls on rotating copies, then one hot
            medians = time_rounds({"ours": (run_ours, ours), "theirs": (run_theirs, theirs)}, warmup=2, repeats=repeats)
            hot = [1e3 * medians[k]["hot"] for k in ("ours", "theirs")]
            cold = [1e3 * medians[k]["cold"] for k in ("ours", "theirs")]
            padding = 1 - len(positions) / len(entries)
            print(f"| {name} | {hot[0]:.3f} | {hot[1]:.3f} | {hot[0] / hot[1]:.2f}x | {cold[0]:.3f} | {cold[1]:.3f} | {cold[0] / cold[1]:.2f}x | "
                  f"{layout.nbytes / 1e6:.2f} | {entries.nbytes / 1e6:.2f} | {100 * padding:.0f}% | {errors[0]:.1e}, {errors[1]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
