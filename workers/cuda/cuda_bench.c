/* bench: the CUDA backend's Mamba throughput beside the GPU's HBM bandwidth limit — decode
 * tokens/s at batch 1..256 (weights + states bytes per step / peak bandwidth from the memory
 * clock and bus width) and prefill tokens/s. --make-model writes a mamba-130m-shaped random
 * checkpoint (or any shape given) so the GPU machine needs no Python. Exits 77 without a GPU. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "common/rcd_path.h"
#include "workers/cuda/wrk_cuda.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- a random Mamba checkpoint (safetensors + config.json), written without Python ---- */

typedef struct synth {
    int V, H, L, I, N, K, R;
    int bf16; /* else f32 */
    FILE *f;
    uint64_t rng;
} synth_t;

static float urand(synth_t *s) /* [-1, 1) */
{
    s->rng ^= s->rng << 13, s->rng ^= s->rng >> 7, s->rng ^= s->rng << 17;
    return (float)((s->rng >> 40) * (2.0 / 16777216.0) - 1.0);
}

typedef enum { INIT_RAND, INIT_CONST, INIT_ALOG } init_t;
typedef struct tdesc {
    char name[96];
    int64_t shape[3];
    int ndim;
    init_t init;
    float a, b; /* RAND: a + b*u; CONST: a */
} tdesc_t;

static size_t numel(const tdesc_t *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

static int make_model(const char *dir, synth_t *s)
{
    const int nt = 2 + 10 * s->L;
    tdesc_t *t = calloc((size_t)nt, sizeof *t);
    int k = 0;
#define T2(nm, d0, d1, in, A, B)                                                                   \
    (t[k] = (tdesc_t){.shape = {d0, d1}, .ndim = 2, .init = in, .a = A, .b = B},                   \
     snprintf(t[k].name, 96, "%s", nm), k++)
#define T1(nm, d0, in, A, B)                                                                       \
    (t[k] = (tdesc_t){.shape = {d0}, .ndim = 1, .init = in, .a = A, .b = B},                       \
     snprintf(t[k].name, 96, "%s", nm), k++)
    char nm[96];
    T2("backbone.embeddings.weight", s->V, s->H, INIT_RAND, 0.f, 0.02f);
    T1("backbone.norm_f.weight", s->H, INIT_CONST, 1.f, 0.f);
    for (int l = 0; l < s->L; l++) {
#define NM(x) (snprintf(nm, sizeof nm, "backbone.layers.%d.%s", l, x), nm)
        T1(NM("norm.weight"), s->H, INIT_CONST, 1.f, 0.f);
        T2(NM("mixer.in_proj.weight"), 2 * s->I, s->H, INIT_RAND, 0.f, 1.f / sqrtf((float)s->H));
        t[k] =
            (tdesc_t){.shape = {s->I, 1, s->K}, .ndim = 3, .init = INIT_RAND, .a = 0.f, .b = 0.5f};
        snprintf(t[k++].name, 96, "%s", NM("mixer.conv1d.weight"));
        T1(NM("mixer.conv1d.bias"), s->I, INIT_RAND, 0.f, 0.1f);
        T2(NM("mixer.x_proj.weight"), s->R + 2 * s->N, s->I, INIT_RAND, 0.f,
           1.f / sqrtf((float)s->I));
        T2(NM("mixer.dt_proj.weight"), s->I, s->R, INIT_RAND, 0.f, 1.f / sqrtf((float)s->R));
        T1(NM("mixer.dt_proj.bias"), s->I, INIT_RAND, -4.f, 0.5f);
        T2(NM("mixer.A_log"), s->I, s->N, INIT_ALOG, 0.f, 0.f);
        T1(NM("mixer.D"), s->I, INIT_CONST, 1.f, 0.f);
        T2(NM("mixer.out_proj.weight"), s->H, s->I, INIT_RAND, 0.f, 0.02f);
#undef NM
    }
#undef T1
#undef T2
    const size_t esz = s->bf16 ? 2 : 4;
    size_t hcap = (size_t)nt * 200 + 64, hl = 0, off = 0;
    char *hdr = malloc(hcap);
    hl += (size_t)snprintf(hdr + hl, hcap - hl, "{");
    for (int i = 0; i < nt; i++) {
        size_t bytes = numel(&t[i]) * esz;
        hl += (size_t)snprintf(hdr + hl, hcap - hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                               i ? "," : "", t[i].name, s->bf16 ? "BF16" : "F32");
        for (int d = 0; d < t[i].ndim; d++)
            hl += (size_t)snprintf(hdr + hl, hcap - hl, "%s%lld", d ? "," : "",
                                   (long long)t[i].shape[d]);
        hl += (size_t)snprintf(hdr + hl, hcap - hl, "],\"data_offsets\":[%zu,%zu]}", off,
                               off + bytes);
        off += bytes;
    }
    hl += (size_t)snprintf(hdr + hl, hcap - hl, "}");
    while (hl % 8)
        hdr[hl++] = ' ';
    char path[RCD_PATH_MAX];
    mkdir(dir, 0755);
    if (rcd_path_join(path, sizeof path, dir, "config.json")) return -1;
    FILE *cf = fopen(path, "w");
    if (!cf) return -1;
    fprintf(cf,
            "{\"architectures\":[\"MambaForCausalLM\"],\"model_type\":\"mamba\",\"vocab_size\":%d,"
            "\"hidden_size\":%d,\"state_size\":%d,\"num_hidden_layers\":%d,\"expand\":2,"
            "\"intermediate_size\":%d,\"conv_kernel\":%d,\"time_step_rank\":%d,"
            "\"use_bias\":false,\"use_conv_bias\":true,\"tie_word_embeddings\":true,"
            "\"layer_norm_epsilon\":1e-05,\"hidden_act\":\"silu\",\"bos_token_id\":0,"
            "\"eos_token_id\":0,\"pad_token_id\":0}\n",
            s->V, s->H, s->N, s->L, s->I, s->K, s->R);
    fclose(cf);
    if (rcd_path_join(path, sizeof path, dir, "model.safetensors")) return -1;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint64_t hlen = hl;
    fwrite(&hlen, 8, 1, f); /* little-endian hosts only, as the loader */
    fwrite(hdr, 1, hl, f);
    size_t bufn = 1 << 20;
    unsigned char *buf = malloc(bufn * 4);
    for (int i = 0; i < nt; i++) {
        size_t n = numel(&t[i]), done = 0;
        while (done < n) {
            size_t m = n - done < bufn ? n - done : bufn;
            for (size_t j = 0; j < m; j++) {
                float v = t[i].init == INIT_CONST  ? t[i].a
                          : t[i].init == INIT_ALOG ? logf((float)((done + j) % s->N + 1))
                                                   : t[i].a + t[i].b * urand(s);
                uint32_t u;
                memcpy(&u, &v, 4);
                if (s->bf16) {
                    uint16_t h = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
                    memcpy(buf + 2 * j, &h, 2);
                } else {
                    memcpy(buf + 4 * j, &u, 4);
                }
            }
            fwrite(buf, esz, m, f);
            done += m;
        }
    }
    int bad = ferror(f);
    fclose(f);
    free(buf);
    free(hdr);
    free(t);
    return bad ? -1 : 0;
}

/* ---- the benchmark ---- */

static void usage(void)
{
    fprintf(stderr,
            "usage: cuda_bench (--model DIR | --make-model DIR [--dtype bf16|f32] [--hidden H]\n"
            "                  [--layers L] [--vocab V]) [--batches 1,2,4,...] [--steps N]\n"
            "                  [--prefill N] [--graphs 0|1]\n");
}

int main(int argc, char **argv)
{
    const char *model = NULL, *make = NULL, *batches = "1,2,4,8,16,32,64,128,256";
    int steps = 64, prefill = 512, graphs = 1;
    synth_t sy = {
        .V = 50280, .H = 768, .L = 24, .N = 16, .K = 4, .bf16 = 1, .rng = 0x9e3779b97f4a7c15ull};
    static const struct option lo[] = {{"model", 1, 0, 'm'},
                                       {"make-model", 1, 0, 'M'},
                                       {"dtype", 1, 0, 'd'},
                                       {"hidden", 1, 0, 'H'},
                                       {"layers", 1, 0, 'L'},
                                       {"vocab", 1, 0, 'V'},
                                       {"batches", 1, 0, 'b'},
                                       {"steps", 1, 0, 's'},
                                       {"prefill", 1, 0, 'p'},
                                       {"graphs", 1, 0, 'g'},
                                       {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'm':
            model = optarg;
            break;
        case 'M':
            make = optarg;
            break;
        case 'd':
            sy.bf16 = strcmp(optarg, "f32") != 0;
            break;
        case 'H':
            sy.H = atoi(optarg);
            break;
        case 'L':
            sy.L = atoi(optarg);
            break;
        case 'V':
            sy.V = atoi(optarg);
            break;
        case 'b':
            batches = optarg;
            break;
        case 's':
            steps = atoi(optarg);
            break;
        case 'p':
            prefill = atoi(optarg);
            break;
        case 'g':
            graphs = atoi(optarg);
            break;
        default:
            usage();
            return 2;
        }
    }
    if (!model && !make) {
        usage();
        return 2;
    }
    if (make) {
        sy.I = 2 * sy.H;
        sy.R = (sy.H + 15) / 16;
        double t0 = now();
        if (make_model(make, &sy)) {
            fprintf(stderr, "cannot write %s\n", make);
            return 1;
        }
        printf("wrote %s (H=%d L=%d V=%d %s) in %.1f s\n", make, sy.H, sy.L, sy.V,
               sy.bf16 ? "bf16" : "f32", now() - t0);
        model = make;
    }
    /* The checkpoint loads (and is validated) before any device is needed. */
    char err[512];
    wrk_model_t *m = NULL;
    if (wrk_model_load(model, &m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const wrk_model_info_t *mi = wrk_model_info(m);
    char why[256];
    if (wrk_cuda_device_count(why, sizeof why) == 0) {
        printf("SKIPPED: %s; cuda_bench needs a GPU\n", why);
        wrk_model_free(m);
        return 77;
    }
    int dev = wrk_cuda_default_opts().device, clk_khz = 0, bus_bits = 0;
    struct cudaDeviceProp p;
    cudaGetDeviceProperties(&p, dev);
    cudaDeviceGetAttribute(&clk_khz, cudaDevAttrMemoryClockRate, dev);
    cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev);
    const double bw = 2.0 * clk_khz * 1e3 * bus_bits / 8.0; /* DDR: two transfers per clock */
    printf("gpu: %s, sm_%d%d, %d SMs, %.1f GiB, memory %d MHz x %d bit = %.0f GB/s peak\n", p.name,
           p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, clk_khz / 1000,
           bus_bits, bw / 1e9);

    int maxb = 0;
    for (const char *q = batches; *q;) {
        int b = atoi(q);
        if (b > maxb) maxb = b;
        q = strchr(q, ',');
        if (!q) break;
        q++;
    }
    if (maxb < 1) maxb = 1;
    wrk_backend_opts_t o = {.n_slots = maxb, .max_step_tokens = prefill > maxb ? prefill : maxb};
    wrk_cuda_opts_t co = wrk_cuda_default_opts();
    co.graphs = graphs;
    wrk_backend_t *b = NULL;
    if (wrk_cuda_backend_create_ex(m, &o, &co, &b, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    wrk_cuda_stats_t st;
    wrk_cuda_stats(b, &st);
    printf("model: %s, %s weights, H=%d L=%d V=%d, %.1f MB uploaded, state %.2f MB/seq, "
           "device memory %.1f MB, graphs %s\n",
           model, wrk_dtype_name(mi->weight_dtype), mi->hidden_size, mi->n_layers, mi->vocab_size,
           st.weight_bytes / 1e6, mi->state_bytes / 1e6, st.device_bytes / 1e6,
           graphs ? "on" : "off");
    printf("decode: wall = whole steps, logits of every entry copied to the host as the daemon "
           "gets them;\n        gpu = the forward pass on the device alone (CUDA events)\n");
    printf("%6s %12s %10s %10s %14s %10s %10s\n", "batch", "tokens/s", "ms/step", "gpu ms",
           "limit tok/s", "% (wall)", "% (gpu)");
    const int V = mi->vocab_size;
    int32_t *tok = calloc((size_t)o.max_step_tokens, sizeof *tok);
    float *logits = malloc((size_t)maxb * V * sizeof(float));
    wrk_seq_t *seqs = calloc((size_t)maxb, sizeof *seqs);
    int rc = 0;
    double t1 = 0;
    for (const char *q = batches; *q && !rc;) {
        const int B = atoi(q);
        if (B >= 1) {
            for (int i = 0; i < B; i++) {
                wrk_state_reset(b, i);
                tok[i] = (int32_t)((i * 7919) % V);
                seqs[i] = (wrk_seq_t){.slot = i,
                                      .n_tokens = 1,
                                      .tokens = &tok[i],
                                      .n_logits = 1,
                                      .logits = logits + (size_t)i * V};
            }
            for (int w = 0; w < 3 && !rc; w++)
                rc = wrk_step(b, seqs, B, err, sizeof err);
            wrk_cuda_stats_t s0, s1;
            wrk_cuda_stats(b, &s0);
            double t0 = now();
            for (int s = 0; s < steps && !rc; s++)
                rc = wrk_step(b, seqs, B, err, sizeof err);
            t1 = now() - t0;
            if (rc) break;
            wrk_cuda_stats(b, &s1);
            const double gpu_s = (s1.forward_ms - s0.forward_ms) / 1e3;
            /* HBM bytes per step: every weight once (the tied embedding is the lm_head), each
             * entry's state read and written. */
            const double bytes = (double)st.weight_bytes + 2.0 * B * (double)mi->state_bytes;
            const double tps = B * steps / t1, limit = B * bw / bytes;
            printf("%6d %12.0f %10.3f %10.3f %14.0f %9.1f%% %9.1f%%\n", B, tps, 1e3 * t1 / steps,
                   1e3 * gpu_s / steps, limit, 100.0 * tps / limit,
                   gpu_s > 0 ? 100.0 * (B * steps / gpu_s) / limit : 0.0);
        }
        q = strchr(q, ',');
        if (!q) break;
        q++;
    }
    if (!rc && prefill > 0) {
        for (int i = 0; i < prefill; i++)
            tok[i] = (int32_t)((i * 31 + 7) % V);
        wrk_seq_t s = {
            .slot = 0, .n_tokens = prefill, .tokens = tok, .n_logits = 1, .logits = logits};
        const int reps = 10;
        for (int w = 0; w < 2 && !rc; w++)
            rc = wrk_step(b, &s, 1, err, sizeof err);
        double t0 = now();
        for (int r = 0; r < reps && !rc; r++) {
            wrk_state_reset(b, 0);
            rc = wrk_step(b, &s, 1, err, sizeof err);
        }
        t1 = now() - t0;
        if (!rc)
            printf("prefill: %d-token chunks, %.0f tokens/s (%.2f ms per chunk, %.1f TFLOP/s in "
                   "the layers)\n",
                   prefill, prefill * reps / t1, 1e3 * t1 / reps,
                   mi->layer_flops * prefill * reps / t1 / 1e12);
    }
    wrk_cuda_stats(b, &st);
    printf("steps %ld, graph launches %ld, captures %ld, failed captures %ld\n", st.steps,
           st.graph_launches, st.graph_captures, st.graph_capture_failures);
    if (rc) fprintf(stderr, "step failed: %s\n", err);
    free(tok);
    free(logits);
    free(seqs);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    return rc ? 1 : 0;
}
