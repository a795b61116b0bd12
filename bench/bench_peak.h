/* bench: machine limits measured in the same run as a benchmark, shared by the bench programs.
 *
 * bench_fma_peak: the fp32 FMA peak of the machine with the pool's threads — every thread runs
 * independent chains of 512-bit (or, without AVX-512F, 256-bit) VFMADD231PS, and the FLOPs
 * of all threads are divided by the wall time of the whole run. It is the ceiling any fp32
 * matmul can reach (a GEMM library, OpenBLAS included, reaches some share of it), so it is
 * the denominator of an honest "share of the compute peak". On a VM whose vCPUs are SMT
 * siblings of one core, the threads share the core's FMA units, and the figure shows it.
 *
 * bench_unread_bytes: the stored bytes of a checkpoint that a batch-1 decode step does not
 * read — of an untied input embedding, all but the token's row (the lm_head is a tensor of its
 * own and is read whole); of a mixture of experts, the routed experts not chosen: all but
 * top_k / n_experts of their bytes (the experts of one layer have equal sizes). */
#ifndef RCD_BENCH_PEAK_H
#define RCD_BENCH_PEAK_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/rcd_path.h"
#include "workers/cpu/pool.h"
#include "workers/model/safetensors.h"

static inline double bench_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    long iters;
    bool wide; /* 512-bit */
    double sink[64];
} bench_fma_t;

#define BENCH_FMA_CHAINS 12
#if defined(__x86_64__)
/* twelve independent accumulators hide the FMA latency on every current x86 core; each grows
 * as a * 1 + 0.5, so nothing is constant or denormal */
#define BENCH_FMA_BODY(V, SET1, FMA, ADD, it, out)                                             \
    do {                                                                                       \
        const V w_ = SET1(1.0f), x_ = SET1(0.5f);                                              \
        V a[BENCH_FMA_CHAINS];                                                                 \
        for (int c_ = 0; c_ < BENCH_FMA_CHAINS; c_++)                                          \
            a[c_] = SET1((float)(c_ + 1));                                                     \
        for (long i_ = 0; i_ < (it); i_++)                                                     \
            for (int c_ = 0; c_ < BENCH_FMA_CHAINS; c_++)                                      \
                a[c_] = FMA(a[c_], w_, x_);                                                    \
        V s_ = a[0];                                                                           \
        for (int c_ = 1; c_ < BENCH_FMA_CHAINS; c_++)                                          \
            s_ = ADD(s_, a[c_]);                                                               \
        float f_[16];                                                                          \
        memcpy(f_, &s_, sizeof s_);                                                            \
        (out) = f_[0];                                                                         \
    } while (0)

__attribute__((target("avx512f"))) static inline double bench_fma512(long it)
{
    double r;
    BENCH_FMA_BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, it, r);
    return r;
}

__attribute__((target("avx2,fma"))) static inline double bench_fma256(long it)
{
    double r;
    BENCH_FMA_BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, it, r);
    return r;
}
#endif

static inline void bench_fma_job(void *arg, int ith, int nth)
{
    (void)nth;
    bench_fma_t *f = arg;
#if defined(__x86_64__)
    f->sink[ith & 63] = f->wide ? bench_fma512(f->iters) : bench_fma256(f->iters);
#else
    f->sink[ith & 63] = 0;
#endif
}

/* GFLOP/s of all the pool's threads together; 0 where neither AVX-512F nor AVX2+FMA exists. */
static inline double bench_fma_peak(wrk_pool_t *pool, int *lanes_out)
{
    *lanes_out = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    bench_fma_t f = {.wide = __builtin_cpu_supports("avx512f")};
    if (!f.wide && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return 0;
    const int lanes = f.wide ? 16 : 8, nth = wrk_pool_size(pool);
    double best = 0;
    for (int rep = 0; rep < 6; rep++) { /* the best of 6: a VM's neighbours and clock vary */
        f.iters = 4000000; /* 48M FMAs per thread: ~20 ms at 2.5 GHz with two FMA ports */
        double t = bench_wall();
        wrk_pool_run(pool, bench_fma_job, &f);
        t = bench_wall() - t;
        double gf = (double)f.iters * BENCH_FMA_CHAINS * lanes * 2 * nth / t / 1e9;
        if (gf > best) best = gf;
    }
    *lanes_out = lanes;
    return best;
#else
    (void)pool;
    return 0;
#endif
}

/* Reads one integer field from dir/config.json; -1 when absent. */
static inline long bench_config_int(const char *dir, const char *const *keys, int n_keys)
{
    char path[RCD_PATH_MAX];
    if (rcd_path_join(path, sizeof path, dir, "config.json")) return -1;
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, fp) : 0;
    fclose(fp);
    if (!buf) return -1;
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    long v = -1;
    for (int i = 0; j && i < n_keys && v < 0; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        if (cJSON_IsNumber(it) && it->valuedouble >= 1) v = (long)it->valuedouble;
    }
    cJSON_Delete(j);
    return v;
}

/* A routed expert's tensor: Jamba/Qwen3-Next/Nemotron-H `.experts.` (not `shared_experts`),
 * Granite's fused `block_sparse_moe.input_linear` / `output_linear`. */
static inline bool bench_is_routed_expert(const char *name)
{
    return strstr(name, ".experts.") || strstr(name, "block_sparse_moe.input_linear") ||
           strstr(name, "block_sparse_moe.output_linear");
}

/* An input embedding table (the family's name for it). */
static inline bool bench_is_embedding(const char *name)
{
    return strstr(name, "embed_tokens.weight") || strstr(name, "embeddings.weight");
}

static inline double bench_unread_bytes(const char *dir, int *n_experts, int *top_k,
                                        double *embed_unread)
{
    static const char *const e_keys[] = {"num_experts", "n_routed_experts", "num_local_experts"};
    static const char *const k_keys[] = {"num_experts_per_tok"};
    long E = bench_config_int(dir, e_keys, 3), K = bench_config_int(dir, k_keys, 1);
    const bool moe = E > 1 && K >= 1 && K <= E;
    *n_experts = moe ? (int)E : 0;
    *top_k = moe ? (int)K : 0;
    *embed_unread = 0;
    wrk_st_set_t *set = NULL;
    char err[256];
    if (wrk_st_open_dir(dir, &set, err, sizeof err)) return 0;
    double experts = 0, embed = 0, embed_rows = 1;
    bool head = false;
    for (size_t i = 0; i < wrk_st_count(set); i++) {
        const wrk_st_tensor_t *t = wrk_st_at(set, i);
        if (moe && bench_is_routed_expert(t->name)) experts += (double)t->nbytes;
        if (bench_is_embedding(t->name) && t->ndim == 2) {
            embed += (double)t->nbytes;
            embed_rows = (double)t->shape[0];
        }
        if (strstr(t->name, "lm_head.weight")) head = true;
    }
    wrk_st_close(set);
    if (head && embed_rows >= 1) *embed_unread = embed * (1.0 - 1.0 / embed_rows);
    return *embed_unread + (moe ? experts * (1.0 - (double)K / (double)E) : 0);
}

#endif
