/* Batch-1 codebook product with x held in registers (AVX-512F): a feasibility kernel.
 *
 * Layout (built by benchmarks/layout_permute.py): rows in slices of 16 (one lane a row),
 * columns in blocks of 63; block b's 63 x values sit in four zmm registers with a zero in
 * the 64th slot. For each (slice, block) the slice holds depth[slice, block] steps of 16
 * uint16 entries, one a lane (steps interleaved in pairs, below): bits 0-5 the column
 * within the block (63: padding, x = 0), bits 6-10 the code. A step is one 32-byte load, two two-table permutes and a blend for
 * x, one permute for the centroid, one fused multiply-add: no per-weight scalar load.
 * depth is even (an odd one gets a step of padding).
 */
#include <immintrin.h>
#include <stdint.h>

void permute_matvec(const uint16_t *entries, const uint8_t *depth, const float *codebook32,
                    const float *x, int64_t n_in, int64_t slices, int64_t blocks, float *y) {
    const __m512 cb0 = _mm512_loadu_ps(codebook32), cb1 = _mm512_loadu_ps(codebook32 + 16);
    const __m512i bit5 = _mm512_set1_epi32(32), low16 = _mm512_set1_epi32(0xFFFF);
    const uint16_t *p = entries;
    const uint8_t *d = depth;
    for (int64_t s = 0; s < slices; s++) {
        /* Two accumulators, so consecutive steps' multiply-adds do not wait on each other. */
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int64_t b = 0; b < blocks; b++, d++) {
            /* x[start ..] into four registers, zeros past the layer's end and in slot 63. */
            int64_t start = b * 63;
            __m512 xs[4];
            for (int q = 0; q < 4; q++) {
                int64_t n = n_in - start - 16 * q;
                __mmask16 m = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
                xs[q] = _mm512_maskz_loadu_ps(q == 3 ? m & 0x7FFF : m, x + start + 16 * q);
            }
            const __m512 x0 = xs[0], x1 = xs[1], x2 = xs[2], x3 = xs[3];
            /* Steps come in pairs: each 32-bit lane holds its row's entry of step t (low half)
               and of step t + 1 (high half), so one load serves two steps with no widening shuffle. */
            for (int t = 0; t < *d; t += 2, p += 32) {
                __m512i pair = _mm512_loadu_si512((const void *)p);
                __m512i v = _mm512_and_si512(pair, low16), w = _mm512_srli_epi32(pair, 16);
                __m512 xv = _mm512_mask_blend_ps(_mm512_test_epi32_mask(v, bit5), _mm512_permutex2var_ps(x0, v, x1), _mm512_permutex2var_ps(x2, v, x3));
                __m512 xw = _mm512_mask_blend_ps(_mm512_test_epi32_mask(w, bit5), _mm512_permutex2var_ps(x0, w, x1), _mm512_permutex2var_ps(x2, w, x3));
                acc0 = _mm512_fmadd_ps(xv, _mm512_permutex2var_ps(cb0, _mm512_srli_epi32(v, 6), cb1), acc0);
                acc1 = _mm512_fmadd_ps(xw, _mm512_permutex2var_ps(cb0, _mm512_srli_epi32(w, 6), cb1), acc1);
            }
        }
        _mm512_storeu_ps(y + 16 * s, _mm512_add_ps(acc0, acc1));
    }
}
