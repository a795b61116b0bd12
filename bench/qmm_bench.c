/* bench: the matmul kernels alone on one thread, per weight format (--weights native BF16
 * packs, q8, q4), on a model's matrix shapes: L layers of an in_proj [2E x D] and an
 * out_proj [D x E] (default the mamba-130m shape: D 768, E 1536, 24 layers), random
 * weights, T tokens per call. Times are the thread's CPU time (CLOCK_THREAD_CPUTIME_ID),
 * the minimum over the repeats: on a machine shared with other jobs that counts only the
 * time this thread ran (still slowed by the others' use of caches and memory).
 * Kernels, each row in the same run: native BF16 packs on the fp32 kernels ("fp32") and on
 * the opt-in bf16 matmul ("bf16": AMX, else AVX512_BF16; skipped where neither runs); q8 and
 * q4 on the AMX-INT8 kernel ("amx-int8", VNNI below WRK_QMM_AMX_MIN_T tokens), the AVX-512
 * VNNI kernel ("vnni") and the AVX2 one ("avx2"), each where this CPU runs it. Per T every
 * configuration runs one pass in turn, repeated for --seconds per configuration.
 *
 *   qmm_bench [--dim D] [--expand E] [--layers L] [--tokens 1,8,32,128] [--seconds S]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workers/cpu/kernels.h"
#include "workers/cpu/kernels_q.h"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

int main(int argc, char **argv)
{
    int D = 768, E = 1536, L = 24, Ts[8] = {1, 8, 32, 128}, nT = 4;
    double secs = 1.0;
    static const struct option opts[] = {{"dim", required_argument, 0, 'd'},
                                         {"expand", required_argument, 0, 'e'},
                                         {"layers", required_argument, 0, 'l'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"seconds", required_argument, 0, 's'},
                                         {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "d:e:l:t:s:", opts, NULL)) != -1;) {
        if (o == 'd')
            D = atoi(optarg);
        else if (o == 'e')
            E = atoi(optarg);
        else if (o == 'l')
            L = atoi(optarg);
        else if (o == 's')
            secs = atof(optarg);
        else if (o == 't') {
            nT = 0;
            for (char *q = optarg; *q && nT < 8;) {
                Ts[nT++] = (int)strtol(q, &q, 10);
                if (*q == ',') q++;
            }
        } else
            return 2;
    }
    if (D < 16 || E < 16 || L < 1 || nT < 1 || secs <= 0) return 2;
    int Tmax = 0;
    for (int i = 0; i < nT; i++) {
        if (Ts[i] < 1 || Ts[i] > 4096) return 2;
        if (Ts[i] > Tmax) Tmax = Ts[i];
    }
    const wrk_kern_t *k = wrk_kern_select("auto");
    const int rows[2] = {2 * E, D}, cols[2] = {D, E};
    unsigned seed = 1;
    uint16_t *src[2];
    for (int m = 0; m < 2; m++) {
        src[m] = malloc((size_t)rows[m] * cols[m] * 2);
        for (size_t i = 0; i < (size_t)rows[m] * cols[m]; i++) {
            float f = frand(&seed) * 0.05f;
            uint32_t u;
            memcpy(&u, &f, 4);
            src[m][i] = (uint16_t)(u >> 16);
        }
    }
    float *x = malloc((size_t)Tmax * 2 * E * 4), *y = malloc((size_t)Tmax * 2 * E * 4);
    float *scratch = malloc((size_t)WRK_GEMM_BLOCK_ROWS * E * 4);
    for (size_t i = 0; i < (size_t)Tmax * 2 * E; i++)
        x[i] = frand(&seed);
    printf("qmm_bench: kernels %s, 1 thread, %d layers of [%d x %d] + [%d x %d], CPU time, min "
           "of repeats\n",
           k->isa, L, 2 * E, D, D, E);
    printf("%-7s %-9s %6s %12s %10s %12s\n", "weights", "kernel", "T", "ms/pass", "tok/s",
           "GB/s(weights)");
    const char *why = "";
    const wrk_kern_t *kb = wrk_kern_for(NULL, "bf16", &why);
    static const char *names[] = {"native", "q8", "q4"};
    wrk_mat_t *W[3];
    size_t bytes[3] = {0, 0, 0};
    for (int f = 0; f < 3; f++) {
        const wrk_wq_t qf = f == 0 ? WRK_WQ_NATIVE : f == 1 ? WRK_WQ_Q8 : WRK_WQ_Q4;
        W[f] = calloc((size_t)L * 2, sizeof *W[f]);
        for (int l = 0; l < L; l++)
            for (int m = 0; m < 2; m++) {
                wrk_mat_t *w = &W[f][l * 2 + m];
                *w = (wrk_mat_t){
                    .dt = WRK_DT_BF16, .data = src[m], .rows = rows[m], .cols = cols[m]};
                const size_t b = qf ? wrk_pack_q_bytes(qf, rows[m], cols[m]) : wrk_pack_bytes(w);
                void *pk = aligned_alloc(64, (b + 63) / 64 * 64);
                if (qf) {
                    if (wrk_pack_q(w, qf, pk)) return 1;
                } else
                    wrk_pack(w, pk);
                w->pk = pk;
                w->qf = qf;
                bytes[f] += b;
            }
    }
    /* the kernels: 0/1 the fp32/bf16 tables on the native packs, 2..4 the quantized per ISA
     * (q8 and q4 each); every configuration runs one pass in turn, so the other jobs' load
     * falls on all of them alike, and each keeps its fastest pass */
    static const char *kname[] = {"fp32", "bf16", "amx-int8", "vnni", "avx2"};
    const wrk_qmm_fn qfn[] = {NULL, NULL, wrk__qmm_amx(NULL), wrk__qmm_avx512(), wrk__qmm_avx2()};
    int cf[16], ck[16], nc = 0;
    for (int f = 0; f < 3; f++)
        for (int ki = 0; ki < 5; ki++) {
            if (f == 0 ? ki > 1 || (ki == 1 && !kb) : ki < 2 || !qfn[ki]) continue;
            if (ki == 3 && strncmp(k->isa, "avx512", 6) != 0) continue;
            if (ki == 4 && strcmp(k->isa, "portable") == 0) continue;
            cf[nc] = f;
            ck[nc++] = ki;
        }
    for (int ti = 0; ti < nT; ti++) {
        const int T = Ts[ti];
        double best[16];
        for (int c = 0; c < nc; c++)
            best[c] = 1e30;
        const double t_end = cpu_now() + secs * nc;
        for (int reps = 0; reps < 3 || cpu_now() < t_end; reps++)
            for (int c = 0; c < nc; c++) {
                const double t0 = cpu_now();
                for (int l = 0; l < L; l++)
                    for (int m = 0; m < 2; m++) {
                        const wrk_mat_t *w = &W[cf[c]][l * 2 + m];
                        if (ck[c] < 2)
                            wrk_matmul(ck[c] ? kb : k, scratch, w, 0, rows[m], x, cols[m], T, y,
                                       rows[m], NULL, false);
                        else
                            wrk_qmm_with(qfn[ck[c]], w, 0, rows[m], x, cols[m], T, y, rows[m], NULL,
                                         false, scratch);
                    }
                const double dt = cpu_now() - t0;
                if (dt < best[c]) best[c] = dt;
            }
        for (int c = 0; c < nc; c++)
            printf("%-7s %-9s %6d %12.3f %10.1f %12.1f\n", names[cf[c]], kname[ck[c]], T,
                   best[c] * 1e3, T / best[c], bytes[cf[c]] / best[c] / 1e9);
    }
    for (int f = 0; f < 3; f++) {
        for (int i = 0; i < L * 2; i++)
            free((void *)W[f][i].pk);
        free(W[f]);
    }
    free(src[0]);
    free(src[1]);
    free(x);
    free(y);
    free(scratch);
    return 0;
}
