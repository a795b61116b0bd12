/* Golden parity of the CPU Granite 4.0-H forward against transformers (fixtures from
 * tools/gen_granite_goldens.py): several layer patterns, GQA/MQA/MHA, MoE on and off, RoPE
 * and none; every chunking, ragged batches, greedy decode, BF16 weights; the paged KV cache
 * (block exhaustion fails cleanly, blocks come back on reset) and the variable-size state
 * round trip; config validation, and checks that the goldens see each Granite-specific
 * detail (attention scale, gated-norm groups, RoPE, MoE routing). */
#include <string.h>

#include "tests/support/golden_util.h"

/* --weights q8 / q4 against the fp32 goldens: max |dlogit| measured 6.16e-3 (q8) and 2.39e-2 (q4)
 * over all ISAs and chunkings (Sapphire Rapids; weights and per-token int8 activations); bound about 2x that: the quantization error
 * is the same on every CPU, what else moves is fp32 rounding, orders of magnitude smaller,
 * while a wrong scale or nibble order moves logits by O(1) (workers/README.md). */
#define TOL_Q8 0.012f
#define TOL_Q4 0.05f

/* The bf16 matmul must be no further from the goldens than transformers' own bf16 forward of
 * the same checkpoint: max |dlogit| of that against the moe_nope_tied_bf16 goldens
 * (tools/hf_bf16_error.py). */
#define TOL_BF16_MATMUL 5.27e-3f
#include "workers/cpu/kv_cache.h"
#include "workers/families/granite.h"

#define TOL_F32 1e-4f

static const char *fp32_cases[] = {"moe_nope_tied", "dense_rope_untied", "mqa_bias_odd", "mha_moe8",
                                   "all_mamba_dense"};
#define N_CASES (int)(sizeof fp32_cases / sizeof fp32_cases[0])
static const golden_suite_t suite = {
    .family = "granite",
    .family_id = WRK_FAMILY_GRANITE,
    .cases = fp32_cases,
    .n_cases = N_CASES,
    .tol = TOL_F32,
    /* Small KV blocks: every sequence crosses many. */
    .opts = {.n_slots = 8, .max_step_tokens = 64, .kv_block_tokens = 4, .n_kv_blocks = 96},
    .ragged_pattern = {1, 3, 7, 2, 5, 1, 1, 4},
};

GOLDEN_SUITE_CASES(suite)

/* The MoE checkpoint in BF16 (3-D expert tensors included): exact reference is the fp32
 * forward of the upcast weights; greedy tokens equal the fp32 model's. */
static void test_bf16_weights(void)
{
    golden_t g;
    if (golden_load(suite.family, "moe_nope_tied_bf16", &g)) {
        CHECK(0);
        return;
    }
    char err[512];
    float worst;
    int mis;
    if (golden_greedy(&suite, g.dir, &g, &worst, &mis) == 0)
        CHECK_MSG(mis < 0, "bf16: greedy token %d differs", mis);
    wrk_model_t *m = NULL;
    int rc = wrk_model_load(g.dir, &m, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (rc == 0) {
        CHECK(wrk_model_info(m)->weight_dtype == WRK_DT_BF16);
        wrk_backend_t *b = golden_backend(&suite, m, NULL, 2);
        float w = golden_check_chunks(b, &g, TOL_F32, "bf16");
        fprintf(stderr, "  bf16: max |dlogit| %.2e vs rounded-weight goldens\n", w);
        wrk_backend_destroy(b);
        wrk_model_free(m);
    }
    golden_free(&g);
}

/* The state layout and the variable-size state: read after a prefix (fixed Mamba part +
 * position count + KV of every position), written into another slot, continued exactly;
 * a copied slot (fork) too. The fixed-size API refuses a state that holds positions. */
static void test_state_roundtrip(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "moe_nope_tied", &g);
    if (!m) return;
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(strcmp(mi->architecture, "GraniteMoeHybridForCausalLM") == 0);
    /* 2 mamba layers of conv [K-1=3][C=64+2*2*16=128] and ssm [8][8][16], then the count. */
    CHECK(mi->state_bytes == (size_t)2 * (3 * 128 + 8 * 8 * 16) * 4 + 8);
    CHECK(mi->n_state_tensors == 5);
    CHECK(strcmp(mi->state_tensors[0].name, "layers.0.conv") == 0);
    CHECK(strcmp(mi->state_tensors[3].name, "layers.2.ssm") == 0);
    /* 2 attention layers x K,V x 2 kv heads x hd 8 x 4 bytes. */
    CHECK(mi->n_kv_layers == 2 && mi->kv_width == 16 && mi->kv_bytes_per_token == 2 * 2 * 16 * 4);
    golden_check_kv_state_roundtrip(&suite, m, &g.seqs[g.n_seqs - 1], g.V, 10);
    wrk_model_free(m);
    golden_free(&g);
}

/* The pool runs out: the step fails with RCD_ETOOBIG and no slot changes (the same step
 * succeeds with the right numbers once blocks are freed by a reset). */
static void test_kv_exhaustion(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "dense_rope_untied", &g);
    if (!m) return;
    char err[512];
    const wrk_model_info_t *mi = wrk_model_info(m);
    wrk_backend_t *b = NULL;
    /* 12 blocks of 4 tokens: one 37-token sequence takes 10. */
    wrk_backend_opts_t o = {.n_threads = 2,
                            .n_slots = 4,
                            .max_step_tokens = 64,
                            .kv_block_tokens = 4,
                            .n_kv_blocks = 12};
    CHECK(wrk_cpu_backend_create(m, &o, &b, err, sizeof err) == 0);
    const golden_seq_t *q = &g.seqs[g.n_seqs - 1];
    const int V = g.V;
    CHECK(q->n == 37);
    float *out = malloc((size_t)q->n * V * sizeof(float));
    wrk_seq_t s0 = {.slot = 0, .n_tokens = 30, .tokens = q->tokens, .n_logits = 0};
    CHECK(wrk_step(b, &s0, 1, err, sizeof err) == 0); /* 8 blocks */
    const size_t n0 = wrk_state_bytes(b, 0);
    char *before = malloc(n0), *after = malloc(n0);
    CHECK(wrk_state_read_n(b, 0, before, n0, NULL) == 0);
    /* Slot 1 wants 5 blocks, slot 0 wants 2 more: 7 > 4 free. */
    wrk_seq_t two[2] = {
        {.slot = 1, .n_tokens = 17, .tokens = q->tokens, .n_logits = 0},
        {.slot = 0, .n_tokens = 7, .tokens = q->tokens + 30, .n_logits = 7, .logits = out}};
    int rc = wrk_step(b, two, 2, err, sizeof err);
    CHECK_MSG(rc == RCD_ETOOBIG && strstr(err, "KV blocks"), "rc %d: %s", rc, err);
    CHECK(wrk_state_bytes(b, 1) == mi->state_bytes); /* untouched */
    CHECK(wrk_state_bytes(b, 0) == n0);
    CHECK(wrk_state_read_n(b, 0, after, n0, NULL) == 0 && memcmp(before, after, n0) == 0);
    /* Copying a 30-position slot needs 8 blocks; 4 are free. */
    CHECK(wrk_state_copy(b, 2, 0) == RCD_ETOOBIG);
    CHECK(wrk_state_bytes(b, 2) == mi->state_bytes);
    /* One sequence longer than the whole pool. */
    wrk_backend_t *b2 = NULL;
    o.n_kv_blocks = 2;
    CHECK(wrk_cpu_backend_create(m, &o, &b2, err, sizeof err) == 0);
    wrk_seq_t big = {.slot = 0, .n_tokens = 9, .tokens = q->tokens, .n_logits = 0};
    rc = wrk_step(b2, &big, 1, err, sizeof err);
    CHECK_MSG(rc == RCD_ETOOBIG && strstr(err, "more than the KV cache"), "%s", err);
    wrk_backend_destroy(b2);
    /* Slot 0 alone continues exactly. */
    CHECK(wrk_step(b, &two[1], 1, err, sizeof err) == 0);
    CHECK(golden_max_diff(out, q->logits + (size_t)30 * V, (size_t)7 * V) <= TOL_F32);
    /* Reset returns the blocks: repeated fill/reset cycles never run out. */
    for (int round = 0; round < 5; round++) {
        for (int slot = 0; slot < 4; slot++)
            wrk_state_reset(b, slot);
        float d = golden_run_chunked(b, q, V, 5);
        CHECK_MSG(d <= TOL_F32, "round %d: max diff %g", round, d);
    }
    free(before);
    free(after);
    free(out);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

/* The block pool on its own: reservation is all-or-nothing, blocks are reused after a
 * reset, copies are deep, and export/import round-trips the positions in order. */
static void test_kv_pool(void)
{
    wrk_kv_t *kv = NULL;
    CHECK(wrk_kv_create(3, 2, 5, 4, 6, &kv) == 0); /* 3 slots, 2 layers, width 5, 6 x 4 tokens */
    if (!kv) return;
    CHECK(wrk_kv_capacity(kv) == 24);
    char err[256];
    int32_t toks[24] = {0};
    wrk_seq_t a = {.slot = 0, .n_tokens = 9, .tokens = toks}; /* 3 blocks */
    CHECK(wrk_kv_reserve(kv, &a, 1, err, sizeof err) == 0 && kv->n_free == 3);
    for (int l = 0; l < 2; l++)
        for (int v = 0; v < 2; v++)
            for (int p = 0; p < 9; p++)
                for (int i = 0; i < 5; i++)
                    wrk_kv_at(kv, 0, l, v, p)[i] = (float)(1000 * l + 100 * v + 10 * p + i);
    wrk_kv_advance(kv, &a, 1);
    CHECK(kv->n_tokens[0] == 9);
    wrk_seq_t two[2] = {{.slot = 1, .n_tokens = 8, .tokens = toks},  /* 2 blocks */
                        {.slot = 0, .n_tokens = 4, .tokens = toks}}; /* 13 positions: 1 more */
    CHECK(wrk_kv_reserve(kv, two, 2, err, sizeof err) == 0 && kv->n_free == 0);
    wrk_kv_reset(kv, 1);
    two[0].n_tokens = 12; /* 3 blocks, only 2 free: nothing taken */
    CHECK(wrk_kv_reserve(kv, two, 1, err, sizeof err) == RCD_ETOOBIG && kv->n_free == 2);
    CHECK(kv->n_held[1] == 0);
    CHECK(wrk_kv_copy(kv, 2, 0) == RCD_ETOOBIG && kv->n_held[2] == 0); /* needs 4 */
    wrk_kv_reset(kv, 2);
    size_t n = wrk_kv_export_bytes(kv, 0);
    CHECK(n == (size_t)9 * 2 * 2 * 5 * sizeof(float));
    float *buf = malloc(n);
    wrk_kv_export(kv, 0, buf);
    bool ordered = true;
    for (int l = 0, j = 0; l < 2; l++)
        for (int v = 0; v < 2; v++)
            for (int p = 0; p < 9; p++)
                for (int i = 0; i < 5; i++, j++)
                    ordered &= buf[j] == (float)(1000 * l + 100 * v + 10 * p + i);
    CHECK(ordered);
    CHECK(wrk_kv_import(kv, 1, buf, 9) == RCD_ETOOBIG); /* 3 blocks, 2 free */
    wrk_kv_reset(kv, 0);
    CHECK(kv->n_free == 6 && kv->n_tokens[0] == 0);
    CHECK(wrk_kv_import(kv, 1, buf, 9) == 0 && kv->n_tokens[1] == 9 && kv->n_free == 3);
    CHECK(wrk_kv_copy(kv, 2, 1) == 0 && kv->n_free == 0);
    wrk_kv_at(kv, 1, 1, 1, 8)[4] = -1.f; /* the copy is deep */
    CHECK(wrk_kv_at(kv, 2, 1, 1, 8)[4] == (float)(1000 + 100 + 80 + 4));
    CHECK(wrk_kv_at(kv, 2, 0, 0, 5)[2] == 52.f);
    wrk_seq_t big = {.slot = 0, .n_tokens = 25, .tokens = toks};
    wrk_kv_reset(kv, 1);
    wrk_kv_reset(kv, 2);
    CHECK(wrk_kv_reserve(kv, &big, 1, err, sizeof err) == RCD_ETOOBIG);
    CHECK(strstr(err, "more than the KV cache") != NULL && kv->n_free == 6);
    free(buf);
    wrk_kv_destroy(kv);
}

/* A Granite model without attention layers has a fixed-size state: the fixed-size and the
 * sized API agree, and no KV cache is made. */
static void test_fixed_state_without_attention(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "all_mamba_dense", &g);
    if (!m) return;
    char err[512];
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(mi->n_kv_layers == 0 && mi->kv_bytes_per_token == 0 && mi->n_state_tensors == 4);
    CHECK(mi->state_bytes == (size_t)2 * (3 * 128 + 8 * 8 * 16) * 4);
    wrk_backend_t *b = golden_backend(&suite, m, NULL, 1);
    const golden_seq_t *q = &g.seqs[g.n_seqs - 1];
    wrk_seq_t s = {.slot = 0, .n_tokens = q->n, .tokens = q->tokens};
    CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
    CHECK(wrk_state_bytes(b, 0) == mi->state_bytes);
    char *x = malloc(mi->state_bytes), *y = malloc(mi->state_bytes);
    size_t len = 0;
    CHECK(wrk_state_read_n(b, 0, x, mi->state_bytes, NULL) == 0);
    CHECK(wrk_state_read_n(b, 0, y, mi->state_bytes, &len) == 0 && len == mi->state_bytes);
    CHECK(memcmp(x, y, len) == 0);
    CHECK(wrk_state_write_n(b, 1, x, mi->state_bytes + 4) == RCD_EFORMAT);
    CHECK(wrk_state_write_n(b, 1, x, mi->state_bytes) == 0);
    free(x);
    free(y);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

/* The goldens must be able to fail: each Granite detail, changed, moves the logits of at
 * least one fixture far beyond the tolerance (variants that do not apply to a fixture, e.g.
 * RoPE on a "nope" model, are skipped). */
static bool mutate(wrk_model_t *m, int which)
{
    wrk_granite_t *gr = ((struct wrk_model *)m)->priv;
    wrk_granite_config_t *c = &gr->cfg;
    bool applies = true;
    switch (which) {
    case 0: /* llama's 1/sqrt(hd) instead of attention_multiplier */
        applies = c->n_attn > 0;
        c->attn_mult = 1.f / sqrtf((float)c->head_dim);
        break;
    case 1: /* the spec's full-width gated norm instead of transformers' I/G groups */
        applies = c->mx.n_groups > 1 && c->n_mamba > 0;
        c->mx.norm_group = c->mx.inner;
        break;
    case 2:
        applies = c->rope;
        c->rope = false;
        break;
    case 3:
        applies = c->resid_mult != 1.f;
        c->resid_mult = 1.f;
        break;
    case 4: /* one expert fewer per token */
        applies = c->n_experts > 0 && c->top_k > 1;
        c->top_k--;
        break;
    }
    return applies;
}

static void test_goldens_discriminate(void)
{
    static const char *const what[] = {"1/sqrt(hd) attention scale", "full-width gated norm",
                                       "no RoPE", "residual_multiplier ignored",
                                       "one expert fewer per token"};
    golden_test_discriminate(&suite, what, 5, mutate, NULL);
}

static int parse(const char *json, char *err, size_t errlen)
{
    wrk_granite_config_t c;
    return wrk_granite_config_parse(json, strlen(json), &c, err, errlen);
}

static void test_config(void)
{
    char err[512];
/* cJSON takes the first of duplicate keys: overrides go first, ending in a comma. */
#define CFG(extra)                                                                                 \
    "{" extra "\"model_type\":\"granitemoehybrid\",\"hidden_size\":32,\"num_hidden_layers\":3,"    \
    "\"layer_types\":[\"mamba\",\"attention\",\"full_attention\"],\"num_attention_heads\":4,"      \
    "\"num_key_value_heads\":2,\"mamba_n_heads\":8,\"mamba_d_head\":\"auto\","                     \
    "\"mamba_n_groups\":2,\"mamba_d_state\":16,\"vocab_size\":256,\"position_embedding_type\":"    \
    "\"nope\",\"num_local_experts\":4,\"num_experts_per_tok\":2,\"rms_norm_eps\":1e-5}"
    wrk_granite_config_t c;
    const char *ok = CFG("");
    CHECK(wrk_granite_config_parse(ok, strlen(ok), &c, err, sizeof err) == 0);
    CHECK(c.n_attn == 2 && c.n_mamba == 1 && !c.attn[0] && c.attn[1] && c.attn[2]);
    CHECK(c.head_dim == 8 && c.mx.head_dim == 8 && c.mx.inner == 64 && c.mx.conv_dim == 128);
    CHECK(c.mx.proj_dim == 200 && c.mx.norm_group == 32 && !c.rope && c.attn_mult == 1.f);
    CHECK(c.mx.eps == 1e-5f && c.mx.use_conv_bias && !c.mx.use_bias && isinf(c.mx.dt_max));
    const char *alias =
        CFG("\"layer_types\":null,\"layers_block_type\":[\"linear_attention\",\"mamba\","
            "\"attention\"],\"position_embedding_type\":\"rope\",\"rope_theta\":500,");
    CHECK(wrk_granite_config_parse(alias, strlen(alias), &c, err, sizeof err) == 0);
    CHECK(c.n_attn == 1 && c.attn[2] && c.rope && c.rope_theta == 500.f);
    static const golden_refusal_t refusals[] = {
        {CFG("\"layer_types\":[\"mamba\",\"attention\"],"), RCD_EFORMAT, NULL},
        {CFG("\"layer_types\":[\"mamba\",\"moe\",\"mamba\"],"), RCD_EUNSUPPORTED, "layer_types"},
        {CFG("\"num_key_value_heads\":3,"), RCD_EFORMAT, NULL},
        {CFG("\"mamba_d_head\":4,"), RCD_EFORMAT, "mamba_n_heads * mamba_d_head"},
        {CFG("\"mamba_n_groups\":3,"), RCD_EFORMAT, NULL},
        {CFG("\"num_experts_per_tok\":5,"), RCD_EFORMAT, NULL},
        {CFG("\"num_experts_per_tok\":0,"), RCD_EFORMAT, NULL},
    };
    golden_test_refusals(parse, refusals, (int)(sizeof refusals / sizeof refusals[0]));
    CHECK(parse(CFG("\"num_local_experts\":0,\"num_experts_per_tok\":0,"), err, sizeof err) == 0);
    CHECK(parse(CFG("\"position_embedding_type\":\"alibi\","), err, sizeof err) ==
          RCD_EUNSUPPORTED);
    CHECK(parse(CFG("\"position_embedding_type\":\"rope\",\"rope_parameters\":{\"rope_type\":"
                    "\"yarn\"},"),
                err, sizeof err) == RCD_EUNSUPPORTED);
    CHECK(parse(CFG("\"position_embedding_type\":\"rope\",\"num_attention_heads\":32,"
                    "\"num_key_value_heads\":32,"),
                err, sizeof err) == RCD_EFORMAT); /* head dim 1 is odd */
    static const golden_refusal_t refusals2[] = {
        {CFG("\"num_attention_heads\":64,\"num_key_value_heads\":64,"), RCD_EFORMAT, NULL},
        {CFG("\"logits_scaling\":0,"), RCD_EFORMAT, NULL},
        {CFG("\"logits_scaling\":\"8\","), RCD_EFORMAT, NULL},
        {CFG("\"rms_norm_eps\":0,"), RCD_EFORMAT, NULL},
        {CFG("\"hidden_act\":\"gelu\","), RCD_EUNSUPPORTED, NULL},
        {CFG("\"num_hidden_layers\":2000,"), RCD_EFORMAT, NULL},
        {CFG("\"time_step_limit\":[0.5,0.1],"), RCD_EFORMAT, NULL},
        {"{\"model_type\":\"mamba2\"}", RCD_EUNSUPPORTED, NULL},
        {"[1]", RCD_EFORMAT, NULL},
    };
    golden_test_refusals(parse, refusals2, (int)(sizeof refusals2 / sizeof refusals2[0]));
#undef CFG
}

/* A checkpoint whose config.json disagrees with its tensors is refused with a message naming
 * the tensor: moe_nope_tied's weights next to an edited config.json. */
static void test_bad_checkpoints(void)
{
    static const golden_edit_t edits[] = {
        /* the unedited copy loads */
        {"moe_nope_tied", "\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 2", 0, {NULL}},
        {"moe_nope_tied",
         "\"num_local_experts\": 4",
         "\"num_local_experts\": 5",
         RCD_EFORMAT,
         {"block_sparse_moe.router.layer.weight", "model.safetensors"}},
        {"moe_nope_tied",
         "\"num_local_experts\": 4",
         "\"num_local_experts\": 0",
         RCD_EFORMAT,
         {"unexpected tensor", "block_sparse_moe"}},
        {"moe_nope_tied",
         "\"intermediate_size\": 16",
         "\"intermediate_size\": 8",
         RCD_EFORMAT,
         {"input_linear.weight", "[4,32,32]"}},
        {"moe_nope_tied",
         "\"num_key_value_heads\": 2",
         "\"num_key_value_heads\": 4",
         RCD_EFORMAT,
         {"self_attn.k_proj.weight"}},
        {"moe_nope_tied",
         "\"full_attention\",\n    \"linear_attention\"",
         "\"linear_attention\",\n    \"linear_attention\"",
         GOLDEN_EDIT_FAILS,
         {"layers.1."}},
        {"moe_nope_tied",
         "\"mamba_d_state\": 16",
         "\"mamba_d_state\": 8",
         RCD_EFORMAT,
         {"mamba.in_proj.weight"}},
        {"moe_nope_tied",
         "\"attention_bias\": false",
         "\"attention_bias\": true",
         RCD_ENOTFOUND,
         {"self_attn.q_proj.bias"}},
        {"moe_nope_tied",
         "\"tie_word_embeddings\": true",
         "\"tie_word_embeddings\": false",
         RCD_ENOTFOUND,
         {"lm_head.weight"}},
        {"moe_nope_tied",
         "\"shared_intermediate_size\": 48",
         "\"shared_intermediate_size\": 1e9",
         RCD_EFORMAT,
         {"shared_intermediate_size"}},
    };
    golden_test_edits(&suite, edits, (int)(sizeof edits / sizeof edits[0]));
}

/* The opt-in bf16 matmul on the BF16 copy (golden_util.h): within TOL_BF16_MATMUL. */
static void test_bf16_matmul(void)
{
    golden_test_bf16_matmul(&suite, "moe_nope_tied_bf16", "moe_nope_tied_bf16", TOL_BF16_MATMUL);
}

/* --weights q8|q4 on the first fp32 case: within the measured bounds (workers/README.md,
 * "Quantized weights"), every chunking bit-identical, fingerprint per format. */
static void test_quantized(void)
{
    golden_test_quantized(&suite, "moe_nope_tied", TOL_Q8, TOL_Q4);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_config);
    RUN(test_chunkings);
    RUN(test_ragged);
    RUN(test_greedy);
    RUN(test_bf16_weights);
    RUN(test_bf16_matmul);
    RUN(test_state_roundtrip);
    RUN(test_kv_exhaustion);
    RUN(test_kv_pool);
    RUN(test_fixed_state_without_attention);
    RUN(test_goldens_discriminate);
    RUN(test_bad_checkpoints);
    RUN(test_quantized);
    return rcd_test_summary();
}
