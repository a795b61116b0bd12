/* spec_bench: the cost of speculative verification in the workers. For each batch size (every
 * sequence in the step gets the same entry): one decode step (1 token, logits) against one
 * verify step of k + 1 tokens (k = 1..kmax, logits at every position), and the rollback
 * (wrk_spec_accept) per sequence keeping 1 token and keeping k. The steps of one repetition run
 * back to back, decode and every k interleaved, so load that comes and goes hits them alike;
 * median over repetitions. For each k it prints the break-even acceptance: the per-token
 * acceptance rate a at which a verify's expected output, (1 - a^(k+1)) / (1 - a) tokens, equals
 * its cost in decode steps; speculation pays at that batch only above it.
 * --ctx N first prefills every sequence with N tokens, so attention layers read a context of
 * that length (the steps then grow it by about (kmax + 1)(kmax + 2) / 2 per repetition).
 *   spec_bench --model DIR [--threads N] [--reps R] [--kmax K] [--batches 1,8]
 *              [--matmul fp32|bf16] [--weights native|q8|q4] [--ctx N]
 * Figures: bench/RESULTS.md ("Speculative verify"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workers/wrk.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

#define MAX_B 32
#define MAX_K 8

int main(int argc, char **argv)
{
    const char *dir = NULL, *matmul = NULL, *weights = NULL;
    int threads = 0, reps = 15, kmax = MAX_K, batches[MAX_B], nb = 0, ctx = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--kmax") && i + 1 < argc)
            kmax = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc)
            ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--matmul") && i + 1 < argc)
            matmul = argv[++i];
        else if (!strcmp(argv[i], "--weights") && i + 1 < argc)
            weights = argv[++i];
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc) {
            for (char *p = argv[++i], *e; *p && nb < MAX_B; p = *e ? e + 1 : e) {
                batches[nb++] = (int)strtol(p, &e, 10);
                if (e == p || (*e && *e != ',') || batches[nb - 1] < 1 || batches[nb - 1] > MAX_B) {
                    fprintf(stderr, "spec_bench: --batches takes sizes 1..%d, comma-separated\n",
                            MAX_B);
                    return 2;
                }
            }
        } else {
            fprintf(stderr, "usage: spec_bench --model DIR [--threads N] [--reps R] [--kmax K] "
                            "[--batches 1,8] [--matmul fp32|bf16] [--weights native|q8|q4] "
                            "[--ctx N]\n");
            return 2;
        }
    }
    if (!dir || reps < 3 || reps > 1000 || kmax < 1 || kmax > MAX_K || ctx < 0 || ctx > 65536) {
        fprintf(stderr, "spec_bench: --model DIR needed; reps 3..1000, kmax 1..%d, ctx 0..65536\n",
                MAX_K);
        return 2;
    }
    if (!nb) {
        batches[nb++] = 1;
        batches[nb++] = 8;
    }
    char err[512];
    wrk_model_t *m = NULL;
    if (wrk_model_load(dir, &m, err, sizeof err)) {
        fprintf(stderr, "spec_bench: %s\n", err);
        return 1;
    }
    const wrk_model_info_t *mi = wrk_model_info(m);
    const int V = mi->vocab_size;
    int maxb = 0;
    for (int i = 0; i < nb; i++)
        if (batches[i] > maxb) maxb = batches[i];
    /* positions per slot: the prefill, then every batch size's repetitions add at most
     * (kmax + 1)(kmax + 2) / 2 + kmax each */
    const int per_slot = ctx + nb * (reps + 2) * ((kmax + 1) * (kmax + 2) / 2 + kmax) + 16;
    wrk_backend_opts_t o = {.n_threads = threads,
                            .kv_block_tokens = 16,
                            .n_kv_blocks = MAX_B * ((per_slot + 15) / 16),
                            .n_slots = MAX_B,
                            .max_step_tokens = MAX_B * (MAX_K + 1),
                            .matmul = matmul,
                            .weights = weights};
    wrk_backend_t *b = NULL;
    if (wrk_cpu_backend_create(m, &o, &b, err, sizeof err)) {
        fprintf(stderr, "spec_bench: %s\n", err);
        wrk_model_free(m);
        return 1;
    }
    float *logits = malloc((size_t)MAX_B * (MAX_K + 1) * V * sizeof(float));
    /* per k: step times, rollback keeping 1 (per sequence) and keeping k, over repetitions */
    double *t = malloc((size_t)(MAX_K + 1) * reps * sizeof *t);
    double *ta = malloc((size_t)(MAX_K + 1) * reps * sizeof *ta);
    double *tk = malloc((size_t)(MAX_K + 1) * reps * sizeof *tk);
    int32_t toks[MAX_B][MAX_K + 1];
    for (int s = 0; s < MAX_B; s++)
        for (int j = 0; j <= MAX_K; j++)
            toks[s][j] = (s * 131 + j * 17 + 5) % V;
    printf("model %s (%s), backend %s/%s, matmul %s, weights %s, state %zu B per sequence, "
           "context %d, median of %d\n",
           dir, mi->architecture, wrk_backend_name(b), wrk_backend_isa(b), matmul ? matmul : "fp32",
           weights ? weights : "native", mi->state_bytes, ctx, reps);
    printf("batch  k  step_ms  vs_decode  break_even  accept1_ms  acceptk_ms (per sequence)\n");
    wrk_seq_t seqs[MAX_B];
    int rc = 0;
    if (ctx > 0) { /* prefill: every used slot gets ctx tokens, in steps of the step budget */
        int32_t *pt = malloc((size_t)ctx * sizeof *pt);
        for (int j = 0; j < ctx; j++)
            pt[j] = (j * 37 + 11) % V;
        const int chunk = o.max_step_tokens;
        for (int s = 0; s < maxb && !rc; s++)
            for (int j = 0; j < ctx && !rc; j += chunk) {
                seqs[0] = (wrk_seq_t){.slot = s,
                                      .n_tokens = ctx - j < chunk ? ctx - j : chunk,
                                      .tokens = pt + j};
                rc = wrk_step(b, seqs, 1, err, sizeof err);
            }
        free(pt);
    }
    for (int bi = 0; bi < nb && !rc; bi++) {
        const int B = batches[bi];
        for (int r = -2; r < reps && !rc; r++) { /* two warm-up repetitions */
            for (int k = 0; k <= kmax && !rc; k++) {
                const int n = k + 1;
                for (int s = 0; s < B; s++)
                    seqs[s] = (wrk_seq_t){.slot = s,
                                          .n_tokens = n,
                                          .tokens = toks[s],
                                          .n_logits = n,
                                          .logits = logits + (size_t)s * (MAX_K + 1) * V,
                                          .verify = k > 0};
                const double t0 = now_ms();
                rc = wrk_step(b, seqs, B, err, sizeof err);
                const double t1 = now_ms();
                /* Keep 1 token (a full replay of 1 position) on the others and k (the longest
                 * replay) on slot 0; the states just grow from step to step. */
                double a1 = 0, ak = 0;
                if (!rc && k > 0) {
                    for (int s = 1; s < B; s++)
                        rc |= wrk_spec_accept(b, s, 1);
                    const double t2 = now_ms();
                    rc |= wrk_spec_accept(b, 0, k);
                    const double t3 = now_ms();
                    a1 = B > 1 ? (t2 - t1) / (B - 1) : 0;
                    ak = t3 - t2;
                }
                if (r >= 0) {
                    t[k * reps + r] = t1 - t0;
                    ta[k * reps + r] = a1;
                    tk[k * reps + r] = ak;
                }
            }
        }
        if (rc) break;
        const double dec = median(t, reps);
        printf("%5d  0  %7.2f  %9s  %10s  %10s  %10s\n", B, dec, "1.00x", "-", "-", "-");
        for (int k = 1; k <= kmax; k++) {
            const double step = median(t + k * reps, reps), cost = step / dec;
            /* the a in [0, 1] where (1 - a^(k+1)) / (1 - a) = cost, by bisection; above k + 1
             * no acceptance pays */
            char be[16] = "never";
            if (cost <= 1.0)
                snprintf(be, sizeof be, "0.00");
            else if (cost < k + 1) {
                double lo = 0, hi = 1;
                for (int it = 0; it < 60; it++) {
                    const double a = (lo + hi) / 2;
                    double e = 0, p = 1;
                    for (int j = 0; j <= k; j++, p *= a)
                        e += p;
                    if (e < cost)
                        lo = a;
                    else
                        hi = a;
                }
                snprintf(be, sizeof be, "%.2f", lo);
            }
            char a1[16] = "-";
            if (B > 1) snprintf(a1, sizeof a1, "%.3f", median(ta + k * reps, reps));
            printf("%5d %2d  %7.2f  %8.2fx  %10s  %10s  %10.3f\n", B, k, step, cost, be, a1,
                   median(tk + k * reps, reps));
        }
        fflush(stdout);
    }
    if (rc) fprintf(stderr, "spec_bench: step failed (%d): %s\n", rc, err);
    free(logits);
    free(t);
    free(ta);
    free(tk);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    return rc ? 1 : 0;
}
