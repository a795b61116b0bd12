/* workers/cpu: the load-time quantizer and packer of --weights q8|q4 and the dispatch of the
 * quantized matmul (layout and arithmetic in kernels_q.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/cpu/kernels_q.h"
#include "workers/model/safetensors.h"

int wrk_wq_parse(const char *s)
{
    if (!s || !*s || strcmp(s, "native") == 0) return WRK_WQ_NATIVE;
    if (strcmp(s, "q8") == 0) return WRK_WQ_Q8;
    if (strcmp(s, "q4") == 0) return WRK_WQ_Q4;
    return -1;
}

const char *wrk_wq_name(wrk_wq_t qf)
{
    return qf == WRK_WQ_Q8 ? "q8" : qf == WRK_WQ_Q4 ? "q4" : "native";
}

/* One block: s = amax / qmax, q = rint(w / s) clamped to [qmin, qmax]. */
static void quant_block(const float *w, int n, float qmax, int qmin, int8_t *q, float *s)
{
    float amax = 0.f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(w[i]);
        if (a > amax) amax = a; /* NaN compares false: skipped */
    }
    const float sc = amax / qmax;
    *s = sc;
    for (int i = 0; i < n; i++) {
        float v = sc > 0.f ? nearbyintf(w[i] / sc) : 0.f;
        if (!(v >= (float)qmin)) v = (float)qmin; /* also NaN */
        if (v > qmax) v = qmax;
        q[i] = (int8_t)v;
    }
}

void wrk_quant_row(wrk_wq_t qf, const float *w, int n, int8_t *q, float *s)
{
    if (qf == WRK_WQ_Q8) {
        quant_block(w, n, 127.f, -127, q, s);
        return;
    }
    for (int g = 0; g * WRK_Q4_GROUP < n; g++) {
        const int k0 = g * WRK_Q4_GROUP, kn = n - k0 < WRK_Q4_GROUP ? n - k0 : WRK_Q4_GROUP;
        quant_block(w + k0, kn, 7.f, -8, q + k0, s + g);
    }
}

static void row_f32(const wrk_mat_t *W, int r, float *out)
{
    const int K = W->cols;
    const size_t esz = wrk_dtype_size(W->dt);
    const unsigned char *src = (const unsigned char *)W->data + (size_t)r * K * esz;
    for (int k = 0; k < K; k++) {
        uint16_t h;
        switch (W->dt) {
        case WRK_DT_BF16:
            memcpy(&h, src + 2 * (size_t)k, 2);
            out[k] = wrk_bf16_to_f32(h);
            break;
        case WRK_DT_F16:
            memcpy(&h, src + 2 * (size_t)k, 2);
            out[k] = wrk_f16_to_f32(h);
            break;
        default:
            memcpy(&out[k], src + 4 * (size_t)k, 4);
            break;
        }
    }
}

int wrk_pack_q(const wrk_mat_t *W, wrk_wq_t qf, void *dst)
{
    const int K = W->cols, G = (K + WRK_Q4_GROUP - 1) / WRK_Q4_GROUP;
    const size_t pb = wrk_pack_q_panel_bytes(qf, K);
    const size_t gb = WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL; /* one q4 group */
    float *w = malloc((size_t)K * sizeof *w), *s = malloc((size_t)(G + 1) * sizeof *s);
    int8_t *q = malloc((size_t)K);
    if (!w || !s || !q) {
        free(w);
        free(s);
        free(q);
        return RCD_ENOMEM;
    }
    memset(dst, 0, wrk_pack_q_bytes(qf, W->rows, K));
    if (qf == WRK_WQ_Q4) /* zero pads are q = 0, stored as 8 */
        for (int p = 0; p < (W->rows + WRK_PANEL - 1) / WRK_PANEL; p++)
            for (int g = 0; g < G; g++)
                memset((char *)dst + (size_t)p * pb + (size_t)g * gb + WRK_PANEL * 4, 0x88,
                       WRK_Q4_GROUP / 2 * WRK_PANEL);
    for (int r = 0; r < W->rows; r++) {
        row_f32(W, r, w);
        wrk_quant_row(qf, w, K, q, s);
        unsigned char *panel = (unsigned char *)dst + (size_t)(r / WRK_PANEL) * pb;
        const int lane = r % WRK_PANEL;
        if (qf == WRK_WQ_Q8) {
            memcpy(panel + (size_t)lane * 4, &s[0], 4);
            for (int k = 0; k < K; k++)
                panel[WRK_PANEL * 4 + (size_t)k * WRK_PANEL + lane] = (unsigned char)q[k];
            continue;
        }
        for (int g = 0; g < G; g++) {
            unsigned char *gp = panel + (size_t)g * gb;
            memcpy(gp + (size_t)lane * 4, &s[g], 4);
            for (int k = g * WRK_Q4_GROUP; k < K && k < (g + 1) * WRK_Q4_GROUP; k++) {
                unsigned char *b =
                    gp + WRK_PANEL * 4 + (size_t)((k % WRK_Q4_GROUP) / 2) * WRK_PANEL + lane;
                const unsigned char nib = (unsigned char)(q[k] + 8);
                *b = (k & 1) ? (unsigned char)((*b & 0x0f) | nib << 4)
                             : (unsigned char)((*b & 0xf0) | nib);
            }
        }
    }
    free(w);
    free(s);
    free(q);
    return 0;
}

void wrk_dequant_row(const void *pk, wrk_wq_t qf, int cols, int r, float *out)
{
    const size_t pb = wrk_pack_q_panel_bytes(qf, cols);
    const size_t gb = WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL;
    const unsigned char *panel = (const unsigned char *)pk + (size_t)(r / WRK_PANEL) * pb;
    const int lane = r % WRK_PANEL;
    float s;
    if (qf == WRK_WQ_Q8) {
        memcpy(&s, panel + (size_t)lane * 4, 4);
        for (int k = 0; k < cols; k++)
            out[k] = (float)(int8_t)panel[WRK_PANEL * 4 + (size_t)k * WRK_PANEL + lane] * s;
        return;
    }
    for (int k = 0; k < cols; k++) {
        const unsigned char *gp = panel + (size_t)(k / WRK_Q4_GROUP) * gb;
        memcpy(&s, gp + (size_t)lane * 4, 4);
        const unsigned char b =
            gp[WRK_PANEL * 4 + (size_t)((k % WRK_Q4_GROUP) / 2) * WRK_PANEL + lane];
        out[k] = (float)(((k & 1) ? b >> 4 : b & 15) - 8) * s;
    }
}

void wrk_qmm(const wrk_kern_t *k, const wrk_mat_t *W, int o0, int o1, const float *x, int ldx,
             int T, float *y, int ldy, const float *bias, bool acc)
{
    wrk_qmm_fn f = NULL;
    if (strncmp(k->isa, "avx512", 6) == 0)
        f = wrk__qmm_avx512();
    else if (strcmp(k->isa, "avx2") == 0)
        f = wrk__qmm_avx2();
    if (!f) f = wrk__qmm_portable();
    f(W, o0, o1, x, ldx, T, y, ldy, bias, acc);
}
