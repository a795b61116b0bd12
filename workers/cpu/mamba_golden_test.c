/* Golden parity of the CPU Mamba forward against transformers (fixtures from
 * tools/gen_mamba_goldens.py): every chunking, ragged batches, greedy decode, BF16/F16
 * weights, sharded checkpoints, state save/restore, and batch validation errors. */
#include <string.h>

#include "common/rcd_path.h"
#include "tests/support/golden_util.h"

/* --weights q8 / q4 against the fp32 goldens: max |dlogit| measured 2.58e-2 (q8) and 1.59e-1 (q4)
 * over all ISAs and chunkings (Sapphire Rapids; weights and per-token int8 activations); bound about 2x that: the quantization error
 * is the same on every CPU, what else moves is fp32 rounding, orders of magnitude smaller,
 * while a wrong scale or nibble order moves logits by O(1) (workers/README.md). */
#define TOL_Q8 0.05f
#define TOL_Q4 0.35f

/* The bf16 matmul must be no further from the goldens than transformers' own bf16 forward of
 * the same checkpoint: max |dlogit| of that against the tiny_bias_tied (fp32 goldens) goldens
 * (tools/hf_bf16_error.py). */
#define TOL_BF16_MATMUL 1.52e-2f

#define TOL_F32 1e-4f

static const char *fp32_cases[] = {"tiny_bias_tied", "tiny_nobias_untied", "odd_sizes",
                                   "edge_numerics"};
static const golden_suite_t suite = {
    .family = "mamba",
    .family_id = WRK_FAMILY_MAMBA,
    .cases = fp32_cases,
    .n_cases = (int)(sizeof fp32_cases / sizeof fp32_cases[0]),
    .tol = TOL_F32,
    .opts = {.n_slots = 8, .max_step_tokens = 64},
    .ragged_pattern = {1, 3, 7, 2, 5, 1, 1, 4},
};

GOLDEN_SUITE_CASES(suite)

/* The same checkpoint in BF16 and F16: logits within 2e-2 of fp32, same greedy tokens. */
static void test_half_weights(void)
{
    static const char *variants[] = {"tiny_bias_tied_bf16", "tiny_bias_tied_f16"};
    golden_t g;
    if (golden_load(suite.family, "tiny_bias_tied", &g)) {
        CHECK(0);
        return;
    }
    for (int vi = 0; vi < 2; vi++) {
        char dir[RCD_PATH_MAX];
        CHECK(rcd_path_fmt(dir, sizeof dir, "%s/mamba/%s", golden_root(), variants[vi]) == 0);
        float worst;
        int mis;
        if (golden_greedy(&suite, dir, &g, &worst, &mis) == 0) {
            fprintf(stderr, "  %s: greedy max |dlogit| vs fp32 %.2e\n", variants[vi], worst);
            CHECK_MSG(mis < 0, "%s: greedy token %d differs", variants[vi], mis);
            CHECK_MSG(worst <= 2e-2f, "%s: max diff %g", variants[vi], worst);
        }
        char err[512];
        wrk_model_t *m = NULL;
        if (wrk_model_load(dir, &m, err, sizeof err) == 0) {
            CHECK(wrk_model_info(m)->weight_dtype == (vi == 0 ? WRK_DT_BF16 : WRK_DT_F16));
            wrk_backend_t *b = golden_backend(&suite, m, NULL, 2);
            for (int si = 0; si < g.n_seqs; si++) {
                float d = golden_run_chunked(b, &g.seqs[si], g.V, 4);
                CHECK_MSG(d <= 2e-2f, "%s %s: max diff %g", variants[vi], g.seqs[si].name, d);
            }
            wrk_backend_destroy(b);
            wrk_model_free(m);
        }
    }
    golden_free(&g);
}

/* A sharded save of a checkpoint is the same model: same fingerprint, same logits. */
static void test_sharded(void)
{
    char a[RCD_PATH_MAX], bdir[RCD_PATH_MAX], err[512];
    CHECK(rcd_path_fmt(a, sizeof a, "%s/mamba/tiny_nobias_untied", golden_root()) == 0);
    CHECK(rcd_path_fmt(bdir, sizeof bdir, "%s/mamba/tiny_nobias_untied_sharded", golden_root()) ==
          0);
    wrk_model_t *m1 = NULL, *m2 = NULL;
    int rc1 = wrk_model_load(a, &m1, err, sizeof err);
    CHECK_MSG(rc1 == 0, "%s", err);
    int rc2 = wrk_model_load(bdir, &m2, err, sizeof err);
    CHECK_MSG(rc2 == 0, "%s", err);
    if (!rc1 && !rc2) {
        CHECK(wrk_model_info(m1)->fingerprint == wrk_model_info(m2)->fingerprint);
        golden_t g;
        if (golden_load(suite.family, "tiny_nobias_untied", &g) == 0) {
            wrk_backend_t *b = golden_backend(&suite, m2, NULL, 1);
            CHECK(golden_run_chunked(b, &g.seqs[g.n_seqs - 1], g.V, 8) <= TOL_F32);
            wrk_backend_destroy(b);
            golden_free(&g);
        }
    }
    /* Different models have different fingerprints. */
    wrk_model_t *m3 = NULL;
    CHECK(rcd_path_fmt(a, sizeof a, "%s/mamba/tiny_bias_tied", golden_root()) == 0);
    if (wrk_model_load(a, &m3, err, sizeof err) == 0 && m1)
        CHECK(wrk_model_info(m1)->fingerprint != wrk_model_info(m3)->fingerprint);
    wrk_model_free(m1);
    wrk_model_free(m2);
    wrk_model_free(m3);
}

/* State read out after a prefix and written into another slot continues exactly; a copied
 * slot (fork) too. */
static void test_state_roundtrip(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "tiny_bias_tied", &g);
    if (!m) return;
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(mi->state_bytes == (size_t)2 * (3 * 64 + 8 * 64) * 4);
    golden_check_state_layout(mi);
    wrk_backend_t *b = golden_backend(&suite, m, NULL, 2);
    void *blob = malloc(mi->state_bytes);
    golden_check_state_roundtrip(b, &g.seqs[g.n_seqs - 1], g.V, 10, TOL_F32, blob);
    CHECK(wrk_state_read_n(b, 99, blob, mi->state_bytes, NULL) == RCD_ERANGE);
    CHECK(wrk_state_copy(b, -1, 0) == RCD_ERANGE);
    free(blob);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

static void test_bad_batches(void)
{
    char dir[RCD_PATH_MAX], err[512];
    CHECK(rcd_path_fmt(dir, sizeof dir, "%s/mamba/tiny_bias_tied", golden_root()) == 0);
    wrk_model_t *m = NULL;
    if (wrk_model_load(dir, &m, err, sizeof err)) {
        CHECK(0);
        return;
    }
    wrk_backend_t *b = golden_backend(&suite, m, NULL, 1);
    int32_t ok[2] = {1, 2}, bad[2] = {1, 256}, neg[1] = {-1};
    float lg[2 * 256];
    wrk_seq_t s[2] = {{.slot = 0, .n_tokens = 2, .tokens = ok, .n_logits = 1, .logits = lg},
                      {.slot = 0, .n_tokens = 2, .tokens = ok}};
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_EINVAL); /* same slot twice */
    CHECK(strstr(err, "twice") != NULL);
    s[1].slot = 8;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_ERANGE);
    s[1].slot = 1;
    s[1].tokens = bad;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_ERANGE);
    CHECK(strstr(err, "256") != NULL);
    s[1].tokens = neg;
    s[1].n_tokens = 1;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_ERANGE);
    s[1].tokens = ok;
    s[1].n_tokens = 0;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_EINVAL);
    s[1].n_tokens = 2;
    s[1].n_logits = 3;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_EINVAL);
    s[1].n_logits = 1; /* logits wanted but no buffer */
    CHECK(wrk_step(b, s, 2, err, sizeof err) == RCD_EINVAL);
    CHECK(wrk_step(b, s, 0, err, sizeof err) == RCD_EINVAL);
    int32_t many[65] = {0};
    wrk_seq_t big = {.slot = 0, .n_tokens = 65, .tokens = many};
    CHECK(wrk_step(b, &big, 1, err, sizeof err) == RCD_ETOOBIG);
    s[1].n_logits = 0;
    CHECK(wrk_step(b, s, 2, err, sizeof err) == 0);
    wrk_backend_destroy(b);
    wrk_model_free(m);
}

/* The bundled default model (models/recurd-mamba-tiny) against transformers: every prompt
 * at every chunking and 64 greedy tokens identical. */
static void test_bundled(void)
{
    golden_test_bundled(&suite, "bundled", "recurd-mamba-tiny", TOL_F32);
}

/* The opt-in bf16 matmul on the BF16 copy (golden_util.h): within TOL_BF16_MATMUL. */
static void test_bf16_matmul(void)
{
    golden_test_bf16_matmul(&suite, "tiny_bias_tied", "tiny_bias_tied_bf16", TOL_BF16_MATMUL);
}

/* --weights q8|q4 on the first fp32 case: within the measured bounds (workers/README.md,
 * "Quantized weights"), every chunking bit-identical, fingerprint per format. */
static void test_quantized(void)
{
    golden_test_quantized(&suite, "tiny_bias_tied", TOL_Q8, TOL_Q4);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_chunkings);
    RUN(test_ragged);
    RUN(test_greedy);
    RUN(test_half_weights);
    RUN(test_bf16_matmul);
    RUN(test_sharded);
    RUN(test_state_roundtrip);
    RUN(test_bad_batches);
    RUN(test_bundled);
    RUN(test_quantized);
    return rcd_test_summary();
}
