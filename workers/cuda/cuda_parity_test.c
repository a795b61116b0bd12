/* CUDA vs CPU (and transformers) parity on the committed Mamba golden fixtures: chunkings
 * 1, 4 and whole, ragged and multi-entry decode batches (graphs on and off), 32 greedy
 * tokens, BF16/F16 weights, state blobs portable between the backends, the device argmax.
 * Needs a GPU: without one it prints why and exits 77 (ctest: skipped). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_path.h"
#include "tests/support/golden_util.h"
#include "tests/support/rcd_test.h"
#include "workers/cuda/wrk_cuda.h"

#define TOL_F32 1e-3f  /* CUDA vs golden and vs CPU, fp32 weights */
#define TOL_HALF 2e-2f /* BF16/F16 weights vs the fp32 golden (the CPU test's bound) */

static wrk_backend_t *make_cuda(const wrk_model_t *m, int graphs)
{
    char err[512];
    wrk_backend_t *b = NULL;
    wrk_backend_opts_t o = {.n_slots = 16, .max_step_tokens = 128};
    wrk_cuda_opts_t co = wrk_cuda_default_opts();
    co.graphs = graphs;
    int rc = wrk_cuda_backend_create_ex(m, &o, &co, &b, err, sizeof err);
    CHECK_MSG(rc == 0, "cuda backend: %s", err);
    return b;
}

static wrk_backend_t *make_cpu(const wrk_model_t *m)
{
    char err[512];
    wrk_backend_t *b = NULL;
    wrk_backend_opts_t o = {.n_threads = 2, .n_slots = 8, .max_step_tokens = 64};
    int rc = wrk_cpu_backend_create(m, &o, &b, err, sizeof err);
    CHECK_MSG(rc == 0, "cpu backend: %s", err);
    return b;
}

static const char *fp32_cases[] = {"tiny_bias_tied", "tiny_nobias_untied", "odd_sizes",
                                   "edge_numerics"};
#define N_CASES (int)(sizeof fp32_cases / sizeof fp32_cases[0])

/* Chunkings 1, 4 and whole against transformers and against the CPU backend. */
static void test_chunkings(void)
{
    for (int ci = 0; ci < N_CASES; ci++) {
        golden_t g;
        char err[512];
        wrk_model_t *m = NULL;
        if (golden_load("mamba", fp32_cases[ci], &g)) {
            CHECK(0);
            continue;
        }
        if (wrk_model_load(g.dir, &m, err, sizeof err)) {
            CHECK_MSG(0, "%s", err);
            golden_free(&g);
            continue;
        }
        wrk_backend_t *cpu = make_cpu(m);
        for (int graphs = 0; graphs <= 1; graphs++) {
            wrk_backend_t *b = make_cuda(m, graphs);
            if (!b || !cpu) break;
            float worst = 0.f;
            for (int si = 0; si < g.n_seqs; si++) {
                const golden_seq_t *q = &g.seqs[si];
                const size_t n = (size_t)q->n * g.V;
                float *out = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float));
                const int chunks[3] = {1, 4, q->n};
                for (int k = 0; k < 3; k++) {
                    if (golden_run_into(b, k, q, g.V, chunks[k], out) ||
                        golden_run_into(cpu, k, q, g.V, chunks[k], ref))
                        continue;
                    float dg = golden_max_diff(out, q->logits, n),
                          dc = golden_max_diff(out, ref, n);
                    CHECK_MSG(dg <= TOL_F32 && dc <= TOL_F32,
                              "%s graphs=%d %s chunk %d: max diff %g vs golden, %g vs cpu",
                              fp32_cases[ci], graphs, q->name, chunks[k], dg, dc);
                    if (dg > worst) worst = dg;
                    if (dc > worst) worst = dc;
                }
                free(out);
                free(ref);
            }
            fprintf(stderr, "  %-18s graphs=%d: max |dlogit| %.2e (chunks 1/4/whole)\n",
                    fp32_cases[ci], graphs, worst);
            wrk_backend_destroy(b);
        }
        wrk_backend_destroy(cpu);
        wrk_model_free(m);
        golden_free(&g);
    }
}

/* Ragged batches (the CPU test's pattern: varying lengths, phases, slots and logit rows),
 * then pure decode batches of every entry at once, with and without graphs. Each golden
 * sequence runs in several slots at once, so batches reach 15 entries: decode steps go
 * through the GEMV (<= 8 tokens) and cuBLAS paths, both inside captured graphs. */
#define MAX_ENTRIES (3 * GOLDEN_MAX_SEQS)
static void test_batches(void)
{
    static const char *mode_name[] = {"ragged", "decode+graphs", "decode eager"};
    for (int ci = 0; ci < N_CASES; ci++) {
        golden_t g;
        char err[512];
        wrk_model_t *m = NULL;
        if (golden_load("mamba", fp32_cases[ci], &g)) continue;
        if (wrk_model_load(g.dir, &m, err, sizeof err)) {
            CHECK_MSG(0, "%s", err);
            golden_free(&g);
            continue;
        }
        const int V = g.V, ns = g.n_seqs;
        for (int mode = 0; mode < 3; mode++) {
            wrk_backend_t *b = make_cuda(m, mode != 2);
            if (!b) break;
            const int ne = ns * (mode == 0 ? 2 : 3); /* entry e runs golden sequence e % ns */
            int pos[MAX_ENTRIES] = {0};
            float *out[MAX_ENTRIES];
            for (int e = 0; e < ne; e++) {
                out[e] = calloc((size_t)g.seqs[e % ns].n * V, sizeof(float));
                wrk_state_reset(b, e + 1);
            }
            static const int pattern[] = {1, 3, 7, 2, 5, 1, 1, 4};
            for (int step = 0; step < 200; step++) {
                wrk_seq_t batch[MAX_ENTRIES];
                int nb = 0;
                for (int e = ne - 1; e >= 0; e--) {
                    const golden_seq_t *q = &g.seqs[e % ns];
                    int want = mode == 0 ? pattern[(step + e) % 8] : 1;
                    int len = q->n - pos[e] < want ? q->n - pos[e] : want;
                    if (len <= 0) continue;
                    int nl = mode == 0 && (step + e) % 3 == 0 ? 0 : len;
                    batch[nb++] = (wrk_seq_t){.slot = e + 1,
                                              .n_tokens = len,
                                              .tokens = q->tokens + pos[e],
                                              .n_logits = nl,
                                              .logits = out[e] + (size_t)pos[e] * V};
                    if (nl == 0)
                        memcpy(out[e] + (size_t)pos[e] * V, q->logits + (size_t)pos[e] * V,
                               (size_t)len * V * sizeof(float));
                    pos[e] += len;
                }
                if (!nb) break;
                int rc = wrk_step(b, batch, nb, err, sizeof err);
                CHECK_MSG(rc == 0, "%s", err);
                if (rc) break;
            }
            float worst = 0.f;
            for (int e = 0; e < ne; e++) {
                const golden_seq_t *q = &g.seqs[e % ns];
                float d = golden_max_diff(out[e], q->logits, (size_t)q->n * V);
                CHECK_MSG(d <= TOL_F32, "%s %s entry %d (%s): max diff %g", fp32_cases[ci],
                          mode_name[mode], e, q->name, d);
                if (d > worst) worst = d;
                free(out[e]);
            }
            wrk_cuda_stats_t st;
            wrk_cuda_stats(b, &st);
            if (mode == 1)
                CHECK_MSG(st.graph_launches > 0 && st.graph_capture_failures == 0,
                          "graphs: %ld launches, %ld captures, %ld failed captures",
                          st.graph_launches, st.graph_captures, st.graph_capture_failures);
            fprintf(stderr, "  %-18s %-13s %2d entries: max |dlogit| %.2e, %ld graph launches\n",
                    fp32_cases[ci], mode_name[mode], ne, worst, st.graph_launches);
            wrk_backend_destroy(b);
        }
        wrk_model_free(m);
        golden_free(&g);
    }
}

/* Prefill the prompt, 32 one-token decode steps: identical tokens, logits close; the device
 * argmax agrees with the host's. */
static void greedy_run(const char *dir, const golden_t *g, float tol, const char *what)
{
    char err[512];
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(dir, &m, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (rc) return;
    wrk_backend_t *b = make_cuda(m, 1);
    if (!b) {
        wrk_model_free(m);
        return;
    }
    const int V = g->V;
    float *row = malloc((size_t)V * sizeof(float)), worst = 0.f;
    int mismatch = -1, dev_mismatch = -1;
    wrk_seq_t s = {
        .slot = 3, .n_tokens = g->n_prompt, .tokens = g->greedy, .n_logits = 1, .logits = row};
    rc = wrk_step(b, &s, 1, err, sizeof err);
    for (int i = 0; i < g->n_gen && rc == 0; i++) {
        int pos = g->n_prompt + i - 1;
        if (g->greedy_logits) {
            float d = golden_max_diff(row, g->greedy_logits + (size_t)pos * V, (size_t)V);
            if (d > worst) worst = d;
        }
        int32_t tok = golden_argmax(row, V), dev = -1;
        if (wrk_cuda_last_argmax(b, &dev, 1) != 0 || dev != tok)
            if (dev_mismatch < 0) dev_mismatch = i;
        if (tok != g->greedy[g->n_prompt + i] && mismatch < 0) mismatch = i;
        s = (wrk_seq_t){.slot = 3, .n_tokens = 1, .tokens = &tok, .n_logits = 1, .logits = row};
        rc = wrk_step(b, &s, 1, err, sizeof err);
    }
    CHECK_MSG(rc == 0, "%s", err);
    if (rc == 0) { /* the device top-5 of the last row: the host's order and values */
        int32_t ids[5], want[5];
        float vals[5];
        CHECK(wrk_cuda_last_topk(b, 5, ids, vals, 1) == 0);
        for (int p = 0; p < 5; p++) {
            int best = -1;
            for (int v = 0; v < V; v++) {
                bool taken = false;
                for (int q = 0; q < p; q++)
                    taken = taken || want[q] == v;
                if (!taken && (best < 0 || row[v] > row[best])) best = v;
            }
            want[p] = best;
            CHECK_MSG(ids[p] == want[p] && vals[p] == row[want[p]],
                      "%s: top-k %d: device %d (%g), host %d (%g)", what, p, ids[p], vals[p],
                      want[p], row[want[p]]);
        }
    }
    if (rc == 0) { /* the device softmax of the last row against the host's, temperature 0.7 */
        float *p = malloc((size_t)V * sizeof(float)), mx = row[0];
        double sum = 0.0, worst_p = 0.0;
        CHECK(wrk_cuda_last_softmax(b, 0.7f, p, 1) == 0);
        for (int v = 1; v < V; v++)
            mx = row[v] > mx ? row[v] : mx;
        for (int v = 0; v < V; v++)
            sum += exp((row[v] - mx) / 0.7);
        for (int v = 0; v < V; v++) {
            double d = fabs(p[v] - exp((row[v] - mx) / 0.7) / sum);
            worst_p = d > worst_p ? d : worst_p;
        }
        CHECK_MSG(worst_p <= 1e-5, "%s: device softmax max diff %g", what, worst_p);
        free(p);
    }
    CHECK_MSG(mismatch < 0, "%s: greedy token %d differs", what, mismatch);
    CHECK_MSG(dev_mismatch < 0, "%s: device argmax differs at step %d", what, dev_mismatch);
    CHECK_MSG(worst <= tol, "%s: greedy logits max diff %g", what, worst);
    fprintf(stderr, "  %-20s greedy %d tokens: max |dlogit| %.2e\n", what, g->n_gen, worst);
    free(row);
    wrk_backend_destroy(b);
    wrk_model_free(m);
}

static void test_greedy(void)
{
    for (int ci = 0; ci < N_CASES; ci++) {
        golden_t g;
        if (golden_load("mamba", fp32_cases[ci], &g)) continue;
        greedy_run(g.dir, &g, TOL_F32, fp32_cases[ci]);
        golden_free(&g);
    }
}

/* BF16 and F16 weights (decode through the GEMV kernel, whole prompts through cuBLAS with
 * half activations) against the fp32 golden. */
static void test_half_weights(void)
{
    static const char *variants[] = {"tiny_bias_tied_bf16", "tiny_bias_tied_f16"};
    golden_t g;
    if (golden_load("mamba", "tiny_bias_tied", &g)) {
        CHECK(0);
        return;
    }
    for (int vi = 0; vi < 2; vi++) {
        char dir[RCD_PATH_MAX], err[512];
        CHECK(rcd_path_fmt(dir, sizeof dir, "%s/mamba/%s", golden_root(), variants[vi]) == 0);
        greedy_run(dir, &g, TOL_HALF, variants[vi]);
        wrk_model_t *m = NULL;
        if (wrk_model_load(dir, &m, err, sizeof err)) {
            CHECK_MSG(0, "%s", err);
            continue;
        }
        wrk_backend_t *b = make_cuda(m, 1);
        for (int si = 0; b && si < g.n_seqs; si++) {
            const golden_seq_t *q = &g.seqs[si];
            float *out = malloc((size_t)q->n * g.V * sizeof(float));
            const int chunks[3] = {1, 4, q->n};
            for (int k = 0; k < 3; k++)
                if (golden_run_into(b, 0, q, g.V, chunks[k], out) == 0) {
                    float d = golden_max_diff(out, q->logits, (size_t)q->n * g.V);
                    CHECK_MSG(d <= TOL_HALF, "%s %s chunk %d: max diff %g", variants[vi], q->name,
                              chunks[k], d);
                }
            free(out);
        }
        wrk_backend_destroy(b);
        wrk_model_free(m);
    }
    golden_free(&g);
}

/* A state blob read from one backend continues on the other (same layout), and read/write/
 * copy between CUDA slots continue exactly. */
static void test_state_portable(void)
{
    golden_t g;
    char err[512];
    wrk_model_t *m = NULL;
    if (golden_load("mamba", "tiny_bias_tied", &g)) return;
    if (wrk_model_load(g.dir, &m, err, sizeof err)) {
        CHECK(0);
        golden_free(&g);
        return;
    }
    const wrk_model_info_t *mi = wrk_model_info(m);
    wrk_backend_t *gpu = make_cuda(m, 1), *cpu = make_cpu(m);
    const golden_seq_t *q = &g.seqs[g.n_seqs - 1];
    const int V = g.V, cut = 10;
    float *out = malloc((size_t)q->n * V * sizeof(float));
    void *blob = malloc(mi->state_bytes), *blob2 = malloc(mi->state_bytes);
    if (gpu && cpu) {
        wrk_seq_t s = {.slot = 0, .n_tokens = cut, .tokens = q->tokens};
        /* CUDA prefix -> blob -> CPU slot 2 and CUDA slots 5 (write) and 6 (copy). */
        wrk_state_reset(gpu, 0);
        CHECK(wrk_step(gpu, &s, 1, err, sizeof err) == 0);
        CHECK(wrk_state_read_n(gpu, 0, blob, mi->state_bytes, NULL) == 0);
        wrk_state_reset(gpu, 0);
        CHECK(wrk_state_write_n(gpu, 5, blob, mi->state_bytes) == 0);
        CHECK(wrk_state_copy(gpu, 6, 5) == 0);
        CHECK(wrk_state_write_n(cpu, 2, blob, mi->state_bytes) == 0);
        /* The same prefix on the CPU gives the same blob (within fp32 rounding). */
        wrk_state_reset(cpu, 0);
        CHECK(wrk_step(cpu, &s, 1, err, sizeof err) == 0);
        CHECK(wrk_state_read_n(cpu, 0, blob2, mi->state_bytes, NULL) == 0);
        CHECK_MSG(golden_max_diff(blob, blob2, mi->state_bytes / 4) <= TOL_F32,
                  "state after %d tokens: cuda vs cpu max diff %g", cut,
                  golden_max_diff(blob, blob2, mi->state_bytes / 4));
        wrk_backend_t *bk[3] = {gpu, gpu, cpu};
        const int slots[3] = {5, 6, 2};
        for (int i = 0; i < 3; i++) {
            s = (wrk_seq_t){.slot = slots[i],
                            .n_tokens = q->n - cut,
                            .tokens = q->tokens + cut,
                            .n_logits = q->n - cut,
                            .logits = out};
            CHECK(wrk_step(bk[i], &s, 1, err, sizeof err) == 0);
            float d = golden_max_diff(out, q->logits + (size_t)cut * V, (size_t)(q->n - cut) * V);
            CHECK_MSG(d <= TOL_F32, "resume %d on %s slot %d: max diff %g", i,
                      wrk_backend_name(bk[i]), slots[i], d);
        }
        /* CPU prefix -> CUDA. */
        CHECK(wrk_state_write_n(gpu, 7, blob2, mi->state_bytes) == 0);
        s = (wrk_seq_t){.slot = 7,
                        .n_tokens = q->n - cut,
                        .tokens = q->tokens + cut,
                        .n_logits = q->n - cut,
                        .logits = out};
        CHECK(wrk_step(gpu, &s, 1, err, sizeof err) == 0);
        CHECK(golden_max_diff(out, q->logits + (size_t)cut * V, (size_t)(q->n - cut) * V) <=
              TOL_F32);
        CHECK(wrk_state_read_n(gpu, 99, blob, mi->state_bytes, NULL) == RCD_ERANGE);
        CHECK(wrk_state_copy(gpu, -1, 0) == RCD_ERANGE);
        /* Validation is the shared one. */
        int32_t bad = 1 << 20;
        s = (wrk_seq_t){.slot = 0, .n_tokens = 1, .tokens = &bad};
        CHECK(wrk_step(gpu, &s, 1, err, sizeof err) == RCD_ERANGE);
    }
    free(blob);
    free(blob2);
    free(out);
    wrk_backend_destroy(gpu);
    wrk_backend_destroy(cpu);
    wrk_model_free(m);
    golden_free(&g);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    char why[256];
    if (wrk_cuda_device_count(why, sizeof why) == 0) {
        printf("SKIPPED: %s; the CUDA parity test needs a GPU (run tools/gpu_check.sh there)\n",
               why);
        return 77;
    }
    RUN(test_chunkings);
    RUN(test_batches);
    RUN(test_greedy);
    RUN(test_half_weights);
    RUN(test_state_portable);
    return rcd_test_summary();
}
