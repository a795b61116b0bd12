/* bench: the bf16 matmul kernels alone, against the fp32 kernel on the same packed BF16
 * weights, in the same run and alternating (fp32, bf16-avx512, bf16, fp32, ...), best of N per
 * kernel: GFLOP/s and the ratio to fp32 for the Mamba projections' shapes at several token
 * counts. First it measures the instruction rates the kernels are built on (independent
 * chains of VFMADD231PS zmm and of VDPBF16PS zmm, per ns), which says what ratio a CPU can
 * give at all: VDPBF16PS does twice the FLOPs of an FMA, so the AVX512_BF16 matmul can beat
 * the fp32 one by up to 2 x (dpbf16 rate / fma rate). Single thread; times are the thread's
 * CPU time. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "workers/cpu/kernels.h"
#include "workers/model/safetensors.h"

/* This thread's CPU time, not the wall clock: on a shared VM another process's time slices
 * would otherwise land in the longer runs (caches it evicts still count). */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#if defined(__x86_64__)
#define CHAINS 12
#define STEP12(OP)                                                                           \
    a0 = OP(a0);                                                                             \
    a1 = OP(a1);                                                                             \
    a2 = OP(a2);                                                                             \
    a3 = OP(a3);                                                                             \
    a4 = OP(a4);                                                                             \
    a5 = OP(a5);                                                                             \
    a6 = OP(a6);                                                                             \
    a7 = OP(a7);                                                                             \
    a8 = OP(a8);                                                                             \
    a9 = OP(a9);                                                                             \
    a10 = OP(a10);                                                                           \
    a11 = OP(a11);
/* Instructions per ns over CHAINS independent accumulators (enough for the latency); the
 * sums grow (a * 1 + 0.5) so that nothing is constant or denormal. */
__attribute__((target("avx512f"))) static double fma_rate(long it)
{
    const __m512 w = _mm512_set1_ps(1.0f), x = _mm512_set1_ps(0.5f);
    /* distinct starts, or the compiler folds the twelve equal chains into one */
    __m512 a0 = _mm512_set1_ps(1), a1 = _mm512_set1_ps(2), a2 = _mm512_set1_ps(3),
           a3 = _mm512_set1_ps(4), a4 = _mm512_set1_ps(5), a5 = _mm512_set1_ps(6),
           a6 = _mm512_set1_ps(7), a7 = _mm512_set1_ps(8), a8 = _mm512_set1_ps(9),
           a9 = _mm512_set1_ps(10), a10 = _mm512_set1_ps(11), a11 = _mm512_set1_ps(12);
#define FMA(a) _mm512_fmadd_ps(a, w, x)
    double t = now();
    for (long i = 0; i < it; i++) {
        STEP12(FMA)
    }
    t = now() - t;
#undef FMA
    __m512 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)it * CHAINS / t / 1e9;
}

__attribute__((target("avx512f,avx512bf16"))) static double dpbf16_rate(long it)
{
    const __m512bh w = (__m512bh)_mm512_set1_epi32(0x3f803f80); /* (1, 1) */
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f003f00); /* (0.5, 0.5) */
    /* distinct starts, or the compiler folds the twelve equal chains into one */
    __m512 a0 = _mm512_set1_ps(1), a1 = _mm512_set1_ps(2), a2 = _mm512_set1_ps(3),
           a3 = _mm512_set1_ps(4), a4 = _mm512_set1_ps(5), a5 = _mm512_set1_ps(6),
           a6 = _mm512_set1_ps(7), a7 = _mm512_set1_ps(8), a8 = _mm512_set1_ps(9),
           a9 = _mm512_set1_ps(10), a10 = _mm512_set1_ps(11), a11 = _mm512_set1_ps(12);
#define DP(a) _mm512_dpbf16_ps(a, w, x)
    double t = now();
    for (long i = 0; i < it; i++) {
        STEP12(DP)
    }
    t = now() - t;
#undef DP
    __m512 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)it * CHAINS / t / 1e9;
}

static bool has_avx512bf16(void)
{
    unsigned a, b, c, d;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __get_cpuid_count(7, 1, &a, &b, &c, &d) &&
           (a & (1u << 5));
}
#endif

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    if (reps < 1 || reps > 10000) {
        fprintf(stderr, "usage: matmul_bench [REPS (default 20)]\n");
        return 2;
    }
    char cpu[256] = "unknown", line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
            cpu[strcspn(cpu, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
    printf("cpu: %s, 1 thread\n", cpu);
#if defined(__x86_64__)
    if (has_avx512bf16()) {
        double bf = 0, bd = 0;
        for (int r = 0; r < 5; r++) { /* alternating, best of 5 */
            double a = fma_rate(4000000), b = dpbf16_rate(4000000);
            if (a > bf) bf = a;
            if (b > bd) bd = b;
        }
        printf("instruction rates (%d chains): vfmadd231ps zmm %.2f/ns, vdpbf16ps zmm %.2f/ns: "
               "the AVX512_BF16 matmul can reach at most %.2fx the fp32 one's FLOP rate\n",
               CHAINS, bf, bd, 2 * bd / bf);
    }
#endif
    const char *names[3] = {"fp32", "bf16-avx512", "bf16"};
    const wrk_kern_t *ks[3] = {wrk_kern_for(NULL, NULL, NULL), NULL, NULL};
    for (int i = 1; i < 3; i++) {
        const char *why = "";
        ks[i] = wrk_kern_for(NULL, names[i], &why);
        if (!ks[i]) printf("%s: not here (%s)\n", names[i], why);
        else printf("%s: kernels %s\n", names[i], ks[i]->isa);
    }
    /* mamba-130m / mamba2-130m projections (rows x cols): in_proj, out_proj, lm_head slice */
    static const int shapes[][2] = {{3072, 768}, {768, 1536}, {3352, 768}, {4096, 768}};
    static const int Ts[] = {1, 32, 256};
    printf("%-11s %5s %-12s %10s %10s %10s  %s\n", "shape", "T", "", "fp32", "bf16-avx512",
           "bf16", "GFLOP/s; ratios to fp32");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int O = shapes[si][0], K = shapes[si][1];
        uint16_t *w = malloc((size_t)O * K * 2);
        for (size_t i = 0; i < (size_t)O * K; i++)
            w[i] = wrk_f32_to_bf16((float)((i * 7919) % 1000) / 1000.f - 0.5f);
        wrk_mat_t P = {.dt = WRK_DT_BF16, .data = w, .rows = O, .cols = K};
        void *pk = aligned_alloc(64, (wrk_pack_bytes(&P) + 63) / 64 * 64);
        wrk_pack(&P, pk);
        P.pk = pk;
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti];
            float *x = malloc(sizeof(float) * (size_t)T * K), *y = malloc(sizeof(float) * (size_t)T * O);
            float *scr = malloc(sizeof(float) * wrk_mm_scratch_floats(K));
            for (int i = 0; i < T * K; i++) x[i] = (float)(i % 37) / 37.f - 0.5f;
            double best[3] = {1e30, 1e30, 1e30};
            for (int r = 0; r < reps; r++)
                for (int k = 0; k < 3; k++) {
                    if (!ks[k]) continue;
                    double t = now();
                    ks[k]->mm(&P, 0, O, x, K, T, y, O, NULL, false, scr);
                    t = now() - t;
                    if (t < best[k]) best[k] = t;
                }
            double gf[3];
            for (int k = 0; k < 3; k++) gf[k] = ks[k] ? 2.0 * O * K * T / best[k] / 1e9 : 0;
            printf("%5dx%-5d %5d %-12s %10.1f %10.1f %10.1f  %.2fx %.2fx\n", O, K, T, "GFLOP/s",
                   gf[0], gf[1], gf[2], gf[1] / gf[0], gf[2] / gf[0]);
            fflush(stdout);
            free(x);
            free(y);
            free(scr);
        }
        free(pk);
        free(w);
    }
    return 0;
}
