"""Vector-register tiles for the batched kernel, written as LLVM IR through a numba intrinsic.

numba has no register arrays: a small accumulator array lives in memory, and a batched
sparse product that adds each weight's contribution into it pays a store-to-load round
trip per weight (measured: torch's CSR was 1.5-3x faster at batch 8). LLVM's SLP
vectorizer did not turn eight scalar accumulators into one vector either. So the inner
tile is generated here directly: `lane_tile(lanes, vectors)` returns an intrinsic whose
accumulators are `lanes x vectors` LLVM values of type <8 x float>, which LLVM keeps in
registers (they start as allocas in the entry block, which its SROA pass promotes).

numba's on-disk cache of the kernels that inline these tiles (`deepzip.runtime.kernels`,
cache=True) is keyed on kernels.py alone: after editing this file, delete
src/deepzip/runtime/__pycache__/*.nb[ci] so they are compiled again.

The IR is target-independent: on AVX2 a <8 x float> is one ymm register and the
multiply-add fuses under the 'contract' flag; elsewhere LLVM splits or scalarizes it.
"""

from __future__ import annotations

from functools import cache

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["VECTOR", "lane_tile"]

VECTOR = 8
"""Floats per vector: one AVX2 register."""

_CONTRACT = ("contract",)


@cache
def lane_tile(lanes: int, vectors: int):
    """An intrinsic for `lanes` lanes of one slice, each with `vectors` x 8 batch columns.

    Called from a numba function as
    ``tile(entries, start, steps, lane0, col_bits, codebook, xt, x_offset, rows, row_base, acc)``
    (indices uint64). For i in 0..lanes-1 it computes, over t in 0..steps-1 with
    e = entries[start + 8 t + lane0 + i], code = e >> col_bits, col = e & (2**col_bits - 1):

        sum_t codebook[code] * xt[x_offset + W col : x_offset + W col + W],  W = 8 * vectors

    and adds it to acc[W r : W r + W] with r = rows[row_base + lane0 + i]. No bounds are
    checked: the caller (a kernel over a validated PackedLinear) guarantees them.
    """
    width = VECTOR * vectors
    f32 = ir.FloatType()
    i64 = ir.IntType(64)
    vec = ir.VectorType(f32, VECTOR)

    @intrinsic
    def tile(typingctx, entries, start, steps, lane0, col_bits, codebook, xt, x_offset, rows, row_base, acc):
        sig = types.void(entries, start, steps, lane0, col_bits, codebook, xt, x_offset, rows, row_base, acc)

        def codegen(context, builder, signature, args):
            (entries_a, start_v, steps_v, lane0_v, bits_v, codebook_a, xt_a, x_offset_v, rows_a, row_base_v, acc_a) = args

            def data(index, value):
                return context.make_array(signature.args[index])(context, builder, value).data

            entries_p, codebook_p, xt_p, rows_p, acc_p = (
                data(0, entries_a), data(5, codebook_a), data(6, xt_a), data(8, rows_a), data(10, acc_a)
            )
            mask = builder.sub(builder.shl(ir.Constant(i64, 1), bits_v), ir.Constant(i64, 1))
            zero = ir.Constant(vec, [0.0] * VECTOR)
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(lanes)]
            first = builder.add(start_v, lane0_v)
            broadcast = ir.Constant(ir.VectorType(ir.IntType(32), VECTOR), [0] * VECTOR)
            with cgutils.for_range(builder, steps_v) as loop:
                row = builder.add(first, builder.mul(loop.index, ir.Constant(i64, 8)))
                for i in range(lanes):
                    entry = builder.zext(builder.load(builder.gep(entries_p, [builder.add(row, ir.Constant(i64, i))])), i64)
                    weight = builder.load(builder.gep(codebook_p, [builder.lshr(entry, bits_v)]))
                    splat = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(vec, ir.Undefined), weight, ir.Constant(ir.IntType(32), 0)),
                        ir.Constant(vec, ir.Undefined),
                        broadcast,
                    )
                    base = builder.add(x_offset_v, builder.mul(builder.and_(entry, mask), ir.Constant(i64, width)))
                    for v in range(vectors):
                        pointer = builder.gep(xt_p, [builder.add(base, ir.Constant(i64, VECTOR * v))])
                        x = builder.load(builder.bitcast(pointer, vec.as_pointer()), align=4)
                        product = builder.fmul(splat, x, flags=_CONTRACT)
                        builder.store(builder.fadd(builder.load(sums[i][v]), product, flags=_CONTRACT), sums[i][v])
            for i in range(lanes):
                index = builder.add(row_base_v, builder.add(lane0_v, ir.Constant(i64, i)))
                out_row = builder.zext(builder.load(builder.gep(rows_p, [index])), i64)
                for v in range(vectors):
                    offset = builder.add(builder.mul(out_row, ir.Constant(i64, width)), ir.Constant(i64, VECTOR * v))
                    pointer = builder.bitcast(builder.gep(acc_p, [offset]), vec.as_pointer())
                    builder.store(builder.fadd(builder.load(pointer, align=4), builder.load(sums[i][v])), pointer, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile
