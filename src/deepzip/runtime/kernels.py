"""Numba kernels that multiply by a pruned, weight-shared matrix without decoding it.

The weight is a `PackedLinear` (see `deepzip.runtime.packing` for the layout: 2-byte
entries holding code and in-block column, in SELL-8 slices over L1-sized column blocks).

Batch 1, on a CPU with AVX-512F and a codebook of at most 32 centroids: the
register-permute layout of `deepzip.runtime.permute` (x and the codebook in registers, no
per-weight load but the entry's), where its padding stays under half the entries. Else,
where a layer keeps enough weights per (row, block, code): the code-split layout
of `deepzip.runtime.by_code` (no codebook read; 1.2-1.5x faster where it is built).
Otherwise (`_matvec`): per slice, eight scalar sums,
one per lane; each entry costs a code read from the codebook and an x read from the
block's copy of x, both in L1. On the machine this was tuned on (AMD EPYC Zen 3, AVX2,
32 MiB L3, 1 thread) that is ~2.3 G weights/s, bound by the two random L1 reads per
weight, not by memory: AVX2 gathers are slower than scalar loads there (8 lanes per ~9
cycles), so the loop is scalar on purpose. 16-bit entries are read four per 64-bit load
and split with shifts (`_eight`), which saves a quarter of the loads (+12% measured).
Measured alternatives (ms, AlexNet fc6 / VGG-16 fc7 / AlexNet fc8, best of 100):

    0.1 kernel: per-row CSR, 3 bytes/weight, gathers + prefetch   2.9 / 0.48 / 0.77
    products table (codebook x block of x, one read per weight)   1.55 / 0.67 / 0.38
    sliced, narrow entry loads                                     1.70 / 0.45 / 0.48
    sliced, wide entry loads (this)                                1.48 / 0.31 / 0.42

The products table (Lut-GEMM style: precompute codebook[k] * x[c] for a 192-column block,
then one read per weight) wins only at 25% kept: its blocks must be narrow to stay in L1,
so at 4-9% kept its slices are short and their overhead dominates. Cold (weights from
DRAM) and hot timings are equal: 2 bytes per weight at ~2.3 G/s is 5 GB/s, a quarter of
one core's bandwidth, and the entry stream is sequential, so no software prefetch helps.

Batch > 1 (`_matmul_tiles`): x is transposed to (in, W) per column block, W = 8, 16, 32
or 64 batch columns, and each entry adds codebook[code] * x[col, 0:W] into its row's
accumulator, which lives in vector registers (`deepzip.runtime.simd.lane_tile`): per
weight one code read, one codebook read and W/8 vector loads and fused multiply-adds.
Batches over 64 run as 64-column chunks.

Threading: row groups are independent (`prange`); numba's default threading layer is
OpenMP with the pinned dependencies, safe to call from several Python threads at once;
like any GNU OpenMP program, a process must not fork after a parallel kernel ran and then
call one in the child. `matmul(..., num_threads=n)` sets numba's thread count for the
calling thread only when it differs from what this module last set there (numba's
get/set calls cost microseconds, and the 0.1 kernel paid two per call).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from deepzip.errors import ConfigError
from deepzip.runtime import by_code, permute
from deepzip.runtime.packing import SLICE_ROWS, PackedLinear, pack_linear
from deepzip.runtime.simd import lane_tile

__all__ = ["PackedLinear", "bytes_per_call", "checked_matmul", "matmul", "pack_linear", "use_threads"]

MAX_TILE = 64
"""Widest batch tile: 8 vectors of accumulators per lane (8 ymm registers on AVX2)."""

TILE_WIDTHS = (8, 16, 32, 64)

_TILE_8 = lane_tile(8, 1)
_TILE_16 = lane_tile(4, 2)
_TILE_32 = lane_tile(2, 4)
_TILE_64 = lane_tile(1, 8)

_threads = threading.local()


def matmul(packed: PackedLinear, x: np.ndarray, bias: np.ndarray | None = None, *, num_threads: int | None = None):
    """y = x @ W.T (+ bias) for the packed W; x float32 (B, in), y float32 (B, out).

    Any B >= 0; x need not be contiguous. `bias` is float32 (out,) or None.
    `num_threads` runs this call (and later ones from this thread) on that many numba
    threads, capped at numba's maximum; None uses the thread's current numba setting.
    Raises ConfigError for a wrong dtype or shape, before any compiled code runs.
    """
    if not isinstance(packed, PackedLinear):
        raise ConfigError(f"matmul needs a PackedLinear (see pack_linear), got {type(packed).__name__}")
    out, n_in = packed.shape
    if not isinstance(x, np.ndarray):
        raise ConfigError(f"x must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ConfigError(f"x must be float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ConfigError(f"x must have shape (batch, {n_in}), got {x.shape}")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (out,):
            got = f"{bias.dtype} {bias.shape}" if isinstance(bias, np.ndarray) else type(bias).__name__
            raise ConfigError(f"bias must be a float32 array of shape ({out},), got {got}")
        bias = np.ascontiguousarray(bias)
    else:
        bias = np.zeros(0, dtype=np.float32)
    if num_threads is not None:
        if int(num_threads) < 1:
            raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
        use_threads(num_threads)
    return checked_matmul(packed, x, bias)


def checked_matmul(packed: PackedLinear, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """`matmul` without its checks, for a caller that made them (`SparseLinear`): x float32
    (B, in) with B >= 0, bias float32 (out,) C-contiguous or empty (no bias). The checks
    cost ~10 us per call here, 5% of a 0.2 ms layer."""
    out = packed.shape[0]
    batch = x.shape[0]
    if batch == 0 or out == 0:
        return np.zeros((batch, out), dtype=np.float32)
    if batch == 1:
        y = np.empty((1, out), dtype=np.float32)
        x = x[0] if x.flags.c_contiguous else np.ascontiguousarray(x[0])
        registers = permute.permute_layout(packed)
        split = by_code.by_code_layout(packed) if registers is None else None
        if registers is not None:
            permute.permute_matvec(registers, x, bias, y[0])
        elif split is not None:
            _by_code_matvec(split, x, bias, y[0])
        else:
            _sliced_matvec(packed, x, bias, y[0])
        return y
    y = np.empty((batch, out), dtype=np.float32)
    for first in range(0, batch, MAX_TILE):
        chunk = x[first : first + MAX_TILE]
        width = next(w for w in TILE_WIDTHS if w >= chunk.shape[0])
        y_t = np.empty((out, width), dtype=np.float32)
        _matmul_tiles(
            packed.entries, packed.slice_starts, packed.lanes, packed.codebook, _blocked_columns(packed, chunk, width),
            np.uint64(packed.col_bits), packed.n_blocks, packed.group_rows, width, bias, y_t,
        )
        y[first : first + chunk.shape[0]] = y_t[:, : chunk.shape[0]].T
    return y


def bytes_per_call(packed: PackedLinear, batch: int = 1) -> dict[str, int]:
    """Bytes one `matmul` call must move, for the memory-bound floor (bytes / bandwidth).

    Returns {"weights": bytes of the layout the call reads, "activations": x read plus y
    written, "total": sum}. Batch 1 reads the layout `batch_one_layout` names, else the
    sliced one; weights are read once per call whatever the batch size.
    """
    layout = batch_one_layout(packed) if batch == 1 else None
    weights = layout.nbytes if layout is not None else packed.nbytes
    activations = 4 * batch * (packed.shape[0] + packed.shape[1])
    return {"weights": weights, "activations": activations, "total": weights + activations}


def batch_one_layout(packed: PackedLinear):
    """The layout `matmul` runs at batch 1 besides the sliced one: register-permute
    (`deepzip.runtime.permute`) where it is built, else code-split (`deepzip.runtime.by_code`)
    where that is, else None (the sliced layout)."""
    return permute.permute_layout(packed) or by_code.by_code_layout(packed)


def use_threads(num_threads: int) -> None:
    """Run later kernels from this thread on `num_threads` numba threads (>= 1, capped at
    numba's maximum); numba is called only when that differs from what was last set here."""
    wanted = min(int(num_threads), numba.config.NUMBA_NUM_THREADS)
    if getattr(_threads, "count", None) != wanted:
        numba.set_num_threads(wanted)
        _threads.count = wanted


def _sliced_matvec(packed: PackedLinear, x: np.ndarray, bias: np.ndarray, y: np.ndarray) -> None:
    """y (out,) = W x (+ bias, when not empty) in the sliced layout; x contiguous (in,)."""
    entries, *layout = packed.kernel_args
    _matvec(entries, *layout[:3], x, *layout[3:], bias, y)


def _by_code_matvec(split: by_code.ByCodeLinear, x: np.ndarray, bias: np.ndarray, y: np.ndarray) -> None:
    """y (out,) = W x (+ bias, when not empty) in the code-split layout; x contiguous (in,)."""
    _matvec_by_code(split.entries, split.slice_starts, split.cell_slices, split.lanes, split.codebook,
                    np.uint64(by_code.ZERO_SLOT), split.block_stride, split.n_blocks, split.group_rows, x, bias, y)


def _blocked_columns(packed: PackedLinear, x: np.ndarray, width: int) -> np.ndarray:
    """x (rows <= width, in) as (blocks, block_cols + 1, width) float32, flattened: each
    column block transposed, its zero slot and the batch columns past x's rows zero."""
    stride = packed.block_stride
    blocks = np.zeros((packed.n_blocks, packed.block_cols + 1, width), dtype=np.float32)
    columns = np.zeros((packed.n_blocks * stride, width), dtype=np.float32)
    columns[: packed.shape[1], : x.shape[0]] = x.T
    blocks[:, :stride, :] = columns.reshape(packed.n_blocks, stride, width)
    return blocks.reshape(-1)


# --------------------------------------------------------------------------- compiled kernels


@njit(cache=True)
def _x_blocks(x, block, stride, n_blocks):
    """x cut into blocks of `stride` columns, each zero-filled to `block` + 1 floats: the
    last of them is the zero slot that padding entries read."""
    padded = np.zeros((n_blocks, block + 1), dtype=np.float32)
    for b in range(n_blocks):
        first = b * stride
        for c in range(min(stride, x.shape[0] - first)):
            padded[b, c] = x[first + c]
    return padded


@njit(cache=True)
def _finish_group(sums, group, bias, y):
    group_rows = sums.shape[0]
    first = group * group_rows
    rows = min(group_rows, y.shape[0] - first)
    for r in range(rows):
        y[first + r] = sums[r] + bias[first + r] if bias.shape[0] > 0 else sums[r]


def _eight(entries, j):
    """The eight entries at position j of `entries`' own units, as uint64 (compiled: see its overload)."""
    raise NotImplementedError("only callable from compiled code")


def _unit_shift(entries):
    """log2 of the entries per element of `entries`: 2 for 16-bit entries viewed as uint64, else 0."""
    raise NotImplementedError("only callable from compiled code")


@overload(_unit_shift, inline="always")
def _unit_shift_overload(entries):
    shift = np.uint64(2 if entries.dtype == types.uint64 else 0)
    return lambda entries: shift


@overload(_eight, inline="always")
def _eight_overload(entries, j):
    # 16-bit entries come as their uint64 view, four to a 64-bit load split by shifts:
    # that saves a quarter of the loads (+12% measured); wider entries are read one by one.
    if entries.dtype == types.uint64:

        def wide(entries, j):
            low = np.uint64(0xFFFF)
            u = entries[j]
            v = entries[j + np.uint64(1)]
            return (u & low, (u >> np.uint64(16)) & low, (u >> np.uint64(32)) & low, u >> np.uint64(48),
                    v & low, (v >> np.uint64(16)) & low, (v >> np.uint64(32)) & low, v >> np.uint64(48))  # fmt: skip

        return wide

    def narrow(entries, j):
        return (np.uint64(entries[j]), np.uint64(entries[j + np.uint64(1)]), np.uint64(entries[j + np.uint64(2)]),
                np.uint64(entries[j + np.uint64(3)]), np.uint64(entries[j + np.uint64(4)]),
                np.uint64(entries[j + np.uint64(5)]), np.uint64(entries[j + np.uint64(6)]),
                np.uint64(entries[j + np.uint64(7)]))  # fmt: skip

    return narrow


# Contraction only (fused multiply-add): eight named sums need no reassociation, so the
# result does not depend on how LLVM would reorder a vectorized reduction.
@njit(parallel=True, cache=True, fastmath={"contract"})
def _matvec(entries, starts, lanes, codebook, x, col_bits, stride, n_blocks, group_rows, bias, y):
    """Batch 1: y = W x (+ bias). `entries` are 32-bit entries, or 16-bit ones viewed as uint64 (`_eight`)."""
    # Unsigned, so that xr[e & block] is an unsigned index: no wraparound check (3x, measured).
    block = np.uint64((np.uint64(1) << col_bits) - np.uint64(1))
    xb = _x_blocks(x, block, stride, n_blocks)
    per_group = group_rows // SLICE_ROWS
    shift = _unit_shift(entries)
    step = np.uint64(SLICE_ROWS) >> shift
    for group in prange((y.shape[0] + group_rows - 1) // group_rows):
        sums = np.zeros(group_rows, dtype=np.float32)
        for b in range(n_blocks):
            xr = xb[b]
            for s in range(per_group):
                q = (group * n_blocks + b) * per_group + s
                j = starts[q] >> shift
                stop = starts[q + 1] >> shift
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                while j < stop:
                    e0, e1, e2, e3, e4, e5, e6, e7 = _eight(entries, j)
                    a0 += codebook[e0 >> col_bits] * xr[e0 & block]
                    a1 += codebook[e1 >> col_bits] * xr[e1 & block]
                    a2 += codebook[e2 >> col_bits] * xr[e2 & block]
                    a3 += codebook[e3 >> col_bits] * xr[e3 & block]
                    a4 += codebook[e4 >> col_bits] * xr[e4 & block]
                    a5 += codebook[e5 >> col_bits] * xr[e5 & block]
                    a6 += codebook[e6 >> col_bits] * xr[e6 & block]
                    a7 += codebook[e7 >> col_bits] * xr[e7 & block]
                    j += step
                _add_lanes(sums, lanes, q, a0, a1, a2, a3, a4, a5, a6, a7)
        _finish_group(sums, group, bias, y)


@njit(parallel=True, cache=True, fastmath={"contract"})
def _matvec_by_code(entries, starts, cell_slices, lanes, codebook, zero_slot, stride, n_blocks, group_rows, x, bias, y):
    """Batch 1 in the code-split layout (`deepzip.runtime.by_code`): per slice, eight sums
    of x alone, each multiplied by the cell's centroid once and added into its lane's row."""
    xb = _x_blocks(x, zero_slot, stride, n_blocks)
    one, eight = np.uint64(1), np.uint64(SLICE_ROWS)
    k = codebook.shape[0]
    for group in prange((y.shape[0] + group_rows - 1) // group_rows):
        sums = np.zeros(group_rows, dtype=np.float32)
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
                    _add_lanes(sums, lanes, np.int64(s), w * a0, w * a1, w * a2, w * a3, w * a4, w * a5, w * a6, w * a7)
        _finish_group(sums, group, bias, y)


@njit(cache=True)
def _add_lanes(sums, lanes, q, a0, a1, a2, a3, a4, a5, a6, a7):
    first = q * SLICE_ROWS
    sums[lanes[first]] += a0
    sums[lanes[first + 1]] += a1
    sums[lanes[first + 2]] += a2
    sums[lanes[first + 3]] += a3
    sums[lanes[first + 4]] += a4
    sums[lanes[first + 5]] += a5
    sums[lanes[first + 6]] += a6
    sums[lanes[first + 7]] += a7


@njit(parallel=True, cache=True)
def _matmul_tiles(entries, starts, lanes, codebook, xt, col_bits, n_blocks, group_rows, width, bias, y_t):
    """Batch tile of `width` (8, 16, 32 or 64) columns: y_t (out, width) = W @ x.T (+ bias)."""
    block_stride = ((1 << col_bits) * width) if n_blocks > 0 else 0
    per_group = group_rows // SLICE_ROWS
    out = y_t.shape[0]
    for group in prange((out + group_rows - 1) // group_rows):
        sums = np.zeros(group_rows * width, dtype=np.float32)
        for b in range(n_blocks):
            x_offset = np.uint64(b * block_stride)
            for s in range(per_group):
                q = (group * n_blocks + b) * per_group + s
                start = starts[q]
                steps = (starts[q + 1] - start) // np.uint64(SLICE_ROWS)
                row_base = np.uint64(q * SLICE_ROWS)
                if width == 8:
                    _TILE_8(entries, start, steps, np.uint64(0), col_bits, codebook, xt, x_offset, lanes, row_base, sums)
                elif width == 16:
                    for lane0 in range(0, SLICE_ROWS, 4):
                        _TILE_16(entries, start, steps, np.uint64(lane0), col_bits, codebook, xt, x_offset, lanes, row_base, sums)
                elif width == 32:
                    for lane0 in range(0, SLICE_ROWS, 2):
                        _TILE_32(entries, start, steps, np.uint64(lane0), col_bits, codebook, xt, x_offset, lanes, row_base, sums)
                else:
                    for lane0 in range(SLICE_ROWS):
                        _TILE_64(entries, start, steps, np.uint64(lane0), col_bits, codebook, xt, x_offset, lanes, row_base, sums)
        first = group * group_rows
        for r in range(min(group_rows, out - first)):
            extra = bias[first + r] if bias.shape[0] > 0 else np.float32(0.0)
            for c in range(width):
                y_t[first + r, c] = sums[r * width + c] + extra

