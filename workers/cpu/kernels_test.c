/* CPU kernels against plain scalar references, for every ISA this CPU runs: exp and
 * softplus accuracy, GEMV/GEMM for every weight dtype and token count, conv window updates,
 * the scan, Mamba2's SSD recurrence, and the thread pool's barrier. */
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/rcd_test.h"
#include "workers/cpu/kernels.h"
#include "workers/cpu/pool.h"

static const char *isas[] = {"portable", "avx2", "avx512"};

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void test_exp_softplus(void)
{
    enum { N = 4099 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++)
        x[i] = -100.f + 200.f * i / (N - 1); /* spans under/overflow */
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = wrk_kern_select(isas[ii]);
        if (!k) continue;
        k->vexp(y, x, N);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double ref = exp((double)x[i]);
            if (ref > FLT_MAX) {
                CHECK(isinf(y[i]));
                continue;
            }
            if (ref < 1e-37) {
                CHECK(y[i] >= 0.f && y[i] < 1e-37f);
                continue;
            }
            double rel = fabs(y[i] - ref) / ref;
            if (rel > worst) worst = rel;
        }
        CHECK_MSG(worst < 4e-7, "%s exp rel err %g", isas[ii], worst);
        k->vsoftplus(y, x, N);
        worst = 0;
        for (int i = 0; i < N; i++) {
            double ref = x[i] > 20 ? x[i] : log1p(exp((double)x[i]));
            /* below 1e-30 (the underflow region) an absolute error is what matters */
            double rel = ref > 1e-30 ? fabs(y[i] - ref) / ref : fabs(y[i] - ref) * 1e23;
            if (rel > worst) worst = rel;
        }
        CHECK_MSG(worst < 4e-7, "%s softplus rel err %g", isas[ii], worst);
    }
    free(x);
    free(y);
}

static void fill_weights(void *w, wrk_dtype_t dt, const float *ref, size_t n)
{
    /* memcpy: the buffer is deliberately unaligned */
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        if (dt == WRK_DT_F32) {
            memcpy((char *)w + 4 * i, &ref[i], 4);
            continue;
        }
        h = dt == WRK_DT_BF16 ? wrk_f32_to_bf16(ref[i]) : wrk_f32_to_f16(ref[i]);
        memcpy((char *)w + 2 * i, &h, 2);
    }
}

static float weight_value(const void *w, wrk_dtype_t dt, size_t i)
{
    float f;
    uint16_t h;
    if (dt == WRK_DT_F32) {
        memcpy(&f, (const char *)w + 4 * i, 4);
        return f;
    }
    memcpy(&h, (const char *)w + 2 * i, 2);
    return dt == WRK_DT_BF16 ? wrk_bf16_to_f32(h) : wrk_f16_to_f32(h);
}

/* The kernels of an ISA, or NULL (saying so) where this CPU lacks its instructions. */
static const wrk_kern_t *kern_or_skip(const char *isa)
{
    const wrk_kern_t *k = wrk_kern_select(isa);
    if (!k) fprintf(stderr, "  skip: %s kernels (this CPU lacks the instructions)\n", isa);
    return k;
}

/* An O x K matrix of random weights of dtype dt, packed (kernels.h); free P->pk and *wbuf. */
static wrk_mat_t packed_random(wrk_dtype_t dt, int O, int K, unsigned *seed, char **wbuf)
{
    float *ref = malloc((size_t)O * K * sizeof(float));
    *wbuf = malloc((size_t)O * K * 4);
    for (int i = 0; i < O * K; i++)
        ref[i] = frand(seed);
    fill_weights(*wbuf, dt, ref, (size_t)O * K);
    free(ref);
    wrk_mat_t P = {.dt = dt, .data = *wbuf, .rows = O, .cols = K};
    void *pk = aligned_alloc(64, (wrk_pack_bytes(&P) + 63) / 64 * 64);
    wrk_pack(&P, pk);
    P.pk = pk;
    return P;
}

/* Every dtype, token counts on every side of the kernels' register tiles (5 and 12 tokens),
 * odd shapes, bias and accumulate, unaligned weight rows: wrk_matmul, the row-major `mm`, and
 * `mm` over the packed layout (split at and inside a panel), each against a double-precision
 * reference; the packed result of every token also bit-identical to a T = 1 call. */
static void test_matmul(void)
{
    static const int shapes[][2] = {{37, 29}, {64, 48}, {130, 257}, {16, 8}, {5, 3}, {33, 1}};
    static const int Ts[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 25, 33};
    unsigned seed = 7;
    float *scratch = malloc(wrk_mm_scratch_floats(300) * sizeof(float));
    float *packed_one = malloc(40 * 300 * sizeof(float));
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = kern_or_skip(isas[ii]);
        if (!k) continue;
        for (int dt = 0; dt < 3; dt++)
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
                const int O = shapes[si][0], K = shapes[si][1];
                float *ref = malloc((size_t)O * K * sizeof(float));
                char *wbuf = malloc((size_t)O * K * 4 + 2);
                void *w = wbuf + 2; /* unaligned on purpose */
                for (int i = 0; i < O * K; i++)
                    ref[i] = frand(&seed);
                fill_weights(w, (wrk_dtype_t)dt, ref, (size_t)O * K);
                float bias[300];
                for (int o = 0; o < O; o++)
                    bias[o] = frand(&seed);
                wrk_mat_t W = {.dt = (wrk_dtype_t)dt, .data = w, .rows = O, .cols = K};
                for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                    const int T = Ts[ti], ldx = K + 3, ldy = O + 5;
                    float *x = malloc((size_t)T * ldx * sizeof(float));
                    float *y = malloc((size_t)T * ldy * sizeof(float));
                    for (int i = 0; i < T * ldx; i++)
                        x[i] = frand(&seed);
                    for (int i = 0; i < T * ldy; i++)
                        y[i] = 0.5f;
                    /* two row ranges, as two threads would split them */
                    wrk_matmul(k, scratch, &W, 0, O / 2, x, ldx, T, y, ldy, bias, true);
                    wrk_matmul(k, scratch, &W, O / 2, O, x, ldx, T, y, ldy, bias, true);
                    float *y2 = malloc((size_t)T * ldy * sizeof(float));
                    for (int i = 0; i < T * ldy; i++)
                        y2[i] = 0.5f;
                    k->mm(&W, 0, O / 2, x, ldx, T, y2, ldy, bias, true, scratch);
                    k->mm(&W, O / 2, O, x, ldx, T, y2, ldy, bias, true, scratch);
                    /* the packed layout: the row split at a panel boundary, as the backend
                     * splits rows, and also mid-panel (each side computes the shared panel and
                     * stores only its rows) */
                    float *y3 = malloc((size_t)T * ldy * sizeof(float));
                    for (int i = 0; i < T * ldy; i++)
                        y3[i] = 0.5f;
                    wrk_mat_t P = W;
                    void *pk = aligned_alloc(64, (wrk_pack_bytes(&W) + 63) / 64 * 64);
                    wrk_pack(&W, pk);
                    P.pk = pk;
                    const int cut = (int)ti % 2 ? O / 2 : O / 2 / WRK_PANEL * WRK_PANEL;
                    k->mm(&P, 0, cut, x, ldx, T, y3, ldy, bias, true, scratch);
                    k->mm(&P, cut, O, x, ldx, T, y3, ldy, bias, true, scratch);
                    /* one token at a time gives the same bits (the order per output does
                     * not depend on T) */
                    for (int t = 0; t < T; t++)
                        for (int o = 0; o < O; o++)
                            packed_one[t * O + o] = 0.5f;
                    for (int t = 0; t < T; t++)
                        k->mm(&P, 0, O, x + (size_t)t * ldx, ldx, 1, packed_one + (size_t)t * O, O,
                              bias, true, scratch);
                    for (int t = 0; t < T; t++)
                        CHECK_MSG(memcmp(packed_one + (size_t)t * O, y3 + (size_t)t * ldy,
                                         (size_t)O * sizeof(float)) == 0,
                                  "%s dt %d %dx%d T=%d: packed row %d differs from T=1", isas[ii],
                                  dt, O, K, T, t);
                    free(pk);
                    double worst = 0;
                    for (int t = 0; t < T; t++)
                        for (int o = 0; o < O; o++) {
                            double s = 0.5 + bias[o];
                            for (int kk = 0; kk < K; kk++)
                                s += (double)weight_value(w, (wrk_dtype_t)dt, (size_t)o * K + kk) *
                                     x[t * ldx + kk];
                            double d = fabs(s - y[t * ldy + o]);
                            double d2 = fabs(s - y2[t * ldy + o]);
                            double d3 = fabs(s - y3[t * ldy + o]);
                            if (d2 > d) d = d2;
                            if (d3 > d) d = d3;
                            if (d > worst) worst = d;
                        }
                    CHECK_MSG(worst < 1e-4, "%s dt %d %dx%d T=%d: err %g", isas[ii], dt, O, K, T,
                              worst);
                    free(x);
                    free(y);
                    free(y2);
                    free(y3);
                }
                free(ref);
                free(wbuf);
            }
    }
    free(scratch);
    free(packed_one);
}

/* The packed matmul past its column block (kernels_impl.h, MM_KC = 1024: prefill runs K in
 * blocks and carries the sums between them) and past its 256-token chunk: even and odd K,
 * rows split inside a panel, bias and accumulate; every token bit-identical to a T = 1 call
 * (which runs K in one piece), and near a double-precision reference. The scratch is exactly
 * the wrk_mm_scratch_floats(K) the kernels may use, so ASan sees any write past it. */
static void test_matmul_packed_kblocks(void)
{
    static const int shapes[][2] = {{40, 1030}, {21, 2049}, {70, 2300}};
    static const int Ts[] = {2, 12, 13, 40, 250, 300};
    const char *isas[] = {"portable", "avx2", "avx512"};
    unsigned seed = 31;
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = kern_or_skip(isas[ii]);
        if (!k) continue;
        for (int dt = 0; dt < 3; dt++)
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
                const int O = shapes[si][0], K = shapes[si][1];
                float *scratch = malloc(wrk_mm_scratch_floats(K) * sizeof(float));
                char *w;
                wrk_mat_t P = packed_random((wrk_dtype_t)dt, O, K, &seed, &w);
                float bias[80];
                for (int o = 0; o < O; o++)
                    bias[o] = frand(&seed);
                for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                    const int T = Ts[ti], ldx = K + 3, ldy = O + 5;
                    float *x = malloc((size_t)T * ldx * sizeof(float));
                    float *y = malloc((size_t)T * ldy * sizeof(float));
                    float *one = malloc((size_t)T * ldy * sizeof(float));
                    float *y0 = malloc((size_t)T * ldy * sizeof(float));
                    for (int i = 0; i < T * ldx; i++)
                        x[i] = frand(&seed);
                    for (int i = 0; i < T * ldy; i++)
                        y[i] = one[i] = y0[i] = frand(&seed);
                    const bool acc = ti % 2 == 0;
                    const float *b = ti % 3 != 1 ? bias : NULL;
                    const int cut = O / 2 + (int)ti % 3; /* inside a panel */
                    k->mm(&P, 0, cut, x, ldx, T, y, ldy, b, acc, scratch);
                    k->mm(&P, cut, O, x, ldx, T, y, ldy, b, acc, scratch);
                    bool same = true;
                    for (int t = 0; t < T; t++) {
                        k->mm(&P, 0, O, x + (size_t)t * ldx, ldx, 1, one + (size_t)t * ldy, ldy, b,
                              acc, scratch);
                        same &= memcmp(one + (size_t)t * ldy, y + (size_t)t * ldy,
                                       (size_t)O * sizeof(float)) == 0;
                    }
                    CHECK_MSG(same, "%s dt %d %dx%d T=%d: differs from T=1 calls", isas[ii], dt, O,
                              K, T);
                    double worst = 0; /* error over the sum of |terms| */
                    for (int t = 0; t < T; t += T > 40 ? 7 : 1)
                        for (int o = 0; o < O; o++) {
                            double s = b ? b[o] : 0, mag = fabs(s);
                            for (int kk = 0; kk < K; kk++) {
                                const double p = (double)weight_value(w, (wrk_dtype_t)dt,
                                                                      (size_t)o * K + kk) *
                                                 x[(size_t)t * ldx + kk];
                                s += p;
                                mag += fabs(p);
                            }
                            const double y0v = acc ? y0[(size_t)t * ldy + o] : 0;
                            const double d = fabs(y0v + s - y[(size_t)t * ldy + o]) /
                                             (mag + fabs(y0v) + 1e-30);
                            if (d > worst) worst = d;
                        }
                    CHECK_MSG(worst < 1e-5, "%s dt %d %dx%d T=%d: relative err %g", isas[ii], dt, O,
                              K, T, worst);
                    free(x);
                    free(y);
                    free(one);
                    free(y0);
                }
                free((void *)P.pk);
                free(w);
                free(scratch);
            }
    }
}

/* The bf16 matmul kernel k (AMX or AVX512_BF16): against a double-precision reference of x
 * rounded to bf16 (the products are exact, so only the fp32 sums differ), shapes around its
 * 32-column blocks, 16-token (AMX) and 12-token (AVX512_BF16) tiles, token counts past its x
 * buffer; every token bit-identical to a T = 1 call; F32/F16 weights give exactly the fp32
 * kernels' result. */
static void check_bf16_kernel(const wrk_kern_t *k)
{
    const wrk_kern_t *k32 = wrk_kern_select("avx512");
    static const int shapes[][2] = {{37, 29}, {64, 64}, {130, 257}, {16, 33},
                                    {5, 3},   {33, 1},  {48, 300}};
    static const int Ts[] = {1, 2, 11, 12, 13, 15, 16, 17, 31, 32, 33, 40, 48, 50, 100};
    unsigned seed = 11;
    float *scratch = malloc(wrk_mm_scratch_floats(300) * sizeof(float));
    float *one = malloc((size_t)100 * 300 * sizeof(float));
    for (int dt = 0; dt < 3; dt++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int O = shapes[si][0], K = shapes[si][1];
            char *wbuf;
            wrk_mat_t P = packed_random((wrk_dtype_t)dt, O, K, &seed, &wbuf);
            float bias[300];
            for (int o = 0; o < O; o++)
                bias[o] = frand(&seed);
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                const int T = Ts[ti], ldx = K + 3, ldy = O + 5;
                float *x = malloc((size_t)T * ldx * sizeof(float));
                float *y = malloc((size_t)T * ldy * sizeof(float));
                for (int i = 0; i < T * ldx; i++)
                    x[i] = frand(&seed) * 4;
                for (int i = 0; i < T * ldy; i++)
                    y[i] = 0.5f;
                const int cut = (int)ti % 2 ? O / 2 : O / 2 / WRK_PANEL * WRK_PANEL;
                k->mm(&P, 0, cut, x, ldx, T, y, ldy, bias, true, scratch);
                k->mm(&P, cut, O, x, ldx, T, y, ldy, bias, true, scratch);
                for (int t = 0; t < T; t++)
                    for (int o = 0; o < O; o++)
                        one[t * O + o] = 0.5f;
                for (int t = 0; t < T; t++)
                    k->mm(&P, 0, O, x + (size_t)t * ldx, ldx, 1, one + (size_t)t * O, O, bias, true,
                          scratch);
                bool same = true;
                for (int t = 0; t < T; t++)
                    same &=
                        memcmp(one + (size_t)t * O, y + (size_t)t * ldy, O * sizeof(float)) == 0;
                CHECK_MSG(same, "%s dt %d %dx%d T=%d: differs from T=1 calls", k->isa, dt, O, K, T);
                if (dt != WRK_DT_BF16) { /* not AMX: the fp32 kernel's bits */
                    float *y32 = malloc((size_t)T * ldy * sizeof(float));
                    for (int i = 0; i < T * ldy; i++)
                        y32[i] = 0.5f;
                    k32->mm(&P, 0, O, x, ldx, T, y32, ldy, bias, true, scratch);
                    for (int t = 0; t < T; t++)
                        same &= memcmp(y32 + (size_t)t * ldy, y + (size_t)t * ldy,
                                       O * sizeof(float)) == 0;
                    CHECK_MSG(same, "bf16 matmul dt %d: not the fp32 kernel's result", dt);
                    free(y32);
                }
                double worst = 0;
                for (int t = 0; t < T; t++)
                    for (int o = 0; o < O; o++) {
                        double s = 0.5 + bias[o], mag = fabs(s);
                        for (int kk = 0; kk < K; kk++) {
                            float xv = x[t * ldx + kk];
                            if (dt == WRK_DT_BF16) xv = wrk_bf16_to_f32(wrk_f32_to_bf16(xv));
                            double p =
                                (double)weight_value(wbuf, (wrk_dtype_t)dt, (size_t)o * K + kk) *
                                xv;
                            s += p;
                            mag += fabs(p);
                        }
                        double d = fabs(s - y[t * ldy + o]) / (mag + 1);
                        if (d > worst) worst = d;
                    }
                CHECK_MSG(worst < 1e-6, "%s dt %d %dx%d T=%d: rel err %g", k->isa, dt, O, K, T,
                          worst);
                free(x);
                free(y);
            }
            free((void *)P.pk);
            free(wbuf);
        }
    free(scratch);
    free(one);
}

/* The opt-in bf16 matmul as `matmul = "bf16"` picks it (AMX where present, else AVX512_BF16),
 * and the AVX512_BF16 one forced ("bf16-avx512", or RCD_MATMUL_NO_AMX=1). Skipped, with the
 * reason, where the CPU or the kernel has neither. */
static void test_matmul_bf16(void)
{
    const char *why = "";
    const wrk_kern_t *k = wrk_kern_for(NULL, "bf16", &why);
    CHECK(!wrk_kern_for("avx2", "bf16", NULL) && !wrk_kern_for(NULL, "fp16", NULL) &&
          !wrk_kern_for("portable", "bf16-avx512", NULL));
    if (!k) {
        fprintf(stderr, "  skip: bf16 matmul (%s)\n", why);
        return;
    }
    fprintf(stderr, "  bf16 matmul: %s\n", k->isa);
    check_bf16_kernel(k);
    const wrk_kern_t *dp = wrk_kern_for(NULL, "bf16-avx512", &why);
    if (!dp) {
        fprintf(stderr, "  skip: bf16-avx512 matmul (%s)\n", why);
        return;
    }
    CHECK(strcmp(dp->isa, "avx512+avx512-bf16") == 0);
    if (k != dp) check_bf16_kernel(dp);
    char saved[16] = "";
    const char *env = getenv("RCD_MATMUL_NO_AMX"); /* the caller's, restored below */
    if (env) snprintf(saved, sizeof saved, "%s", env);
    setenv("RCD_MATMUL_NO_AMX", "1", 1);
    CHECK(wrk_kern_for(NULL, "bf16", NULL) == dp && wrk_kern_for("avx512", "bf16", NULL) == dp);
    setenv("RCD_MATMUL_NO_AMX", "0", 1);
    const wrk_kern_t *amx = wrk__kern_amx_bf16(NULL);
    CHECK(wrk_kern_for(NULL, "bf16", NULL) == (amx ? amx : dp));
    if (env)
        setenv("RCD_MATMUL_NO_AMX", saved, 1);
    else
        unsetenv("RCD_MATMUL_NO_AMX");
}

/* bf16 as VDPBF16PS rounds it (x >= 2^-126 in magnitude: no denormals here). */
static float bf16r(float v)
{
    return wrk_bf16_to_f32(wrk_f32_to_bf16(v));
}

/* One column pair's step of VDPBF16PS on the running sum s (the bf16 products po, pe are exact
 * in fp32). Intel documents mode 0: s = fl(s + po), then s = fl(s + pe) (kernels_avx512bf16.c).
 * Other vendors' silicon may round differently, so the test also knows mode 1 (even product
 * first), 2 (the pair summed first) and 3 (one rounding of the three-term sum). */
static float dp_step(int mode, float s, float po, float pe)
{
    volatile float a = s, b = po, c = pe; /* no contraction or reassociation */
    switch (mode) {
    case 0:
        a = a + b;
        return a + c;
    case 1:
        a = a + c;
        return a + b;
    case 2:
        b = b + c;
        return a + b;
    default:
        return (float)((double)a + (double)b + (double)c);
    }
}

/* The AVX512_BF16 matmul bit for bit against a scalar model of its order: s = +0; per column
 * pair j, dp_step(s, w[2j+1] x[2j+1], w[2j] x[2j]) (x rounded to bf16; an odd last column
 * pairs with zeros); then s + bias, then y + s. The mode is the one the first shape's outputs
 * all match (Intel's documented mode 0 on Intel CPUs), then every output of every shape must
 * match it. Odd and even column counts, rows split inside a panel, T on every side of the
 * 12-token tile and past the 256-token x buffer; T = 1 and T = 40 calls give the same bits
 * (the model is the same for every T). */
static void test_matmul_bf16_dp_exact(void)
{
    const char *why = "";
    const wrk_kern_t *k = wrk_kern_for(NULL, "bf16-avx512", &why);
    if (!k) {
        fprintf(stderr, "  skip: AVX512_BF16 matmul (%s)\n", why);
        return;
    }
    static const int shapes[][2] = {{37, 29}, {64, 64},  {130, 257}, {16, 33}, {5, 3},
                                    {33, 1},  {48, 300}, {100, 768}, {20, 2}};
    static const int Ts[] = {1, 2, 3, 12, 13, 40, 300};
    unsigned seed = 23;
    int checked = 0, mode = -1; /* dp_step's mode, found on the first shape */
    float *scratch = malloc(wrk_mm_scratch_floats(768) * sizeof(float));
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int O = shapes[si][0], K = shapes[si][1];
        float *ref = malloc((size_t)O * K * sizeof(float));
        uint16_t *wbuf = malloc((size_t)O * K * 2);
        for (int i = 0; i < O * K; i++)
            ref[i] = frand(&seed);
        fill_weights(wbuf, WRK_DT_BF16, ref, (size_t)O * K);
        float *bias = malloc((size_t)O * sizeof(float));
        for (int o = 0; o < O; o++)
            bias[o] = frand(&seed);
        wrk_mat_t P = {.dt = WRK_DT_BF16, .data = wbuf, .rows = O, .cols = K};
        void *pk = aligned_alloc(64, (wrk_pack_bytes(&P) + 63) / 64 * 64);
        wrk_pack(&P, pk);
        P.pk = pk;
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti], ldx = K + 1, ldy = O + 2;
            float *x = malloc((size_t)T * ldx * sizeof(float));
            float *y = malloc((size_t)T * ldy * sizeof(float));
            float *y1 = malloc((size_t)T * ldy * sizeof(float));
            for (int i = 0; i < T * ldx; i++)
                x[i] = frand(&seed) * 3 + (i % 5 == 0 ? 0.5f : 0);
            for (int i = 0; i < T * ldy; i++)
                y[i] = y1[i] = frand(&seed);
            const bool acc = ti % 2 == 0, use_bias = ti % 3 != 1;
            const int cut = O / 2 + (int)ti % 3; /* inside a panel */
            k->mm(&P, 0, cut, x, ldx, T, y, ldy, use_bias ? bias : NULL, acc, scratch);
            k->mm(&P, cut, O, x, ldx, T, y, ldy, use_bias ? bias : NULL, acc, scratch);
            int bad = -1;
            for (int m = mode < 0 ? 0 : mode; m < (mode < 0 ? 4 : mode + 1); m++) {
                bad = -1;
                for (int t = 0; t < T && bad < 0; t++)
                    for (int o = 0; o < O && bad < 0; o++) {
                        const float *xt = x + (size_t)t * ldx;
                        float sum = 0.f;
                        for (int j = 0; 2 * j < K; j++) {
                            const size_t at = (size_t)o * K + 2 * j;
                            const bool odd = 2 * j + 1 < K;
                            const float we = weight_value(wbuf, WRK_DT_BF16, at);
                            const float wo = odd ? weight_value(wbuf, WRK_DT_BF16, at + 1) : 0.f;
                            const float xe = bf16r(xt[2 * j]),
                                        xo = odd ? bf16r(xt[2 * j + 1]) : 0.f;
                            sum = dp_step(m, sum, wo * xo, we * xe); /* products exact */
                        }
                        if (use_bias) sum = sum + bias[o];
                        const float want = acc ? y1[(size_t)t * ldy + o] + sum : sum;
                        if (memcmp(&want, &y[(size_t)t * ldy + o], 4) != 0) bad = t * O + o;
                    }
                if (bad < 0 && mode < 0) {
                    mode = m;
                    fprintf(stderr, "  VDPBF16PS rounding: mode %d%s\n", m,
                            m == 0 ? " (Intel's documented order)" : "");
                }
                if (bad < 0) break;
            }
            CHECK_MSG(bad < 0, "AVX512_BF16 %dx%d T=%d: output (t %d, o %d) is not the model's", O,
                      K, T, bad / (O ? O : 1), bad % (O ? O : 1));
            for (int i = 0; i < T * ldy; i++)
                y1[i] = 0.f;
            for (int t = 0; t < T; t++) /* T = 1 calls, no acc: the same sums */
                k->mm(&P, 0, O, x + (size_t)t * ldx, ldx, 1, y1 + (size_t)t * ldy, ldy, NULL, false,
                      scratch);
            if (T == 40) {
                float *y40 = malloc((size_t)T * ldy * sizeof(float));
                k->mm(&P, 0, O, x, ldx, T, y40, ldy, NULL, false, scratch);
                bool same = true;
                for (int t = 0; t < T; t++)
                    same &= memcmp(y40 + (size_t)t * ldy, y1 + (size_t)t * ldy,
                                   (size_t)O * sizeof(float)) == 0;
                CHECK_MSG(same, "AVX512_BF16 %dx%d: T=40 differs from T=1 calls", O, K);
                free(y40);
            }
            checked += T * O;
            free(x);
            free(y);
            free(y1);
        }
        free(pk);
        free(bias);
        free(ref);
        free(wbuf);
    }
    fprintf(stderr, "  AVX512_BF16 matmul: %d outputs bit-exact against the model\n", checked);
    free(scratch);
}

static void ref_conv(int T, int I, int K, const float *x, int ldx, const float *w, const float *b,
                     float *win, float *out)
{
    int W = K - 1;
    float *all = malloc((size_t)(W + T) * I * sizeof(float));
    memcpy(all, win, (size_t)W * I * sizeof(float));
    for (int t = 0; t < T; t++)
        memcpy(all + (size_t)(W + t) * I, x + (size_t)t * ldx, I * sizeof(float));
    for (int t = 0; t < T; t++)
        for (int c = 0; c < I; c++) {
            double s = b ? b[c] : 0;
            for (int k = 0; k < K; k++)
                s += (double)w[k * I + c] * all[(size_t)(t + k) * I + c];
            out[t * I + c] = (float)(s / (1 + exp(-s)));
        }
    memcpy(win, all + (size_t)T * I, (size_t)W * I * sizeof(float));
    free(all);
}

/* Conv for T smaller and larger than the window, split over two channel ranges. */
static void test_conv(void)
{
    unsigned seed = 11;
    const int I = 27, ldx = 2 * I;
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = wrk_kern_select(isas[ii]);
        if (!k) continue;
        for (int K = 1; K <= 5; K++)
            for (int T = 1; T <= 7; T++) {
                int W = K - 1;
                float x[7 * 54], w[5 * 27], b[27], win[4 * 27], win2[4 * 27], out[7 * 27],
                    out2[7 * 27];
                for (int i = 0; i < T * ldx; i++)
                    x[i] = frand(&seed);
                for (int i = 0; i < K * I; i++)
                    w[i] = frand(&seed);
                for (int i = 0; i < I; i++)
                    b[i] = frand(&seed);
                for (int i = 0; i < W * I; i++)
                    win[i] = win2[i] = frand(&seed);
                ref_conv(T, I, K, x, ldx, w, b, win, out);
                k->conv_silu(T, 0, 16, I, K, x, ldx, w, b, win2, out2);
                k->conv_silu(T, 16, I, I, K, x, ldx, w, b, win2, out2);
                double worst = 0;
                for (int i = 0; i < T * I; i++)
                    worst = fmax(worst, fabs(out[i] - out2[i]));
                for (int i = 0; i < W * I; i++)
                    worst = fmax(worst, fabs(win[i] - win2[i]));
                CHECK_MSG(worst < 1e-5, "%s conv K=%d T=%d err %g", isas[ii], K, T, worst);
            }
    }
}

/* The gated delta rule against a double-precision reference, dv with and without a
 * vector tail, several tokens in a row on the same state. */
static void test_delta_rule(void)
{
    unsigned seed = 23;
    enum { DK = 7, DVMAX = 37, TOK = 4 };
    const int dvs[] = {16, 37, 5};
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *kr = wrk_kern_select(isas[ii]);
        if (!kr) continue;
        for (int di = 0; di < 3; di++) {
            const int dv = dvs[di];
            float S[DK * DVMAX], k[DK], q[DK], v[DVMAX], o[DVMAX];
            double R[DK * DVMAX];
            for (int i = 0; i < DK * dv; i++) R[i] = S[i] = frand(&seed);
            double worst = 0;
            for (int t = 0; t < TOK; t++) {
                for (int i = 0; i < DK; i++) k[i] = frand(&seed), q[i] = frand(&seed);
                for (int e = 0; e < dv; e++) v[e] = frand(&seed);
                const float beta = 0.5f + 0.4f * frand(&seed), decay = 0.9f + 0.05f * frand(&seed);
                kr->delta_rule(DK, dv, S, k, q, v, beta, decay, o);
                for (int e = 0; e < dv; e++) {
                    double u = 0, acc = 0;
                    for (int i = 0; i < DK; i++) {
                        R[i * dv + e] *= decay;
                        u += R[i * dv + e] * k[i];
                    }
                    const double d = (v[e] - u) * beta;
                    for (int i = 0; i < DK; i++) {
                        R[i * dv + e] += k[i] * d;
                        acc += R[i * dv + e] * q[i];
                    }
                    worst = fmax(worst, fabs(acc - o[e]));
                }
                for (int i = 0; i < DK * dv; i++) worst = fmax(worst, fabs(R[i] - S[i]));
            }
            CHECK_MSG(worst < 1e-5, "%s delta rule dv=%d err %g", isas[ii], dv, worst);
        }
    }
}

/* Runs TOK tokens of the chunked delta rule (gdn_chunk / gdn_close) in calls of `split` tokens
 * (0: whole blocks) from a zero state: o [TOK][dv] (rows of dv), S the state at the last block boundary. */
enum { GC_DK = 9, GC_DV = 37, GC_TOK = 150 };
static void gdn_run(const wrk_kern_t *kr, int dv, int split, const float *k, const float *q,
                    const float *v, const float *beta, const float *g, float *o, float *S)
{
    enum { B = WRK_GDN_BLOCK };
    static float Kb[B * GC_DK], Ub[B * GC_DV], G[B], ks[2 * B * (GC_DV + 1) + B * GC_DK];
    memset(S, 0, sizeof(float) * GC_DK * dv);
    int j = 0;
    for (int t0 = 0; t0 < GC_TOK;) {
        int call = split ? split : B - j;
        if (call > GC_TOK - t0) call = GC_TOK - t0;
        for (int c0 = t0; c0 < t0 + call;) {
            const int n = t0 + call - c0 < B - j ? t0 + call - c0 : B - j;
            for (int i = 0; i < n; i++) {
                memcpy(Kb + (j + i) * GC_DK, k + (c0 + i) * GC_DK, sizeof(float) * GC_DK);
                G[j + i] = (j + i ? G[j + i - 1] : 0.f) + g[c0 + i];
            }
            kr->gdn_chunk(GC_DK, dv, S, j, j + n, Kb, Ub, G, q + c0 * GC_DK, v + c0 * GC_DV, GC_DV,
                          beta + c0, o + c0 * dv, ks);
            j += n;
            if (j == B) {
                kr->gdn_close(GC_DK, dv, S, B, Kb, Ub, G, ks);
                j = 0;
            }
            c0 += n;
        }
        t0 += call;
    }
}

/* The chunked gated delta rule against a double-precision token-by-token reference over 150
 * tokens (two blocks closed, one open), dv with and without a vector tail, a dk tail; calls of
 * 1, 5, 13 tokens and whole blocks give bit-identical outputs and states. */
static void test_gdn_chunk(void)
{
    unsigned seed = 31;
    static float k[GC_TOK * GC_DK], q[GC_TOK * GC_DK], v[GC_TOK * GC_DV], beta[GC_TOK], g[GC_TOK];
    static float o[GC_TOK * GC_DV], o1[GC_TOK * GC_DV], S[GC_DK * GC_DV], S1[GC_DK * GC_DV];
    static double R[GC_DK * GC_DV], ro[GC_TOK * GC_DV], R128[GC_DK * GC_DV];
    for (int t = 0; t < GC_TOK; t++) {
        double nk = 0, nq = 0;
        for (int i = 0; i < GC_DK; i++) {
            k[t * GC_DK + i] = frand(&seed), q[t * GC_DK + i] = frand(&seed);
            nk += (double)k[t * GC_DK + i] * k[t * GC_DK + i];
            nq += (double)q[t * GC_DK + i] * q[t * GC_DK + i];
        }
        for (int i = 0; i < GC_DK; i++) /* L2-normed keys (as the model's), scaled queries */
            k[t * GC_DK + i] /= (float)sqrt(nk), q[t * GC_DK + i] /= (float)sqrt(nq * GC_DK);
        for (int e = 0; e < GC_DV; e++) v[t * GC_DV + e] = frand(&seed);
        beta[t] = 0.5f + 0.4f * frand(&seed);
        g[t] = t % 17 == 3 ? -30.f : -0.05f + 0.04f * frand(&seed); /* strong decays: flushed */
    }
    const int dvs[] = {GC_DV, 16, 5}, splits[] = {0, 5, 13};
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *kr = wrk_kern_select(isas[ii]);
        if (!kr) continue;
        for (int di = 0; di < 3; di++) {
            const int dv = dvs[di];
            memset(R, 0, sizeof R);
            for (int t = 0; t < GC_TOK; t++) {
                const double dc = exp((double)g[t]);
                for (int e = 0; e < dv; e++) {
                    double u = 0, acc = 0;
                    for (int i = 0; i < GC_DK; i++) {
                        R[i * dv + e] *= dc;
                        u += R[i * dv + e] * k[t * GC_DK + i];
                    }
                    const double d = (v[t * GC_DV + e] - u) * beta[t];
                    for (int i = 0; i < GC_DK; i++) {
                        R[i * dv + e] += k[t * GC_DK + i] * d;
                        acc += R[i * dv + e] * q[t * GC_DK + i];
                    }
                    ro[t * GC_DV + e] = acc;
                }
                if (t == 127) memcpy(R128, R, sizeof R);
            }
            gdn_run(kr, dv, 1, k, q, v, beta, g, o1, S1);
            double worst = 0;
            for (int t = 0; t < GC_TOK; t++)
                for (int e = 0; e < dv; e++)
                    worst = fmax(worst, fabs(ro[t * GC_DV + e] - o1[t * dv + e]));
            for (int i = 0; i < GC_DK * dv; i++) worst = fmax(worst, fabs(R128[i] - S1[i]));
            CHECK_MSG(worst < 1e-5, "%s gdn_chunk dv=%d err %g", isas[ii], dv, worst);
            for (int si = 0; si < 3; si++) {
                memset(o, 0, sizeof o);
                gdn_run(kr, dv, splits[si], k, q, v, beta, g, o, S);
                const bool same = memcmp(S, S1, sizeof(float) * GC_DK * dv) == 0 &&
                                  memcmp(o, o1, sizeof(float) * GC_TOK * dv) == 0;
                CHECK_MSG(same, "%s gdn_chunk dv=%d: calls of %d differ from calls of 1", isas[ii],
                          dv, splits[si]);
            }
        }
    }
}

static void test_scan(void)
{
    unsigned seed = 5;
    enum { T = 6, I = 37, N = 5, R = 2, LDBC = R + 2 * N, LDZ = 2 * I };
    float dt[T * I], dtb[I], xc[T * I], z[T * LDZ], bc[T * LDBC], A[N * I], D[I];
    for (int i = 0; i < T * I; i++)
        dt[i] = 3 * frand(&seed), xc[i] = frand(&seed);
    for (int i = 0; i < T * LDZ; i++)
        z[i] = 2 * frand(&seed);
    for (int i = 0; i < T * LDBC; i++)
        bc[i] = frand(&seed);
    for (int i = 0; i < I; i++)
        dtb[i] = frand(&seed), D[i] = frand(&seed);
    for (int i = 0; i < N * I; i++)
        A[i] = -expf(2 * frand(&seed));
    float h0[N * I];
    for (int i = 0; i < N * I; i++)
        h0[i] = frand(&seed);
    /* double-precision reference */
    double href[N * I], yref[T * I];
    for (int i = 0; i < N * I; i++)
        href[i] = h0[i];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < I; c++) {
            double v = dt[t * I + c] + dtb[c];
            double delta = v > 20 ? v : log1p(exp(v));
            double u = xc[t * I + c], acc = 0;
            for (int n = 0; n < N; n++) {
                double *h = &href[n * I + c];
                *h = exp(A[n * I + c] * delta) * *h + delta * bc[t * LDBC + R + n] * u;
                acc += *h * bc[t * LDBC + R + N + n];
            }
            double zz = z[t * LDZ + I + c];
            yref[t * I + c] = (acc + D[c] * u) * zz / (1 + exp(-zz));
        }
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = wrk_kern_select(isas[ii]);
        if (!k) continue;
        float h[N * I], y[T * I];
        memcpy(h, h0, sizeof h);
        k->scan(T, 0, 16, I, N, dt, dtb, xc, z + I, LDZ, bc + R, LDBC, A, D, h, y);
        k->scan(T, 16, I, I, N, dt, dtb, xc, z + I, LDZ, bc + R, LDBC, A, D, h, y);
        double worst = 0;
        for (int i = 0; i < T * I; i++)
            worst = fmax(worst, fabs(y[i] - yref[i]));
        for (int i = 0; i < N * I; i++)
            worst = fmax(worst, fabs(h[i] - href[i]));
        CHECK_MSG(worst < 2e-5, "%s scan err %g", isas[ii], worst);
    }
}

/* Mamba2's SSD recurrence of one head against a double reference, and bit-identical state
 * and outputs whether the tokens come in one call or in calls of 1, 5 or 64 (sizes with
 * every path: register tiles, single vectors, a scalar tail, a chunk boundary, odd P). */
static void test_ssd(void)
{
    enum { T = 70, PMAX = 7, NMAX = 83, LDX = 2 * PMAX + 2 * NMAX + 3, LDDT = 3 };
    static const int Ps[] = {7, 4, 1}, Ns[] = {83, 37, 5};
    static const int calls[] = {1, 5, 64};
    unsigned seed = 11;
    float *xb = malloc(sizeof(float) * T * LDX), dt[T * LDDT];
    for (int i = 0; i < T * LDX; i++)
        xb[i] = frand(&seed);
    for (int i = 0; i < T * LDDT; i++)
        dt[i] = 3 * frand(&seed);
    const float dt_b = 0.3f, A = -1.7f, D = 0.6f;
    float S0[PMAX * NMAX];
    for (int i = 0; i < PMAX * NMAX; i++)
        S0[i] = frand(&seed);
    for (int ci = 0; ci < 3; ci++) {
        const int P = Ps[ci], N = Ns[ci];
        const float *x = xb, *B = xb + PMAX, *C = xb + PMAX + NMAX;
        double Sr[PMAX * NMAX], yr[T * PMAX];
        for (int i = 0; i < P * N; i++)
            Sr[i] = S0[i];
        for (int t = 0; t < T; t++) {
            const double v = (double)dt[t * LDDT + 1] + dt_b;
            const double d = v > 20 ? v : log1p(exp(v)), da = exp(d * A);
            for (int p = 0; p < P; p++) {
                double acc = 0;
                for (int n = 0; n < N; n++) {
                    double *sp = &Sr[p * N + n];
                    *sp = da * *sp + d * x[t * LDX + p] * B[t * LDX + n];
                    acc += C[t * LDX + n] * *sp;
                }
                yr[t * PMAX + p] = acc + D * x[t * LDX + p];
            }
        }
        for (int ii = 0; ii < 3; ii++) {
            const wrk_kern_t *k = wrk_kern_select(isas[ii]);
            if (!k) continue;
            float S1[PMAX * NMAX], y1[T * PMAX], S2[PMAX * NMAX], y2[T * PMAX];
            memcpy(S1, S0, sizeof S1);
            memset(y1, 0, sizeof y1);
            k->ssd(T, P, N, x, B, C, LDX, dt + 1, LDDT, dt_b, A, D, 0.f, INFINITY, S1, y1, PMAX);
            double worst = 0;
            for (int t = 0; t < T; t++)
                for (int p = 0; p < P; p++)
                    worst = fmax(worst, fabs(y1[t * PMAX + p] - yr[t * PMAX + p]));
            for (int i = 0; i < P * N; i++)
                worst = fmax(worst, fabs(S1[i] - Sr[i]));
            CHECK_MSG(worst < 1e-4, "%s ssd P=%d N=%d err %g", isas[ii], P, N, worst);
            for (int si = 0; si < 3; si++) {
                memcpy(S2, S0, sizeof S2);
                memset(y2, 0, sizeof y2);
                for (int t = 0; t < T; t += calls[si]) {
                    const int n = T - t < calls[si] ? T - t : calls[si];
                    k->ssd(n, P, N, x + t * LDX, B + t * LDX, C + t * LDX, LDX,
                           dt + 1 + t * LDDT, LDDT, dt_b, A, D, 0.f, INFINITY, S2,
                           y2 + t * PMAX, PMAX);
                }
                CHECK_MSG(memcmp(S1, S2, sizeof(float) * P * N) == 0 &&
                              memcmp(y1, y2, sizeof y1) == 0,
                          "%s ssd P=%d N=%d: calls of %d differ from one call", isas[ii], P, N,
                          calls[si]);
            }
        }
    }
    free(xb);
}

static void test_rmsnorm(void)
{
    float x[53], w[53], y[53];
    unsigned seed = 3;
    for (int i = 0; i < 53; i++)
        x[i] = 4 * frand(&seed), w[i] = frand(&seed);
    double ss = 0;
    for (int i = 0; i < 53; i++)
        ss += (double)x[i] * x[i];
    double s = 1 / sqrt(ss / 53 + 1e-5);
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = wrk_kern_select(isas[ii]);
        if (!k) continue;
        k->rmsnorm(y, x, w, 53, 1e-5f);
        double worst = 0;
        for (int i = 0; i < 53; i++)
            worst = fmax(worst, fabs(y[i] - w[i] * x[i] * s));
        CHECK_MSG(worst < 1e-6, "%s rmsnorm err %g", isas[ii], worst);
    }
}

typedef struct {
    wrk_pool_t *p;
    atomic_int phase_count[64];
    atomic_int errors;
} pool_ctx_t;

static void pool_job(void *arg, int ith, int nth)
{
    pool_ctx_t *c = arg;
    for (int ph = 0; ph < 64; ph++) {
        atomic_fetch_add(&c->phase_count[ph], 1);
        wrk_pool_barrier(c->p);
        /* after the barrier every thread must have arrived at this phase */
        if (atomic_load(&c->phase_count[ph]) != nth) atomic_fetch_add(&c->errors, 1);
        wrk_pool_barrier(c->p);
    }
}

typedef struct {
    atomic_int ran, bad;
} count_ctx_t;

static void count_job(void *arg, int ith, int nth)
{
    count_ctx_t *c = arg;
    atomic_fetch_add(&c->ran, 1);
    if (ith >= nth) atomic_fetch_add(&c->bad, 1);
}

static void test_pool(void)
{
    for (int n = 1; n <= 4; n++) {
        wrk_pool_t *p = NULL;
        CHECK(wrk_pool_create(n, &p) == 0);
        CHECK(wrk_pool_size(p) == n);
        for (int rep = 0; rep < 20; rep++) {
            pool_ctx_t c = {.p = p};
            wrk_pool_run(p, pool_job, &c);
            CHECK(atomic_load(&c.errors) == 0);
            for (int ph = 0; ph < 64; ph++)
                CHECK(atomic_load(&c.phase_count[ph]) == n);
        }
        wrk_pool_destroy(p);
    }
    /* fewer active threads: jobs see nth = active, and the others neither run nor count at
     * the barriers; growing again wakes them for the next job (not an earlier one) */
    wrk_pool_t *p = NULL;
    CHECK(wrk_pool_create(4, &p) == 0);
    static const int seq[] = {4, 1, 2, 4, 3, 1, 1, 4, 2, 3, 4};
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < sizeof seq / sizeof *seq; i++) {
            wrk_pool_set_active(p, seq[i]);
            CHECK(wrk_pool_active(p) == seq[i]);
            pool_ctx_t c = {.p = p};
            wrk_pool_run(p, pool_job, &c);
            CHECK(atomic_load(&c.errors) == 0);
            for (int ph = 0; ph < 64; ph++)
                CHECK_MSG(atomic_load(&c.phase_count[ph]) == seq[i], "active %d: phase %d saw %d",
                          seq[i], ph, atomic_load(&c.phase_count[ph]));
        }
    /* many short jobs, the count changing before most: a worker that has not yet parked, or
     * is skipping a narrower job, must never run a job it is not part of, nor miss one */
    for (int i = 0; i < 3000; i++) {
        const int a = 1 + (i * 7 / 3) % 4;
        wrk_pool_set_active(p, a);
        count_ctx_t c = {0};
        wrk_pool_run(p, count_job, &c);
        CHECK_MSG(atomic_load(&c.ran) == a && atomic_load(&c.bad) == 0,
                  "job %d on %d threads: %d ran, %d saw another nth", i, a, atomic_load(&c.ran),
                  atomic_load(&c.bad));
    }
    wrk_pool_set_active(p, 0); /* clamped to 1..size */
    CHECK(wrk_pool_active(p) == 1);
    wrk_pool_set_active(p, 9);
    CHECK(wrk_pool_active(p) == 4);
    wrk_pool_set_active(p, 1); /* destroy wakes sleeping inactive threads */
    wrk_pool_destroy(p);
    int lo, hi, covered = 0;
    for (int i = 0; i < 3; i++) {
        wrk_split(100, 16, i, 3, &lo, &hi);
        CHECK(lo % 16 == 0 && hi >= lo);
        covered += hi - lo;
    }
    CHECK(covered == 100);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_exp_softplus);
    RUN(test_matmul);
    RUN(test_matmul_packed_kblocks);
    RUN(test_matmul_bf16);
    RUN(test_matmul_bf16_dp_exact);
    RUN(test_conv);
    RUN(test_scan);
    RUN(test_ssd);
    RUN(test_delta_rule);
    RUN(test_gdn_chunk);
    RUN(test_rmsnorm);
    RUN(test_pool);
    return rcd_test_summary();
}
