/* workers/cpu: quantized weights (--weights q8|q4): the load-time quantizer, the packed
 * layouts and the matmul over them (workers/README.md, "Quantized weights").
 *
 * Quantizer (tools/quant_ref.py is the reference; the dequantized values match it bit for
 * bit). Every weight is first converted to fp32; all arithmetic is IEEE fp32, rounding to
 * nearest even:
 *   q8: per output row (per channel): s = max|w| / 127, q = rint(w / s) in [-127, 127]
 *       (s = 0 and q = 0 for an all-zero row); w ~ q * s.
 *   q4: per group of 32 columns of a row: s = max|w| / 7, q = rint(w / s) clamped to
 *       [-8, 7]; w ~ q * s. Symmetric (no zero point).
 *
 * Packed layouts, in panels of WRK_PANEL (16) rows like the native packs (rows past the end
 * and columns past the end of the last q4 group are zero):
 *   q8: 16 fp32 scales (64 bytes), then for each column k the 16 rows' int8 (16 bytes).
 *   q4: per group g of 32 columns: 16 fp32 scales (64 bytes), then for each column pair j
 *       of the group (16 pairs) 16 bytes, byte r = (q[r][2j] + 8) | (q[r][2j+1] + 8) << 4.
 *
 * Matmul (the kernel table's mm when W->qf is set, kernels.c): weights converted to fp32 in
 * registers, fp32 x (no activation quantization), outer products over the panels.
 *   q8: acc = fma(q[k], x[k], acc) for k = 0..K-1 from 0, then y = acc * s (+ bias, + y).
 *   q4: per group g: a_g = fma(q[k], x[k], a_g) over its columns from 0; acc = fma(a_g, s_g,
 *       acc) from 0; then (+ bias, + y).
 * Each output is that fixed sequence whatever T, the tile or the other tokens: batch and
 * chunking invariant, and bit-identical between the AVX2 and AVX-512 kernels (both FMA);
 * the portable kernels (no FMA on SSE2) round each product. */
#ifndef RCD_WRK_KERNELS_Q_H
#define RCD_WRK_KERNELS_Q_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "workers/cpu/kernels.h"

#define WRK_Q4_GROUP 32

/* "native"/NULL/"" -> WRK_WQ_NATIVE, "q8", "q4"; -1 for anything else. */
int wrk_wq_parse(const char *s);
const char *wrk_wq_name(wrk_wq_t qf);

static inline size_t wrk_pack_q_panel_bytes(wrk_wq_t qf, int cols)
{
    if (qf == WRK_WQ_Q8) return (size_t)WRK_PANEL * 4 + (size_t)cols * WRK_PANEL;
    return (size_t)((cols + WRK_Q4_GROUP - 1) / WRK_Q4_GROUP) *
           (WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL);
}
static inline size_t wrk_pack_q_bytes(wrk_wq_t qf, int rows, int cols)
{
    return (size_t)((rows + WRK_PANEL - 1) / WRK_PANEL) * wrk_pack_q_panel_bytes(qf, cols);
}

/* Quantizes one row of n fp32 weights: q8 -> q[n], s[1]; q4 -> q[n], s[(n + 31) / 32]. */
void wrk_quant_row(wrk_wq_t qf, const float *w, int n, int8_t *q, float *s);
/* Writes W (any dtype) quantized in the packed layout to dst (wrk_pack_q_bytes bytes).
 * 0, or RCD_ENOMEM. */
int wrk_pack_q(const wrk_mat_t *W, wrk_wq_t qf, void *dst);
/* Row r of a quantized pack as fp32 (q * s, the values the kernels multiply by). */
void wrk_dequant_row(const void *pk, wrk_wq_t qf, int cols, int r, float *out);

/* The matmul over a quantized pack (W->pk, W->qf) with kernel table k's instruction set;
 * wrk_matmul calls it. */
void wrk_qmm(const wrk_kern_t *k, const wrk_mat_t *W, int o0, int o1, const float *x, int ldx,
             int T, float *y, int ldy, const float *bias, bool acc);

/* Per-ISA quantized matmuls (kernels_q_<isa>.c; NULL where the compiler could not build). */
typedef void (*wrk_qmm_fn)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T,
                           float *y, int ldy, const float *bias, bool acc);
wrk_qmm_fn wrk__qmm_portable(void);
wrk_qmm_fn wrk__qmm_avx2(void);
wrk_qmm_fn wrk__qmm_avx512(void);

#endif
