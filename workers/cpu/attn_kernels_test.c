/* The attention kernels (attn_scores, attn_mix, softmax) for every ISA this CPU runs: each
 * (query, row) result against a one-query, one-row call, bitwise, and a double-precision
 * reference (workers/README.md, "Attention over several queries at once"). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/rcd_test.h"
#include "workers/cpu/kernels.h"

static const char *isas[] = {"portable", "avx2", "avx512"};

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* attn_scores / attn_mix / softmax: each (query, row) result is bitwise what a one-query, one-row call
 * gives — whatever nq, n and the split of rows between calls — and close to a double-precision
 * reference, for head sizes on and off the vector width. */
static void test_attn(void)
{
    enum { NQ = 7, N = 41, LD_PAD = 3 };
    const int dims[] = {4, 8, 12, 16, 24, 32, 40, 64, 72, 128};
    unsigned seed = 77;
    for (int ii = 0; ii < 3; ii++) {
        const wrk_kern_t *k = wrk_kern_select(isas[ii]);
        if (!k) continue;
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            const int d = dims[di], ld = d + LD_PAD;
            float *q = malloc((size_t)NQ * d * sizeof(float));
            float *kv = malloc((size_t)N * ld * sizeof(float));
            float *s1 = malloc((size_t)NQ * N * sizeof(float));
            float *s2 = malloc((size_t)NQ * N * sizeof(float));
            float *o1 = calloc((size_t)NQ * d, sizeof(float));
            float *o2 = calloc((size_t)NQ * d, sizeof(float));
            for (int i = 0; i < NQ * d; i++) q[i] = frand(&seed);
            for (int i = 0; i < N * ld; i++) kv[i] = frand(&seed);
            /* one query, one row at a time */
            for (int j = 0; j < NQ; j++)
                for (int p = 0; p < N; p++)
                    k->attn_scores(q + (size_t)j * d, 1, kv + (size_t)p * ld, ld, 1, d, 0.3f,
                                   s1 + (size_t)j * N + p, N);
            /* all queries, rows in uneven calls (a block of 16 straddling, a tail of one) */
            const int cuts[] = {0, 3, 19, 35, 40, N};
            for (size_t c = 0; c + 1 < sizeof cuts / sizeof cuts[0]; c++)
                k->attn_scores(q, NQ, kv + (size_t)cuts[c] * ld, ld, cuts[c + 1] - cuts[c], d, 0.3f,
                               s2 + cuts[c], N);
            CHECK_MSG(!memcmp(s1, s2, (size_t)NQ * N * sizeof(float)), "%s d=%d scores differ",
                      isas[ii], d);
            double worst = 0;
            for (int j = 0; j < NQ; j++)
                for (int p = 0; p < N; p++) {
                    double ref = 0;
                    for (int i = 0; i < d; i++)
                        ref += (double)q[j * d + i] * kv[(size_t)p * ld + i];
                    const double e = fabs(s2[j * N + p] - 0.3 * ref);
                    if (e > worst) worst = e;
                }
            CHECK_MSG(worst < 1e-5 * d, "%s d=%d scores off by %g", isas[ii], d, worst);
            /* the mix, weights from the scores */
            for (int j = 0; j < NQ; j++)
                for (int p = 0; p < N; p++)
                    k->attn_mix(o1 + (size_t)j * d, 1, kv + (size_t)p * ld, ld, 1, d,
                                s1 + (size_t)j * N + p, N);
            for (size_t c = 0; c + 1 < sizeof cuts / sizeof cuts[0]; c++)
                k->attn_mix(o2, NQ, kv + (size_t)cuts[c] * ld, ld, cuts[c + 1] - cuts[c], d,
                            s2 + cuts[c], N);
            CHECK_MSG(!memcmp(o1, o2, (size_t)NQ * d * sizeof(float)), "%s d=%d mix differs",
                      isas[ii], d);
            worst = 0;
            for (int j = 0; j < NQ; j++)
                for (int i = 0; i < d; i++) {
                    double ref = 0;
                    for (int p = 0; p < N; p++)
                        ref += (double)s2[j * N + p] * kv[(size_t)p * ld + i];
                    const double e = fabs(o2[j * d + i] - ref);
                    if (e > worst) worst = e;
                }
            CHECK_MSG(worst < 1e-4, "%s d=%d mix off by %g", isas[ii], d, worst);
            /* softmax of each score row against a double-precision reference */
            for (int j = 0; j < NQ; j++) {
                const int n = 1 + (j * 13 + d) % N; /* lengths on and off the vector width */
                float *row = s1 + (size_t)j * N;
                double mx = -INFINITY, sum = 0;
                for (int p = 0; p < n; p++)
                    if (row[p] > mx) mx = row[p];
                for (int p = 0; p < n; p++)
                    sum += exp((double)row[p] - mx);
                double ref[N];
                for (int p = 0; p < n; p++)
                    ref[p] = exp((double)row[p] - mx) / sum;
                k->softmax(row, n);
                double err = 0;
                for (int p = 0; p < n; p++)
                    if (fabs(row[p] - ref[p]) > err) err = fabs(row[p] - ref[p]);
                CHECK_MSG(err < 1e-6, "%s softmax n=%d off by %g", isas[ii], n, err);
            }
            free(q);
            free(kv);
            free(s1);
            free(s2);
            free(o1);
            free(o2);
        }
    }
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_attn);
    return rcd_test_summary();
}
