"""The batch-1 layout that keeps x in vector registers (AVX-512F): no per-weight x load.

Every other batch-1 layout pays at least two loads per kept weight (its entry, and x at
its column), and these cores issue three loads a cycle, which caps such a kernel near a
quarter of the memory floor (README, issue 13). Here rows go in slices of ROWS (one
16-float lane a row) and columns in blocks of WIDTH. For one (slice, block), the block's
63 x values sit in four zmm registers with a zero in the 64th slot, the codebook's 32
centroids in two; each step loads one 16-bit entry per lane (6 bits of in-block column,
5 bits of code) and finds their x values and centroids with `vpermt2ps`
(`llvm.x86.avx512.vpermi2var.ps.512`), then one fused multiply-add. A (slice, block)
holds as many steps as its fullest row; shorter rows are padded with entries that read
the zero slot. Steps go in pairs: each 32-bit lane holds its row's entries of steps 2u
(low half) and 2u + 1 (high half), so one 64-byte load serves two steps with no
widening shuffle, and the two halves feed two accumulators.

numba has no vector types, so the slice loop is an `@intrinsic` that writes the LLVM IR
itself; LLVM then selects the same instructions a C compiler does (measured against
the C version with intrinsics that this replaced: 0.85 against 0.85 ms on AlexNet fc6,
bit-identical outputs). It compiles only on a host with AVX-512F; elsewhere
`permute_layout` returns None and `matmul` runs the other layouts.

It is built, like the code-split layout, from the packed layer on its first batch-1
product and kept beside it, where the codebook has at most MAX_CODES centroids and the
padding stays under MAX_PADDING of the stored entries. Measured against the library's
other batch-1 kernels (`python benchmarks/fc_speed.py`): faster at 9-25% kept (padding
31-46%), level at 4% (padding 59%), which is where MAX_PADDING puts the line (with it at
0.7, two runs gave VGG-16 fc7 0.392 / 0.388 ms cold, 1 thread, against 0.414 / 0.361 for
the code-split layout, and fc6 2.53 / 2.32 against 2.18 / 2.35: no consistent gain). Building
takes about 0.33 us per kept weight (AlexNet fc6, 3.4 M weights: 1.1 s), once per layer,
and the layout sits beside the sliced one that batched products use: 12.0 MiB beside
6.6 MiB on AlexNet fc6, where padding is 46% of its entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
from llvmlite import binding, ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from deepzip.runtime.packing import PackedLinear, kept_weights

__all__ = ["MAX_CODES", "MAX_PADDING", "ROWS", "WIDTH", "PermuteLinear", "build_permute", "host_supports", "permute_layout", "permute_matvec"]

ROWS = 16
"""Rows of a slice: one float32 lane of a 512-bit register each."""

WIDTH = 63
"""Columns of a block: x's 64 register slots less the zero slot (in-block column 63)."""

MAX_CODES = 32
"""Centroids two registers hold: the layout is built only for codebooks this small."""

MAX_PADDING = 0.5
"""Largest share of padding entries at which the layout is built (see the module docstring)."""

_CODE_SHIFT = 6  # entry bits 0-5: in-block column; bits 6-10: code


def host_supports() -> bool:
    """Whether this CPU has AVX-512F, which the kernel's permutes need, and numba compiles
    for it (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, set for portable caches, could target a
    CPU without it)."""
    if numba.config.CPU_NAME not in (None, "host") or numba.config.CPU_FEATURES is not None:
        return False
    return bool(binding.get_host_cpu_features().get("avx512f", False))


_HOST = host_supports()


@dataclass(frozen=True)
class PermuteLinear:
    """A (out x in) matrix in the register-permute layout; built by `build_permute` from a
    checked `PackedLinear`, never by hand: the kernel does no bounds checks.

    Slice s, block b holds `depth[s * blocks + b]` steps (even) of ROWS entries each, in
    pairs, from `entries[slice_starts[s]]` on in block order."""

    shape: tuple[int, int]
    entries: np.ndarray = field(repr=False)  # uint16, pairs of steps interleaved per lane
    depth: np.ndarray = field(repr=False)  # uint8 [slices * blocks]
    slice_starts: np.ndarray = field(repr=False)  # int64 [slices]: first entry of each slice
    codebook: np.ndarray = field(repr=False)  # float32 [MAX_CODES], zero past the packed codebook
    slices: int
    blocks: int
    padding: float  # share of `entries` that are padding

    @property
    def nbytes(self) -> int:
        """Bytes of the layout: entries, depths, slice starts and codebook."""
        return sum(a.nbytes for a in (self.entries, self.depth, self.slice_starts, self.codebook))


def build_permute(packed: PackedLinear, max_padding: float = 1.0) -> PermuteLinear | None:
    """The register-permute layout of a packed layer, or None where padding would be more
    than `max_padding` of its entries (found before the layout is built; see
    `permute_layout` for the cached choice `matmul` makes). ValueError for a codebook of
    more than MAX_CODES centroids."""
    if packed.codebook.size > MAX_CODES:
        raise ValueError(f"the register-permute layout holds at most {MAX_CODES} centroids, got {packed.codebook.size}")
    out, n_in = packed.shape
    slices, blocks = -(-out // ROWS), max(1, -(-n_in // WIDTH))
    rows, cols, codes = kept_weights(packed)
    cell = (rows // ROWS) * blocks + cols // WIDTH
    lane = rows % ROWS
    del rows
    # A (slice, block) holds as many steps as its fullest lane, rounded up to pairs; a row
    # holds at most WIDTH entries of a block, so depths stay <= 64.
    depth = np.bincount(cell * ROWS + lane, minlength=slices * blocks * ROWS).reshape(-1, ROWS).max(axis=1)
    depth += depth % 2
    stored = int(depth.sum()) * ROWS
    padding = 1.0 - cols.size / stored if stored else 0.0
    if padding > max_padding:
        return None
    order = np.lexsort((cols, lane, cell))
    cell, lane, cols, codes = cell[order], lane[order], cols[order], codes[order]
    del order
    # Each (cell, lane) run's entries take steps 0, 1, 2... of that cell.
    group = cell * ROWS + lane
    first = np.r_[0, np.flatnonzero(np.diff(group)) + 1] if group.size else np.zeros(0, np.int64)
    step = np.arange(group.size) - np.repeat(first, np.diff(np.r_[first, group.size]))
    del group, first
    offsets = np.zeros(slices * blocks, np.int64)
    np.cumsum(depth[:-1] * ROWS, out=offsets[1:])
    # Padding: x's zero slot times centroid 0, which `pack_linear` made sure is finite.
    entries = np.full(stored, WIDTH, np.uint16)
    entries[offsets[cell] + (step // 2) * 2 * ROWS + lane * 2 + step % 2] = (cols % WIDTH) | (codes << _CODE_SHIFT)
    codebook = np.zeros(MAX_CODES, np.float32)
    codebook[: packed.codebook.size] = packed.codebook
    slice_starts = np.ascontiguousarray(offsets.reshape(slices, blocks)[:, 0])
    layout = PermuteLinear((out, n_in), entries, depth.astype(np.uint8), slice_starts, codebook, slices, blocks, padding)
    for array in (layout.entries, layout.depth, layout.slice_starts, layout.codebook):
        array.flags.writeable = False
    return layout


def permute_layout(packed: PackedLinear) -> PermuteLinear | None:
    """The packed layer's register-permute layout, built on first use and kept on it; None
    where the host lacks AVX-512F, the codebook is too large, the layer keeps nothing, or
    the padding would exceed MAX_PADDING."""
    cached = packed.__dict__.get("_permute", False)
    if cached is not False:
        return cached
    layout = None
    if _HOST and packed.nnz and packed.codebook.size <= MAX_CODES:
        layout = build_permute(packed, MAX_PADDING)
    object.__setattr__(packed, "_permute", layout)  # frozen dataclass: a cache, not a field
    return layout


def permute_matvec(layout: PermuteLinear, x: np.ndarray, bias: np.ndarray, y: np.ndarray) -> None:
    """y (out,) = W x (+ bias, when not empty); x float32 contiguous (in,). Needs AVX-512F."""
    _matvec(layout.entries, layout.depth, layout.slice_starts, layout.codebook, x, layout.slices, layout.blocks, bias, y)


_F16 = ir.VectorType(ir.FloatType(), 16)
_I16 = ir.VectorType(ir.IntType(32), 16)
_I64 = ir.IntType(64)


def _vector_at(builder, base, offset, vector_type):
    """An unaligned vector load from element pointer `base` + `offset` elements."""
    pointer = builder.bitcast(builder.gep(base, [offset]), vector_type.as_pointer())
    return builder.load(pointer, align=4)


@intrinsic
def _slice_sums(typingctx, entries, depth, codebook, x_slots, blocks, entry_start, depth_start, out, out_start):
    """out[out_start : out_start + 16] = one slice's 16 row sums over its `blocks` blocks."""
    signature = types.void(entries, depth, codebook, x_slots, types.int64, types.int64, types.int64, out, types.int64)

    def codegen(context, builder, sig, args):
        data = [context.make_array(t)(context, builder, v).data for t, v in zip(sig.args, args) if isinstance(t, types.Array)]
        entry_data, depth_data, codebook_data, x_data, out_data = data
        _, _, _, _, n_blocks, entry_start, depth_start, _, out_start = args
        module = builder.module
        permute = cgutils.get_or_insert_function(module, ir.FunctionType(_F16, [_F16, _I16, _F16]), "llvm.x86.avx512.vpermi2var.ps.512")
        fma = cgutils.get_or_insert_function(module, ir.FunctionType(_F16, [_F16, _F16, _F16]), "llvm.fma.v16f32")

        def splat(value):
            return ir.Constant(_I16, [value] * 16)

        centroids = [_vector_at(builder, codebook_data, ir.Constant(_I64, 16 * q), _F16) for q in range(2)]
        accumulators = [cgutils.alloca_once_value(builder, ir.Constant(_F16, [0.0] * 16)) for _ in range(2)]
        position = cgutils.alloca_once_value(builder, entry_start)
        with cgutils.for_range(builder, n_blocks) as block_loop:
            block = block_loop.index
            base = builder.mul(block, ir.Constant(_I64, 64))
            xs = [_vector_at(builder, x_data, builder.add(base, ir.Constant(_I64, 16 * q)), _F16) for q in range(4)]
            steps = builder.zext(builder.load(builder.gep(depth_data, [builder.add(depth_start, block)])), _I64)
            with cgutils.for_range(builder, builder.lshr(steps, ir.Constant(_I64, 1))):
                at = builder.load(position)
                pair = _vector_at(builder, entry_data, at, _I16)  # 32 uint16 entries as 16 x i32
                builder.store(builder.add(at, ir.Constant(_I64, 2 * ROWS)), position)
                halves = (builder.and_(pair, splat(0xFFFF)), builder.lshr(pair, splat(16)))
                for half, accumulator in zip(halves, accumulators):
                    upper = builder.icmp_unsigned("!=", builder.and_(half, splat(32)), splat(0))
                    x_value = builder.select(upper, builder.call(permute, [xs[2], half, xs[3]]), builder.call(permute, [xs[0], half, xs[1]]))
                    centroid = builder.call(permute, [centroids[0], builder.lshr(half, splat(_CODE_SHIFT)), centroids[1]])
                    builder.store(builder.call(fma, [x_value, centroid, builder.load(accumulator)]), accumulator)
        total = builder.fadd(builder.load(accumulators[0]), builder.load(accumulators[1]))
        builder.store(total, builder.bitcast(builder.gep(out_data, [out_start]), _F16.as_pointer()), align=4)
        return context.get_dummy_value()

    return signature, codegen


@njit(parallel=True, cache=True)
def _matvec(entries, depth, slice_starts, codebook, x, slices, blocks, bias, y):
    """y = W x (+ bias): x into 64-slot blocks (slot 63 and past the end zero), the slices
    in parallel into a scratch of whole slices, then the rows kept."""
    n_in = x.shape[0]
    x_slots = np.zeros(blocks * 64, dtype=np.float32)
    for j in range(n_in):
        x_slots[(j // WIDTH) * 64 + j % WIDTH] = x[j]
    sums = np.empty(slices * ROWS, dtype=np.float32)
    for s in prange(slices):
        _slice_sums(entries, depth, codebook, x_slots, blocks, slice_starts[s], s * blocks, sums, s * ROWS)
    out = y.shape[0]
    if bias.shape[0]:
        for i in range(out):
            y[i] = sums[i] + bias[i]
    else:
        y[:] = sums[:out]
