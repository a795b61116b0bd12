/* bench: Mamba engine throughput on the CPU backend next to the machine's limits measured
 * in the same run — read bandwidth (a vectorized read of a buffer far larger than the
 * caches), the fp32 FMA peak (bench_peak.h: every thread's FMA units busy) and OpenBLAS
 * sgemm (large square). Prints decode tokens/s at several batch sizes with step-latency
 * percentiles, prefill tokens/s, and memory. Batch 1's bandwidth limit counts the bytes one
 * token reads: one row of an untied embedding, and top_k of n_experts routed experts. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* before cblas.h, whose <complex.h> defines I (a parameter name in the kernel headers) */
#include "workers/cpu/cpu_int.h" /* wrk_cpu_pack_stats */

#include <cblas.h>

#include "bench/bench_peak.h"
#include "workers/cpu/pool.h"
#include "workers/wrk.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void cpu_model(char *out, size_t len)
{
    snprintf(out, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *p = strchr(line, ':');
            if (p) snprintf(out, len, "%s", p + 2);
            out[strcspn(out, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
}

static long peak_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return kb;
}

/* ---- limits ---- */
typedef struct {
    const float *buf;
    size_t n;
    int prefetch; /* 0: hardware prefetchers only; else software prefetch this many bytes ahead */
    int streams;  /* concurrent sequential streams per thread */
    double sums[64];
} bw_t;

/* Each thread sums its contiguous share of the buffer, split into `streams` parts read side
 * by side (several streams keep more misses in flight than one); with `prefetch` it also
 * issues prefetcht1 that many bytes ahead in each stream, as the matmul kernels do. */
static void bw_job(void *arg, int ith, int nth)
{
    bw_t *b = arg;
    size_t lo = b->n * ith / nth, hi = b->n * (ith + 1) / nth;
    typedef float v8 __attribute__((vector_size(32)));
    enum { MAXS = 8 };
    const int S = b->streams < 1 ? 1 : b->streams > MAXS ? MAXS : b->streams;
    const size_t per = (hi - lo) / 8 / (size_t)S / 4 * 4; /* vectors per stream */
    const v8 *p[MAXS];
    for (int j = 0; j < S; j++)
        p[j] = (const v8 *)(b->buf + lo) + (size_t)j * per;
    v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    const size_t ahead = (size_t)b->prefetch / sizeof(v8);
    for (size_t i = 0; i + 4 <= per; i += 4)
        for (int j = 0; j < S; j++) {
            if (ahead) { /* 4 vectors of 32 bytes: two lines per iteration */
                __builtin_prefetch(p[j] + i + ahead, 0, 2);
                __builtin_prefetch(p[j] + i + ahead + 2, 0, 2);
            }
            a0 += p[j][i];
            a1 += p[j][i + 1];
            a2 += p[j][i + 2];
            a3 += p[j][i + 3];
        }
    v8 s = a0 + a1 + a2 + a3;
    b->sums[ith] = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

/* Read bandwidth over a buffer of `bytes` (rounded to 64 floats). */
/* Reads one small sysfs file into buf (trailing newline dropped); false when absent. */
static bool read_small(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    if (ok) buf[strcspn(buf, "\n")] = 0;
    return ok;
}

/* The last-level cache as lscpu counts it: the unified caches of the highest level in sysfs
 * (/sys/devices/system/cpu/cpuN/cache/indexM), one instance per distinct shared_cpu_list,
 * summed. glibc's sysconf(_SC_LEVEL3_CACHE_SIZE) reads CPUID leaves that some hypervisors
 * fill wrongly (320 MiB reported where lscpu says 32 MiB on one AMD VM). Returns the total
 * bytes (0 if sysfs has no cache topology) and the level and instance count. */
static size_t llc_sysfs(int *level_out, int *instances_out)
{
    enum { MAX_INST = 256 };
    char lists[MAX_INST][64];
    size_t sizes[MAX_INST];
    int n = 0, best = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    for (long c = 0; c < ncpu && c < 4096; c++) {
        for (int i = 0; i < 16; i++) {
            char path[128], buf[64];
            snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%ld/cache/index%d/level", c, i);
            if (!read_small(path, buf, sizeof buf)) break;
            int level = atoi(buf);
            snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%ld/cache/index%d/type", c, i);
            if (!read_small(path, buf, sizeof buf) || strcmp(buf, "Unified") != 0 || level < best)
                continue;
            if (level > best) { /* a higher level: forget the lower one's instances */
                best = level;
                n = 0;
            }
            char list[64], size[64];
            snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%ld/cache/index%d/size", c, i);
            if (!read_small(path, size, sizeof size)) continue;
            snprintf(path, sizeof path,
                     "/sys/devices/system/cpu/cpu%ld/cache/index%d/shared_cpu_list", c, i);
            if (!read_small(path, list, sizeof list)) snprintf(list, sizeof list, "cpu%ld", c);
            bool seen = false;
            for (int k = 0; k < n && !seen; k++)
                seen = strcmp(lists[k], list) == 0;
            if (seen || n == MAX_INST) continue;
            char *end = NULL;
            unsigned long long v = strtoull(size, &end, 10);
            if (end && (*end == 'K' || *end == 'k'))
                v <<= 10;
            else if (end && *end == 'M')
                v <<= 20;
            else if (end && *end == 'G')
                v <<= 30;
            snprintf(lists[n], sizeof lists[n], "%s", list);
            sizes[n++] = (size_t)v;
        }
    }
    size_t total = 0;
    for (int k = 0; k < n; k++)
        total += sizes[k];
    *level_out = best;
    *instances_out = n;
    return total;
}

/* lscpu's own figure for the last-level cache (`lscpu -C=LEVEL,TYPE,ALL-SIZE -B`: the
 * highest-level unified cache, all instances), as the cross-check of llc_sysfs; 0 when lscpu
 * is missing or prints nothing usable. */
static long llc_from_lscpu(void)
{
    FILE *p = popen("lscpu -C=LEVEL,TYPE,ALL-SIZE -B 2>/dev/null", "r");
    if (!p) return 0;
    char line[256], type[64];
    int best = 0, level;
    long size = 0, v;
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "%d %63s %ld", &level, type, &v) == 3 && !strcmp(type, "Unified") &&
            level >= best) {
            best = level;
            size = v;
        }
    pclose(p);
    return size;
}

static double read_bandwidth(wrk_pool_t *pool, size_t bytes)
{
    bytes = bytes / 256 * 256;
    size_t n = bytes / sizeof(float);
    float *buf = aligned_alloc(64, bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)(i & 255);
    /* the best over 1, 2, 4 and 8 streams per thread, with and without software prefetch at
     * a few distances, 2 runs each */
    static const int dist[] = {0, 1024, 4096};
    double best = 0;
    for (int st = 1; st <= 8; st *= 2)
        for (int d = 0; d < 3; d++)
            for (int rep = 0; rep < 2; rep++) {
                bw_t b = {.buf = buf, .n = n, .prefetch = dist[d], .streams = st};
                size_t used = (n / (size_t)wrk_pool_size(pool)) / 8 / (size_t)st / 4 * 4 * 8 *
                              (size_t)st * (size_t)wrk_pool_size(pool) * sizeof(float);
                double t = now();
                wrk_pool_run(pool, bw_job, &b);
                double gbs = used / (now() - t) / 1e9;
                if (gbs > best) best = gbs;
            }
    free(buf);
    return best;
}

static double gemm_peak(int threads)
{
    const int n = 2048;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    for (int i = 0; i < n * n; i++)
        a[i] = b[i] = 1e-3f * (i % 97);
    openblas_set_num_threads(threads);
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        double gf = 2.0 * n * n * n / (now() - t) / 1e9;
        if (gf > best) best = gf;
    }
    openblas_set_num_threads(1);
    free(a);
    free(b);
    free(c);
    return best;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *matmul = NULL, *weights = NULL;
    int threads = 0, prefill_len = 512, repeat = 0, tp = 1;
    bool adapt = false;
    double secs = 3.0;
    int batches[16] = {1, 2, 4, 8, 16, 32}, n_batches = 6;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"batches", required_argument, 0, 'b'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"seconds", required_argument, 0, 's'},
                                         {"prefill", required_argument, 0, 'p'},
                                         {"matmul", required_argument, 0, 'x'},
                                         {"repeat", required_argument, 0, 'r'},
                                         {"weights", required_argument, 0, 'w'},
                                         {"tp", required_argument, 0, 't'},
                                         {"adapt", no_argument, 0, 'a'},
                                         {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "m:j:s:p:b:x:r:w:t:a", opts, NULL)) != -1;) {
        if (o == 'm')
            model_dir = optarg;
        else if (o == 'j')
            threads = atoi(optarg);
        else if (o == 's')
            secs = atof(optarg);
        else if (o == 'p')
            prefill_len = atoi(optarg);
        else if (o == 'x')
            matmul = optarg;
        else if (o == 'r')
            repeat = atoi(optarg);
        else if (o == 'w')
            weights = optarg;
        else if (o == 't')
            tp = atoi(optarg);
        else if (o == 'a')
            adapt = true;
        else if (o == 'b') {
            n_batches = 0;
            for (char *q = optarg; *q && n_batches < 16;) {
                int v = (int)strtol(q, &q, 10);
                if (v < 1 || v > 32) return 2;
                batches[n_batches++] = v;
                if (*q == ',')
                    q++;
                else if (*q)
                    return 2;
            }
        } else
            return 2;
    }
    /* --matmul: one mode or several separated by commas, each measured in turn in this run */
    enum { MAX_MODES = 4 };
    char modes_buf[128];
    const char *modes[MAX_MODES] = {matmul};
    int n_modes = 1;
    if (matmul && strlen(matmul) < sizeof modes_buf) {
        snprintf(modes_buf, sizeof modes_buf, "%s", matmul);
        n_modes = 0;
        for (char *save = NULL, *tok = strtok_r(modes_buf, ",", &save); tok;
             tok = strtok_r(NULL, ",", &save))
            if (n_modes < MAX_MODES)
                modes[n_modes++] = tok;
            else
                return 2;
    }
    if (!model_dir || prefill_len < 0 || secs <= 0 || repeat < 0 || repeat > 100 || n_modes == 0 ||
        tp < 1 || tp > 64 ||
        (matmul && strlen(matmul) >= sizeof modes_buf)) {
        fprintf(stderr,
                "usage: mamba_bench --model DIR [--threads N] [--seconds S] "
                "[--prefill TOKENS (0: skip)] [--batches 1,2,4,... (each <= 32)] "
                "[--matmul fp32|bf16|bf16-avx512[:gdn-recurrent][,...] (several: each in "
                "turn, with ratios to the first)] [--repeat N (batch 1 N more times, each after a "
                "bandwidth measurement)] [--weights native|q8|q4] [--tp N (tensor-parallel ranks, "
                "threads split between them)] [--adapt (adapt_threads: fewer threads while they wait for "
                "CPUs)]\n");
        return 2;
    }
    char err[1024], cpu[256];
    wrk_model_t *m = NULL;
    if (wrk_model_load(model_dir, &m, err, sizeof err)) {
        fprintf(stderr, "mamba_bench: %s\n", err);
        return 1;
    }
    const wrk_model_info_t *mi = wrk_model_info(m);
    const int max_batch = 32;
    wrk_pool_t *pool = NULL;
    int nth = threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    wrk_pool_create(nth, &pool);
    cpu_model(cpu, sizeof cpu);
    /* Two read rates: "memory", over a buffer much larger than the caches (4x the last-level
     * cache, at least 1 GiB), and "working set", over a buffer the size of the weights: where
     * the weights fit in the last-level cache (480 MiB on some of these VMs) batch-1 decode
     * streams them from there, not from memory, and the second is its real limit. */
    /* the bytes a decode step reads: the packed matrices as packed (quantized with --weights
     * q8|q4) and every other tensor as stored; a first backend packs the model */
    {
        wrk_backend_t *b0 = NULL;
        wrk_backend_opts_t bo0 = {.n_threads = 1, .n_slots = 1, .weights = weights};
        if (wrk_cpu_backend_create(m, &bo0, &b0, err, sizeof err)) {
            fprintf(stderr, "mamba_bench: %s\n", err);
            return 1;
        }
        wrk_backend_destroy(b0);
    }
    size_t pk_native = 0, pk_packed = 0;
    wrk_cpu_pack_stats(m, &pk_native, &pk_packed);
    const double weight_b = (double)mi->weight_bytes - (double)pk_native + (double)pk_packed,
                 state_b = (double)mi->state_bytes;
    int llc_level = 0, llc_inst = 0;
    long llc_cpuid = sysconf(_SC_LEVEL3_CACHE_SIZE);
    long llc = (long)llc_sysfs(&llc_level, &llc_inst);
    long llc_lscpu = llc_from_lscpu();
    /* The cross-check: sysfs (what is used), lscpu's own figure, and CPUID's (glibc). */
    printf("last-level cache: sysfs L%d %.0f MiB (%d instance(s)); lscpu %s%.0f MiB; CPUID "
           "(sysconf) L3 %.0f MiB%s\n",
           llc_level, (double)llc / 1048576, llc_inst, llc_lscpu > 0 ? "" : "n/a ",
           (double)(llc_lscpu > 0 ? llc_lscpu : 0) / 1048576,
           (double)(llc_cpuid > 0 ? llc_cpuid : 0) / 1048576,
           llc > 0 && llc_lscpu > 0 && llc_lscpu != llc ? " -- sysfs and lscpu DIFFER" : "");
    if (llc <= 0) /* no sysfs cache topology: CPUID's figure, said so */
        llc = llc_cpuid;
    else if (llc_cpuid > 0 && llc_cpuid != llc)
        printf("note: CPUID (sysconf) says L3 %.0f MiB, sysfs L%d %.0f MiB in %d instance(s); "
               "using sysfs, as lscpu does\n",
               (double)llc_cpuid / 1048576, llc_level, (double)llc / 1048576, llc_inst);
    size_t big = llc > 0 && (size_t)llc * 4 > ((size_t)1 << 30) ? (size_t)llc * 4 : (size_t)1 << 30;
    /* a batch-1 step reads one row of an untied embedding, and top_k of the n_experts routed
     * experts of an MoE model */
    int n_experts = 0, top_k = 0;
    double embed_unread = 0;
    const double unread = bench_unread_bytes(model_dir, &n_experts, &top_k, &embed_unread);
    const double read_b = weight_b - unread;
    const size_t ws = (size_t)(read_b + 2 * state_b);
    double bw_mem = read_bandwidth(pool, big);
    double bw = read_bandwidth(pool, ws);
    double sgemm = gemm_peak(nth);
    int fma_lanes = 0;
    const double fma = bench_fma_peak(pool, &fma_lanes);
    /* the compute limit: the FMA peak where it was measured (sgemm reaches a share of it,
     * often a small one on these VMs), else sgemm */
    const double peak = fma > sgemm ? fma : sgemm;
    const char *peak_name = fma > sgemm ? "FMA peak" : "sgemm peak";
    const double lm_flops = 2.0 * mi->vocab_size * mi->hidden_size;
    printf("cpu: %s, %d threads\n", cpu, nth);
    printf("model: %s, %d layers, hidden %d, vocab %d, weights %s --weights %s %.1f MB read per "
           "step (%.1f MB stored), state %.2f MB/seq\n",
           model_dir, mi->n_layers, mi->hidden_size, mi->vocab_size,
           wrk_dtype_name(mi->weight_dtype), weights ? weights : "native", weight_b / 1e6,
           (double)mi->weight_bytes / 1e6, state_b / 1e6);
    if (unread > 0) {
        printf("read per batch-1 step: %.1f MB of the %.1f MB; not read: %.1f MB of the untied "
               "embedding (all but one row)",
               read_b / 1e6, weight_b / 1e6, embed_unread / 1e6);
        if (unread > embed_unread)
            printf(", %.1f MB of routed experts (%d experts, top %d)",
                   (unread - embed_unread) / 1e6, n_experts, top_k);
        printf("\n");
    }
    printf("limits: read bandwidth %.1f GB/s over the bytes a step reads (%.1f GB/s over %.0f "
           "MiB, last-level cache %.0f MiB), fp32 FMA peak %.1f GFLOP/s (%d-lane FMA chains, %d "
           "threads), sgemm %.1f GFLOP/s (2048^3); compute limit: %s\n",
           bw, bw_mem, (double)big / 1048576, llc > 0 ? (double)llc / 1048576 : 0, fma,
           fma_lanes, nth, sgemm, peak_name);

    const int V = mi->vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)max_batch * V);
    int32_t toks[32];
    double *lat = malloc(sizeof(double) * 100000);
    double tps_at[MAX_MODES][17] = {{0}}; /* per mode: tok/s per batch index, [16] prefill */
    const char *isa_of[MAX_MODES] = {0};
    for (int md = 0; md < n_modes; md++) {
        wrk_backend_t *b = NULL;
        /* a mode "<matmul>:gdn-recurrent" creates its backend with RCD_GDN_RECURRENT=1 (the
         * Gated DeltaNet's token-by-token form; workers/README.md, "Qwen3-Next") */
        char mm[64];
        const char *suf = modes[md] ? strstr(modes[md], ":gdn-recurrent") : NULL;
        if (suf && (size_t)(suf - modes[md]) < sizeof mm) {
            snprintf(mm, sizeof mm, "%.*s", (int)(suf - modes[md]), modes[md]);
            setenv("RCD_GDN_RECURRENT", "1", 1);
        } else {
            snprintf(mm, sizeof mm, "%s", modes[md] ? modes[md] : "");
            unsetenv("RCD_GDN_RECURRENT");
        }
        wrk_backend_opts_t bo = {.n_threads = threads,
                                 .tp = tp,
                                 .n_slots = max_batch,
                                 .matmul = mm[0] ? mm : NULL,
                                 .weights = weights,
                                 .adapt_threads = adapt,
                                 .max_step_tokens =
                                     prefill_len > max_batch ? prefill_len : max_batch};
        if (wrk_cpu_backend_create(m, &bo, &b, err, sizeof err)) {
            fprintf(stderr, "mamba_bench: %s\n", err);
            return 1;
        }
        isa_of[md] = wrk_backend_isa(b);
        printf("--- matmul %s: kernels %s, tp %d\n", modes[md] ? modes[md] : "fp32", isa_of[md],
               tp);
        printf("%-8s %10s %10s %10s %10s %9s %s\n", "batch", "tok/s", "step_p50", "step_p99",
               "GFLOP/s", "limit%", "(limit) step_min");
        for (int bi = 0; bi < n_batches; bi++) {
            int B = batches[bi];
            wrk_seq_t seqs[32];
            for (int i = 0; i < B; i++) {
                wrk_state_reset(b, i);
                toks[i] = (i * 7919) % V;
                seqs[i] = (wrk_seq_t){.slot = i,
                                      .n_tokens = 1,
                                      .tokens = &toks[i],
                                      .n_logits = 1,
                                      .logits = logits + (size_t)i * V};
            }
            for (int w = 0; w < 3; w++)
                wrk_step(b, seqs, B, err, sizeof err);
            int steps = 0;
            double t0 = now();
            while ((now() - t0 < secs || steps < 5) && steps < 100000) {
                double t = now();
                if (wrk_step(b, seqs, B, err, sizeof err)) {
                    fprintf(stderr, "step: %s\n", err);
                    return 1;
                }
                lat[steps++] = now() - t;
                for (int i = 0; i < B; i++)
                    toks[i] = (toks[i] + 31) % V;
            }
            double el = now() - t0, tps = (double)steps * B / el;
            tps_at[md][bi] = tps;
            qsort(lat, steps, sizeof *lat, cmp_d);
            double gflops = tps * (mi->layer_flops + lm_flops) / 1e9;
            /* batch 1 is bandwidth-bound: limit = bandwidth / (weights + state read and
             * written); larger batches are compared with the GEMM peak. */
            if (B == 1) {
                double limit = bw * 1e9 / (read_b + 2 * state_b);
                double limit_mem = bw_mem * 1e9 / (read_b + 2 * state_b);
                printf("%-8d %10.1f %8.2fms %8.2fms %10.1f %8.1f%% (%.1f tok/s bw) %.2fms "
                       "[%.1f%% of %.1f tok/s from memory]\n",
                       B, tps, lat[steps / 2] * 1e3, lat[steps * 99 / 100] * 1e3, gflops,
                       100 * tps / limit, limit, lat[0] * 1e3, 100 * tps / limit_mem, limit_mem);
            } else {
                printf("%-8d %10.1f %8.2fms %8.2fms %10.1f %8.1f%% (of %s) %.2fms\n", B, tps,
                       lat[steps / 2] * 1e3, lat[steps * 99 / 100] * 1e3, gflops,
                       100 * gflops / peak, peak_name, lat[0] * 1e3);
            }
            if (adapt) {
                int act = 0, mx = 0;
                uint64_t ch = 0;
                wrk_threads(b, &act, &mx, &ch, NULL, NULL);
                printf("  (--adapt: %d of %d threads at the end, %llu changes)\n", act, mx,
                       (unsigned long long)ch);
            }
            fflush(stdout);
        }
        /* Prefill: one sequence, prefill_len tokens per step, logits for the last row only. */
        if (prefill_len > 0) {
            int32_t *ptoks = malloc(sizeof(int32_t) * prefill_len);
            for (int i = 0; i < prefill_len; i++)
                ptoks[i] = (i * 104729) % V;
            wrk_seq_t ps = {.slot = 0,
                            .n_tokens = prefill_len,
                            .tokens = ptoks,
                            .n_logits = 1,
                            .logits = logits};
            wrk_step(b, &ps, 1, err, sizeof err);
            int steps = 0;
            double t0 = now();
            while ((now() - t0 < secs || steps < 3) && steps < 100000) {
                double t = now();
                wrk_state_reset(b, 0);
                wrk_step(b, &ps, 1, err, sizeof err);
                lat[steps++] = now() - t;
            }
            double el = now() - t0, tps = (double)steps * prefill_len / el;
            tps_at[md][16] = tps;
            qsort(lat, steps, sizeof *lat, cmp_d);
            double gflops = (tps * mi->layer_flops + steps * lm_flops / el) / 1e9;
            printf("prefill%-4d %7.1f %8.2fms %8.2fms %10.1f %8.1f%% (of %s) %.2fms\n",
                   prefill_len, tps, lat[steps / 2] * 1e3, lat[steps * 99 / 100] * 1e3, gflops,
                   100 * gflops / peak, peak_name, lat[0] * 1e3);
            free(ptoks);
        }
        /* Bandwidth noise: the read rate of these VMs moves by up to 2x between runs, so batch
         * 1 is repeated, each time right after a bandwidth measurement over the weights' size,
         * and each pair gives its own share of the limit; their median is the figure. */
        if (repeat > 0) {
            double ratio[100];
            wrk_seq_t s1 = {
                .slot = 0, .n_tokens = 1, .tokens = &toks[0], .n_logits = 1, .logits = logits};
            wrk_state_reset(b, 0);
            toks[0] = 1;
            for (int w = 0; w < 3; w++)
                wrk_step(b, &s1, 1, err, sizeof err);
            for (int r = 0; r < repeat; r++) {
                const double bwr = read_bandwidth(pool, ws);
                int steps = 0;
                double t0 = now();
                while ((now() - t0 < secs || steps < 5) && steps < 100000) {
                    if (wrk_step(b, &s1, 1, err, sizeof err)) {
                        fprintf(stderr, "step: %s\n", err);
                        return 1;
                    }
                    steps++;
                    toks[0] = (toks[0] + 31) % V;
                }
                const double tps = steps / (now() - t0), limit = bwr * 1e9 / (double)ws;
                ratio[r] = tps / limit;
                printf("repeat %-3d bandwidth %.1f GB/s, batch 1 %.1f tok/s = %.1f%% of its "
                       "%.1f tok/s limit\n",
                       r + 1, bwr, tps, 100 * ratio[r], limit);
                fflush(stdout);
            }
            qsort(ratio, (size_t)repeat, sizeof ratio[0], cmp_d);
            const double med =
                repeat % 2 ? ratio[repeat / 2] : (ratio[repeat / 2 - 1] + ratio[repeat / 2]) / 2;
            printf("repeat median: batch 1 at %.1f%% of the bandwidth limit (min %.1f%%, max "
                   "%.1f%%, %d pairs)\n",
                   100 * med, 100 * ratio[0], 100 * ratio[repeat - 1], repeat);
        }
        wrk_backend_destroy(b);
    }
    if (n_modes > 1) { /* the ratios of each mode to the first, measured in this run */
        printf("ratios to matmul %s (%s):", modes[0] ? modes[0] : "fp32", isa_of[0]);
        for (int md = 1; md < n_modes; md++) {
            printf("\n  %s (%s):", modes[md] ? modes[md] : "fp32", isa_of[md]);
            for (int bi = 0; bi < n_batches; bi++)
                printf(" b%d %.2fx", batches[bi],
                       tps_at[0][bi] > 0 ? tps_at[md][bi] / tps_at[0][bi] : 0);
            if (prefill_len > 0)
                printf(" prefill%d %.2fx", prefill_len,
                       tps_at[0][16] > 0 ? tps_at[md][16] / tps_at[0][16] : 0);
        }
        printf("\n");
    }
    printf("peak RSS: %.1f MB (weights are mmapped and counted once paged in)\n",
           peak_rss_kb() / 1024.0);
    free(lat);
    free(logits);
    wrk_pool_destroy(pool);
    wrk_model_free(m);
    return 0;
}
