/* workers/cpu: the quantized matmul (--weights q8|q4, kernels_q.h) on AMX-INT8 tiles, for
 * calls of many tokens (prefill chunks, big batches).
 *
 * TDPBSUD multiplies signed A by unsigned B and sums 4 products per int32 lane: with A = 16
 * tokens x 32 columns of int8 activations (their records, kernels_q.h) and B = one group of a
 * panel's unsigned weights u as the pack stores them (q8: 8 rows of 64 bytes, the 4-column
 * blocks, exactly AMX's B layout; q4: the nibbles unpacked to the same 8 rows), C[t][r] =
 * sum_k xq[t][k] u[r][k], exact in int32. d = C - off * S (off 128 or 8) is then the same
 * integer the VNNI kernel computes, and the fp32 epilogue below is kernels_q.h's, in the same
 * order (acc = fma((float)d, sw * sx, acc), g = 0, 1, ...; + bias; + y): the results are
 * bit-identical to the portable, AVX2 and VNNI kernels, for every T and tiling. With more
 * than one 16-token block, each group of panels is first converted to signed q (q8 u - 128,
 * q4 unpacked - 8) once for all blocks, and TDPBSSD gives d = sum xq q directly.
 *
 * One group per tile product (its 32 columns), so C is stored after every group and the
 * epilogue runs on AVX-512 with a 16-token x 16-row tile's fp32 sums in 16 registers (each
 * 16-token block's records rearranged first: A tiles of contiguous 512 bytes, off * S and sx
 * in arrays the epilogue broadcasts from); four C tiles rotate so that group g + 3's product
 * runs during group g's epilogue. Calls of fewer than WRK_QMM_AMX_MIN_T tokens, and the last
 * T % 16 tokens of the others, run the AVX-512 VNNI kernel (same results). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "workers/cpu/kernels_q.h"

/* GCC spells the feature macros __AMX_TILE__/__AMX_INT8__, clang 14 __AMXTILE__/__AMXINT8__. */
#if defined(__x86_64__) && (defined(__AMX_TILE__) || defined(__AMXTILE__)) &&                      \
    (defined(__AMX_INT8__) || defined(__AMXINT8__)) && defined(__AVX512F__)
#define RCD_HAVE_AMX_INT8 1
#endif

#ifdef RCD_HAVE_AMX_INT8

#include "workers/cpu/amx_util.h"

#ifndef QAMX_PANEL_BYTES
#define QAMX_PANEL_BYTES (256 * 1024) /* weights a group of panels holds for its token blocks */
#endif

static wrk_qmm_fn g_vnni;

/* B tile of group g of the panel at pn: q8 in place, q4 unpacked to buf (8 x 64 bytes). */
static inline __attribute__((always_inline)) const void *
qamx_b(const unsigned char *pn, int g, const wrk_wq_t qf, unsigned char *buf)
{
    if (qf == WRK_WQ_Q8) return pn + WRK_PANEL * 4 + (size_t)g * 512;
    const unsigned char *gp =
        pn + (size_t)g * (WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL) + WRK_PANEL * 4;
    const __m512i m = _mm512_set1_epi8(0x0f);
    for (int b = 0; b < 4; b++) {
        const __m512i raw = _mm512_loadu_si512(gp + (size_t)b * 64);
        _mm512_storeu_si512(buf + (size_t)b * 128, _mm512_and_si512(raw, m));
        _mm512_storeu_si512(buf + (size_t)b * 128 + 64,
                            _mm512_and_si512(_mm512_srli_epi16(raw, 4), m));
    }
    return buf;
}

/* Every group of a panel as signed q (u - 128 or u - 8) to dst (G x 512 bytes), read by all
 * the call's blocks with TDPBSSD: then C = sum xq q = d directly, no off * S to subtract. */
static void qamx_signed(const unsigned char *pn, int G, const wrk_wq_t qf, unsigned char *dst)
{
    const __m512i off = _mm512_set1_epi8(qf == WRK_WQ_Q8 ? (char)0x80 : 8);
    for (int g = 0; g < G; g++) {
        unsigned char *d = dst + (size_t)g * 512;
        const unsigned char *b = qamx_b(pn, g, qf, d);
        for (int i = 0; i < 512; i += 64)
            _mm512_storeu_si512(d + i, _mm512_sub_epi8(_mm512_loadu_si512(b + i), off));
    }
}

/* A 16-token block's records rearranged for the tiles (qamx_blk): per group g, the 16 tokens'
 * 32 int8 (512 bytes, one A tile at stride 32), then per group the 16 tokens' off * S (int32)
 * and sx (fp32), broadcast from memory by the epilogue. */
#define QAMX_BLK_BYTES(G) ((size_t)(G) * (512 + 64 + 64))
#define QAMX_STACK_G 96  /* groups the stack buffer holds in one block (K <= 3072) */
#define QAMX_MAX_BLKS 64 /* blocks rearranged at a time (1024 tokens) */

static void qamx_blk(unsigned char *blk, const unsigned char *xq, size_t rb, int G, int shift)
{
    int32_t *corr = (int32_t *)(void *)(blk + (size_t)G * 512);
    float *sx = (float *)(void *)(blk + (size_t)G * 576);
    for (int t = 0; t < 16; t++) {
        const unsigned char *r = xq + (size_t)t * rb;
        for (int g = 0; g < G; g++) {
            int32_t S;
            memcpy(blk + (size_t)g * 512 + (size_t)t * 32, r + (size_t)g * 32, 32);
            memcpy(&S, r + (size_t)G * 36 + (size_t)g * 4, 4);
            memcpy(&sx[g * 16 + t], r + (size_t)G * 32 + (size_t)g * 4, 4);
            corr[g * 16 + t] = (int32_t)((uint32_t)S << shift);
        }
    }
}

/* acc[t] = fma((float)(c[t] - off * S[t]), sw * sx[t], acc[t]) for the 16 tokens. */
static inline __attribute__((always_inline)) void qamx_epi(__m512 acc[16], const int32_t *c,
                                                           __m512 sw, const int32_t *corr,
                                                           const float *sx, const bool sgn)
{
#pragma GCC unroll 16
    for (int t = 0; t < 16; t++) {
        __m512i d = _mm512_load_si512(c + 16 * t);
        if (!sgn) d = _mm512_sub_epi32(d, _mm512_set1_epi32(corr[t]));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sw, _mm512_set1_ps(sx[t])),
                                 acc[t]);
    }
}

/* 16 tokens (their block, qamx_blk) x panel p: y rows of those tokens, outputs in [o0, o1)
 * (+ bias, then + y when acc). sb: the panel as signed q (qamx_signed; TDPBSSD), or NULL
 * (the pack's unsigned u, q4 unpacked per group; TDPBSUD and - off * S). */
static inline __attribute__((always_inline)) void
qamx_tile(const wrk_mat_t *W, const wrk_wq_t qf, int p, size_t pb, const unsigned char *blk,
          const unsigned char *sb, const bool sgn, float *y, int ldy, const float *bias, bool acc,
          int o0, int o1)
{
    const int G = (W->cols + 31) / 32;
    const unsigned char *pn = (const unsigned char *)W->pk + (size_t)p * pb;
    const int32_t *corr = (const int32_t *)(const void *)(blk + (size_t)G * 512);
    const float *sx = (const float *)(const void *)(blk + (size_t)G * 576);
    const size_t q4gb = WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL;
    int32_t c[4][256] __attribute__((aligned(64)));
    unsigned char bb[2][512] __attribute__((aligned(64)));
    __m512 a[16];
    for (int t = 0; t < 16; t++)
        a[t] = _mm512_setzero_ps();
    __m512 sw = _mm512_loadu_ps(pn);
    /* tiles: C 0..3 for groups g % 4, A 4/5 and B 6/7 for even/odd groups; group g + 3's
     * TDPBSUD is issued before group g's epilogue (the TDPBSUD's latency, not the epilogue,
     * was the limit with one group ahead) */
#define QAMX_DP(CT, AT, BT, gg)                                                                    \
    if ((gg) < G) {                                                                                \
        _tile_loadd(AT, blk + (size_t)(gg)*512, 32);                                               \
        _tile_loadd(BT, sgn ? sb + (size_t)(gg)*512 : qamx_b(pn, (gg), qf, bb[(gg)&1]), 64);       \
        _tile_zero(CT);                                                                            \
        if (sgn)                                                                                   \
            _tile_dpbssd(CT, AT, BT);                                                              \
        else                                                                                       \
            _tile_dpbsud(CT, AT, BT);                                                              \
    }
#define QAMX_EP(CT, gg)                                                                            \
    _tile_stored(CT, c[CT], 64);                                                                   \
    if (qf == WRK_WQ_Q4) sw = _mm512_loadu_ps(pn + (size_t)(gg)*q4gb);                             \
    qamx_epi(a, c[CT], sw, corr + (gg)*16, sx + (gg)*16, sgn);                                     \
    if ((gg) + 1 >= G) break;
    QAMX_DP(0, 4, 6, 0)
    QAMX_DP(1, 5, 7, 1)
    QAMX_DP(2, 4, 6, 2)
    for (int g = 0; g < G; g += 4) {
        QAMX_DP(3, 5, 7, g + 3)
        QAMX_EP(0, g)
        QAMX_DP(0, 4, 6, g + 4)
        QAMX_EP(1, g + 1)
        QAMX_DP(1, 5, 7, g + 5)
        QAMX_EP(2, g + 2)
        QAMX_DP(2, 4, 6, g + 6)
        QAMX_EP(3, g + 3)
    }
#undef QAMX_DP
#undef QAMX_EP
    const int r0 = p * WRK_PANEL;
    const bool full = r0 >= o0 && r0 + WRK_PANEL <= o1;
    for (int t = 0; t < 16; t++) {
        float *dst = y + (size_t)t * ldy + r0;
        __m512 v = a[t];
        if (full) {
            if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + r0));
            if (acc) v = _mm512_add_ps(_mm512_loadu_ps(dst), v);
            _mm512_storeu_ps(dst, v);
            continue;
        }
        float sv[16];
        _mm512_storeu_ps(sv, v);
        for (int l = 0; l < WRK_PANEL; l++) {
            if (r0 + l < o0 || r0 + l >= o1) continue;
            float o = sv[l];
            if (bias) o += bias[r0 + l];
            dst[l] = acc ? dst[l] + o : o;
        }
    }
}

/* Panels [pa, pe) for the 16-token block blk (sb: panels pa.. as signed q, or NULL). */
static void qamx_rows(const wrk_mat_t *W, const wrk_wq_t qf, int pa, int pe, size_t pb,
                      const unsigned char *blk, const unsigned char *sb, float *y, int ldy,
                      const float *bias, bool acc, int o0, int o1)
{
    const size_t G = (size_t)(W->cols + 31) / 32;
    for (int p = pa; p < pe; p++)
        if (sb)
            qamx_tile(W, qf, p, pb, blk, sb + (size_t)(p - pa) * G * 512, true, y, ldy, bias, acc,
                      o0, o1);
        else
            qamx_tile(W, qf, p, pb, blk, NULL, false, y, ldy, bias, acc, o0, o1);
}

/* T16 tokens (a multiple of 16) on tiles; blk: room for T16 / 16 blocks (QAMX_BLK_BYTES). */
static void qamx_run(const wrk_mat_t *W, int o0, int o1, const unsigned char *xq, int T16, float *y,
                     int ldy, const float *bias, bool acc, unsigned char *blk, int nblk)
{
    const wrk_wq_t qf = W->qf;
    const int G = (W->cols + 31) / 32;
    const size_t rb = WRK_QX_BYTES(W->cols), pb = wrk_pack_q_panel_bytes(qf, W->cols);
    const size_t bb = QAMX_BLK_BYTES(G);
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    /* several blocks: each group of panels converted once to signed q (G x 512 bytes a panel;
     * q4 unpacked) for all of them, not per block and tile (one block: the pack as it is) */
    unsigned char *ub = NULL;
    if (T16 > 16) {
        const int ug = (int)(QAMX_PANEL_BYTES / ((size_t)G * 512));
        ub = aligned_alloc(64, (size_t)(ug < 1 ? 1 : ug) * (size_t)G * 512);
    }
    int group = (int)(QAMX_PANEL_BYTES / (ub ? (size_t)G * 512 : pb));
    if (group < 1) group = 1;
    for (int t0 = 0; t0 < T16; t0 += 16 * nblk) {
        const int nb = (T16 - t0) / 16 < nblk ? (T16 - t0) / 16 : nblk;
        for (int b = 0; b < nb; b++)
            qamx_blk(blk + (size_t)b * bb, xq + (size_t)(t0 + 16 * b) * rb, rb, G,
                     qf == WRK_WQ_Q8 ? 7 : 3); /* off = 128 or 8 */
        /* panels in groups that stay in L2 while every block passes over them */
        for (int g = p0; g < p1; g += group) {
            const int ge = p1 - g < group ? p1 : g + group;
            for (int p = g; ub && p < ge; p++)
                qamx_signed((const unsigned char *)W->pk + (size_t)p * pb, G, qf,
                            ub + (size_t)(p - g) * G * 512);
            for (int b = 0; b < nb; b++) {
                float *yb = y + (size_t)(t0 + 16 * b) * ldy;
                if (qf == WRK_WQ_Q8)
                    qamx_rows(W, WRK_WQ_Q8, g, ge, pb, blk + (size_t)b * bb, ub, yb, ldy, bias, acc,
                              o0, o1);
                else
                    qamx_rows(W, WRK_WQ_Q4, g, ge, pb, blk + (size_t)b * bb, ub, yb, ldy, bias, acc,
                              o0, o1);
            }
        }
    }
    free(ub);
}

static void qamx_qmm(const wrk_mat_t *W, int o0, int o1, const void *xqv, int T, float *y, int ldy,
                     const float *bias, bool acc)
{
    if (o1 <= o0 || T <= 0) return;
    if (T < WRK_QMM_AMX_MIN_T) {
        g_vnni(W, o0, o1, xqv, T, y, ldy, bias, acc);
        return;
    }
    const int T16 = T / 16 * 16, G = (W->cols + 31) / 32;
    /* every 16-token block rearranged before the panels pass (so a group of panels is read
     * from memory once per call, not once per few blocks): in 64 KiB of stack where they fit,
     * else malloc'd (up to QAMX_MAX_BLKS blocks at a time; failing that, one at a time) */
    _Alignas(64) unsigned char stack[QAMX_STACK_G * (512 + 128)];
    unsigned char *blk = stack, *heap = NULL;
    int nblk = T16 / 16 < QAMX_MAX_BLKS ? T16 / 16 : QAMX_MAX_BLKS;
    if ((size_t)nblk * QAMX_BLK_BYTES(G) > sizeof stack) {
        heap = aligned_alloc(64, ((size_t)nblk * QAMX_BLK_BYTES(G) + 63) / 64 * 64);
        if (!heap) {
            nblk = (int)(sizeof stack / QAMX_BLK_BYTES(G));
            if (nblk < 1) {
                g_vnni(W, o0, o1, xqv, T, y, ldy, bias, acc);
                return;
            }
        } else {
            blk = heap;
        }
    }
    wrk_amx_cfg_t cfg;
    wrk_amx_cfg_init(&cfg);
    for (int i = 0; i < 8; i++) {
        cfg.rows[i] = i >= 6 ? 8 : 16;             /* B: 8 rows of 4-column blocks */
        cfg.colsb[i] = i == 4 || i == 5 ? 32 : 64; /* A: 32 columns of int8 */
    }
    _tile_loadconfig(&cfg);
    qamx_run(W, o0, o1, xqv, T16, y, ldy, bias, acc, blk, nblk);
    _tile_release();
    free(heap);
    if (T16 < T)
        g_vnni(W, o0, o1, (const unsigned char *)xqv + (size_t)T16 * WRK_QX_BYTES(W->cols), T - T16,
               y + (size_t)T16 * ldy, ldy, bias, acc);
}

static const char *g_why = "not probed";

static void qamx_init(void)
{
    unsigned a, b, cx, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &cx, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) {
        g_why = "this CPU has no AMX-INT8";
        return;
    }
    if (!(cx & (1u << 11)) || !__builtin_cpu_supports("avx512bw")) {
        g_why = "this CPU has no AVX512_VNNI";
        return;
    }
    g_vnni = wrk__qmm_avx512();
    if (!g_vnni) {
        g_why = "this build has no AVX512_VNNI kernel";
        return;
    }
    const char *why = wrk_amx_request(); /* amx_util.h */
    if (why) {
        g_why = why;
        return;
    }
    g_why = NULL;
}

wrk_qmm_fn wrk__qmm_amx(const char **why)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, qamx_init);
    if (g_why && why) *why = g_why;
    return g_why ? NULL : qamx_qmm;
}

#else

wrk_qmm_fn wrk__qmm_amx(const char **why)
{
    if (why) *why = "this build has no AMX-INT8 kernel (the compiler lacks -mamx-int8)";
    return NULL;
}

#endif
