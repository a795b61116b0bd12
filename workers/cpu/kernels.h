/* workers/cpu: the compute kernels of the CPU backend, one table per instruction set
 * (portable, AVX2+FMA+F16C, AVX-512), chosen at run time from the CPU's features. */
#ifndef RCD_WRK_KERNELS_H
#define RCD_WRK_KERNELS_H

#include <stdbool.h>
#include <stddef.h>

#include "workers/model/model_int.h"

/* Scratch rows the matmul takes (x transposed or de-interleaved into it, this many tokens
 * at a time), and behind them the packed matmul's running sums of a chunk (WRK_MM_XPACK_T
 * tokens x a 64-row group, kernels_impl.h): the backend gives each thread
 * wrk_mm_scratch_floats(max_matmul_cols) floats. */
#define WRK_GEMM_BLOCK_ROWS 256
#define WRK_MM_XPACK_T WRK_GEMM_BLOCK_ROWS
#define WRK_MM_SUM_ROWS 64
static inline size_t wrk_mm_scratch_floats(int cols)
{
    return (size_t)WRK_MM_XPACK_T * (size_t)cols + (size_t)WRK_MM_XPACK_T * WRK_MM_SUM_ROWS;
}

/* Packed weights: the CPU backend repacks every bound matrix once (workers/cpu/pack.c) so the
 * matmul can run outer products over contiguous 16-row panels. Panel p holds rows
 * [16p, 16p + 16) (rows past the end are zero):
 *   BF16: for each column pair j, 16 x (W[r][2j], W[r][2j+1]) as 32-bit words (64 bytes); an
 *         odd last column is paired with 0, and zero pairs pad the panel to a multiple of 16
 *         pairs (so 16 pairs, 1 KiB, are one AMX B tile: kernels_amx.c);
 *   F16, F32: for each column k, W[r][k] for the 16 rows (32 or 64 bytes).
 * The layout does not depend on the instruction set. */
#define WRK_PANEL 16
/* Tokens per block of the chunked gated delta rule (gdn_chunk), at absolute positions. */
#define WRK_GDN_BLOCK 64
#define WRK_PACK_BF16_PAIRS(cols) ((((cols) + 1) / 2 + 15) / 16 * 16)
static inline size_t wrk_pack_panel_bytes(wrk_dtype_t dt, int cols)
{
    if (dt == WRK_DT_BF16) return (size_t)WRK_PACK_BF16_PAIRS(cols) * WRK_PANEL * 4;
    return (size_t)cols * WRK_PANEL * (dt == WRK_DT_F32 ? 4 : 2);
}
static inline size_t wrk_pack_bytes(const wrk_mat_t *W)
{
    return (size_t)((W->rows + WRK_PANEL - 1) / WRK_PANEL) * wrk_pack_panel_bytes(W->dt, W->cols);
}
/* Writes W's rows in the packed layout to dst (wrk_pack_bytes(W) bytes). */
void wrk_pack(const wrk_mat_t *W, void *dst);

typedef struct wrk_kern {
    const char *isa;
    /* y[t*ldy + o] = (acc ? y : 0) + x[t] . W[o] (+ bias[o]) for t < T (any T) and o in
     * [o0, o1): register tiles over row panels, weights read from memory once and converted
     * in registers, fp32 sums in an order that does not depend on T (kernels_impl.h).
     * `xpack`: wrk_mm_scratch_floats(W->cols) floats of scratch. */
    void (*mm)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T, float *y,
               int ldy, const float *bias, bool acc, float *xpack);
    /* dst[i] = float(src[i]) for a row of any weight dtype. */
    void (*to_f32)(float *dst, const void *src, wrk_dtype_t dt, size_t n);
    /* y = w * (x * rsqrt(mean(x^2) + eps)), n elements. */
    void (*rmsnorm)(float *y, const float *x, const float *w, int n, float eps);
    /* Causal depthwise conv + SiLU over T tokens of one sequence for channels [c0, c1):
     * x rows have stride ldx; win is the [K-1][I] window of earlier inputs (oldest first),
     * updated to the last K-1 inputs on return; out is [T][I]. */
    void (*conv_silu)(int T, int c0, int c1, int I, int K, const float *x, int ldx,
                      const float *w, const float *b, float *win, float *out);
    /* Selective scan over T tokens of one sequence for channels [c0, c1):
     * delta = softplus(dt[t][c] + dt_b[c]); h[n][c] = exp(A[n][c]*delta) h + delta B[t][n] u;
     * y[t][c] = (sum_n h[n][c] C[t][n] + D[c] u) * silu(z[t][c]), u = xc[t][c].
     * dt, xc, y: stride I; z: stride ldz; bc: B at bc[t*ldbc + n], C at bc[t*ldbc + N + n]. */
    void (*scan)(int T, int c0, int c1, int I, int N, const float *dt, const float *dt_b,
                 const float *xc, const float *z, int ldz, const float *bc, int ldbc,
                 const float *A, const float *D, float *h, float *y);
    /* Mamba2's SSD recurrence for one head over T tokens of one sequence:
     * dt_t = min(max(softplus(dt[t*lddt] + dt_b), dt_min), dt_max);
     * S = exp(dt_t A) S + dt_t x_t (x) B_t;  y_t = C_t . S + D x_t   (A <= 0).
     * S is [P][N]; x_t (P floats), B_t, C_t (N floats) at x, B, Cm + t*ldx; y_t at
     * y + t*ldy. Lanes run over N; each output's arithmetic depends only on its token's
     * inputs and the state, never on T or on how tokens are split between calls. */
    void (*ssd)(int T, int P, int N, const float *x, const float *B, const float *Cm, int ldx,
                const float *dt, int lddt, float dt_b, float A, float D, float dt_min, float dt_max,
                float *S, float *y, int ldy);
    /* Attention over the n rows of one KV block (row p at k + p*ldk, v + p*ldv, d floats) for
     * nq queries (query j at q + j*d): s[j*lds + p] = (q_j . k_p) scale, the dot in VW lanes
     * (one multiply-add per lane and chunk, in order), their sum by halving as KFN(hsum) does,
     * then the tail; o_j (at o + j*d) += sum_p w[j*ldw + p] v_p, p ascending, one multiply-add
     * per element and row. Each result depends only on its own query's and row's inputs (and
     * o_j), never on nq, n or how rows are split between calls: a query scored with others
     * (a verify entry, a prefill chunk) gets exactly the values it gets alone (a decode). */
    void (*attn_scores)(const float *q, int nq, const float *k, int ldk, int n, int d,
                        float scale, float *s, size_t lds);
    void (*attn_mix)(float *o, int nq, const float *v, int ldv, int n, int d, const float *w,
                     size_t ldw);
    /* s[p] <- exp(s[p] - max_p s) / sum, p < n (n >= 1): the max, exp as `vexp`, the sum in
     * double in a fixed order; a function of s[0..n) alone (attention's weights). */
    void (*softmax)(float *s, int n);
    /* y[i] = u[i] silu(g[i] m) for i < n, lane by lane (y may be u or g). */
    void (*swiglu)(float *y, const float *g, const float *u, size_t n, float m);
    /* One token of the gated delta rule on one head's state S [dk][dv] (Gated DeltaNet):
     * S <- decay S; d = beta (v - S^T k); S += k (x) d; o = S^T q. Lanes run over dv; each
     * output's arithmetic depends only on its column, never on how many tokens a step has. */
    void (*delta_rule)(int dk, int dv, float *S, const float *k, const float *q, const float *v,
                       float beta, float decay, float *o);
    /* The chunked gated delta rule of one head (Gated DeltaNet; the math in
     * docs/specs/qwen3_next.md): tokens j0 <= j < j1 of a block of at most WRK_GDN_BLOCK
     * tokens whose start state is S0 [dk][dv]. Kb [WRK_GDN_BLOCK][dk]: the block's L2-normed
     * keys (rows < j1); Ub [WRK_GDN_BLOCK][dv]: the corrected values of rows < j0, rows
     * [j0, j1) written; G: the cumulative log-decay from the block start (rows < j1); q
     * [j1 - j0][dk] the scaled queries, v rows of stride ldv, beta [j1 - j0]. For each j:
     *   u_j = beta_j (v_j - e^G_j S0^T k_j - sum_{i<j} e^(G_j-G_i) (k_i.k_j) u_i)
     *   o_j = e^G_j S0^T q_j + sum_{i<=j} e^(G_j-G_i) (k_i.q_j) u_i      into o [j1 - j0][dv].
     * The S0 products run as a small matmul (tokens in register tiles, the sum over dk in one
     * fixed order); every output's arithmetic depends only on its column and the block's
     * rows, never on j0, j1 or how the block was split between calls.
     * scratch: 2 WRK_GDN_BLOCK (dv + 1) floats. */
    void (*gdn_chunk)(int dk, int dv, const float *S0, int j0, int j1, const float *Kb,
                      float *Ub, const float *G, const float *q, const float *v, int ldv,
                      const float *beta, float *o, float *scratch);
    /* Closes a block of n tokens: S <- e^G_{n-1} S + sum_j e^(G_{n-1}-G_j) k_j (x) u_j
     * (j ascending). Both kernels set coefficients below 2^-100 in magnitude to 0 (no
     * subnormal operands). scratch: WRK_GDN_BLOCK (dk + 2) floats. */
    void (*gdn_close)(int dk, int dv, float *S, int n, const float *Kb, const float *Ub,
                      const float *G, float *scratch);
    /* Vector exp/softplus/silu, exposed for the kernel tests. */
    void (*vexp)(float *y, const float *x, int n);
    void (*vsoftplus)(float *y, const float *x, int n);
} wrk_kern_t;

/* The kernels for `isa` ("auto"/NULL picks the best the CPU runs; "avx512", "avx2",
 * "portable" force one). NULL if the CPU cannot run the one asked for. */
const wrk_kern_t *wrk_kern_select(const char *isa);

/* The kernels for a backend: wrk_kern_select(isa), or with matmul "bf16" the opt-in bf16
 * matmul (x rounded to bf16, fp32 sums; isa must be auto or avx512): on AMX (kernels_amx.c)
 * where present, else on AVX512_BF16 (kernels_avx512bf16.c); "bf16-avx512", or "bf16" with
 * RCD_MATMUL_NO_AMX=1 in the environment, forces the AVX512_BF16 one.
 * matmul NULL/""/"fp32": the fp32 kernels. NULL, with *why, when it cannot be had (*why may
 * be this thread's buffer, valid until its next call). */
const wrk_kern_t *wrk_kern_for(const char *isa, const char *matmul, const char **why);

/* Per-ISA tables; NULL-returning where the compiler could not build them. */
const wrk_kern_t *wrk__kern_portable(void);
const wrk_kern_t *wrk__kern_avx2(void);
const wrk_kern_t *wrk__kern_avx512(void);
/* The AVX-512 table with the AMX bf16 matmul; NULL, with *why, where the CPU, the OS or the
 * build cannot run it. */
const wrk_kern_t *wrk__kern_amx_bf16(const char **why);
/* The AVX-512 table with the AVX512_BF16 (VDPBF16PS) bf16 matmul; NULL, with *why, likewise. */
const wrk_kern_t *wrk__kern_avx512_bf16(const char **why);

/* y[t*ldy + o] = (acc ? y : 0) + x[t] . W[o] (+ bias) for t < T, o in [o0, o1): the kernel's
 * `mm` for any T, or for quantized packs (W->qf q8/q4) the same ISA's quantized matmul
 * (kernels_q.h) (one kernel, so results do not depend on T). `scratch`: WRK_GEMM_BLOCK_ROWS
 * x W->cols floats. Single-threaded; callers split rows between threads. */
void wrk_matmul(const wrk_kern_t *k, float *scratch, const wrk_mat_t *W, int o0, int o1,
                const float *x, int ldx, int T, float *y, int ldy, const float *bias, bool acc);

#endif
