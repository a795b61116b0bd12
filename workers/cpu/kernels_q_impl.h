/* workers/cpu: the quantized matmul (kernels_q.h), int8 weights (or int4 unpacked in
 * registers) times int8 per-token activations, written once over GCC vector extensions and
 * compiled once per instruction set. The including file defines:
 *   VW            int32 lanes per vector (8: ymm, 16: zmm)
 *   KFN(name)     the instance's names
 *   DOT4(a, w, x) a + per lane sum_{i<4} w.u8[i] * x.s8[i], for w bytes <= 15 (q4 nibbles)
 *   DOT8(a, w, x) a + per lane sum_{i<4} (w.u8[i] - 128 + Q8_OFF) * x.s8[i] (q8, u = q + 128)
 *   Q8_OFF        128 for vpdpbusd (it sums u * x), 0 where DOT8 sums q * x itself
 *   BCAST4(p)     the 4 bytes at p in every lane
 *   VFMA(a, b, c) a * b + c rounded once
 * All integer sums are exact (|d| <= 32 * 127 * 255 per group), so every instance gives the
 * same d, and the fp32 epilogue (kernels_q.h) is written here once: bit-identical results.
 *
 * Tiles of NP panels (16 rows, QPV vectors each) x up to QTR tokens: per group of 32 columns
 * int32 sums d (one vector per panel vector and token), then the fp32 accumulators. */
#include <stdint.h>
#include <string.h>

#include "workers/cpu/kernels_q.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

#define QPV (WRK_PANEL / VW)
#ifndef QTR
#if VW >= 16
#define QTR 6 /* 2 panels x 6 tokens: 12 int sums + 12 fp32 sums of 32 registers */
#define QNP(T) ((T) <= 2 ? 4 : 2)
#else
#define QTR 3 /* 16 registers: 1 panel (2 vectors) x 3 tokens, int + fp32 */
#define QNP(T) ((T) == 1 ? 2 : 1)
#endif
#endif
#define QNP_MAX 4
#define Q4_GROUP_BYTES (WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL)
#ifndef QMM_PANEL_BYTES
#define QMM_PANEL_BYTES (96 * 1024)
#endif
#ifndef QMM_PF_DIST
#define QMM_PF_DIST 1024
#endif

static inline vf KFN(qld)(const void *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline vi KFN(qldi)(const void *p)
{
    vi v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline vf KFN(qsplat)(float x)
{
    return (vf){0} + x;
}
static inline vi KFN(qspliti)(int32_t x)
{
    return (vi){0} + x;
}

/* Writes one vector of outputs (rows r0 .. r0+VW-1 of token row dst): r (+ bias) (+ dst). */
static inline __attribute__((always_inline)) void
KFN(qstore)(vf r, int r0, float *dst, const float *bias, bool acc, int o0, int o1)
{
    if (r0 >= o0 && r0 + VW <= o1) {
        if (bias) r += KFN(qld)(bias + r0);
        if (acc) r = KFN(qld)(dst) + r;
        memcpy(dst, &r, sizeof r);
        return;
    }
    for (int l = 0; l < VW; l++) {
        if (r0 + l < o0 || r0 + l >= o1) continue;
        float s = r[l];
        if (bias) s += bias[r0 + l];
        dst[l] = acc ? dst[l] + s : s;
    }
}

/* One tile: panels p .. p+NP-1, tokens 0 .. T-1 of the records at xq (rb bytes apart). */
static inline __attribute__((always_inline)) void
KFN(q_tile)(const wrk_mat_t *W, const wrk_wq_t qf, int p, const int NP, const unsigned char *xq,
            size_t rb, const int T, float *y, int ldy, const float *bias, bool acc, int o0, int o1,
            int pf)
{
    const int G = (W->cols + 31) / 32;
    const size_t pb = wrk_pack_q_panel_bytes(qf, W->cols);
    const unsigned char *base = (const unsigned char *)W->pk + (size_t)p * pb;
    const unsigned char *sxp = xq + (size_t)G * 32, *sump = sxp + (size_t)G * 4;
    vf a[QNP_MAX][QPV][QTR];
#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
        for (int v = 0; v < QPV; v++)
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                a[q][v][t] = KFN(qsplat)(0.f);
    for (int g = 0; g < G; g++) {
        vi d[QNP_MAX][QPV][QTR];
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
            for (int v = 0; v < QPV; v++)
#pragma GCC unroll 8
                for (int t = 0; t < T; t++)
                    d[q][v][t] = KFN(qspliti)(0);
        const unsigned char *xg = xq + (size_t)g * 32;
        if (qf == WRK_WQ_Q8) {
#pragma GCC unroll 2
            for (int j = 0; j < 8; j++) {
                vi w[QNP_MAX][QPV];
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++) {
                    const unsigned char *wp =
                        base + (size_t)q * pb + WRK_PANEL * 4 + ((size_t)g * 8 + j) * 64;
                    if (pf) __builtin_prefetch(wp + pf, 0, 2);
#pragma GCC unroll 4
                    for (int v = 0; v < QPV; v++)
                        w[q][v] = KFN(qldi)(wp + v * VW * 4);
                }
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const vi xb = (vi)BCAST4(xg + (size_t)t * rb + 4 * j);
#pragma GCC unroll 4
                    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                        for (int v = 0; v < QPV; v++)
                            d[q][v][t] = (vi)DOT8(d[q][v][t], w[q][v], xb);
                }
            }
        } else {
#pragma GCC unroll 2
            for (int b = 0; b < 4; b++) {
                vi lo[QNP_MAX][QPV], hi[QNP_MAX][QPV];
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++) {
                    const unsigned char *wp = base + (size_t)q * pb + (size_t)g * Q4_GROUP_BYTES +
                                              WRK_PANEL * 4 + (size_t)b * 64;
                    if (pf) __builtin_prefetch(wp + pf, 0, 2);
#pragma GCC unroll 4
                    for (int v = 0; v < QPV; v++) {
                        const vi raw = KFN(qldi)(wp + v * VW * 4);
                        lo[q][v] = raw & 0x0f0f0f0f;
                        hi[q][v] = (raw >> 4) & 0x0f0f0f0f;
                    }
                }
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const vi xl = (vi)BCAST4(xg + (size_t)t * rb + 8 * b);
                    const vi xh = (vi)BCAST4(xg + (size_t)t * rb + 8 * b + 4);
#pragma GCC unroll 4
                    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                        for (int v = 0; v < QPV; v++)
                            d[q][v][t] = (vi)DOT4(DOT4(d[q][v][t], lo[q][v], xl), hi[q][v], xh);
                }
            }
        }
        /* acc = fma((float)d, sw * sx, acc), d = the sums less off * S */
        const int32_t off = qf == WRK_WQ_Q8 ? Q8_OFF : 8;
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            float sx;
            int32_t S;
            memcpy(&sx, sxp + (size_t)t * rb + (size_t)g * 4, 4);
            memcpy(&S, sump + (size_t)t * rb + (size_t)g * 4, 4);
            const vf sxb = KFN(qsplat)(sx);
            const vi corr = KFN(qspliti)(off * S);
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                for (int v = 0; v < QPV; v++) {
                    const vf sw = KFN(qld)(base + (size_t)q * pb +
                                           (qf == WRK_WQ_Q8 ? 0 : (size_t)g * Q4_GROUP_BYTES) +
                                           (size_t)v * VW * 4);
                    const vf df = __builtin_convertvector(d[q][v][t] - corr, vf);
                    a[q][v][t] = (vf)VFMA(df, sw * sxb, a[q][v][t]);
                }
        }
    }
    for (int q = 0; q < NP; q++)
        for (int v = 0; v < QPV; v++) {
            const int r0 = (p + q) * WRK_PANEL + v * VW;
            if (r0 >= o1 || r0 + VW <= o0) continue;
            for (int t = 0; t < T; t++)
                KFN(qstore)(a[q][v][t], r0, y + (size_t)t * ldy + r0, bias, acc, o0, o1);
        }
}

/* Panels [pa, pe) for T <= QTR tokens, T and the format fixed at compile time per instance. */
static inline __attribute__((always_inline)) void
KFN(q_rows)(const wrk_mat_t *W, int pa, int pe, const unsigned char *xq, size_t rb, const int T,
            const wrk_wq_t qf, float *y, int ldy, const float *bias, bool acc, int o0, int o1,
            int pf)
{
    const int NP = QNP(T);
    int p = pa;
    for (; p + NP <= pe; p += NP)
        KFN(q_tile)(W, qf, p, NP, xq, rb, T, y, ldy, bias, acc, o0, o1, pf);
    for (; p < pe; p++)
        KFN(q_tile)(W, qf, p, 1, xq, rb, T, y, ldy, bias, acc, o0, o1, pf);
}

#define QCASE(n, QF)                                                                               \
    case n:                                                                                        \
        KFN(q_rows)(W, pa, pe, xq, rb, n, QF, y, ldy, bias, acc, o0, o1, pf);                      \
        break;
#if QTR == 6
#define QCASES(QF) QCASE(1, QF) QCASE(2, QF) QCASE(3, QF) QCASE(4, QF) QCASE(5, QF)
#elif QTR == 3
#define QCASES(QF) QCASE(1, QF) QCASE(2, QF)
#elif QTR == 2
#define QCASES(QF) QCASE(1, QF)
#else
#define QCASES(QF)
#endif

static void KFN(q_block)(const wrk_mat_t *W, int pa, int pe, const unsigned char *xq, size_t rb,
                         int T, float *y, int ldy, const float *bias, bool acc, int o0, int o1,
                         int pf)
{
    if (W->qf == WRK_WQ_Q8) {
        switch (T) {
            QCASES(WRK_WQ_Q8)
        default:
            KFN(q_rows)(W, pa, pe, xq, rb, QTR, WRK_WQ_Q8, y, ldy, bias, acc, o0, o1, pf);
            break;
        }
    } else {
        switch (T) {
            QCASES(WRK_WQ_Q4)
        default:
            KFN(q_rows)(W, pa, pe, xq, rb, QTR, WRK_WQ_Q4, y, ldy, bias, acc, o0, o1, pf);
            break;
        }
    }
}
#undef QCASE
#undef QCASES

static void KFN(qmm)(const wrk_mat_t *W, int o0, int o1, const void *xqv, int T, float *y,
                     int ldy, const float *bias, bool acc)
{
    if (o1 <= o0 || T <= 0) return;
    const unsigned char *xq = xqv;
    const size_t rb = WRK_QX_BYTES(W->cols);
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    const size_t pb = wrk_pack_q_panel_bytes(W->qf, W->cols);
    int group = (int)(QMM_PANEL_BYTES / (pb ? pb : 1));
    if (group < QNP_MAX) group = QNP_MAX;
    if (T <= QTR) { /* decode: every panel once */
        KFN(q_block)(W, p0, p1, xq, rb, T, y, ldy, bias, acc, o0, o1, QMM_PF_DIST);
        return;
    }
    /* Groups of panels that stay in L2 while every token block passes over them; the first
     * pass streams them from memory, the later ones prefetch the next group. */
    for (int g = p0; g < p1; g += group) {
        const int ge = p1 - g < group ? p1 : g + group;
        const int next = ge < p1 ? (int)((size_t)(ge - g) * pb) : 0;
        for (int t = 0; t < T; t += QTR)
            KFN(q_block)
            (W, g, ge, xq + (size_t)t * rb, rb, T - t < QTR ? T - t : QTR, y + (size_t)t * ldy,
             ldy, bias, acc, o0, o1, t == 0 ? QMM_PF_DIST : next);
    }
}
