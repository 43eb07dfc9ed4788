"""Numba kernels that multiply by a pruned, weight-shared matrix without decoding it.

The inference form of a compressed Linear weight (out x in) is "codebook CSR": rows are
output neurons, and each kept weight is a column index (uint16 while in <= 65536, else
uint32) plus a code (uint8 while k <= 256, else uint16) into the layer's float32 codebook.
That is 3 bytes per kept weight against 8 for fp32 CSR with int32 indices; one row pointer
(uint64) per output neuron and the codebook add a few percent.

Layout choice, measured (2 vCPU Xeon with AVX-512, 1 thread, batch 1, weights rotated
through 256 MiB of copies so they come from DRAM, ms; AlexNet fc6 4096x9216 9% kept /
VGG-16 fc7 4096x4096 4% / AlexNet fc8 1000x4096 25%):

    per-entry code + column, codebook lookup, prefetch (this)    1.41 / 0.27 / 0.50
    the same without software prefetch                           3.26 / 0.55 / 0.95
    sorted by code in each row, per-(row, code) run lengths      2.15 / 1.24 / 0.60
    fp32 CSR, uint32 columns (8 bytes per weight)                2.19 / 0.52 / 0.73

The run layout (2 bytes per weight, the inner loop a pure gather-add of x, one multiply
per run) loses although it reads fewer bytes, and it is as slow with the data in cache
(1.86 / 1.18 / 0.48 ms), so no prefetching can save it: a row holds one run per code (32
for 5-bit codes) of random length, a few weights each at 4% kept, and every run's loop
exit is a mispredicted branch (~25 cycles per run). The per-entry layout is branch-free;
LLVM vectorizes its row sum into two gathers (x and codebook) per 8 weights.

Cold reads need software prefetch: without it the per-entry kernel ran at 3.3 ms cold for
1.3 ms hot on fc6 (the gathers fill the reorder buffer, so the hardware prefetcher is not
asked for the index stream early enough); prefetching the index bytes ~1 KiB ahead brings
cold to within 10% of hot. The kernel is then compute-bound on gathers (~2.6 G weights/s
per core here), so a second thread roughly halves the time.

Batch > 1 (from `BATCH_TRANSPOSE_MIN`) transposes x to (in, B) so that each weight updates
B contiguous outputs: LLVM vectorizes over the batch, and the codebook lookup and index
loads are paid once per weight instead of once per weight and sample. Weights are taken
eight at a time and their products summed before touching the accumulator row, because
the accumulator lives in memory (numba has no register arrays) and a store-to-load round
trip per weight was the bottleneck. This kernel is compute-bound and not yet fast: at
batch 8 on one thread torch's fp32 CSR kernel was 1.5-3x faster in the quick benchmark
(about even at batch 64), and dense GEMM overtook it on the 23-25% kept layers (from
batch 8 or 64), though not on the 4-9% ones. The vectorized batch loop pays
runtime alias checks (acc row against eight x rows) per group of eight weights; a
register-tiled kernel needs explicit SIMD, which numba cannot express (LLVM's SLP
vectorizer did not vectorize eight scalar accumulators either, tried).

Threading: the kernels use numba's default threading layer, which is TBB when installed,
else OpenMP (the case with the pinned dependencies). Measured in one process with torch's
OpenMP pool active (VGG fc7, batch 1): OpenMP 0.26 ms (1 thread) / 0.13 ms (2 threads),
alternating with torch CSR calls 0.27 / 0.14; the `workqueue` layer 0.66 / 0.28 ms. OpenMP is
also safe to call from several Python threads at once (workqueue is not); like any GNU
OpenMP program, a process must not fork after a parallel kernel ran and then call one in
the child. `matmul(..., num_threads=n)` runs one call on n threads without touching the
process-wide setting; `deepzip.runtime.SparseLinear` passes `torch.get_num_threads()`, so
`torch.set_num_threads` governs both libraries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from deepzip.errors import ConfigError

__all__ = ["PackedLinear", "bytes_per_call", "matmul", "pack_linear"]

PREFETCH_AHEAD = 1024
"""Weights ahead of the current one whose index bytes are prefetched (2 KiB of uint16
columns). Measured on fc6/fc7 shapes: 512 and 2048 entries were within noise of each other;
without prefetch the cold kernel was 1.7-2.4x slower."""

BATCH_TRANSPOSE_MIN = 6
"""Smallest batch run by the transposed kernel; smaller ones are batch-1 calls per sample.
Measured (1 thread, ms, AlexNet fc6 / VGG fc7): batch 4 transposed 5.8 / 1.01 against 4
single calls 5.0 / 1.1; batch 8 transposed 6.6 / 1.3 against 10.0 / 2.2."""

_UINT16_LIMIT = 1 << 16


@dataclass(frozen=True)
class PackedLinear:
    """A pruned, weight-shared (out x in) matrix in codebook-CSR form, ready for `matmul`.

    Row r's weights are ``codebook[codes[j]]`` at columns ``cols[j]`` for j in
    ``row_ptr[r]:row_ptr[r+1]``, columns increasing within a row. Build it with
    `pack_linear`; a hand-made one is checked here, because the compiled kernels do no
    bounds checks. The arrays are made read-only so a packed layer cannot change under a
    running kernel.
    """

    shape: tuple[int, int]
    row_ptr: np.ndarray  # uint64 [out + 1]
    cols: np.ndarray  # uint16 (in <= 65536) or uint32 [nnz]
    codes: np.ndarray  # uint8 (k <= 256) or uint16 [nnz]
    codebook: np.ndarray  # float32 [k]

    def __post_init__(self):
        if len(self.shape) != 2 or min(self.shape) < 0:
            raise ConfigError(f"PackedLinear shape must be (out, in), got {self.shape}")
        out, n_in = (int(d) for d in self.shape)
        object.__setattr__(self, "shape", (out, n_in))
        _check_array("row_ptr", self.row_ptr, (np.uint64,), out + 1)
        if self.row_ptr[0] != 0 or np.any(self.row_ptr[1:] < self.row_ptr[:-1]):
            raise ConfigError("PackedLinear row_ptr must start at 0 and never decrease")
        nnz = int(self.row_ptr[-1])
        _check_array("cols", self.cols, (np.uint16, np.uint32), nnz)
        _check_array("codes", self.codes, (np.uint8, np.uint16), nnz)
        _check_array("codebook", self.codebook, (np.float32,), None)
        if nnz and int(self.cols.max()) >= n_in:
            raise ConfigError(f"PackedLinear column index {int(self.cols.max())} >= in_features {n_in}")
        if nnz and int(self.codes.max()) >= len(self.codebook):
            raise ConfigError(f"PackedLinear code {int(self.codes.max())} >= codebook size {len(self.codebook)}")
        for array in (self.row_ptr, self.cols, self.codes, self.codebook):
            array.flags.writeable = False

    @property
    def nnz(self) -> int:
        """Number of kept weights."""
        return int(self.cols.shape[0])

    @property
    def density(self) -> float:
        """Kept fraction of the out x in weights (0 for an empty matrix)."""
        numel = self.shape[0] * self.shape[1]
        return self.nnz / numel if numel else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weight: row pointers, columns, codes and codebook."""
        return sum(a.nbytes for a in (self.row_ptr, self.cols, self.codes, self.codebook))


def _check_array(name: str, array, dtypes: tuple, length: int | None) -> None:
    if not isinstance(array, np.ndarray) or array.ndim != 1 or not array.flags.c_contiguous:
        raise ConfigError(f"PackedLinear {name} must be a 1-D C-contiguous numpy array")
    if array.dtype.type not in dtypes:
        allowed = " or ".join(np.dtype(d).name for d in dtypes)
        raise ConfigError(f"PackedLinear {name} must be {allowed}, got {array.dtype}")
    if length is not None and array.shape[0] != length:
        raise ConfigError(f"PackedLinear {name} has {array.shape[0]} entries, expected {length}")


def pack_linear(shape, codebook, positions, codes) -> PackedLinear:
    """Pack a pruned, weight-shared (out x in) matrix for `matmul`.

    `positions` are flat row-major indices of the kept weights (any integer dtype, unique,
    sorted or not) and `codes` their indices into `codebook` (float, cast to float32):
    exactly the fields of a 2-D `deepzip.CodebookTensor`. Raises ConfigError for a shape
    that is not 2-D, positions out of range or repeated, or codes outside the codebook.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or min(shape) < 0:
        raise ConfigError(f"pack_linear needs a 2-D (out, in) shape, got {shape}")
    out, n_in = shape
    positions = np.asarray(positions)
    codes = np.asarray(codes)
    codebook = np.ascontiguousarray(codebook, dtype=np.float32)
    if positions.ndim != 1 or codes.shape != positions.shape:
        raise ConfigError(f"positions and codes must be 1-D of equal length, got {positions.shape} and {codes.shape}")
    if positions.size and (positions.dtype.kind not in "iu" or codes.dtype.kind not in "iu"):
        raise ConfigError(f"positions and codes must be integers, got {positions.dtype} and {codes.dtype}")
    if codebook.ndim != 1 or codebook.size == 0:
        raise ConfigError(f"codebook must be a non-empty 1-D array, got shape {codebook.shape}")
    positions = positions.astype(np.int64, copy=False)
    if positions.size:
        if positions.min() < 0 or positions.max() >= out * n_in:
            raise ConfigError(f"positions must lie in 0..{out * n_in - 1} for shape {shape}")
        if codes.min() < 0 or codes.max() >= codebook.size:
            raise ConfigError(f"codes must lie in 0..{codebook.size - 1} (codebook size {codebook.size})")
    steps = np.diff(positions)
    if np.any(steps <= 0):
        # CodebookTensor positions are sorted already; sort only what is not.
        order = np.argsort(positions, kind="stable")
        positions, codes = positions[order], codes[order]
        if np.any(np.diff(positions) == 0):
            raise ConfigError("positions must be unique: a weight is listed twice")
    rows = positions // n_in if n_in else positions
    row_ptr = np.zeros(out + 1, dtype=np.uint64)
    np.cumsum(np.bincount(rows, minlength=out), out=row_ptr[1:])
    col_dtype = np.uint16 if n_in <= _UINT16_LIMIT else np.uint32
    code_dtype = np.uint8 if codebook.size <= 256 else np.uint16
    return PackedLinear(
        shape,
        row_ptr,
        np.ascontiguousarray(positions - rows * n_in, dtype=col_dtype),
        np.ascontiguousarray(codes, dtype=code_dtype),
        codebook,
    )


def bytes_per_call(packed: PackedLinear, batch: int = 1) -> dict[str, int]:
    """Bytes one `matmul` call must move, for the memory-bound floor (bytes / bandwidth).

    Returns {"weights": packed.nbytes, "activations": x read plus y written, "total": sum}.
    The weight bytes are read once per call whatever the batch size.
    """
    out, n_in = packed.shape
    activations = 4 * batch * (out + n_in)
    return {"weights": packed.nbytes, "activations": activations, "total": packed.nbytes + activations}


def matmul(packed: PackedLinear, x: np.ndarray, bias: np.ndarray | None = None, *, num_threads: int | None = None):
    """y = x @ W.T (+ bias) for the packed W; x float32 (B, in), y float32 (B, out).

    Any B >= 0; x need not be contiguous. `bias` is float32 (out,) or None.
    `num_threads` runs this call on that many numba threads (capped at numba's maximum);
    None uses the calling thread's current numba setting. Raises ConfigError for a wrong
    dtype or shape, before any compiled code runs.
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
    batch = x.shape[0]
    if batch == 0 or out == 0:
        return np.zeros((batch, out), dtype=np.float32)
    previous = None
    if num_threads is not None:
        if int(num_threads) < 1:
            raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
        previous = numba.get_num_threads()
        numba.set_num_threads(min(int(num_threads), numba.config.NUMBA_NUM_THREADS))
    try:
        if batch < BATCH_TRANSPOSE_MIN:
            y = np.empty((batch, out), dtype=np.float32)
            for i in range(batch):
                _matvec(packed.row_ptr, packed.cols, packed.codes, packed.codebook, np.ascontiguousarray(x[i]), bias, y[i])
            return y
        x_t = np.ascontiguousarray(x.T)
        y_t = np.empty((out, batch), dtype=np.float32)
        _matmul_t(packed.row_ptr, packed.cols, packed.codes, packed.codebook, x_t, bias, y_t)
        return np.ascontiguousarray(y_t.T)
    finally:
        if previous is not None:
            numba.set_num_threads(previous)


# --------------------------------------------------------------------------- compiled kernels


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to load array[index]'s cache line; never faults, even past the end."""
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read, keep in all cache levels, data cache
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


# Reassociation lets LLVM vectorize the row sums (results move by ~1e-7 relative); no
# 'nnan'/'ninf', so NaN and infinity in x propagate as in a dense product.
_BATCH1_MATH = {"reassoc", "contract", "nsz"}


@njit(parallel=True, cache=True, fastmath=_BATCH1_MATH)
def _matvec(row_ptr, cols, codes, codebook, x, bias, y):
    out = y.shape[0]
    nnz = np.uint64(cols.shape[0])
    ahead = np.uint64(PREFETCH_AHEAD)
    # One cache line of columns per step; the codes (half as wide or narrower) are
    # prefetched at the same entries, so every one of their lines is touched too.
    line = np.uint64(64 // cols.itemsize)
    has_bias = bias.shape[0] > 0
    for r in prange(out):
        start = row_ptr[r]
        stop = row_ptr[r + 1]
        q = start + ahead
        while q < stop + ahead and q < nnz:
            _prefetch(cols, q)
            _prefetch(codes, q)
            q += line
        acc = np.float32(0.0)
        # Unsigned j and cols: numba adds no negative-index wraparound (3x faster, measured).
        for j in range(start, stop):
            acc += codebook[codes[j]] * x[cols[j]]
        y[r] = acc + bias[r] if has_bias else acc


# Only contraction (fma): the batch loop needs no reassociation to vectorize, and without
# it LLVM does not try to vectorize across weights with gathers of x rows.
@njit(parallel=True, cache=True, fastmath={"contract"})
def _matmul_t(row_ptr, cols, codes, codebook, x_t, bias, y_t):
    out, batch = y_t.shape
    has_bias = bias.shape[0] > 0
    one = np.uint64(1)
    for r in prange(out):
        acc = y_t[r]
        acc[:] = 0.0
        j = row_ptr[r]
        stop = row_ptr[r + 1]
        while j + np.uint64(8) <= stop:
            w0 = codebook[codes[j]]
            w1 = codebook[codes[j + one]]
            w2 = codebook[codes[j + np.uint64(2)]]
            w3 = codebook[codes[j + np.uint64(3)]]
            w4 = codebook[codes[j + np.uint64(4)]]
            w5 = codebook[codes[j + np.uint64(5)]]
            w6 = codebook[codes[j + np.uint64(6)]]
            w7 = codebook[codes[j + np.uint64(7)]]
            x0 = x_t[np.uint64(cols[j])]
            x1 = x_t[np.uint64(cols[j + one])]
            x2 = x_t[np.uint64(cols[j + np.uint64(2)])]
            x3 = x_t[np.uint64(cols[j + np.uint64(3)])]
            x4 = x_t[np.uint64(cols[j + np.uint64(4)])]
            x5 = x_t[np.uint64(cols[j + np.uint64(5)])]
            x6 = x_t[np.uint64(cols[j + np.uint64(6)])]
            x7 = x_t[np.uint64(cols[j + np.uint64(7)])]
            for b in range(batch):
                acc[b] += ((w0 * x0[b] + w1 * x1[b]) + (w2 * x2[b] + w3 * x3[b])) + (
                    (w4 * x4[b] + w5 * x5[b]) + (w6 * x6[b] + w7 * x7[b])
                )
            j += np.uint64(8)
        while j < stop:
            w0 = codebook[codes[j]]
            x0 = x_t[np.uint64(cols[j])]
            for b in range(batch):
                acc[b] += w0 * x0[b]
            j += one
        if has_bias:
            for b in range(batch):
                acc[b] += bias[r]
