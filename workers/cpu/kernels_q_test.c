/* Quantized weights (--weights q8|q4, kernels_q.h): the C quantizer against the Python
 * reference (tools/quant_ref.py's fixture, bit for bit), the per-token activation quantizer,
 * the int8 matmul against its definition (kernels_q.h) bit for bit on every kernel this CPU
 * runs (portable, AVX2, AVX-VNNI, AVX-512 VNNI, AMX-INT8: so all equal) and within the activation
 * quantization's bound of a double product, batch invariance (a token's row is bit-identical
 * whatever T and rows range), and the option's refusals. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "common/rcd_error.h"
#include "common/rcd_path.h"
#include "tests/support/golden_util.h"
#include "tests/support/rcd_test.h"
#include "workers/cpu/kernels.h"
#include "workers/cpu/kernels_q.h"

static const char *isas[] = {"portable", "avx2", "avx512"};

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* tests/golden/quant/quant_fixture.bin: W and its q8, q4 dequantized by tools/quant_ref.py. */
static void test_matches_python_reference(void)
{
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof path, "%s/quant/quant_fixture.bin", golden_root()) == 0);
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f, "cannot open %s", path);
    if (!f) return;
    char magic[4];
    int32_t dims[2];
    CHECK(fread(magic, 1, 4, f) == 4 && memcmp(magic, "RQF1", 4) == 0);
    CHECK(fread(dims, 4, 2, f) == 2);
    const int R = dims[0], K = dims[1];
    CHECK(R > 0 && R < 4096 && K > 0 && K < 4096);
    const size_t n = (size_t)R * K;
    float *w = malloc(n * 4), *ref[2] = {malloc(n * 4), malloc(n * 4)},
          *row = malloc((size_t)K * 4);
    CHECK(fread(w, 4, n, f) == n && fread(ref[0], 4, n, f) == n && fread(ref[1], 4, n, f) == n);
    fclose(f);
    const wrk_wq_t fmts[2] = {WRK_WQ_Q8, WRK_WQ_Q4};
    for (int fi = 0; fi < 2; fi++) {
        const wrk_mat_t W = {.dt = WRK_DT_F32, .data = w, .rows = R, .cols = K};
        void *pk = aligned_alloc(64, (wrk_pack_q_bytes(fmts[fi], R, K) + 63) / 64 * 64);
        CHECK(wrk_pack_q(&W, fmts[fi], pk) == 0);
        int bad = 0;
        for (int r = 0; r < R; r++) {
            wrk_dequant_row(pk, fmts[fi], K, r, row);
            if (memcmp(row, ref[fi] + (size_t)r * K, (size_t)K * 4) != 0 && bad++ == 0)
                for (int k = 0; k < K; k++)
                    if (memcmp(&row[k], &ref[fi][(size_t)r * K + k], 4) != 0) {
                        fprintf(stderr, "  %s row %d col %d: C %.9g, python %.9g\n",
                                wrk_wq_name(fmts[fi]), r, k, row[k], ref[fi][(size_t)r * K + k]);
                        break;
                    }
        }
        CHECK_MSG(bad == 0, "%s: %d rows differ from tools/quant_ref.py", wrk_wq_name(fmts[fi]),
                  bad);
        free(pk);
    }
    free(w);
    free(ref[0]);
    free(ref[1]);
    free(row);
}

/* Round trip bounds: |w - dq| <= s / 2 per element (s the block's scale). */
static void test_quant_error_bound(void)
{
    unsigned seed = 7;
    enum { K = 200 };
    float w[K];
    int8_t q[K];
    float s[(K + 31) / 32];
    for (int k = 0; k < K; k++)
        w[k] = frand(&seed) * 3.f;
    wrk_quant_row(WRK_WQ_Q8, w, K, q, s);
    for (int k = 0; k < K; k++)
        CHECK(fabsf(w[k] - q[k] * s[0]) <= s[0] * 0.5f * 1.0001f);
    wrk_quant_row(WRK_WQ_Q4, w, K, q, s);
    for (int k = 0; k < K; k++) {
        CHECK(q[k] >= -8 && q[k] <= 7);
        CHECK(fabsf(w[k] - q[k] * s[k / 32]) <= s[k / 32] * 0.5f * 1.0001f);
    }
}

/* The activation quantizer (kernels_q.h): per 32-group |x - xq sx| <= sx / 2, xq in
 * [-127, 127], the group's max at +-127, S = sum xq, pads 0, an all-zero group 0. */
static void test_quant_x(void)
{
    unsigned seed = 11;
    enum { K = 83 };
    float x[K];
    for (int k = 0; k < K; k++)
        x[k] = frand(&seed) * (k < 32 ? 0.01f : 5.f);
    for (int k = 32; k < 64; k++)
        x[k] = 0.f;
    unsigned char rec[WRK_QX_BYTES(K)];
    CHECK(sizeof rec == 3 * 40);
    wrk_quant_x(x, K, rec);
    const int8_t *xq = (const int8_t *)rec;
    for (int g = 0; g < 3; g++) {
        float sx;
        int32_t S, sum = 0, qmax = 0;
        memcpy(&sx, rec + 96 + 4 * g, 4);
        memcpy(&S, rec + 108 + 4 * g, 4);
        for (int k = 32 * g; k < 32 * g + 32; k++) {
            CHECK(xq[k] >= -127 && xq[k] <= 127);
            if (k >= K) CHECK(xq[k] == 0);
            if (k < K) CHECK(fabsf(x[k] - xq[k] * sx) <= sx * 0.5f * 1.0001f);
            sum += xq[k];
            if (abs(xq[k]) > qmax) qmax = abs(xq[k]);
        }
        CHECK_MSG(S == sum, "group %d: S %d, sum %d", g, S, sum);
        CHECK(g == 1 ? sx == 0.f && qmax == 0 : sx > 0.f && qmax == 127);
    }
}

/* The AVX-512 activation quantizer writes the scalar one's bytes: ragged K, NaN, +-inf,
 * all-zero and subnormal groups, values at the rounding ties. */
static void test_quant_x_isas(void)
{
    const wrk_quant_x_fn ref = wrk__quant_x_portable();
    bool avx512 = false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
    static const int Ks[] = {1, 5, 16, 17, 31, 32, 33, 83, 200, 1000};
    unsigned seed = 5;
    for (int ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++) {
        const int K = Ks[ki];
        float *x = malloc((size_t)K * 4);
        unsigned char *a = malloc(WRK_QX_BYTES(K)), *b = malloc(WRK_QX_BYTES(K));
        for (int rep = 0; rep < 8; rep++) {
            for (int k = 0; k < K; k++) {
                x[k] = frand(&seed) * (rep == 1 ? 1e-40f : rep == 2 ? 3e38f : 2.f);
                if (rep == 3 && k % 7 == 3) x[k] = NAN;
                if (rep == 4 && k % 11 == 5) x[k] = k % 2 ? INFINITY : -INFINITY;
                if (rep == 5 && k / 32 % 2 == 0) x[k] = 0.f;
                if (rep == 6) x[k] = (float)((int)(frand(&seed) * 254.f)) * 0.5f; /* ties */
                if (rep == 7 && k % 3 == 0) x[k] = -0.f;
            }
            memset(a, 0xa5, WRK_QX_BYTES(K));
            memset(b, 0x5a, WRK_QX_BYTES(K));
            ref(x, K, a);
            wrk_quant_x(x, K, b);
            CHECK_MSG(memcmp(a, b, WRK_QX_BYTES(K)) == 0, "wrk_quant_x != scalar, K %d rep %d", K,
                      rep);
            if (avx512) {
                memset(b, 0x5a, WRK_QX_BYTES(K));
                wrk__quant_x_avx512()(x, K, b);
                CHECK_MSG(memcmp(a, b, WRK_QX_BYTES(K)) == 0, "avx512 != scalar, K %d rep %d", K,
                          rep);
            }
        }
        free(x);
        free(a);
        free(b);
    }
}

/* CPUID leaf 7 directly, as quant.c does: clang 14 (the fuzz build) knows no "avxvnni" for
 * __builtin_cpu_supports. */
#if defined(__x86_64__) || defined(__i386__)
static bool cpuid7(unsigned sub, int reg, int bit)
{
    unsigned r[4];
    return __get_cpuid_count(7, sub, &r[0], &r[1], &r[2], &r[3]) && (r[reg] & (1u << bit));
}
#endif

static bool cpu_runs(int v)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (v == 1) return avx2;
    if (v == 2) return avx2 && cpuid7(1, 0, 4); /* AVX_VNNI: leaf 7.1 EAX bit 4 */
    if (v == 3)                                 /* AVX512_VNNI: leaf 7.0 ECX bit 11 */
        return __builtin_cpu_supports("avx512bw") && cpuid7(0, 2, 11);
#endif
    if (v == 4) return true; /* AMX-INT8: wrk__qmm_amx is NULL where it cannot run */
    return v == 0;
}

/* y = x W^T: the reference is kernels_q.h's definition written out here (the quantizer's
 * q and s, wrk_quant_x's records, int sums and fmaf); every kernel (portable, AVX2, AVX-VNNI,
 * AVX-512 VNNI, AMX-INT8 (16-token tiles from T = 16; 40 = two tiles and 8 on VNNI) directly, and
 * every ISA's table through wrk_matmul) equals it bit for bit, every T's rows equal T = 1's, row
 * ranges off panel edges with bias and acc. The reference is within the activation quantization's
 * bound of the double product over dequantized weights: sum_k |dq| sx_g / 2. */
static void check_shape(wrk_wq_t qf, int R, int K, const int *Ts, int nT)
{
    float *scr = malloc((size_t)WRK_GEMM_BLOCK_ROWS * (size_t)K * sizeof(float));
    unsigned seed = (unsigned)(R * 131 + K);
    const int G = (K + 31) / 32;
    const size_t rb = WRK_QX_BYTES(K);
    float *w = malloc((size_t)R * K * 4), *dq = malloc((size_t)R * K * 4);
    const int TM = 40;
    float *x = malloc((size_t)TM * K * 4), *bias = malloc((size_t)R * 4);
    float *y = malloc((size_t)TM * R * 4), *y1 = malloc((size_t)TM * R * 4);
    float *want = malloc((size_t)TM * R * 4), *s = malloc((size_t)G * 4);
    int8_t *q = malloc((size_t)K);
    unsigned char *rec = malloc((size_t)TM * rb);
    for (size_t i = 0; i < (size_t)R * K; i++)
        w[i] = frand(&seed) * 0.1f;
    for (size_t i = 0; i < (size_t)TM * K; i++)
        x[i] = frand(&seed) * (i % 7 == 0 ? 4.f : 1.f);
    for (int i = 0; i < R; i++)
        bias[i] = frand(&seed);
    const wrk_mat_t W0 = {.dt = WRK_DT_F32, .data = w, .rows = R, .cols = K};
    void *pk = aligned_alloc(64, (wrk_pack_q_bytes(qf, R, K) + 63) / 64 * 64);
    CHECK(wrk_pack_q(&W0, qf, pk) == 0);
    for (int r = 0; r < R; r++)
        wrk_dequant_row(pk, qf, K, r, dq + (size_t)r * K);
    for (int t = 0; t < TM; t++)
        wrk_quant_x(x + (size_t)t * K, K, rec + (size_t)t * rb);
    for (int o = 0; o < R; o++) {
        wrk_quant_row(qf, w + (size_t)o * K, K, q, s);
        for (int t = 0; t < TM; t++) {
            const int8_t *xq = (const int8_t *)(rec + (size_t)t * rb);
            float a = 0.f;
            double ref = bias[o], qbound = 1e-5 * fabs(bias[o]) + 1e-6;
            for (int g = 0; g < G; g++) {
                int32_t d = 0;
                float sx;
                memcpy(&sx, rec + (size_t)t * rb + (size_t)G * 32 + 4 * (size_t)g, 4);
                for (int k = 32 * g; k < K && k < 32 * g + 32; k++) {
                    d += q[k] * xq[k];
                    ref += (double)dq[(size_t)o * K + k] * x[(size_t)t * K + k];
                    qbound += fabs((double)dq[(size_t)o * K + k]) * sx * 0.5;
                }
                const float ws = s[qf == WRK_WQ_Q8 ? 0 : g] * sx;
                a = fmaf((float)d, ws, a);
            }
            a += bias[o];
            want[(size_t)t * R + o] = a;
            CHECK_MSG(fabs(a - ref) <= qbound * 1.01 + 1e-5 * fabs(ref),
                      "%s %dx%d t%d o%d: %g vs double %g (bound %g)", wrk_wq_name(qf), R, K, t, o,
                      a, ref, qbound);
        }
    }
    wrk_mat_t W = W0;
    W.pk = pk;
    W.qf = qf;
    static const char *vnames[] = {"portable", "avx2", "avxvnni", "avx512vnni", "amx-int8"};
    const wrk_qmm_fn vfn[] = {wrk__qmm_portable(), wrk__qmm_avx2(), wrk__qmm_avxvnni(),
                              wrk__qmm_avx512(), wrk__qmm_amx(NULL)};
    for (int v = 0; v < 5; v++) {
        if (!vfn[v] || !cpu_runs(v)) continue;
        memset(y, 0, (size_t)TM * R * 4);
        vfn[v](&W, 0, R, rec, TM, y, R, bias, false);
        CHECK_MSG(memcmp(y, want, (size_t)TM * R * 4) == 0,
                  "%s %s %dx%d differs from the reference", vnames[v], wrk_wq_name(qf), R, K);
    }
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = wrk_kern_select(isas[ii]);
        if (!k) continue;
        for (int t = 0; t < TM; t++)
            wrk_matmul(k, scr, &W, 0, R, x + (size_t)t * K, K, 1, y1 + (size_t)t * R, R, bias,
                       false);
        CHECK_MSG(memcmp(y1, want, (size_t)TM * R * 4) == 0, "%s %s %dx%d T=1 differs", isas[ii],
                  wrk_wq_name(qf), R, K);
        for (int ti = 0; ti < nT; ti++) {
            const int T = Ts[ti];
            memset(y, 0, (size_t)TM * R * 4);
            wrk_matmul(k, scr, &W, 0, R, x, K, T, y, R, bias, false);
            CHECK_MSG(memcmp(y, y1, (size_t)T * R * 4) == 0, "%s %s %dx%d: T=%d differs from T=1",
                      isas[ii], wrk_wq_name(qf), R, K, T);
            /* a row range off the panel edges, accumulating onto y */
            const int o0 = R > 20 ? 5 : 0, o1 = R > 20 ? R - 3 : R;
            for (size_t i = 0; i < (size_t)T * R; i++)
                y[i] = 1.0f;
            wrk_matmul(k, scr, &W, o0, o1, x, K, T, y, R, bias, true);
            for (int t = 0; t < T; t++)
                for (int o = 0; o < R; o++) {
                    const float wv = o >= o0 && o < o1 ? 1.0f + y1[(size_t)t * R + o] : 1.0f;
                    CHECK_MSG(y[(size_t)t * R + o] == wv, "%s %s acc T=%d o=%d", isas[ii],
                              wrk_wq_name(qf), T, o);
                }
        }
    }
    free(pk);
    free(w);
    free(dq);
    free(x);
    free(bias);
    free(y);
    free(y1);
    free(want);
    free(s);
    free(q);
    free(rec);
    free(scr);
}

/* T past what the scratch buffer (the backend's: WRK_GEMM_BLOCK_ROWS x cols floats) holds at
 * once is cut into blocks: the same rows as one token at a time. */
static void test_qmm_scratch(void)
{
    enum { R = 24, K = 5, TM = 1200 };
    unsigned seed = 3;
    float w[R * K], *x = malloc((size_t)TM * K * 4), *y = malloc((size_t)TM * R * 4),
                    *y2 = malloc((size_t)TM * R * 4);
    float *scratch = malloc((size_t)WRK_GEMM_BLOCK_ROWS * K * 4);
    for (int i = 0; i < R * K; i++)
        w[i] = frand(&seed);
    for (int i = 0; i < TM * K; i++)
        x[i] = frand(&seed);
    for (int f = 0; f < 2; f++) {
        const wrk_wq_t qf = f ? WRK_WQ_Q4 : WRK_WQ_Q8;
        wrk_mat_t W = {.dt = WRK_DT_F32, .data = w, .rows = R, .cols = K, .qf = qf};
        void *pk = aligned_alloc(64, (wrk_pack_q_bytes(qf, R, K) + 63) / 64 * 64);
        CHECK(wrk_pack_q(&W, qf, pk) == 0);
        W.pk = pk;
        const wrk_kern_t *k = wrk_kern_select("auto");
        wrk_matmul(k, scratch, &W, 0, R, x, K, TM, y, R, NULL, false);
        for (int t = 0; t < TM; t++)
            wrk_matmul(k, scratch, &W, 0, R, x + (size_t)t * K, K, 1, y2 + (size_t)t * R, R, NULL,
                       false);
        CHECK_MSG(memcmp(y, y2, (size_t)TM * R * 4) == 0, "%s: blocked T differs", wrk_wq_name(qf));
        free(pk);
    }
    free(x);
    free(y);
    free(y2);
    free(scratch);
}

static void test_qmm(void)
{
    static const int Ts[] = {2, 3, 5, 6, 7, 13, 15, 16, 17, 32, 37, 40};
    enum { NT = sizeof Ts / sizeof Ts[0] };
    static const int shapes[][2] = {{16, 32},  {37, 83},  {64, 130}, {48, 33},  {5, 7},
                                    {200, 96}, {40, 256}, {35, 200}, {20, 3100}};
    for (int s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
        check_shape(WRK_WQ_Q8, shapes[s][0], shapes[s][1], Ts, NT);
        check_shape(WRK_WQ_Q4, shapes[s][0], shapes[s][1], Ts, NT);
    }
    const char *why = "";
    if (!wrk__qmm_amx(&why)) fprintf(stderr, "  (AMX-INT8 kernel not tested here: %s)\n", why);
}

static void test_parse(void)
{
    CHECK(wrk_wq_parse(NULL) == WRK_WQ_NATIVE && wrk_wq_parse("native") == WRK_WQ_NATIVE);
    CHECK(wrk_wq_parse("q8") == WRK_WQ_Q8 && wrk_wq_parse("q4") == WRK_WQ_Q4);
    CHECK(wrk_wq_parse("q3") == -1 && wrk_wq_parse("Q8") == -1);
    wrk_backend_opts_t o = {.weights = "int4"}, r;
    char err[256] = "";
    CHECK(wrk_backend_opts_resolve(&o, &r, err, sizeof err) == RCD_EINVAL);
    CHECK_MSG(strstr(err, "weights must be native, q8 or q4"), "%s", err);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_matches_python_reference);
    RUN(test_quant_error_bound);
    RUN(test_quant_x);
    RUN(test_quant_x_isas);
    RUN(test_qmm);
    RUN(test_qmm_scratch);
    RUN(test_parse);
    return rcd_test_summary();
}
