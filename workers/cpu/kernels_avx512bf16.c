/* workers/cpu: the opt-in bf16 matmul (`matmul = "bf16"`) on AVX512_BF16 (VDPBF16PS), for
 * CPUs without AMX (AMD Zen 4 and later; Intel Cooper Lake).
 *
 * For packed BF16 weights, x is rounded to bf16 exactly as the AMX path rounds it
 * (VCVTNE2PS2BF16: nearest even) and the products are summed in fp32 by VDPBF16PS. The packed
 * BF16 layout (kernels.h) is the instruction's operand as it stands: 16 rows x one column pair
 * (W[r][2j], W[r][2j+1]) is one 64-byte vector, and x's pair (x[2j], x[2j+1]) is one 32-bit
 * broadcast. Every other matrix (F32/F16 weights, unpacked views) runs the AVX-512 kernel.
 *
 * Summation order (what kernels_test checks bit for bit): each output starts at +0 and takes
 * the pairs j = 0, 1, ... in order; per pair VDPBF16PS adds the odd product, rounds to fp32
 * (nearest even), then adds the even product and rounds again (the SDM's pseudocode; products
 * of two bf16s are exact; bf16 denormals read as zero and denormal sums flush to zero). An odd
 * last column is paired with a zero weight and a zero x. Then + bias, then + y (acc), as in the
 * fp32 kernels. No horizontal sums: a token's outputs depend only on its own x, whatever T,
 * the tile, the panel group or the thread, so chunkings and batches stay bit-identical.
 *
 * Tiles: NP panels (16 rows each, one zmm of accumulators per token) x up to TR tokens; per
 * pair one weight load per panel and one broadcast per token. 4 panels for 1-2 tokens
 * (decode), else 2 panels x 12 tokens (24 accumulators); panels stream from memory once per
 * call in L2-sized groups that every 12-token block reuses, prefetched as the fp32 path does. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "workers/cpu/kernels.h"

#if defined(__x86_64__) && defined(__AVX512BF16__) && defined(__AVX512F__)

#ifndef DP_GROUP_BYTES
#define DP_GROUP_BYTES (96 * 1024) /* a panel group every token block reuses from L2 */
#endif
#ifndef DP_PF_DIST
#define DP_PF_DIST 1024 /* bytes ahead, per panel, while a group streams from memory */
#endif
#ifndef DP_TR
#define DP_TR 12 /* tokens per tile */
#endif
#ifndef DP_NP
#define DP_NP 2 /* panels per tile from 3 tokens */
#endif
#define DP_NP_MAX 4

static const wrk_kern_t *g_base;
static wrk_kern_t g_table;
static const char *g_why;

/* x rows [0, tn) to bf16 pairs, `kp` 32-bit words per row (the last pair of an odd K is
 * (x[K-1], 0)). The conversion is the AMX path's (kernels_amx.c amx_pack_x). */
static void dp_pack_x(uint32_t *xa, int kp, const float *x, int ldx, int tn, int K)
{
    for (int t = 0; t < tn; t++) {
        const float *s = x + (size_t)t * ldx;
        uint32_t *d = xa + (size_t)t * kp;
        for (int k = 0; k < 2 * kp; k += 32) {
            const int n0 = K - k, n1 = K - k - 16, left = 2 * kp - k;
            const __mmask16 m0 = n0 >= 16 ? 0xffff : n0 > 0 ? (__mmask16)((1u << n0) - 1) : 0;
            const __mmask16 m1 = n1 >= 16 ? 0xffff : n1 > 0 ? (__mmask16)((1u << n1) - 1) : 0;
            const __m512 lo = _mm512_maskz_loadu_ps(m0, s + k);
            const __m512 hi = _mm512_maskz_loadu_ps(m1, s + k + 16);
            const __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
            const int words = left >= 32 ? 16 : left / 2;
            _mm512_mask_storeu_epi32(d + k / 2, (__mmask16)((1u << words) - 1), (__m512i)v);
        }
    }
}

static inline __attribute__((always_inline)) void
dp_tile(const wrk_mat_t *W, int p, const int NP, const uint32_t *xa, int kp, const int T,
        float *y, int ldy, const float *bias, bool acc, int o0, int o1, int pf)
{
    const size_t pb = wrk_pack_panel_bytes(WRK_DT_BF16, W->cols);
    const char *base = (const char *)W->pk + (size_t)p * pb;
    __m512 a[DP_NP_MAX][DP_TR];
#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
#pragma GCC unroll 12
        for (int t = 0; t < T; t++) a[q][t] = _mm512_setzero_ps();
    for (int j = 0; j < kp; j++) {
        __m512bh w[DP_NP_MAX];
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++) {
            const char *wp = base + (size_t)q * pb + (size_t)j * 64;
            if (pf) __builtin_prefetch(wp + pf, 0, 2);
            w[q] = (__m512bh)_mm512_loadu_si512((const void *)wp);
        }
#pragma GCC unroll 12
        for (int t = 0; t < T; t++) {
            const __m512bh xb = (__m512bh)_mm512_set1_epi32((int)xa[(size_t)t * kp + j]);
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++) a[q][t] = _mm512_dpbf16_ps(a[q][t], w[q], xb);
        }
    }
    for (int q = 0; q < NP; q++) {
        const int r0 = (p + q) * WRK_PANEL;
        if (r0 >= o1 || r0 + WRK_PANEL <= o0) continue;
        const bool full = r0 >= o0 && r0 + WRK_PANEL <= o1;
        const int l0 = r0 < o0 ? o0 - r0 : 0, l1 = r0 + WRK_PANEL > o1 ? o1 - r0 : WRK_PANEL;
        const __mmask16 m = (__mmask16)(((1u << l1) - 1) & ~((1u << l0) - 1));
        for (int t = 0; t < T; t++) {
            float *dst = y + (size_t)t * ldy + r0;
            __m512 r = a[q][t];
            if (full) {
                if (bias) r = _mm512_add_ps(r, _mm512_loadu_ps(bias + r0));
                if (acc) r = _mm512_add_ps(_mm512_loadu_ps(dst), r);
                _mm512_storeu_ps(dst, r);
                continue;
            }
            if (bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, bias + r0));
            if (acc) r = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), r);
            _mm512_mask_storeu_ps(dst, m, r);
        }
    }
}

static inline __attribute__((always_inline)) void
dp_rows(const wrk_mat_t *W, int pa, int pe, const uint32_t *xa, int kp, const int T, float *y,
        int ldy, const float *bias, bool acc, int o0, int o1, int pf)
{
    const int NP = T <= 2 ? 4 : DP_NP;
    int p = pa;
    for (; p + NP <= pe; p += NP) dp_tile(W, p, NP, xa, kp, T, y, ldy, bias, acc, o0, o1, pf);
    for (; p < pe; p++) dp_tile(W, p, 1, xa, kp, T, y, ldy, bias, acc, o0, o1, pf);
}

#define DP_CASE(n)                                                                           \
    case n:                                                                                  \
        dp_rows(W, pa, pe, xa, kp, n < DP_TR ? n : DP_TR, y, ldy, bias, acc, o0, o1, pf);    \
        break;

/* Panels [pa, pe) for T <= DP_TR tokens, T fixed at compile time per instance. */
static void dp_block(const wrk_mat_t *W, int pa, int pe, const uint32_t *xa, int kp, int T,
                     float *y, int ldy, const float *bias, bool acc, int o0, int o1, int pf)
{
    switch (T) {
        DP_CASE(1) DP_CASE(2) DP_CASE(3) DP_CASE(4) DP_CASE(5) DP_CASE(6) DP_CASE(7)
        DP_CASE(8) DP_CASE(9) DP_CASE(10) DP_CASE(11)
    default: dp_rows(W, pa, pe, xa, kp, DP_TR, y, ldy, bias, acc, o0, o1, pf); break;
    }
}
#undef DP_CASE

static void dp_mm(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T, float *y,
                  int ldy, const float *bias, bool acc, float *xpack)
{
    if (!W->pk || W->dt != WRK_DT_BF16) {
        g_base->mm(W, o0, o1, x, ldx, T, y, ldy, bias, acc, xpack);
        return;
    }
    const int K = W->cols, kp = (K + 1) / 2;
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    const size_t pb = wrk_pack_panel_bytes(WRK_DT_BF16, K);
    int group = (int)(DP_GROUP_BYTES / pb);
    if (group < DP_NP_MAX) group = DP_NP_MAX;
    /* xpack holds WRK_MM_XPACK_T x K floats; a token's pairs take 4 * kp <= 4 * K bytes. */
    uint32_t *xa = (uint32_t *)(void *)xpack;
    for (int t0 = 0; t0 < T; t0 += WRK_MM_XPACK_T) {
        const int tn = T - t0 < WRK_MM_XPACK_T ? T - t0 : WRK_MM_XPACK_T;
        float *yt = y + (size_t)t0 * ldy;
        dp_pack_x(xa, kp, x + (size_t)t0 * ldx, ldx, tn, K);
        if (tn <= DP_TR) { /* decode: every panel once */
            dp_block(W, p0, p1, xa, kp, tn, yt, ldy, bias, acc, o0, o1, DP_PF_DIST);
            continue;
        }
        /* The first token block streams a group from memory (prefetching just ahead); the
         * later ones find it in L2 and prefetch the same place in the next group. */
        for (int g = p0; g < p1; g += group) {
            const int ge = p1 - g < group ? p1 : g + group;
            const int next = ge < p1 ? (int)((size_t)(ge - g) * pb) : 0;
            for (int t = 0; t < tn; t += DP_TR)
                dp_block(W, g, ge, xa + (size_t)t * kp, kp, tn - t < DP_TR ? tn - t : DP_TR,
                         yt + (size_t)t * ldy, ldy, bias, acc, o0, o1,
                         t0 == 0 && t == 0 ? DP_PF_DIST : next);
        }
    }
}

static void dp_init(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) {
        g_why = "this CPU has no AVX512-BF16";
        return;
    }
    g_base = wrk_kern_select("avx512");
    if (!g_base) {
        g_why = "the AVX-512 kernels are not available";
        return;
    }
    g_table = *g_base;
    g_table.isa = "avx512+avx512-bf16";
    g_table.mm = dp_mm;
}

const wrk_kern_t *wrk__kern_avx512_bf16(const char **why)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, dp_init);
    if (g_why && why) *why = g_why;
    return g_why ? NULL : &g_table;
}

#else

const wrk_kern_t *wrk__kern_avx512_bf16(const char **why)
{
    if (why) *why = "this build has no AVX512-BF16 kernels (the compiler lacks -mavx512bf16)";
    return NULL;
}

#endif
