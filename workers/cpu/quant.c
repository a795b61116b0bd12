/* workers/cpu: the load-time quantizer and packer of --weights q8|q4 and the dispatch of the
 * quantized matmul (layout and arithmetic in kernels_q.h). */
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

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

/* Byte offset, in a panel, of weight (lane, k): the layouts of kernels_q.h. */
static size_t q_off(wrk_wq_t qf, int K, int lane, int k, bool *hi)
{
    *hi = false;
    if (qf == WRK_WQ_Q8) {
        (void)K;
        return WRK_PANEL * 4 + (size_t)(k / 4) * 64 + (size_t)lane * 4 + (size_t)(k % 4);
    }
    const size_t gb = WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL; /* one q4 group */
    const int kg = k % WRK_Q4_GROUP, b = kg / 8, i = kg % 8;
    *hi = i >= 4;
    return (size_t)(k / WRK_Q4_GROUP) * gb + WRK_PANEL * 4 + (size_t)b * 64 + (size_t)lane * 4 +
           (size_t)(i % 4);
}

static size_t q_scale_off(wrk_wq_t qf, int lane, int k)
{
    const size_t gb = WRK_PANEL * 4 + WRK_Q4_GROUP / 2 * WRK_PANEL;
    return (qf == WRK_WQ_Q8 ? 0 : (size_t)(k / WRK_Q4_GROUP) * gb) + (size_t)lane * 4;
}

int wrk_pack_q(const wrk_mat_t *W, wrk_wq_t qf, void *dst)
{
    const int K = W->cols, G = (K + WRK_Q4_GROUP - 1) / WRK_Q4_GROUP;
    const size_t pb = wrk_pack_q_panel_bytes(qf, K);
    float *w = malloc((size_t)K * sizeof *w), *s = malloc((size_t)(G + 1) * sizeof *s);
    int8_t *q = malloc((size_t)K);
    if (!w || !s || !q) {
        free(w);
        free(s);
        free(q);
        return RCD_ENOMEM;
    }
    /* q = 0 everywhere first (pads included): u = 128 (q8) or nibbles 8 (q4) */
    const size_t np = (size_t)(W->rows + WRK_PANEL - 1) / WRK_PANEL;
    if (qf == WRK_WQ_Q8) {
        memset(dst, 0x80, np * pb);
        for (size_t p = 0; p < np; p++)
            memset((char *)dst + p * pb, 0, WRK_PANEL * 4);
    } else {
        memset(dst, 0x88, np * pb);
        for (size_t p = 0; p < np; p++)
            for (int g = 0; g < G; g++)
                memset((char *)dst + p * pb + q_scale_off(qf, 0, g * WRK_Q4_GROUP), 0,
                       WRK_PANEL * 4);
    }
    for (int r = 0; r < W->rows; r++) {
        row_f32(W, r, w);
        wrk_quant_row(qf, w, K, q, s);
        unsigned char *panel = (unsigned char *)dst + (size_t)(r / WRK_PANEL) * pb;
        const int lane = r % WRK_PANEL;
        for (int g = 0; g < (qf == WRK_WQ_Q8 ? 1 : G); g++)
            memcpy(panel + q_scale_off(qf, lane, g * WRK_Q4_GROUP), &s[g], 4);
        for (int k = 0; k < K; k++) {
            bool hi;
            unsigned char *b = panel + q_off(qf, K, lane, k, &hi);
            if (qf == WRK_WQ_Q8) {
                *b = (unsigned char)(q[k] + 128);
                continue;
            }
            const unsigned char nib = (unsigned char)(q[k] + 8);
            *b = hi ? (unsigned char)((*b & 0x0f) | nib << 4) : (unsigned char)((*b & 0xf0) | nib);
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
    const unsigned char *panel = (const unsigned char *)pk + (size_t)(r / WRK_PANEL) * pb;
    const int lane = r % WRK_PANEL;
    for (int k = 0; k < cols; k++) {
        float s;
        bool hi;
        memcpy(&s, panel + q_scale_off(qf, lane, k), 4);
        const unsigned char b = panel[q_off(qf, cols, lane, k, &hi)];
        const int q = qf == WRK_WQ_Q8 ? b - 128 : (hi ? b >> 4 : b & 15) - 8;
        out[k] = (float)q * s;
    }
}

static void quant_x_scalar(const float *x, int K, void *dst)
{
    /* the same arithmetic as quant_block (division, round to nearest even, clamp), written to
     * vectorize: rint by adding and subtracting 1.5 * 2^23 (exact for |v| <= 2^22, and |v| <=
     * 127 here), no libm call per element */
    const int G = (K + 31) / 32;
    int8_t *xq = dst;
    unsigned char *sxp = (unsigned char *)dst + (size_t)G * 32, *sump = sxp + (size_t)G * 4;
    for (int g = 0; g < G; g++) {
        const int k0 = g * 32, kn = K - k0 < 32 ? K - k0 : 32;
        float v[32], amax = 0.f;
        for (int i = 0; i < 32; i++) {
            v[i] = i < kn ? x[k0 + i] : 0.f;
            const float a = fabsf(v[i]);
            amax = a > amax ? a : amax; /* NaN compares false: skipped */
        }
        const float s = amax / 127.f;
        int32_t S = 0;
        for (int i = 0; i < 32; i++) {
            float q = s > 0.f ? v[i] / s : 0.f;
            q = q >= -127.f ? q : -127.f; /* also NaN */
            q = q <= 127.f ? q : 127.f;
            q = (q + 12582912.f) - 12582912.f;
            xq[k0 + i] = (int8_t)q;
            S += (int8_t)q;
        }
        memcpy(sxp + (size_t)g * 4, &s, 4);
        memcpy(sump + (size_t)g * 4, &S, 4);
    }
}

wrk_quant_x_fn wrk__quant_x_portable(void)
{
    return quant_x_scalar;
}

void wrk_quant_x(const float *x, int K, void *dst)
{
    static _Atomic int avx512 = -1; /* the CPU runs the AVX-512 one: probed once */
    int v = atomic_load_explicit(&avx512, memory_order_relaxed);
    if (v < 0) {
        v = 0;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
            wrk__quant_x_avx512();
#endif
        atomic_store_explicit(&avx512, v, memory_order_relaxed);
    }
    (v ? wrk__quant_x_avx512() : quant_x_scalar)(x, K, dst);
}

static bool cpu_has_vnni(bool zmm)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (zmm) return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 11)); /* AVX512_VNNI */
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));          /* AVX_VNNI */
#else
    (void)zmm;
    return false;
#endif
}

/* AMX-INT8 unless RCD_MATMUL_NO_AMX is set (non-empty, not "0"): read once. */
static bool amx_allowed(void)
{
    static _Atomic int ok = -1;
    int v = atomic_load_explicit(&ok, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("RCD_MATMUL_NO_AMX");
        v = !(e && *e && strcmp(e, "0") != 0);
        atomic_store_explicit(&ok, v, memory_order_relaxed);
    }
    return v;
}

/* The quantized matmul for kernel table k's ISA: AMX-INT8 (many tokens; fewer run its AVX-512
 * VNNI fallback), else AVX-512 VNNI, else AVX-VNNI, else AVX2, else portable (same results on
 * all of them, kernels_q.h). */
static wrk_qmm_fn qmm_for(const wrk_kern_t *k)
{
    static _Atomic int have[2] = {-1, -1}; /* AVX512_VNNI, AVX_VNNI */
    for (int i = 0; i < 2; i++)
        if (atomic_load_explicit(&have[i], memory_order_relaxed) < 0)
            atomic_store_explicit(&have[i], cpu_has_vnni(i == 0), memory_order_relaxed);
    wrk_qmm_fn f = NULL;
    const bool avx512 = strncmp(k->isa, "avx512", 6) == 0;
    if (avx512 && atomic_load_explicit(&have[0], memory_order_relaxed) && amx_allowed())
        f = wrk__qmm_amx(NULL);
    if (!f && avx512 && atomic_load_explicit(&have[0], memory_order_relaxed)) f = wrk__qmm_avx512();
    if (!f && (avx512 || strcmp(k->isa, "avx2") == 0)) {
        if (atomic_load_explicit(&have[1], memory_order_relaxed)) f = wrk__qmm_avxvnni();
        if (!f) f = wrk__qmm_avx2();
    }
    return f ? f : wrk__qmm_portable();
}

void wrk_qmm(const wrk_kern_t *k, const wrk_mat_t *W, int o0, int o1, const float *x, int ldx,
             int T, float *y, int ldy, const float *bias, bool acc, float *scratch)
{
    if (o1 <= o0 || T <= 0) return;
    wrk_qmm_with(qmm_for(k), W, o0, o1, x, ldx, T, y, ldy, bias, acc, scratch);
}

void wrk_qmm_with(wrk_qmm_fn f, const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T,
                  float *y, int ldy, const float *bias, bool acc, float *scratch)
{
    if (o1 <= o0 || T <= 0) return;
    const size_t rb = WRK_QX_BYTES(W->cols);
    /* tokens per block: what scratch (WRK_GEMM_BLOCK_ROWS x cols floats) holds; every token is
     * quantized on its own, so the blocking changes nothing */
    unsigned char *buf = (unsigned char *)scratch;
    const size_t cap = (size_t)WRK_GEMM_BLOCK_ROWS * (size_t)W->cols * sizeof(float);
    const int tb = (int)(cap / rb < (size_t)T ? cap / rb : (size_t)T);
    for (int t0 = 0; t0 < T; t0 += tb) {
        const int n = T - t0 < tb ? T - t0 : tb;
        for (int t = 0; t < n; t++)
            wrk_quant_x(x + (size_t)(t0 + t) * ldx, W->cols, buf + (size_t)t * rb);
        f(W, o0, o1, buf, n, y + (size_t)t0 * ldy, ldy, bias, acc);
    }
}
