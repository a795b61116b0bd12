/* workers/cpu: the quantized matmul (kernels_q.h), written once over GCC vector extensions
 * and compiled once per instruction set. The including file defines VW (floats per vector)
 * KFN(name), and LOAD_I8(p) / LOAD_U8(p) (VW signed / unsigned bytes at p widened to a vi:
 * one vpmovsxbd / vpmovzxbd; GCC's __builtin_convertvector from byte vectors goes through
 * general registers), optionally NIB_F(tbl, v) (the low 4 bits of each lane of v looked up in
 * tbl = {-8, ..., 7}: one vpermps instead of and/sub/convert), and compiles with -ffp-contract=fast
 * so a*b+c is one FMA where the ISA has one.
 *
 * Outer products as in the native packed kernels: a tile of NP panels (16 rows, QPV vectors
 * each) x up to QTR tokens of fp32 accumulators; per column, one int8 (or nibble) vector per
 * panel converted to fp32 in registers, and one broadcast x[t][k] per token. The sequence of
 * operations behind each output element is fixed (kernels_q.h), whatever T and the tile. */
#include <stdint.h>
#include <string.h>

#include "workers/cpu/kernels_q.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

#define QPV (WRK_PANEL / VW)
#if VW >= 16
#define QTR 6 /* 2 panels x 6 tokens: 12 sums (+12 group sums for q4) of 32 registers */
#define QNP(T) ((T) <= 2 ? 4 : 2)
#elif VW == 8
#define QTR 3 /* 16 registers: 1 panel (2 vectors) x 3 tokens, x2 for q4 */
#define QNP(T) ((T) == 1 ? 2 : 1)
#else
#define QTR 1
#define QNP(T) 1
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
static inline vf KFN(qsplat)(float x)
{
    vf v = {x};
#if VW == 16
    return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
#elif VW == 8
    return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
#else
    return __builtin_shufflevector(v, v, 0, 0, 0, 0);
#endif
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

static inline __attribute__((always_inline)) void
KFN(q8_tile)(const wrk_mat_t *W, int p, const int NP, const float *x, int ldx, const int T,
             float *y, int ldy, const float *bias, bool acc, int o0, int o1, int pf)
{
    const int K = W->cols;
    const size_t pb = wrk_pack_q_panel_bytes(WRK_WQ_Q8, K);
    const unsigned char *base = (const unsigned char *)W->pk + (size_t)p * pb;
    vf a[QNP_MAX][QPV][QTR];
#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
        for (int v = 0; v < QPV; v++)
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                a[q][v][t] = KFN(qsplat)(0.f);
    for (int k = 0; k < K; k++) {
        vf w[QNP_MAX][QPV];
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++) {
            const unsigned char *wp = base + (size_t)q * pb + WRK_PANEL * 4 + (size_t)k * WRK_PANEL;
            if (pf && !(k & 3)) __builtin_prefetch(wp + pf, 0, 2);
#pragma GCC unroll 4
            for (int v = 0; v < QPV; v++) {
                w[q][v] = __builtin_convertvector((vi)LOAD_I8(wp + v * VW), vf);
            }
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const vf xb = KFN(qsplat)(x[(size_t)t * ldx + k]);
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                for (int v = 0; v < QPV; v++)
                    a[q][v][t] += w[q][v] * xb;
        }
    }
    for (int q = 0; q < NP; q++)
        for (int v = 0; v < QPV; v++) {
            const int r0 = (p + q) * WRK_PANEL + v * VW;
            if (r0 >= o1 || r0 + VW <= o0) continue;
            const vf s = KFN(qld)(base + (size_t)q * pb + (size_t)v * VW * 4);
            for (int t = 0; t < T; t++)
                KFN(qstore)(a[q][v][t] * s, r0, y + (size_t)t * ldy + r0, bias, acc, o0, o1);
        }
}

static inline __attribute__((always_inline)) void
KFN(q4_tile)(const wrk_mat_t *W, int p, const int NP, const float *x, int ldx, const int T,
             float *y, int ldy, const float *bias, bool acc, int o0, int o1, int pf)
{
    const int K = W->cols, G = (K + WRK_Q4_GROUP - 1) / WRK_Q4_GROUP;
    const size_t pb = wrk_pack_q_panel_bytes(WRK_WQ_Q4, K);
#ifdef NIB_F
    const vf nib_tbl = {-8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f,
                        0.f,  1.f,  2.f,  3.f,  4.f,  5.f,  6.f,  7.f};
#endif
    const unsigned char *base = (const unsigned char *)W->pk + (size_t)p * pb;
    vf a[QNP_MAX][QPV][QTR];
#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
        for (int v = 0; v < QPV; v++)
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                a[q][v][t] = KFN(qsplat)(0.f);
    for (int g = 0; g < G; g++) {
        const int k0 = g * WRK_Q4_GROUP, kn = K - k0 < WRK_Q4_GROUP ? K - k0 : WRK_Q4_GROUP;
        vf ga[QNP_MAX][QPV][QTR];
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
            for (int v = 0; v < QPV; v++)
#pragma GCC unroll 8
                for (int t = 0; t < T; t++)
                    ga[q][v][t] = KFN(qsplat)(0.f);
        for (int j = 0; 2 * j < kn; j++) {
            vf lo[QNP_MAX][QPV], hi[QNP_MAX][QPV];
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++) {
                const unsigned char *wp = base + (size_t)q * pb + (size_t)g * Q4_GROUP_BYTES +
                                          WRK_PANEL * 4 + (size_t)j * WRK_PANEL;
                if (pf && !(j & 3)) __builtin_prefetch(wp + pf, 0, 2);
#pragma GCC unroll 4
                for (int v = 0; v < QPV; v++) {
                    const vi bi = (vi)LOAD_U8(wp + v * VW);
#ifdef NIB_F
                    lo[q][v] = NIB_F(nib_tbl, bi);
                    hi[q][v] = NIB_F(nib_tbl, bi >> 4);
#else
                    lo[q][v] = __builtin_convertvector((bi & 15) - 8, vf);
                    hi[q][v] = __builtin_convertvector((bi >> 4) - 8, vf);
#endif
                }
            }
            const float *xk = x + k0 + 2 * j;
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const vf xb = KFN(qsplat)(xk[(size_t)t * ldx]);
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < QPV; v++)
                        ga[q][v][t] += lo[q][v] * xb;
            }
            if (2 * j + 1 >= kn) break; /* odd last column */
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const vf xb = KFN(qsplat)(xk[(size_t)t * ldx + 1]);
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < QPV; v++)
                        ga[q][v][t] += hi[q][v] * xb;
            }
        }
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
            for (int v = 0; v < QPV; v++) {
                const vf s = KFN(qld)(base + (size_t)q * pb + (size_t)g * Q4_GROUP_BYTES +
                                      (size_t)v * VW * 4);
#pragma GCC unroll 8
                for (int t = 0; t < T; t++)
                    a[q][v][t] += ga[q][v][t] * s;
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
static inline __attribute__((always_inline)) void KFN(q_rows)(const wrk_mat_t *W, int pa, int pe,
                                                              const float *x, int ldx, const int T,
                                                              const wrk_wq_t qf, float *y, int ldy,
                                                              const float *bias, bool acc, int o0,
                                                              int o1, int pf)
{
    const int NP = QNP(T);
    int p = pa;
    if (qf == WRK_WQ_Q8) {
        for (; p + NP <= pe; p += NP)
            KFN(q8_tile)(W, p, NP, x, ldx, T, y, ldy, bias, acc, o0, o1, pf);
        for (; p < pe; p++)
            KFN(q8_tile)(W, p, 1, x, ldx, T, y, ldy, bias, acc, o0, o1, pf);
    } else {
        for (; p + NP <= pe; p += NP)
            KFN(q4_tile)(W, p, NP, x, ldx, T, y, ldy, bias, acc, o0, o1, pf);
        for (; p < pe; p++)
            KFN(q4_tile)(W, p, 1, x, ldx, T, y, ldy, bias, acc, o0, o1, pf);
    }
}

#define QCASE(n, QF)                                                                               \
    case n:                                                                                        \
        KFN(q_rows)(W, pa, pe, x, ldx, n, QF, y, ldy, bias, acc, o0, o1, pf);                      \
        break;
#if QTR == 6
#define QCASES(QF) QCASE(1, QF) QCASE(2, QF) QCASE(3, QF) QCASE(4, QF) QCASE(5, QF)
#elif QTR == 3
#define QCASES(QF) QCASE(1, QF) QCASE(2, QF)
#else
#define QCASES(QF)
#endif

static void KFN(q_block)(const wrk_mat_t *W, int pa, int pe, const float *x, int ldx, int T,
                         float *y, int ldy, const float *bias, bool acc, int o0, int o1, int pf)
{
    if (W->qf == WRK_WQ_Q8) {
        switch (T) {
            QCASES(WRK_WQ_Q8)
        default:
            KFN(q_rows)(W, pa, pe, x, ldx, QTR, WRK_WQ_Q8, y, ldy, bias, acc, o0, o1, pf);
            break;
        }
    } else {
        switch (T) {
            QCASES(WRK_WQ_Q4)
        default:
            KFN(q_rows)(W, pa, pe, x, ldx, QTR, WRK_WQ_Q4, y, ldy, bias, acc, o0, o1, pf);
            break;
        }
    }
}
#undef QCASE
#undef QCASES

static void KFN(qmm)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T, float *y,
                     int ldy, const float *bias, bool acc)
{
    if (o1 <= o0 || T <= 0) return;
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    const size_t pb = wrk_pack_q_panel_bytes(W->qf, W->cols);
    int group = (int)(QMM_PANEL_BYTES / (pb ? pb : 1));
    if (group < QNP_MAX) group = QNP_MAX;
    if (T <= QTR) { /* decode: every panel once */
        KFN(q_block)(W, p0, p1, x, ldx, T, y, ldy, bias, acc, o0, o1, QMM_PF_DIST);
        return;
    }
    /* Groups of panels that stay in L2 while every token block passes over them; the first
     * pass streams them from memory, the later ones prefetch the next group. */
    for (int g = p0; g < p1; g += group) {
        const int ge = p1 - g < group ? p1 : g + group;
        const int next = ge < p1 ? (int)((size_t)(ge - g) * pb) : 0;
        for (int t = 0; t < T; t += QTR)
            KFN(q_block)
            (W, g, ge, x + (size_t)t * ldx, ldx, T - t < QTR ? T - t : QTR, y + (size_t)t * ldy,
             ldy, bias, acc, o0, o1, t == 0 ? QMM_PF_DIST : next);
    }
}
