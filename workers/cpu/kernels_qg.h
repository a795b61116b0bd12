/* workers/cpu: the packed format of pre-quantized checkpoints (GPTQ, compressed-tensors;
 * workers/README.md, "Pre-quantized checkpoints"): asymmetric int4/int8 groups of any size,
 * one fp32 scale and zero point per group and row, act-order handled at pack time.
 *
 * Source: wrk_pq_src_t (workers/model/model_int.h): w[o][i] = s[o][g] * (q[o][i] - z[o][g]),
 * g = gidx[i]. When gidx is not non-decreasing (act-order), the columns are permuted (stable,
 * by group) so that every group is a contiguous run; the matmul gathers x by the same
 * permutation (perm[j] = source column of pack column j) before it runs.
 *
 * Layout (wrk_pack_qg): a 64-byte header {rows, cols, bits, G, has_perm, data offset}, then
 * perm[cols] (int32, when has_perm), start[G + 1] (int32: group g is pack columns
 * [start[g], start[g+1])), then at the data offset, per panel of WRK_PANEL (16) rows, per group
 * g: 16 fp32 scales, 16 fp32 zero points, then the codes of its n columns: 8-bit, n x 16 bytes
 * (byte r of column j = q[r][j]); 4-bit, ceil(n/2) x 16 bytes (low nibble column 2j, high
 * 2j+1). Rows past the end are zero (s = 0).
 *
 * Matmul: per group, a_g = fma((float)q - z, x[k], a_g) over its columns in order from 0
 * ((float)q - z is exact); acc = fma(a_g, s, acc) over the groups from 0; then (+ bias, + y).
 * A fixed sequence per output whatever T, the tile or the other tokens: batch and chunking
 * invariant, AVX2 = AVX-512 bit for bit; portable (no FMA) rounds each product.
 * Tiles (kernels_qg_impl.h): up to 8 tokens x 1-4 panels with every sum in registers; on
 * AVX-512 from T = 16, blocks of 24 (or 16) tokens x one panel over x transposed per block,
 * so the widening of each code (convert, - z) serves 24 tokens' FMAs. */
#ifndef RCD_WRK_KERNELS_QG_H
#define RCD_WRK_KERNELS_QG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "workers/cpu/kernels.h"

typedef struct wrk_qg_hdr {
    int32_t rows, cols, bits, G, has_perm;
    int32_t data_off; /* bytes from the pack's start to the first panel */
    int32_t pad[10];
} wrk_qg_hdr_t;

static inline size_t wrk_qg_group_bytes(int bits, int n)
{
    return (size_t)WRK_PANEL * 8 + (size_t)(bits == 8 ? n : (n + 1) / 2) * WRK_PANEL;
}

/* Bytes of the pack of src, or 0 when src cannot be packed (bits other than 4/8). */
size_t wrk_pack_qg_bytes(const wrk_pq_src_t *src);
/* Writes the pack of src to dst (wrk_pack_qg_bytes bytes, 64-byte aligned). 0 or RCD_ENOMEM. */
int wrk_pack_qg(const wrk_pq_src_t *src, void *dst);
/* Row r of the pack in the source's column order, as fp32 (s * ((float)q - z)). */
void wrk_dequant_qg_row(const void *pk, int r, float *out);

/* The matmul over a qg pack (W->pk, W->qf == WRK_WQ_QG) with kernel table k's instruction set;
 * wrk_matmul calls it. scratch: WRK_GEMM_BLOCK_ROWS x W->cols floats (the gathered x). */
void wrk_qgmm(const wrk_kern_t *k, float *scratch, const wrk_mat_t *W, int o0, int o1,
              const float *x, int ldx, int T, float *y, int ldy, const float *bias, bool acc);

/* Per-ISA matmuls over contiguous groups (x already in pack column order). */
typedef void (*wrk_qgmm_fn)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T,
                            float *y, int ldy, const float *bias, bool acc);
wrk_qgmm_fn wrk__qgmm_portable(void);
wrk_qgmm_fn wrk__qgmm_avx2(void);
wrk_qgmm_fn wrk__qgmm_avx512(void);

#endif
