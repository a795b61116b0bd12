/* workers/cpu: the quantized matmul in plain C (kernels_q.h): the same integer sums d per
 * group, and the same epilogue with fmaf, so it equals the vector kernels bit for bit. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "workers/cpu/kernels_q.h"

static void qportable_qmm(const wrk_mat_t *W, int o0, int o1, const void *xqv, int T, float *y,
                          int ldy, const float *bias, bool acc)
{
    const int K = W->cols, G = (K + 31) / 32;
    const size_t rb = WRK_QX_BYTES(K), pb = wrk_pack_q_panel_bytes(W->qf, K);
    const size_t gb = WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL;
    const bool q8 = W->qf == WRK_WQ_Q8;
    for (int r = o0; r < o1; r++) {
        const unsigned char *panel = (const unsigned char *)W->pk + (size_t)(r / WRK_PANEL) * pb;
        const int lane = r % WRK_PANEL;
        for (int t = 0; t < T; t++) {
            const unsigned char *xr = (const unsigned char *)xqv + (size_t)t * rb;
            const int8_t *xq = (const int8_t *)xr;
            float a = 0.f;
            for (int g = 0; g < G; g++) {
                int32_t d = 0;
                float sw, sx;
                if (q8) {
                    for (int k = 32 * g; k < 32 * g + 32; k++)
                        d += (panel[WRK_PANEL * 4 + (size_t)(k / 4) * 64 + (size_t)lane * 4 +
                                    (size_t)(k % 4)] -
                              128) *
                             xq[k];
                    memcpy(&sw, panel + (size_t)lane * 4, 4);
                } else {
                    const unsigned char *gp = panel + (size_t)g * gb;
                    for (int b = 0; b < 4; b++)
                        for (int i = 0; i < 4; i++) {
                            const unsigned char u =
                                gp[WRK_PANEL * 4 + (size_t)b * 64 + (size_t)lane * 4 + (size_t)i];
                            const int k = 32 * g + 8 * b + i;
                            d += ((u & 15) - 8) * xq[k] + ((u >> 4) - 8) * xq[k + 4];
                        }
                    memcpy(&sw, gp + (size_t)lane * 4, 4);
                }
                memcpy(&sx, xr + (size_t)G * 32 + (size_t)g * 4, 4);
                const float ws = sw * sx;
                a = fmaf((float)d, ws, a);
            }
            float *dst = y + (size_t)t * ldy + r;
            if (bias) a += bias[r];
            *dst = acc ? *dst + a : a;
        }
    }
}

wrk_qmm_fn wrk__qmm_portable(void)
{
    return qportable_qmm;
}
