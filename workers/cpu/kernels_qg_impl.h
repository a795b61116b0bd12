/* workers/cpu: the qg matmul (kernels_qg.h), written once over GCC vector extensions and
 * compiled once per instruction set like kernels_q_impl.h. The including file defines VW
 * (floats per vector), KFN(name) and LOAD_U8(p) (VW unsigned bytes at p widened to a vi), and
 * compiles with -ffp-contract=fast so a*b+c is one FMA where the ISA has one.
 *
 * One panel (16 rows, QGPV vectors) x up to QGT tokens of fp32 accumulators; per group, group
 * sums over its columns ((float)q - z, exact, times broadcast x[t][k]), then acc += sum * s.
 * The sequence behind each output is fixed (kernels_qg.h), whatever T and the tile. */
#include <stdint.h>
#include <string.h>

#include "workers/cpu/kernels_qg.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

#define QGPV (WRK_PANEL / VW)
#if VW >= 16
#define QGT 8
#elif VW == 8
#define QGT 3
#else
#define QGT 1
#endif

static inline vf KFN(gld)(const void *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
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
KFN(qg_panel)(const unsigned char *gp0, const int32_t *start, int G, int bits, const float *x,
              int ldx, const int T, float *y, int ldy, const float *bias, bool acc, int o0,
              int o1, int p)
{
    vf a[QGPV][QGT];
#pragma GCC unroll 4
    for (int v = 0; v < QGPV; v++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) a[v][t] = KFN(gsplat)(0.f);
    const unsigned char *gp = gp0;
    for (int g = 0; g < G; g++) {
        const int k0 = start[g], n = start[g + 1] - k0;
        vf ga[QGPV][QGT], zv[QGPV];
#pragma GCC unroll 4
        for (int v = 0; v < QGPV; v++) {
            zv[v] = KFN(gld)(gp + WRK_PANEL * 4 + (size_t)v * VW * 4);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) ga[v][t] = KFN(gsplat)(0.f);
        }
        const unsigned char *cp = gp + WRK_PANEL * 8;
        if (bits == 8) {
            for (int j = 0; j < n; j++) {
                vf w[QGPV];
#pragma GCC unroll 4
                for (int v = 0; v < QGPV; v++)
                    w[v] = __builtin_convertvector((vi)LOAD_U8(cp + (size_t)j * WRK_PANEL + v * VW),
                                                   vf) - zv[v];
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const vf xb = KFN(gsplat)(x[(size_t)t * ldx + k0 + j]);
#pragma GCC unroll 4
                    for (int v = 0; v < QGPV; v++) ga[v][t] += w[v] * xb;
                }
            }
        } else {
            for (int j = 0; j < n; j += 2) {
                vf lo[QGPV], hi[QGPV];
#pragma GCC unroll 4
                for (int v = 0; v < QGPV; v++) {
                    const vi b = (vi)LOAD_U8(cp + (size_t)(j / 2) * WRK_PANEL + v * VW);
                    lo[v] = __builtin_convertvector(b & 15, vf) - zv[v];
                    hi[v] = __builtin_convertvector(b >> 4, vf) - zv[v];
                }
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const vf xb = KFN(gsplat)(x[(size_t)t * ldx + k0 + j]);
#pragma GCC unroll 4
                    for (int v = 0; v < QGPV; v++) ga[v][t] += lo[v] * xb;
                }
                if (j + 1 >= n) break;
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const vf xb = KFN(gsplat)(x[(size_t)t * ldx + k0 + j + 1]);
#pragma GCC unroll 4
                    for (int v = 0; v < QGPV; v++) ga[v][t] += hi[v] * xb;
                }
            }
        }
#pragma GCC unroll 4
        for (int v = 0; v < QGPV; v++) {
            const vf s = KFN(gld)(gp + (size_t)v * VW * 4);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) a[v][t] += ga[v][t] * s;
        }
        gp += wrk_qg_group_bytes(bits, n);
    }
    for (int v = 0; v < QGPV; v++) {
        const int r0 = p * WRK_PANEL + v * VW;
        if (r0 >= o1 || r0 + VW <= o0) continue;
        for (int t = 0; t < T; t++) {
            float *dst = y + (size_t)t * ldy + r0;
            vf r = a[v][t];
            if (r0 >= o0 && r0 + VW <= o1) {
                if (bias) r += KFN(gld)(bias + r0);
                if (acc) r = KFN(gld)(dst) + r;
                memcpy(dst, &r, sizeof r);
                continue;
            }
            for (int l = 0; l < VW; l++) {
                if (r0 + l < o0 || r0 + l >= o1) continue;
                float sv = r[l];
                if (bias) sv += bias[r0 + l];
                dst[l] = acc ? dst[l] + sv : sv;
            }
        }
    }
}

#define QGCASE(n)                                                                                  \
    case n:                                                                                        \
        KFN(qg_panel)(gp, start, h.G, h.bits, x + (size_t)t * ldx, ldx, n, y + (size_t)t * ldy,    \
                      ldy, bias, acc, o0, o1, p);                                                  \
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
    for (int g = 0; g < h.G; g++) pb += wrk_qg_group_bytes(h.bits, start[g + 1] - start[g]);
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    for (int p = p0; p < p1; p++) {
        const unsigned char *gp = base + h.data_off + (size_t)p * pb;
        for (int t = 0; t < T; t += QGT) {
            switch (T - t < QGT ? T - t : QGT) {
#if QGT >= 8
                QGCASE(7) QGCASE(6) QGCASE(5) QGCASE(4)
#endif
#if QGT >= 3
                QGCASE(3) QGCASE(2)
#endif
            default:
                if (T - t >= QGT) {
                    KFN(qg_panel)(gp, start, h.G, h.bits, x + (size_t)t * ldx, ldx, QGT,
                                  y + (size_t)t * ldy, ldy, bias, acc, o0, o1, p);
                } else {
                    KFN(qg_panel)(gp, start, h.G, h.bits, x + (size_t)t * ldx, ldx, 1,
                                  y + (size_t)t * ldy, ldy, bias, acc, o0, o1, p);
                }
                break;
            }
        }
    }
}
#undef QGCASE
