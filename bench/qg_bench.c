/* bench: the matmul over a pre-quantized checkpoint's qg pack (kernels_qg.h: int4 / int8
 * groups with scale and zero point, act-order by a gathered x) against the fp32 packed matmul
 * of the same dequantized weights and the q4 pack (--weights q4), in the same run and
 * alternating, best of N: microseconds per call and GB/s of weight bytes read, single thread
 * (the thread's CPU time), for a 2048 x 768 projection (rows x input) at T = 1 and 32.
 * Usage: qg_bench [REPS (default 20)] [ISA (default auto)]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workers/cpu/kernels.h"
#include "workers/cpu/kernels_q.h"
#include "workers/cpu/kernels_qg.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static unsigned rng = 12345;
static unsigned rnd(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

int main(int argc, char **argv)
{
    const int reps = argc > 1 ? atoi(argv[1]) : 20, R = 2048, K = 768;
    const wrk_kern_t *k = wrk_kern_select(argc > 2 ? argv[2] : NULL);
    if (reps <= 0 || !k) {
        fprintf(stderr, "usage: qg_bench [REPS (default 20)] [ISA]\n");
        return 2;
    }
    float *w = malloc((size_t)R * K * 4), *x = malloc((size_t)32 * K * 4);
    float *y = malloc((size_t)32 * R * 4), *scratch = malloc((size_t)WRK_GEMM_BLOCK_ROWS * K * 4);
    for (int i = 0; i < 32 * K; i++)
        x[i] = (float)(rnd() % 2001) / 1000.f - 1.f;
    printf("isa %s, %d x %d, best of %d\n", k->isa, R, K, reps);
    printf("| weights | T | us/call | GB/s of weights |\n|---|---|---|---|\n");
    struct {
        const char *name;
        int bits, gs;
        bool act;
    } cfgs[] = {{"qg int4 g128", 4, 128, false},
                {"qg int4 g128 act-order", 4, 128, true},
                {"qg int8 channel", 8, 768, false}};
    for (int c = 0; c < 3; c++) {
        const int G = K / cfgs[c].gs;
        wrk_pq_src_t src = {.w = w, .rows = R, .cols = K, .bits = cfgs[c].bits, .G = G};
        src.q = malloc((size_t)R * K);
        src.s = malloc((size_t)R * G * 4);
        src.z = malloc((size_t)R * G * 4);
        src.gidx = malloc((size_t)K * 4);
        for (int i = 0; i < K; i++)
            src.gidx[i] = i / cfgs[c].gs;
        for (int i = 0; cfgs[c].act && i < K; i++) { /* shuffled groups */
            int j = (int)(rnd() % (unsigned)(i + 1)), t = src.gidx[i];
            src.gidx[i] = src.gidx[j];
            src.gidx[j] = t;
        }
        for (size_t i = 0; i < (size_t)R * G; i++) {
            src.s[i] = 0.01f;
            src.z[i] = (float)(1 << (cfgs[c].bits - 1));
        }
        for (size_t i = 0; i < (size_t)R * K; i++)
            src.q[i] = (uint8_t)(rnd() & ((1u << cfgs[c].bits) - 1));
        for (int r = 0; r < R; r++)
            for (int i = 0; i < K; i++)
                w[(size_t)r * K + i] = src.s[(size_t)r * G + src.gidx[i]] *
                                       ((float)src.q[(size_t)r * K + i] - src.z[(size_t)r * G]);
        const size_t qb = wrk_pack_qg_bytes(&src);
        void *qpk = aligned_alloc(64, (qb + 63) / 64 * 64);
        wrk_pack_qg(&src, qpk);
        const wrk_mat_t F = {.dt = WRK_DT_F32, .data = w, .rows = R, .cols = K};
        const size_t fb = wrk_pack_bytes(&F), q4b = wrk_pack_q_bytes(WRK_WQ_Q4, R, K);
        void *fpk = aligned_alloc(64, (fb + 63) / 64 * 64),
             *q4pk = aligned_alloc(64, (q4b + 63) / 64 * 64);
        wrk_pack(&F, fpk);
        wrk_pack_q(&F, WRK_WQ_Q4, q4pk);
        const wrk_mat_t mats[3] = {
            {.dt = WRK_DT_F32, .data = w, .rows = R, .cols = K, .pk = qpk, .qf = WRK_WQ_QG},
            {.dt = WRK_DT_F32, .data = w, .rows = R, .cols = K, .pk = fpk},
            {.dt = WRK_DT_F32, .data = w, .rows = R, .cols = K, .pk = q4pk, .qf = WRK_WQ_Q4}};
        const size_t bytes[3] = {qb, fb, q4b};
        const char *names[3] = {cfgs[c].name, "fp32 (same values)", "q4 (--weights q4)"};
        for (int T = 1; T <= 32; T += 31) {
            double best[3] = {1e9, 1e9, 1e9};
            for (int rep = 0; rep < reps; rep++)
                for (int m = 0; m < 3; m++) {
                    if (c > 0 && m > 0) continue; /* fp32 and q4 once, with the first */
                    double t0 = now();
                    wrk_matmul(k, scratch, &mats[m], 0, R, x, K, T, y, R, NULL, false);
                    double dt = now() - t0;
                    if (dt < best[m]) best[m] = dt;
                }
            for (int m = 0; m < 3; m++)
                if (!(c > 0 && m > 0))
                    printf("| %s | %d | %.1f | %.1f |\n", names[m], T, best[m] * 1e6,
                           (double)bytes[m] / best[m] * 1e-9);
        }
        free(qpk);
        free(fpk);
        free(q4pk);
        free(src.q);
        free(src.s);
        free(src.z);
        free(src.gidx);
    }
    free(w);
    free(x);
    free(y);
    free(scratch);
    return 0;
}
