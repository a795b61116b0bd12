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
 * Activations (wrk_quant_x): every token's row on its own, per group of 32 columns
 * (Q8_0-style): sx = max|x| / 127, xq = rint(x / sx) in [-127, 127] (sx = 0, xq = 0 for an
 * all-zero group; NaN -> -127), and the group's sum S = sum(xq). Columns past K are 0. One
 * token's record is WRK_QX_BYTES(K) bytes: Kp int8 (Kp = K rounded up to 32), then G fp32
 * scales, then G int32 sums (G = Kp / 32).
 *
 * Packed layouts, in panels of WRK_PANEL (16) rows like the native packs (rows past the end
 * and columns past K are q = 0). Weights are stored unsigned, u = q + 128 (q8) or q + 8 (q4),
 * so that vpdpbusd's unsigned operand is the weight and its signed one the activation:
 *   q8: 16 fp32 scales (64 bytes), then per 4 columns k = 4j.. (Kp / 4 blocks) 64 bytes:
 *       lane r (bytes 4r .. 4r+3) = u[r][4j .. 4j+3].
 *   q4: per group g of 32 columns: 16 fp32 scales (64 bytes), then 4 blocks b of 64 bytes:
 *       lane r byte i = u[r][32g + 8b + i] | u[r][32g + 8b + 4 + i] << 4 (i < 4).
 *
 * Matmul (the kernel table's mm when W->qf is set, kernels.c): x quantized per token
 * (above), then per output row r, token t and group g the exact integer
 *   d = sum_{k in g} q[r][k] * xq[t][k]
 * (VNNI: sum u * xq - off * S; AVX2: vpmaddubsw, never saturating, see kernels_q_impl.h;
 * portable: int loops; all exact), and the fp32 epilogue, from acc = 0, g = 0, 1, ...:
 *   acc = fma((float)d, sw * sx[t][g], acc)      (sw: q8 the row's scale, q4 the group's)
 * then y = acc (+ bias) (+ y). Each output is that fixed sequence whatever T, the tile or
 * the other tokens: batch and chunking invariant, and bit-identical between the portable
 * (fmaf), AVX2, AVX-VNNI and AVX-512 VNNI kernels. */
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

/* Bytes of one token's quantized activations (above). */
#define WRK_QX_BYTES(K) ((size_t)((K) + 31) / 32 * (32 + 8))

static inline size_t wrk_pack_q_panel_bytes(wrk_wq_t qf, int cols)
{
    if (qf == WRK_WQ_Q8)
        return (size_t)WRK_PANEL * 4 + (size_t)(cols + 31) / 32 * 32 * WRK_PANEL;
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

/* Quantizes one token's row x[0..K) into the record at dst (WRK_QX_BYTES(K) bytes): the
 * AVX-512 version where the CPU runs it, else the scalar one (the same bytes). */
void wrk_quant_x(const float *x, int K, void *dst);
typedef void (*wrk_quant_x_fn)(const float *x, int K, void *dst);
wrk_quant_x_fn wrk__quant_x_portable(void);
wrk_quant_x_fn wrk__quant_x_avx512(void); /* kernels_q_avx512.c */

/* The matmul over a quantized pack (W->pk, W->qf) with kernel table k's instruction set;
 * wrk_matmul calls it. scratch holds the quantized tokens: WRK_GEMM_BLOCK_ROWS x W->cols
 * floats, required (the backend's per-thread buffer, as for the qg and fp32 paths). */
void wrk_qmm(const wrk_kern_t *k, const wrk_mat_t *W, int o0, int o1, const float *x, int ldx,
             int T, float *y, int ldy, const float *bias, bool acc, float *scratch);

/* Per-ISA quantized matmuls over T quantized token records xq (WRK_QX_BYTES(W->cols) apart)
 * (kernels_q_<isa>.c; NULL where the compiler could not build it or the CPU cannot run it). */
typedef void (*wrk_qmm_fn)(const wrk_mat_t *W, int o0, int o1, const void *xq, int T, float *y,
                           int ldy, const float *bias, bool acc);
wrk_qmm_fn wrk__qmm_portable(void);
wrk_qmm_fn wrk__qmm_avx2(void);    /* vpmaddubsw + vpmaddwd */
wrk_qmm_fn wrk__qmm_avxvnni(void); /* AVX-VNNI vpdpbusd ymm */
wrk_qmm_fn wrk__qmm_avx512(void);  /* AVX512_VNNI vpdpbusd zmm */
/* AMX-INT8 (kernels_q_amx.c, TDPBSUD): calls of WRK_QMM_AMX_MIN_T tokens or more run on tiles
 * (16-token blocks; the T % 16 left and smaller calls on the AVX-512 VNNI kernel), with the
 * same results. NULL, with *why, where the compiler, the CPU or the OS cannot run it. */
#ifndef WRK_QMM_AMX_MIN_T
#define WRK_QMM_AMX_MIN_T 16
#endif
wrk_qmm_fn wrk__qmm_amx(const char **why);

/* wrk_qmm with the per-ISA kernel f instead of the table's choice (bench/qmm_bench). */
void wrk_qmm_with(wrk_qmm_fn f, const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T,
                  float *y, int ldy, const float *bias, bool acc, float *scratch);

#endif
