/* Quantized weights (--weights q8|q4, kernels_q.h): the C quantizer against the Python
 * reference (tools/quant_ref.py's fixture, bit for bit), the quantized matmul against a
 * double-precision reference over the dequantized weights on every ISA this CPU runs, batch
 * invariance (a token's row is bit-identical whatever T and rows range), AVX2 = AVX-512 bit
 * for bit, and the option's refusals. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

/* y = x W^T over the dequantized weights in double: every ISA within a relative bound, every
 * T's rows bit-identical to T = 1's, row ranges [o0, o1) off panel edges, bias and acc. */
static void check_shape(wrk_wq_t qf, int R, int K, const int *Ts, int nT)
{
    unsigned seed = (unsigned)(R * 131 + K);
    float *w = malloc((size_t)R * K * 4), *dq = malloc((size_t)R * K * 4);
    const int TM = 40;
    float *x = malloc((size_t)TM * K * 4), *bias = malloc((size_t)R * 4);
    float *y = malloc((size_t)TM * R * 4), *y1 = malloc((size_t)TM * R * 4);
    float *avx2_y = malloc((size_t)TM * R * 4);
    for (size_t i = 0; i < (size_t)R * K; i++)
        w[i] = frand(&seed) * 0.1f;
    for (size_t i = 0; i < (size_t)TM * K; i++)
        x[i] = frand(&seed);
    for (int i = 0; i < R; i++)
        bias[i] = frand(&seed);
    const wrk_mat_t W0 = {.dt = WRK_DT_F32, .data = w, .rows = R, .cols = K};
    void *pk = aligned_alloc(64, (wrk_pack_q_bytes(qf, R, K) + 63) / 64 * 64);
    CHECK(wrk_pack_q(&W0, qf, pk) == 0);
    for (int r = 0; r < R; r++)
        wrk_dequant_row(pk, qf, K, r, dq + (size_t)r * K);
    wrk_mat_t W = W0;
    W.pk = pk;
    W.qf = qf;
    bool have_avx2 = false;
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = wrk_kern_select(isas[ii]);
        if (!k) continue;
        /* T = 1 row by row: the reference of every other T */
        for (int t = 0; t < TM; t++)
            wrk_matmul(k, NULL, &W, 0, R, x + (size_t)t * K, K, 1, y1 + (size_t)t * R, R, bias,
                       false);
        for (int t = 0; t < TM; t++)
            for (int o = 0; o < R; o++) {
                double ref = bias[o], mag = fabs(bias[o]);
                for (int c = 0; c < K; c++) {
                    ref += (double)dq[(size_t)o * K + c] * x[(size_t)t * K + c];
                    mag += fabs((double)dq[(size_t)o * K + c] * x[(size_t)t * K + c]);
                }
                const double got = y1[(size_t)t * R + o];
                CHECK_MSG(fabs(got - ref) <= 1e-5 * mag + 1e-6, "%s %s %dx%d t%d o%d: %g vs %g",
                          isas[ii], wrk_wq_name(qf), R, K, t, o, got, ref);
            }
        for (int ti = 0; ti < nT; ti++) {
            const int T = Ts[ti];
            memset(y, 0, (size_t)TM * R * 4);
            wrk_matmul(k, NULL, &W, 0, R, x, K, T, y, R, bias, false);
            CHECK_MSG(memcmp(y, y1, (size_t)T * R * 4) == 0, "%s %s %dx%d: T=%d differs from T=1",
                      isas[ii], wrk_wq_name(qf), R, K, T);
            /* a row range off the panel edges, accumulating onto y */
            const int o0 = R > 20 ? 5 : 0, o1 = R > 20 ? R - 3 : R;
            for (size_t i = 0; i < (size_t)T * R; i++)
                y[i] = 1.0f;
            wrk_matmul(k, NULL, &W, o0, o1, x, K, T, y, R, bias, true);
            for (int t = 0; t < T; t++)
                for (int o = 0; o < R; o++) {
                    const float want = o >= o0 && o < o1 ? 1.0f + y1[(size_t)t * R + o] : 1.0f;
                    CHECK_MSG(y[(size_t)t * R + o] == want, "%s %s acc T=%d o=%d", isas[ii],
                              wrk_wq_name(qf), T, o);
                }
        }
        if (ii == 1) {
            memcpy(avx2_y, y1, (size_t)TM * R * 4);
            have_avx2 = true;
        }
        if (ii == 2 && have_avx2) /* both FMA, same sequence per output */
            CHECK_MSG(memcmp(avx2_y, y1, (size_t)TM * R * 4) == 0,
                      "%s %dx%d: avx512 differs from avx2", wrk_wq_name(qf), R, K);
    }
    free(pk);
    free(w);
    free(dq);
    free(x);
    free(bias);
    free(y);
    free(y1);
    free(avx2_y);
}

static void test_qmm(void)
{
    static const int Ts[] = {2, 3, 5, 6, 7, 13, 37, 40};
    static const int shapes[][2] = {{16, 32}, {37, 83}, {64, 130}, {48, 33}, {5, 7}, {200, 96}};
    for (int s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
        check_shape(WRK_WQ_Q8, shapes[s][0], shapes[s][1], Ts, 8);
        check_shape(WRK_WQ_Q4, shapes[s][0], shapes[s][1], Ts, 8);
    }
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
    RUN(test_qmm);
    RUN(test_parse);
    return rcd_test_summary();
}
