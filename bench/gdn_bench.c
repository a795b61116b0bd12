/* bench: the Gated DeltaNet core alone (Qwen3-Next), the chunked form (gdn_chunk + gdn_close,
 * 64-token blocks) against the recurrent form (delta_rule, token by token), in the same run,
 * alternating, best of N: nanoseconds per token and head for calls of T tokens (T = 1: decode,
 * one token per call through a whole block; 64, 256, 1024: prefill). Inputs are the delta
 * rule's (normed k, scaled q, v, beta, log-decay); the projections, conv and norms around it
 * are not included. Single thread; times are the thread's CPU time.
 * Usage: gdn_bench [--isa auto|avx512|avx2|portable] [--dk 128] [--dv 128] [--heads 8]
 *                  [--reps 5] [--decay 0.05 (mean -log-decay per token)] */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workers/cpu/kernels.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffffff) / 8388608.f - 1.f;
}

enum { B = WRK_GDN_BLOCK, TMAX = 1024 };

typedef struct {
    int dk, dv, heads;
    float *k, *q, *v, *beta, *g; /* [TMAX] rows */
    float *S;                    /* [heads][dk][dv] */
    float *Kb, *Ub, *G;          /* [heads][B][dk], [heads][B][dv], [heads][B] */
    float *o, *ks;
} bench_t;

/* T tokens in calls of `call` tokens, every head; returns seconds. */
static double run(const wrk_kern_t *kr, bench_t *b, int T, int call, bool chunked)
{
    const int dk = b->dk, dv = b->dv;
    memset(b->S, 0, sizeof(float) * b->heads * dk * dv);
    double t0 = now();
    for (int h = 0; h < b->heads; h++) {
        float *S = b->S + (size_t)h * dk * dv;
        float *Kb = b->Kb + (size_t)h * B * dk, *Ub = b->Ub + (size_t)h * B * dv;
        float *G = b->G + (size_t)h * B;
        if (!chunked) {
            for (int t = 0; t < T; t++)
                kr->delta_rule(dk, dv, S, b->k + (size_t)t * dk, b->q + (size_t)t * dk,
                               b->v + (size_t)t * dv, b->beta[t], expf(b->g[t]), b->o);
            continue;
        }
        int j = 0;
        for (int c0 = 0; c0 < T; c0 += call)
            for (int s0 = c0; s0 < c0 + call && s0 < T;) {
                int n = c0 + call - s0 < B - j ? c0 + call - s0 : B - j;
                if (n > T - s0) n = T - s0;
                for (int i = 0; i < n; i++) {
                    memcpy(Kb + (size_t)(j + i) * dk, b->k + (size_t)(s0 + i) * dk,
                           sizeof(float) * dk);
                    G[j + i] = (j + i ? G[j + i - 1] : 0.f) + b->g[s0 + i];
                }
                kr->gdn_chunk(dk, dv, S, j, j + n, Kb, Ub, G, b->q + (size_t)s0 * dk,
                              b->v + (size_t)s0 * dv, dv, b->beta + s0, b->o, b->ks);
                j += n;
                if (j == B) {
                    kr->gdn_close(dk, dv, S, B, Kb, Ub, G, b->ks);
                    j = 0;
                }
                s0 += n;
            }
    }
    return now() - t0;
}

int main(int argc, char **argv)
{
    const char *isa = "auto";
    int dk = 128, dv = 128, heads = 8, reps = 5;
    double decay = 0.05; /* mean -log-decay per token */
    static const struct option opts[] = {{"isa", required_argument, 0, 'i'},
                                         {"dk", required_argument, 0, 'k'},
                                         {"dv", required_argument, 0, 'v'},
                                         {"heads", required_argument, 0, 'h'},
                                         {"reps", required_argument, 0, 'r'},
                                         {"decay", required_argument, 0, 'd'},
                                         {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "i:k:v:h:r:d:", opts, NULL)) != -1;) {
        switch (o) {
        case 'i':
            isa = optarg;
            break;
        case 'k':
            dk = atoi(optarg);
            break;
        case 'v':
            dv = atoi(optarg);
            break;
        case 'h':
            heads = atoi(optarg);
            break;
        case 'r':
            reps = atoi(optarg);
            break;
        case 'd':
            decay = atof(optarg);
            break;
        default:
            goto usage;
        }
    }
    if (dk < 1 || dk > 1024 || dv < 1 || dv > 1024 || heads < 1 || heads > 256 || reps < 1 ||
        reps > 100 || !(decay > 0 && decay < 1000))
        goto usage;
    const wrk_kern_t *kr = wrk_kern_select(isa);
    if (!kr) {
        fprintf(stderr, "gdn_bench: this CPU cannot run the %s kernels\n", isa);
        return 1;
    }
    bench_t b = {.dk = dk, .dv = dv, .heads = heads};
    b.k = malloc(sizeof(float) * TMAX * dk);
    b.q = malloc(sizeof(float) * TMAX * dk);
    b.v = malloc(sizeof(float) * TMAX * dv);
    b.beta = malloc(sizeof(float) * TMAX);
    b.g = malloc(sizeof(float) * TMAX);
    b.S = malloc(sizeof(float) * heads * dk * dv);
    b.Kb = malloc(sizeof(float) * heads * B * dk);
    b.Ub = malloc(sizeof(float) * heads * B * dv);
    b.G = malloc(sizeof(float) * heads * B);
    b.o = malloc(sizeof(float) * TMAX * dv);
    b.ks = malloc(sizeof(float) * (2 * B * (dv + 1) + B * (dk + 2)));
    if (!b.k || !b.q || !b.v || !b.beta || !b.g || !b.S || !b.Kb || !b.Ub || !b.G || !b.o ||
        !b.ks) {
        fprintf(stderr, "gdn_bench: out of memory\n");
        return 1;
    }
    unsigned seed = 1;
    for (int t = 0; t < TMAX; t++) {
        double nk = 0, nq = 0;
        for (int i = 0; i < dk; i++) {
            b.k[t * dk + i] = frand(&seed), b.q[t * dk + i] = frand(&seed);
            nk += b.k[t * dk + i] * b.k[t * dk + i], nq += b.q[t * dk + i] * b.q[t * dk + i];
        }
        for (int i = 0; i < dk; i++)
            b.k[t * dk + i] /= (float)sqrt(nk), b.q[t * dk + i] /= (float)sqrt(nq * dk);
        for (int e = 0; e < dv; e++)
            b.v[t * dv + e] = frand(&seed);
        b.beta[t] = 0.5f + 0.4f * frand(&seed);
        b.g[t] = (float)(-decay * (1.0 + 0.8 * frand(&seed)));
    }
    printf("gdn_bench: kernels %s, dk %d, dv %d, %d heads, log-decay -%g per token (+-80%%), "
           "best of %d, single thread (CPU time)\n",
           kr->isa, dk, dv, heads, decay, reps);
    printf("%-22s %14s %14s %8s\n", "calls", "recurrent ns", "chunked ns", "ratio");
    static const int Ts[][2] = {{64, 1}, {256, 64}, {1024, 256}, {1024, 1024}};
    for (size_t c = 0; c < sizeof Ts / sizeof Ts[0]; c++) {
        const int T = Ts[c][0], call = Ts[c][1];
        double br = 1e30, bc = 1e30;
        for (int r = 0; r < reps; r++) {
            double tr = run(kr, &b, T, call, false), tc = run(kr, &b, T, call, true);
            br = tr < br ? tr : br;
            bc = tc < bc ? tc : bc;
        }
        const double per = 1e9 / ((double)T * heads);
        char what[64];
        snprintf(what, sizeof what, "%d tok in calls of %d", T, call);
        printf("%-22s %14.1f %14.1f %7.2fx\n", what, br * per, bc * per, br / bc);
    }
    return 0;
usage:
    fprintf(stderr, "usage: gdn_bench [--isa auto|avx512|avx2|portable] [--dk N] [--dv N] "
                    "[--heads N] [--reps N] [--decay X]\n");
    return 2;
}
