/* workers/cpu: the opt-in bf16 matmul (`matmul = "bf16"`) on AMX tiles.
 *
 * For packed BF16 weights, x is rounded to bf16 (round to nearest even) and the products are
 * summed in fp32 by TDPBF16PS: the products of two bf16s are exact, so the only difference
 * from the fp32 kernels is x's rounding (a relative 2^-9 per element) and the order of the
 * fp32 sums. Every other matrix (F32/F16 weights, unpacked views) runs the AVX-512 kernel.
 *
 * Tiles: C0..C3 (tmm0-3) are 2 token blocks x 2 panels of 16 x 16 fp32 sums, A (tmm4-5) two
 * token blocks of 16 tokens x 32 columns of x in bf16, B (tmm6-7) two panels' 16 column pairs
 * (one KiB of the packed layout, kernels.h). A token's row of C depends only on its own row
 * of A, and every output is summed over k blocks in the same order whatever T, so results are
 * bit-identical for every batch composition and chunking, as in the fp32 kernels. From 16
 * tokens x is padded to whole 16-token blocks with zero rows; columns to the packed 32 with
 * zeros. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "workers/cpu/kernels.h"

/* GCC spells the feature macros __AMX_TILE__/__AMX_BF16__, clang 14 __AMXTILE__/__AMXBF16__. */
#if defined(__x86_64__) && (defined(__AMX_TILE__) || defined(__AMXTILE__)) && \
    (defined(__AMX_BF16__) || defined(__AMXBF16__)) && defined(__AVX512BF16__)
#define RCD_HAVE_AMX 1
#endif

#ifdef RCD_HAVE_AMX

#include "workers/cpu/amx_util.h"

#ifndef AMX_PANEL_BYTES
#define AMX_PANEL_BYTES (256 * 1024) /* weights a group of panels holds for its token blocks */
#endif
#ifndef AMX_PF_DIST
#define AMX_PF_DIST 4096 /* bytes ahead, per panel, while a group streams from memory */
#endif

static const wrk_kern_t *g_base;
static wrk_kern_t g_table;

/* C (16 x 16 fp32 per tile, NT token blocks x NP panels) = A . B over nkb k blocks.
 * a: the token blocks' bf16 x (lda bytes per token), b0/b1: the panels. */
static inline __attribute__((always_inline)) void
amx_tiles(const char *a, size_t lda, const char *b0, const char *b1, int nkb, const int NT,
          const int NP, int pf, float c[4][256])
{
    _tile_zero(0);
    if (NP == 2) _tile_zero(1);
    if (NT == 2) _tile_zero(2);
    if (NT == 2 && NP == 2) _tile_zero(3);
    for (int kb = 0; kb < nkb; kb++) {
        const char *w0 = b0 + (size_t)kb * 1024, *w1 = b1 + (size_t)kb * 1024;
        if (pf)
            for (int l = 0; l < 1024; l += 64) {
                __builtin_prefetch(w0 + pf + l, 0, 2);
                if (NP == 2) __builtin_prefetch(w1 + pf + l, 0, 2);
            }
        _tile_loadd(4, a + (size_t)kb * 64, lda);
        _tile_loadd(6, w0, 64);
        if (NP == 2) _tile_loadd(7, w1, 64);
        if (NT == 2) _tile_loadd(5, a + 16 * lda + (size_t)kb * 64, lda);
        _tile_dpbf16ps(0, 4, 6);
        if (NP == 2) _tile_dpbf16ps(1, 4, 7);
        if (NT == 2) _tile_dpbf16ps(2, 5, 6);
        if (NT == 2 && NP == 2) _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c[0], 64);
    if (NP == 2) _tile_stored(1, c[1], 64);
    if (NT == 2) _tile_stored(2, c[2], 64);
    if (NT == 2 && NP == 2) _tile_stored(3, c[3], 64);
}

/* y rows of nt tokens, panel p's 16 outputs (those in [o0, o1)) from a 16 x 16 tile:
 * + bias, then + y when acc (the fp32 kernels' order). */
static void amx_out(const float *c, int nt, int p, float *y, int ldy, const float *bias,
                    bool acc, int o0, int o1)
{
    const int r0 = p * WRK_PANEL;
    const bool full = r0 >= o0 && r0 + WRK_PANEL <= o1;
    const int l0 = r0 < o0 ? o0 - r0 : 0, l1 = r0 + WRK_PANEL > o1 ? o1 - r0 : WRK_PANEL;
    for (int t = 0; t < nt; t++) {
        float *dst = y + (size_t)t * ldy + r0;
        if (full) {
            __m512 v = _mm512_loadu_ps(c + t * 16);
            if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + r0));
            if (acc) v = _mm512_add_ps(_mm512_loadu_ps(dst), v);
            _mm512_storeu_ps(dst, v);
            continue;
        }
        for (int l = l0; l < l1; l++) {
            float s = c[t * 16 + l];
            if (bias) s += bias[r0 + l];
            dst[l] = acc ? dst[l] + s : s;
        }
    }
}

/* x rows [0, tn) to bf16 rows of kp elements (lda bytes apart), columns past K and rows up
 * to tpad zero (tpad: what the tiles read). */
static void amx_pack_x(uint16_t *xa, int kp, const float *x, int ldx, int tn, int tpad, int K)
{
    for (int t = 0; t < tpad; t++) {
        uint16_t *d = xa + (size_t)t * kp;
        if (t >= tn) {
            memset(d, 0, (size_t)kp * 2);
            continue;
        }
        const float *s = x + (size_t)t * ldx;
        for (int k = 0; k < kp; k += 32) {
            const int n0 = K - k, n1 = K - k - 16;
            const __mmask16 m0 = n0 >= 16 ? 0xffff : n0 > 0 ? (__mmask16)((1u << n0) - 1) : 0;
            const __mmask16 m1 = n1 >= 16 ? 0xffff : n1 > 0 ? (__mmask16)((1u << n1) - 1) : 0;
            const __m512 lo = _mm512_maskz_loadu_ps(m0, s + k);
            const __m512 hi = _mm512_maskz_loadu_ps(m1, s + k + 16);
            const __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
            memcpy(d + k, &v, 64);
        }
    }
}

static void amx_mm(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T, float *y,
                   int ldy, const float *bias, bool acc, float *xpack)
{
    if (!W->pk || W->dt != WRK_DT_BF16) {
        g_base->mm(W, o0, o1, x, ldx, T, y, ldy, bias, acc, xpack);
        return;
    }
    const int K = W->cols, kp = WRK_PACK_BF16_PAIRS(K) * 2, nkb = kp / 32;
    const size_t lda = (size_t)kp * 2, pb = wrk_pack_panel_bytes(W->dt, K);
    /* xpack holds WRK_MM_XPACK_T x K floats: that many bytes of bf16 rows, in 16-token blocks
     * (at least one: kp <= K + 31 and K >= 1). */
    int tb = (int)((size_t)WRK_MM_XPACK_T * (size_t)K * 4 / lda) / 16 * 16;
    if (tb > WRK_MM_XPACK_T) tb = WRK_MM_XPACK_T;
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    int group = (int)(AMX_PANEL_BYTES / pb) & ~1;
    if (group < 2) group = 2;
    wrk_amx_cfg_t cfg;
    wrk_amx_cfg_init(&cfg);
    /* Fewer than 16 tokens: A and C tiles of T rows, so batch-1 decode does not multiply 15
     * rows of zeros (measured: with 16-row tiles batch 1 ran ~10% below the fp32 kernels, with
     * T-row tiles level with them). A row's result does not depend on the tile's rows. */
    const int rows = T < 16 ? T : 16;
    for (int i = 0; i < 8; i++) {
        cfg.rows[i] = i < 6 ? (uint8_t)rows : 16;
        cfg.colsb[i] = 64;
    }
    _tile_loadconfig(&cfg);
    float c[4][256] __attribute__((aligned(64)));
    uint16_t *xa = (uint16_t *)(void *)xpack;
    for (int t0 = 0; t0 < T; t0 += tb) {
        /* rows of x the tiles read: T when T < 16, else whole 16-token blocks */
        const int tn = T - t0 < tb ? T - t0 : tb, tpad = (tn + rows - 1) / rows * rows;
        amx_pack_x(xa, kp, x + (size_t)t0 * ldx, ldx, tn, tpad, K);
        for (int g = p0; g < p1; g += group) {
            const int ge = p1 - g < group ? p1 : g + group;
            for (int t = 0; t < tpad; t += 32) {
                const int NT = tpad - t >= 32 ? 2 : 1;
                const int pf = t0 == 0 && t == 0 ? AMX_PF_DIST : 0;
                const char *a = (const char *)xa + (size_t)t * lda;
                const int n0 = tn - t < 16 ? tn - t : 16;
                const int n1 = tn - t - 16 < 16 ? tn - t - 16 : 16; /* <= 0 when NT == 1 */
                float *yt = y + (size_t)(t0 + t) * ldy;
                for (int p = g; p < ge; p += 2) {
                    const char *b0 = (const char *)W->pk + (size_t)p * pb;
                    const int NP = ge - p >= 2 ? 2 : 1;
                    if (NT == 2 && NP == 2)
                        amx_tiles(a, lda, b0, b0 + pb, nkb, 2, 2, pf, c);
                    else if (NT == 2)
                        amx_tiles(a, lda, b0, b0, nkb, 2, 1, pf, c);
                    else if (NP == 2)
                        amx_tiles(a, lda, b0, b0 + pb, nkb, 1, 2, pf, c);
                    else
                        amx_tiles(a, lda, b0, b0, nkb, 1, 1, pf, c);
                    for (int q = 0; q < NP; q++) {
                        amx_out(c[q], n0, p + q, yt, ldy, bias, acc, o0, o1);
                        if (NT == 2)
                            amx_out(c[2 + q], n1, p + q, yt + (size_t)16 * ldy, ldy, bias, acc,
                                    o0, o1);
                    }
                }
            }
        }
    }
    _tile_release();
}

static const char *g_why;

static void amx_init(void)
{
    unsigned a, b, cx, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &cx, &d) || !(d & (1u << 24)) || !(d & (1u << 22))) {
        g_why = "this CPU has no AMX-BF16";
        return;
    }
    if (!__get_cpuid_count(7, 1, &a, &b, &cx, &d) || !(a & (1u << 5))) {
        g_why = "this CPU has no AVX512-BF16";
        return;
    }
    g_base = wrk__kern_avx512();
    if (!g_base || !wrk_kern_select("avx512")) {
        g_why = "the AVX-512 kernels are not available";
        return;
    }
    const char *why = wrk_amx_request(); /* amx_util.h */
    if (why) {
        g_why = why;
        return;
    }
    g_table = *g_base;
    g_table.isa = "avx512+amx-bf16";
    g_table.mm = amx_mm;
}

const wrk_kern_t *wrk__kern_amx_bf16(const char **why)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, amx_init);
    if (g_why && why) *why = g_why;
    return g_why ? NULL : &g_table;
}

#else

const wrk_kern_t *wrk__kern_amx_bf16(const char **why)
{
    if (why) *why = "this build has no AMX kernels (the compiler lacks -mamx-bf16)";
    return NULL;
}

#endif
