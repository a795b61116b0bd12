/* Golden parity of the CPU Qwen3-Next forward against transformers (fixtures from
 * tools/gen_qwen3next_goldens.py): Gated DeltaNet and gated attention layers in several
 * patterns, GQA in both, MoE with and without the shared expert, dense MLPs, partial RoPE;
 * every chunking, ragged batches, greedy decode; the state layout and the variable-size state
 * round trip; config validation and refusals, and checks that the goldens see each
 * Qwen3-Next-specific detail. transformers' full forward runs its chunked (64-token) delta
 * rule; the engine's chunked form (64-token blocks at absolute positions, the open block's
 * tokens pending in the state) matches it within the tolerance; long_blocks' 150-token prompt
 * completes blocks mid-prompt, also in calls that straddle a block boundary. */
#include <stdlib.h>
#include <string.h>

#include "tests/support/golden_util.h"
#include "workers/families/qwen3next.h"

#define TOL_F32 1e-4f

static const char *fp32_cases[] = {"moe_shared_tied", "dense_bias_untied", "moe_noshared_odd",
                                   "all_linear_dense", "long_blocks"};
#define N_CASES (int)(sizeof fp32_cases / sizeof fp32_cases[0])
static const golden_suite_t suite = {
    .family = "qwen3next",
    .family_id = WRK_FAMILY_QWEN3_NEXT,
    .cases = fp32_cases,
    .n_cases = N_CASES,
    .tol = TOL_F32,
    .opts = {.n_slots = 8, .max_step_tokens = 160, .kv_block_tokens = 4, .n_kv_blocks = 96},
    .ragged_pattern = {1, 3, 7, 2, 5, 1, 1, 4},
};

static void test_chunkings(void)
{
    golden_test_chunkings(&suite);
}
static void test_ragged(void)
{
    golden_test_ragged(&suite);
}
static void test_greedy(void)
{
    golden_test_greedy(&suite);
}

/* The state layout and the variable-size state: read after a prefix (GDN conv windows and
 * delta-rule states + position count + KV), written into another slot, continued exactly; a
 * copied slot (fork) too. */
static void test_state_roundtrip(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "moe_shared_tied", &g);
    if (!m) return;
    char err[512];
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(strcmp(mi->architecture, "Qwen3NextForCausalLM") == 0);
    /* 2 GDN layers of conv [K-1=3][C=2*16+32=64], recurrent [4][8][8] and the open block's
     * pending_k [4][64][8], pending_u [4][64][8], pending_g [4][64]; gdn.n_pending; the count. */
    const size_t gdn_layer = (size_t)(3 * 64 + 4 * 8 * 8 + 4 * 64 * (8 + 8 + 1)) * 4;
    CHECK(mi->state_bytes == 2 * gdn_layer + 8 + 8);
    CHECK(mi->n_state_tensors == 12);
    CHECK(strcmp(mi->state_tensors[0].name, "layers.0.conv") == 0);
    CHECK(strcmp(mi->state_tensors[1].name, "layers.0.recurrent") == 0);
    CHECK(strcmp(mi->state_tensors[2].name, "layers.0.pending_k") == 0 &&
          mi->state_tensors[2].bytes == 4 * 64 * 8 * 4);
    CHECK(strcmp(mi->state_tensors[3].name, "layers.0.pending_u") == 0);
    CHECK(strcmp(mi->state_tensors[4].name, "layers.0.pending_g") == 0 &&
          mi->state_tensors[4].bytes == 4 * 64 * 4);
    CHECK(strcmp(mi->state_tensors[6].name, "layers.2.recurrent") == 0);
    CHECK(strcmp(mi->state_tensors[10].name, "gdn.n_pending") == 0 &&
          mi->state_tensors[10].bytes == 8);
    CHECK(strcmp(mi->state_tensors[11].name, "kv.n_tokens") == 0 &&
          mi->state_tensors[11].bytes == 8);
    /* 2 attention layers x K,V x 2 kv heads x hd 16 x 4 bytes. */
    CHECK(mi->n_kv_layers == 2 && mi->kv_width == 32 && mi->kv_bytes_per_token == 2 * 2 * 32 * 4);
    golden_check_state_layout(mi);
    wrk_backend_t *b = golden_backend(&suite, m, NULL, 2);
    const golden_seq_t *q = &g.seqs[g.n_seqs - 1];
    const int V = g.V, cut = 10;
    wrk_seq_t s = {.slot = 0, .n_tokens = cut, .tokens = q->tokens, .n_logits = 0};
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    const size_t n = wrk_state_bytes(b, 0);
    CHECK(n == mi->state_bytes + (size_t)cut * mi->kv_bytes_per_token);
    char *blob = malloc(n);
    size_t len = 0;
    CHECK(wrk_state_read_n(b, 0, blob, n, &len) == 0 && len == n);
    uint64_t count, pending;
    memcpy(&count, blob + mi->state_bytes - 8, 8);
    memcpy(&pending, blob + mi->state_bytes - 16, 8);
    CHECK(count == (uint64_t)cut && pending == (uint64_t)cut);
    wrk_state_reset(b, 0);
    /* A blob of the recurrent form's layout (no open-block rows, no gdn.n_pending: 3,592 fixed
     * bytes) is refused by its length, short or long (its KV then read as the count). */
    for (int P = 10; P <= 100; P += 90) {
        const size_t old = 3592 + (size_t)P * mi->kv_bytes_per_token;
        char *ob = calloc(1, old);
        const uint64_t oc = (uint64_t)P;
        memcpy(ob + 3592 - 8, &oc, 8);
        const int rc = wrk_state_write_n(b, 5, ob, old);
        CHECK_MSG(rc == RCD_EFORMAT || rc == RCD_ETOOBIG, "old layout, %d positions: rc %d", P, rc);
        free(ob);
    }
    CHECK(wrk_state_write_n(b, 5, blob, n - 4) == RCD_EFORMAT);
    CHECK(wrk_state_write_n(b, 5, blob, n) == 0);
    CHECK(wrk_state_copy(b, 6, 5) == 0);
    for (int slot = 5; slot <= 6; slot++)
        golden_check_resume(b, slot, q, V, cut, TOL_F32);
    free(blob);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

/* Blocks complete in calls of any length: chunkings that straddle the 64-token block
 * boundaries (5, 7, 48, 63, whole) give logits bit-identical to one token per call, within the
 * tolerance of the goldens; a state read mid-block (pending tokens) and written into another
 * slot continues exactly, across the next block boundary. */
static void test_block_boundaries(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "long_blocks", &g);
    if (!m) return;
    const golden_seq_t *q = NULL;
    for (int i = 0; i < g.n_seqs; i++)
        if (g.seqs[i].n > 2 * 64) q = &g.seqs[i];
    CHECK(q != NULL);
    wrk_backend_t *b = golden_backend(&suite, m, NULL, 2);
    if (!q || !b) goto out;
    const int V = g.V;
    const size_t n = (size_t)q->n * V;
    float *first = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
    CHECK(golden_run_into(b, 0, q, V, 1, first) == 0);
    CHECK(golden_max_diff(first, q->logits, n) <= TOL_F32);
    static const int chunks[] = {5, 7, 48, 63, 160};
    for (int k = 0; k < 5; k++) {
        CHECK(golden_run_into(b, 0, q, V, chunks[k], out) == 0);
        CHECK_MSG(memcmp(first, out, n * sizeof(float)) == 0,
                  "chunk %d logits differ bitwise from chunk 1 (max %g)", chunks[k],
                  golden_max_diff(first, out, n));
    }
    /* Mid-block (100 = 64 + 36 pending) state read, written into another slot and forked:
     * both continue across position 128 bit-identical to the single-token run. */
    char err[512];
    const int cut = 100;
    wrk_state_reset(b, 0);
    for (int p = 0; p < cut; p += 50) {
        wrk_seq_t s = {.slot = 0, .n_tokens = 50, .tokens = q->tokens + p, .n_logits = 0};
        CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    }
    const size_t sn = wrk_state_bytes(b, 0);
    char *blob = malloc(sn);
    CHECK(wrk_state_read_n(b, 0, blob, sn, NULL) == 0);
    const wrk_model_info_t *mi = wrk_model_info(m);
    uint64_t pending;
    memcpy(&pending, blob + mi->state_bytes - 16, 8);
    CHECK(pending == (uint64_t)(cut - 64));
    wrk_state_reset(b, 0);
    CHECK(wrk_state_write_n(b, 3, blob, sn) == 0);
    CHECK(wrk_state_copy(b, 4, 3) == 0);
    for (int slot = 3; slot <= 4; slot++) {
        wrk_seq_t s = {.slot = slot,
                       .n_tokens = q->n - cut,
                       .tokens = q->tokens + cut,
                       .n_logits = q->n - cut,
                       .logits = out};
        CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
        CHECK_MSG(memcmp(out, first + (size_t)cut * V, (size_t)(q->n - cut) * V * sizeof(float)) ==
                      0,
                  "slot %d resumed at %d differs from the single-token run", slot, cut);
    }
    free(blob);
    free(first);
    free(out);
out:
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

/* The bench/test switch RCD_GDN_RECURRENT=1 (read at backend creation): the token-by-token
 * form matches the goldens too and is chunking-invariant; the open block stays empty. */
static void test_recurrent_switch(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "long_blocks", &g);
    if (!m) return;
    setenv("RCD_GDN_RECURRENT", "1", 1);
    wrk_backend_t *b = golden_backend(&suite, m, NULL, 2);
    unsetenv("RCD_GDN_RECURRENT");
    if (b) {
        const float worst = golden_check_chunks(b, &g, TOL_F32, "long_blocks recurrent");
        fprintf(stderr, "  long_blocks recurrent form: max |dlogit| %.2e over all chunkings\n",
                worst);
        const wrk_model_info_t *mi = wrk_model_info(m);
        char *blob = malloc(wrk_state_bytes(b, 0));
        uint64_t pending = 1;
        CHECK(wrk_state_read_n(b, 0, blob, wrk_state_bytes(b, 0), NULL) == 0);
        memcpy(&pending, blob + mi->state_bytes - 16, 8);
        CHECK(pending == 0);
        free(blob);
    }
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

/* Without attention layers the state is fixed-size: no KV, the fixed-size round trip. */
static void test_fixed_state_without_attention(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "all_linear_dense", &g);
    if (!m) return;
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(mi->n_kv_layers == 0 && mi->kv_bytes_per_token == 0 && mi->n_state_tensors == 11);
    CHECK(mi->state_bytes == (size_t)2 * (3 * 64 + 4 * 8 * 8 + 4 * 64 * 17) * 4 + 8);
    wrk_backend_t *b = golden_backend(&suite, m, NULL, 2);
    void *blob = malloc(mi->state_bytes);
    golden_check_state_roundtrip(b, &g.seqs[g.n_seqs - 1], g.V, 13, TOL_F32, blob);
    free(blob);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

/* The goldens must be able to fail: each detail, changed, moves the logits of at least one
 * fixture far beyond the tolerance. */
static float run_variant(const char *name, int which)
{
    golden_t g;
    char err[512];
    float d = -1.f;
    if (golden_load(suite.family, name, &g)) return d;
    wrk_model_t *m = NULL;
    if (wrk_model_load(g.dir, &m, err, sizeof err) == 0) {
        wrk_qwen3next_t *q = ((struct wrk_model *)m)->priv;
        wrk_qwen3next_config_t *c = &q->cfg;
        bool applies = true;
        switch (which) {
        case 0: /* full RoPE instead of partial */
            applies = c->n_attn > 0 && c->rot_dim < c->head_dim;
            c->rot_dim = c->head_dim;
            for (int j = 0; j < c->rot_dim / 2; j++)
                q->inv_freq[j] = (float)(1.0 / pow((double)c->rope_theta, 2.0 * j / c->rot_dim));
            break;
        case 1: /* norm_topk_prob flipped */
            applies = c->n_experts > 0;
            c->norm_topk = !c->norm_topk;
            break;
        case 2: /* rms_norm_eps read wrong (every norm, the gated one included) */
            applies = true;
            c->eps = 0.1f;
            break;
        case 3: /* one expert fewer per token */
            applies = c->n_experts > 0 && c->top_k > 1;
            c->top_k--;
            break;
        }
        if (applies) {
            wrk_backend_t *b = golden_backend(&suite, m, NULL, 1);
            d = golden_run_chunked(b, &g.seqs[g.n_seqs - 1], g.V, 8);
            wrk_backend_destroy(b);
        }
        wrk_model_free(m);
    }
    golden_free(&g);
    return d;
}

static void test_goldens_discriminate(void)
{
    static const char *what[] = {"full RoPE", "norm_topk_prob flipped", "rms_norm_eps 0.1",
                                 "one expert fewer per token"};
    for (int w = 0; w < 4; w++) {
        float best = -1.f;
        const char *where = "";
        for (int ci = 0; ci < N_CASES; ci++) {
            float d = run_variant(fp32_cases[ci], w);
            if (d > best) {
                best = d;
                where = fp32_cases[ci];
            }
        }
        fprintf(stderr, "  %s: max |dlogit| %.2e (%s)\n", what[w], best, where);
        CHECK_MSG(best > 100 * TOL_F32, "%s: %g", what[w], best);
    }
}

static int parse(const char *json, char *err, size_t errlen)
{
    wrk_qwen3next_config_t c;
    return wrk_qwen3next_config_parse(json, strlen(json), &c, err, errlen);
}

static void test_config(void)
{
    char err[512];
/* cJSON takes the first of duplicate keys: overrides go first, ending in a comma. */
#define CFG(extra)                                                                                 \
    "{" extra "\"model_type\":\"qwen3_next\",\"hidden_size\":32,\"num_hidden_layers\":8,"          \
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,\"vocab_size\":256,"      \
    "\"linear_num_key_heads\":2,\"linear_num_value_heads\":4,\"linear_key_head_dim\":8,"           \
    "\"linear_value_head_dim\":8,\"num_experts\":4,\"num_experts_per_tok\":2,"                     \
    "\"decoder_sparse_step\":2,\"mlp_only_layers\":[5],\"rope_parameters\":{\"rope_type\":"        \
    "\"default\",\"rope_theta\":1000,\"partial_rotary_factor\":0.25}}"
    wrk_qwen3next_config_t c;
    const char *ok = CFG("");
    CHECK_MSG(wrk_qwen3next_config_parse(ok, strlen(ok), &c, err, sizeof err) == 0, "%s", err);
    /* full_attention_interval 4 by default: layers 3 and 7 */
    CHECK(c.n_attn == 2 && c.attn[3] && c.attn[7] && !c.attn[0] && c.n_gdn == 6);
    /* MoE on layers 1, 3, 7 (5 is mlp_only) */
    CHECK(c.moe[1] && c.moe[3] && !c.moe[5] && c.moe[7] && !c.moe[0] && !c.moe[2]);
    CHECK(c.rot_dim == 4 && c.rope_theta == 1000.f && c.conv_dim == 2 * 16 + 32);
    CHECK(c.norm_topk && c.shared_dim == 512 && c.d_conv == 4 && c.eps == 1e-6f);
    const char *iv = CFG("\"full_attention_interval\":2,");
    CHECK(wrk_qwen3next_config_parse(iv, strlen(iv), &c, err, sizeof err) == 0);
    CHECK(c.n_attn == 4 && c.attn[1] && c.attn[3] && !c.attn[2]);
    CHECK(parse(CFG("\"layer_types\":[\"linear_attention\"],"), err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"layer_types\":[\"mamba\",\"full_attention\",\"full_attention\","
                    "\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\","
                    "\"full_attention\"],"),
                err, sizeof err) == RCD_EUNSUPPORTED);
    CHECK(strstr(err, "layer_types") != NULL);
    CHECK(parse(CFG("\"num_key_value_heads\":3,"), err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"linear_num_value_heads\":3,"), err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "linear_num_value_heads") != NULL);
    CHECK(parse(CFG("\"num_experts_per_tok\":5,"), err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"num_experts\":0,\"num_experts_per_tok\":0,"), err, sizeof err) == 0);
    CHECK(parse(CFG("\"mlp_only_layers\":[8],"), err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"hidden_act\":\"gelu\","), err, sizeof err) == RCD_EUNSUPPORTED);
    CHECK(strstr(err, "hidden_act") != NULL);
    CHECK(parse(CFG("\"rope_parameters\":{\"rope_type\":\"yarn\"},"), err, sizeof err) ==
          RCD_EUNSUPPORTED);
    CHECK(strstr(err, "rope_type") != NULL);
    CHECK(parse(CFG("\"rope_scaling\":{\"type\":\"linear\"},"), err, sizeof err) ==
          RCD_EUNSUPPORTED);
    CHECK(strstr(err, "rope_scaling") != NULL);
    CHECK(parse(CFG("\"rope_parameters\":{\"partial_rotary_factor\":0.3125},"), err, sizeof err) ==
          RCD_EUNSUPPORTED); /* 16 * 0.3125 = 5 rotated dims */
    CHECK(strstr(err, "partial_rotary_factor") != NULL);
    CHECK(parse(CFG("\"rms_norm_eps\":0,"), err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"num_hidden_layers\":2000,"), err, sizeof err) == RCD_EFORMAT);
    CHECK(parse("{\"model_type\":\"qwen3\"}", err, sizeof err) == RCD_EUNSUPPORTED);
    CHECK(parse("[1]", err, sizeof err) == RCD_EFORMAT);
#undef CFG
}

/* A checkpoint whose config.json disagrees with its tensors is refused naming the tensor. */
static void test_bad_checkpoints(void)
{
    char err[1024];
    int rc = golden_load_edited(suite.family, "moe_shared_tied", "\"num_experts\": 4",
                                "\"num_experts\": 4", err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    rc = golden_load_edited(suite.family, "moe_shared_tied", "\"num_experts\": 4",
                            "\"num_experts\": 5", err, sizeof err);
    CHECK_MSG(rc == RCD_EFORMAT && strstr(err, "mlp.gate.weight"), "%s", err);
    rc = golden_load_edited(suite.family, "moe_shared_tied", "\"num_experts\": 4",
                            "\"num_experts\": 0", err, sizeof err);
    CHECK_MSG(rc != 0 && strstr(err, "mlp."), "%s", err);
    rc = golden_load_edited(suite.family, "moe_shared_tied", "\"linear_num_value_heads\": 4",
                            "\"linear_num_value_heads\": 2", err, sizeof err);
    CHECK_MSG(rc == RCD_EFORMAT && strstr(err, "in_proj_qkvz"), "%s", err);
    rc = golden_load_edited(suite.family, "moe_shared_tied", "\"attention_bias\": false",
                            "\"attention_bias\": true", err, sizeof err);
    CHECK_MSG(rc == RCD_ENOTFOUND && strstr(err, "self_attn.q_proj.bias"), "%s", err);
    rc = golden_load_edited(suite.family, "moe_noshared_odd",
                            "\"shared_expert_intermediate_size\": 0",
                            "\"shared_expert_intermediate_size\": 4", err, sizeof err);
    CHECK_MSG(rc == RCD_EFORMAT && strstr(err, "shared_expert"), "%s", err);
}

/* Refused at creation, naming the reason: tensor parallelism (no sharded forward) and the
 * CUDA backend (no CUDA forward; or not built in) — before any device is touched. */
static void test_refused_backends(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "moe_shared_tied", &g);
    if (!m) return;
    char err[512] = "";
    wrk_backend_t *b = NULL;
    wrk_backend_opts_t o = {.n_threads = 1, .n_slots = 2, .max_step_tokens = 16, .tp = 2};
    int rc = wrk_cpu_backend_create(m, &o, &b, err, sizeof err);
    CHECK_MSG(rc == RCD_EUNSUPPORTED && strstr(err, "no sharded forward") && !b, "rc %d: %s", rc,
              err);
    o.tp = 1;
    rc = wrk_cuda_backend_create(m, &o, &b, err, sizeof err);
    CHECK_MSG(rc == RCD_EUNSUPPORTED && !b &&
                  (strstr(err, "no CUDA forward") || strstr(err, "not built in")),
              "rc %d: %s", rc, err);
    wrk_model_free(m);
    golden_free(&g);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_config);
    RUN(test_chunkings);
    RUN(test_ragged);
    RUN(test_greedy);
    RUN(test_state_roundtrip);
    RUN(test_fixed_state_without_attention);
    RUN(test_block_boundaries);
    RUN(test_recurrent_switch);
    RUN(test_goldens_discriminate);
    RUN(test_bad_checkpoints);
    RUN(test_refused_backends);
    return rcd_test_summary();
}
