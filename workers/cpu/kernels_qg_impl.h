/* workers/cpu: the qg matmul (kernels_qg.h), written once over GCC vector extensions and
 * compiled once per instruction set like kernels_q_impl.h. The including file defines VW
 * (floats per vector), KFN(name) and LOAD_U8(p) (VW unsigned bytes at p widened to a vi), and
 * compiles with -ffp-contract=fast so a*b+c is one FMA where the ISA has one.
 *
 * One panel (16 rows, QGPV vectors) x up to QGT tokens of fp32 accumulators; per group, group
 * sums over its columns ((float)q - z, exact, times broadcast x[t][k]), then acc += sum * s.
 * The sequence behind each output is fixed (kernels_qg.h), whatever T and the tile. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/kernels_qg.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

#define QGPV (WRK_PANEL / VW)
#if VW >= 16
#define QGT 8
#define QGNP(T) ((T) <= 2 ? 4 : 1) /* decode: 4 panels, independent FMA chains */
#elif VW == 8
#define QGT 3
#define QGNP(T) ((T) == 1 ? 2 : 1)
#else
#define QGT 1
#define QGNP(T) 1
#endif
#define QGNP_MAX 4

static inline vf KFN(gld)(const void *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Writes one vector of outputs (rows r0 .. r0+VW-1 of token row dst): r (+ bias) (+ dst). */
static inline __attribute__((always_inline)) void
KFN(gstore)(vf r, int r0, float *dst, const float *bias, bool acc, int o0, int o1)
{
    if (r0 >= o0 && r0 + VW <= o1) {
        if (bias) r += KFN(gld)(bias + r0);
        if (acc) r = KFN(gld)(dst) + r;
        memcpy(dst, &r, sizeof r);
        return;
    }
    for (int l = 0; l < VW; l++) {
        if (r0 + l < o0 || r0 + l >= o1) continue;
        float sv = r[l];
        if (bias) sv += bias[r0 + l];
        dst[l] = acc ? dst[l] + sv : sv;
    }
}
static inline vf KFN(gsplat)(float x)
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

static inline __attribute__((always_inline)) void
KFN(qg_panel)(const unsigned char *gp0, size_t pb, const int NP, const int32_t *start, int G,
              int bits, const float *x, int ldx, const int T, float *y, int ldy, const float *bias,
              bool acc, int o0, int o1, int p)
{
    vf a[QGNP_MAX][QGPV][QGT];
#pragma GCC unroll 4
    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
        for (int v = 0; v < QGPV; v++)
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                a[q][v][t] = KFN(gsplat)(0.f);
    size_t go = 0; /* the group's offset in every panel */
    for (int g = 0; g < G; g++) {
        const int k0 = start[g], n = start[g + 1] - k0;
        vf ga[QGNP_MAX][QGPV][QGT], zv[QGNP_MAX][QGPV];
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
            for (int v = 0; v < QGPV; v++) {
                zv[q][v] = KFN(gld)(gp0 + q * pb + go + WRK_PANEL * 4 + (size_t)v * VW * 4);
#pragma GCC unroll 8
                for (int t = 0; t < T; t++)
                    ga[q][v][t] = KFN(gsplat)(0.f);
            }
        const unsigned char *cp = gp0 + go + WRK_PANEL * 8;
        if (bits == 8) {
            for (int j = 0; j < n; j++) {
                vf w[QGNP_MAX][QGPV];
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < QGPV; v++)
                        w[q][v] =
                            __builtin_convertvector(
                                (vi)LOAD_U8(cp + q * pb + (size_t)j * WRK_PANEL + v * VW), vf) -
                            zv[q][v];
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const vf xb = KFN(gsplat)(x[(size_t)t * ldx + k0 + j]);
#pragma GCC unroll 4
                    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                        for (int v = 0; v < QGPV; v++)
                            ga[q][v][t] += w[q][v] * xb;
                }
            }
        } else {
            for (int j = 0; j < n; j += 2) {
                vf lo[QGNP_MAX][QGPV], hi[QGNP_MAX][QGPV];
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < QGPV; v++) {
                        const vi b =
                            (vi)LOAD_U8(cp + q * pb + (size_t)(j / 2) * WRK_PANEL + v * VW);
                        lo[q][v] = __builtin_convertvector(b & 15, vf) - zv[q][v];
                        hi[q][v] = __builtin_convertvector(b >> 4, vf) - zv[q][v];
                    }
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const vf xb = KFN(gsplat)(x[(size_t)t * ldx + k0 + j]);
#pragma GCC unroll 4
                    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                        for (int v = 0; v < QGPV; v++)
                            ga[q][v][t] += lo[q][v] * xb;
                }
                if (j + 1 >= n) break;
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const vf xb = KFN(gsplat)(x[(size_t)t * ldx + k0 + j + 1]);
#pragma GCC unroll 4
                    for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                        for (int v = 0; v < QGPV; v++)
                            ga[q][v][t] += hi[q][v] * xb;
                }
            }
        }
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
            for (int v = 0; v < QGPV; v++) {
                const vf s = KFN(gld)(gp0 + q * pb + go + (size_t)v * VW * 4);
#pragma GCC unroll 8
                for (int t = 0; t < T; t++)
                    a[q][v][t] += ga[q][v][t] * s;
            }
        go += wrk_qg_group_bytes(bits, n);
    }
    for (int q = 0; q < NP; q++)
        for (int v = 0; v < QGPV; v++) {
            const int r0 = (p + q) * WRK_PANEL + v * VW;
            if (r0 >= o1 || r0 + VW <= o0) continue;
            for (int t = 0; t < T; t++) {
                KFN(gstore)(a[q][v][t], r0, y + (size_t)t * ldy + r0, bias, acc, o0, o1);
            }
        }
}

#if VW >= 16
/* Many tokens (T >= 16): NB tokens (16 or 24) x one panel, the group sums ga in NB registers,
 * the running sums a in memory (touched once per group), x transposed by the caller to
 * xt[k][NB] so every broadcast is at a constant offset. The same operations in the same order
 * per output as qg_panel (kernels_qg.h): bit-identical, the widening (convert, - z) now spread
 * over NB tokens instead of 8. */
static inline __attribute__((always_inline)) void
KFN(qg_tile)(const unsigned char *gp0, const int32_t *start, int G, int bits, const float *xt,
             const int NB, float *y, int ldy, const float *bias, bool acc, int o0, int o1, int p)
{
    vf a[24];
#pragma GCC unroll 24
    for (int t = 0; t < NB; t++)
        a[t] = KFN(gsplat)(0.f);
    size_t go = 0;
    for (int g = 0; g < G; g++) {
        const int k0 = start[g], n = start[g + 1] - k0;
        const vf zv = KFN(gld)(gp0 + go + WRK_PANEL * 4);
        vf ga[24];
#pragma GCC unroll 24
        for (int t = 0; t < NB; t++)
            ga[t] = KFN(gsplat)(0.f);
        const unsigned char *cp = gp0 + go + WRK_PANEL * 8;
        const float *xc = xt + (size_t)k0 * NB;
        if (bits == 8) {
            for (int j = 0; j < n; j++, xc += NB) {
                const vf w =
                    __builtin_convertvector((vi)LOAD_U8(cp + (size_t)j * WRK_PANEL), vf) - zv;
#pragma GCC unroll 24
                for (int t = 0; t < NB; t++)
                    ga[t] += w * KFN(gsplat)(xc[t]);
            }
        } else {
            for (int j = 0; j < n; j += 2, xc += 2 * NB) {
                const vi b = (vi)LOAD_U8(cp + (size_t)(j / 2) * WRK_PANEL);
                const vf lo = __builtin_convertvector(b & 15, vf) - zv;
#pragma GCC unroll 24
                for (int t = 0; t < NB; t++)
                    ga[t] += lo * KFN(gsplat)(xc[t]);
                if (j + 1 >= n) break;
                const vf hi = __builtin_convertvector(b >> 4, vf) - zv;
#pragma GCC unroll 24
                for (int t = 0; t < NB; t++)
                    ga[t] += hi * KFN(gsplat)(xc[NB + t]);
            }
        }
        const vf s = KFN(gld)(gp0 + go);
#pragma GCC unroll 24
        for (int t = 0; t < NB; t++)
            a[t] += ga[t] * s;
        go += wrk_qg_group_bytes(bits, n);
    }
    const int r0 = p * WRK_PANEL;
    for (int t = 0; t < NB; t++) {
        KFN(gstore)(a[t], r0, y + (size_t)t * ldy + r0, bias, acc, o0, o1);
    }
}

/* Tokens [0, T) in blocks of NB through qg_tile while at least NB are left; returns how many
 * ran. xt: K x 24 floats. */
static int KFN(qg_tiles)(const unsigned char *panels, size_t pb, int p0, int p1,
                         const int32_t *start, int G, int bits, int K, const float *x, int ldx,
                         int T, float *y, int ldy, const float *bias, bool acc, int o0, int o1,
                         float *xt)
{
    int t = 0;
    while (T - t >= 16) {
        const int NB = T - t >= 24 && T - t != 32 ? 24 : 16;
        for (int k = 0; k < K; k++)
            for (int i = 0; i < NB; i++)
                xt[(size_t)k * NB + i] = x[(size_t)(t + i) * ldx + k];
        for (int p = p0; p < p1; p++) {
            if (NB == 24) KFN(qg_tile)
            (panels + (size_t)p * pb, start, G, bits, xt, 24, y + (size_t)t * ldy, ldy, bias, acc,
             o0, o1, p);
            else KFN(qg_tile)(panels + (size_t)p * pb, start, G, bits, xt, 16, y + (size_t)t * ldy,
                              ldy, bias, acc, o0, o1, p);
        }
        t += NB;
    }
    return t;
}
#endif

/* Panels [p, p + NP) x tokens [t, t + n), NP and n fixed at compile time per instance. */
#define QGRUN(NP, n)                                                                               \
    KFN(qg_panel)                                                                                  \
    (base + h.data_off + (size_t)p * pb, pb, NP, start, h.G, h.bits, x + (size_t)t * ldx, ldx, n,  \
     y + (size_t)t * ldy, ldy, bias, acc, o0, o1, p)
#define QGCASE(n)                                                                                  \
    case n:                                                                                        \
        if (QGNP(n) > 1 && p + QGNP(n) <= p1) {                                                    \
            QGRUN(QGNP(n), n);                                                                     \
            step = QGNP(n);                                                                        \
        } else {                                                                                   \
            QGRUN(1, n);                                                                           \
        }                                                                                          \
        break;

static void KFN(qgmm)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T, float *y,
                      int ldy, const float *bias, bool acc)
{
    if (o1 <= o0 || T <= 0) return;
    wrk_qg_hdr_t h;
    memcpy(&h, W->pk, sizeof h);
    const unsigned char *base = W->pk;
    const int32_t *start =
        (const int32_t *)(base + sizeof h + (h.has_perm ? (size_t)h.cols * 4 : 0));
    size_t pb = 0;
    for (int g = 0; g < h.G; g++)
        pb += wrk_qg_group_bytes(h.bits, start[g + 1] - start[g]);
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    int t0 = 0;
#if VW >= 16
    if (T >= 16) { /* x transposed per block: on the stack up to K = 512, else malloc'd */
        float stack[512 * 24] __attribute__((aligned(64)));
        float *xt = h.cols <= 512 ? stack : malloc((size_t)h.cols * 24 * sizeof *xt);
        if (xt) {
            t0 = KFN(qg_tiles)(base + h.data_off, pb, p0, p1, start, h.G, h.bits, h.cols, x, ldx, T,
                               y, ldy, bias, acc, o0, o1, xt);
            if (xt != stack) free(xt);
        }
    }
#endif
    for (int t = t0; t < T; t += QGT) {
        const int n = T - t < QGT ? T - t : QGT;
        for (int p = p0, step = 1; p < p1; p += step) {
            step = 1;
            switch (n) {
                QGCASE(1)
#if QGT >= 3
                QGCASE(2)
                QGCASE(3)
#endif
#if QGT >= 8
                QGCASE(4)
                QGCASE(5)
                QGCASE(6)
                QGCASE(7) QGCASE(8)
#endif
                    default : break;
            }
        }
    }
}
#undef QGCASE
#undef QGRUN
