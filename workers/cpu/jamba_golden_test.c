/* Golden parity of the CPU Jamba forward against transformers (fixtures from
 * tools/gen_jamba_goldens.py): several attention / expert period and offset patterns,
 * GQA/MQA/MHA, MoE on some layers and dense MLPs on others, odd sizes; every chunking, ragged
 * batches, greedy decode; the state layout and the variable-size state round trip; config
 * validation and refusals, and checks that the goldens see each Jamba-specific detail (the
 * dt/B/C norms, the unrenormalized top-k weights). */
#include <math.h>
#include <string.h>

#include "tests/support/golden_util.h"
#include "workers/families/jamba.h"

#define TOL_F32 1e-4f

static const char *fp32_cases[] = {"alt_moe_gqa", "p4o2_mqa_odd", "attn0_moe_all",
                                   "all_mamba_dense"};
#define N_CASES (int)(sizeof fp32_cases / sizeof fp32_cases[0])
static const golden_suite_t suite = {
    .family = "jamba",
    .family_id = WRK_FAMILY_JAMBA,
    .cases = fp32_cases,
    .n_cases = N_CASES,
    .tol = TOL_F32,
    /* Small KV blocks: every sequence crosses many. */
    .opts = {.n_slots = 8, .max_step_tokens = 64, .kv_block_tokens = 4, .n_kv_blocks = 96},
    .ragged_pattern = {1, 3, 7, 2, 5, 1, 1, 4},
};

GOLDEN_SUITE_CASES(suite)

/* The state layout and the variable-size state: read after a prefix (fixed Mamba part +
 * position count + KV of every position), written into another slot, continued exactly; a
 * copied slot (fork) too. */
static void test_state_roundtrip(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "alt_moe_gqa", &g);
    if (!m) return;
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(strcmp(mi->architecture, "JambaForCausalLM") == 0);
    /* 2 mamba layers (0, 2) of conv [K-1=3][I=64] and ssm [N=8][64], then the count. */
    CHECK(mi->state_bytes == (size_t)2 * (3 * 64 + 8 * 64) * 4 + 8);
    CHECK(mi->n_state_tensors == 5);
    CHECK(strcmp(mi->state_tensors[0].name, "layers.0.conv") == 0);
    CHECK(strcmp(mi->state_tensors[3].name, "layers.2.ssm") == 0);
    /* 2 attention layers x K,V x 2 kv heads x hd 8 x 4 bytes. */
    CHECK(mi->n_kv_layers == 2 && mi->kv_width == 16 && mi->kv_bytes_per_token == 2 * 2 * 16 * 4);
    golden_check_kv_state_roundtrip(&suite, m, &g.seqs[g.n_seqs - 1], g.V, 10);
    wrk_model_free(m);
    golden_free(&g);
}

/* Without attention layers the state is fixed-size: no KV cache. The odd fixture's layout. */
static void test_layouts(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "all_mamba_dense", &g);
    if (m) {
        const wrk_model_info_t *mi = wrk_model_info(m);
        CHECK(mi->n_kv_layers == 0 && mi->kv_bytes_per_token == 0 && mi->n_state_tensors == 4);
        CHECK(mi->state_bytes == (size_t)2 * (3 * 64 + 8 * 64) * 4);
        wrk_model_free(m);
        golden_free(&g);
    }
    m = golden_open(suite.family, "p4o2_mqa_odd", &g);
    if (m) {
        const wrk_model_info_t *mi = wrk_model_info(m);
        /* 5 mamba layers of conv [2][36] and ssm [5][36]; 1 attention layer, 1 KV head of 8. */
        CHECK(mi->state_bytes == (size_t)5 * (2 * 36 + 5 * 36) * 4 + 8);
        CHECK(mi->n_state_tensors == 11 && mi->n_kv_layers == 1 && mi->kv_width == 8);
        CHECK(strcmp(mi->state_tensors[4].name, "layers.3.conv") == 0);
        const wrk_jamba_t *j = ((struct wrk_model *)m)->priv;
        CHECK(j->cfg.n_moe == 3 && j->layers[1].moe && !j->layers[2].moe && j->layers[2].attn);
        CHECK(j->cfg.head_dim == 8 && j->cfg.mx.dt_rank == 3 && j->cfg.mx.inner == 36);
        golden_check_state_layout(mi);
        wrk_model_free(m);
        golden_free(&g);
    }
}

/* The goldens must be able to fail: each Jamba detail, changed, moves the logits of at least
 * one fixture far beyond the tolerance. */
static bool mutate(wrk_model_t *m, int which)
{
    wrk_jamba_t *j = ((struct wrk_model *)m)->priv;
    wrk_jamba_config_t *c = &j->cfg;
    bool applies = true;
    switch (which) {
    case 0: /* plain Mamba: no dt/B/C norms */
        applies = c->n_mamba > 0;
        for (int l = 0; l < c->mx.n_layers; l++)
            j->layers[l].mx.dt_norm = NULL;
        break;
    case 1: /* one expert fewer per token */
        applies = c->n_moe > 0 && c->top_k > 1;
        c->top_k--;
        break;
    case 2: /* the head dim read as hidden / heads (p4o2_mqa_odd sets head_dim): scale */
        applies = c->n_attn > 0 && c->head_dim != c->mx.hidden / c->n_q;
        c->head_dim = c->mx.hidden / c->n_q;
        break;
    }
    return applies;
}

static void test_goldens_discriminate(void)
{
    static const char *const what[] = {"no dt/B/C norms", "one expert fewer per token",
                                       "another head dim"};
    golden_test_discriminate(&suite, what, 3, mutate, NULL);
}

static int parse(const char *json, char *err, size_t errlen)
{
    wrk_jamba_config_t c;
    return wrk_jamba_config_parse(json, strlen(json), &c, err, errlen);
}

static void test_config(void)
{
    char err[512];
/* cJSON takes the first of duplicate keys: overrides go first, ending in a comma. */
#define CFG(extra)                                                                                 \
    "{" extra "\"model_type\":\"jamba\",\"hidden_size\":32,\"num_hidden_layers\":8,"               \
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"intermediate_size\":48,"                \
    "\"vocab_size\":256,\"num_experts\":4,\"num_experts_per_tok\":2,\"rms_norm_eps\":1e-5}"
    wrk_jamba_config_t c;
    const char *ok = CFG("");
    CHECK(wrk_jamba_config_parse(ok, strlen(ok), &c, err, sizeof err) == 0);
    /* Defaults: attention at 4 of period 8, experts at odd layers, dt rank ceil(32/16). */
    CHECK(c.n_attn == 1 && c.attn[4] && !c.attn[3] && c.n_mamba == 7);
    CHECK(c.n_moe == 4 && c.moe[1] && c.moe[7] && !c.moe[0]);
    CHECK(c.head_dim == 8 && c.mx.inner == 64 && c.mx.dt_rank == 2 && c.mx.d_state == 16);
    CHECK(c.mx.d_conv == 4 && c.mx.use_conv_bias && !c.mx.use_bias && !c.mx.tie_embeddings);
    CHECK(c.mx.eps == 1e-5f && c.ffn_dim == 48);
    const char *one = CFG("\"num_experts\":1,\"mamba_dt_rank\":5,\"attn_layer_period\":3,"
                          "\"attn_layer_offset\":0,\"num_key_value_heads\":null,");
    CHECK(wrk_jamba_config_parse(one, strlen(one), &c, err, sizeof err) == 0);
    CHECK(c.n_moe == 0 && c.mx.dt_rank == 5 && c.n_attn == 3 && c.attn[0] && c.attn[6]);
    CHECK(c.n_kv == 4);
    const char *nokv = "{\"model_type\":\"jamba\",\"num_attention_heads\":16,\"hidden_size\":64}";
    CHECK(wrk_jamba_config_parse(nokv, strlen(nokv), &c, err, sizeof err) == 0 && c.n_kv == 8);
    const char *alias = CFG("\"num_experts\":null,\"num_local_experts\":6,");
    CHECK(wrk_jamba_config_parse(alias, strlen(alias), &c, err, sizeof err) == 0);
    CHECK(c.n_experts == 6 && c.n_moe == 4);
    static const golden_refusal_t refusals[] = {
        {CFG("\"hidden_act\":\"gelu\","), RCD_EUNSUPPORTED, "hidden_act"},
        {CFG("\"attn_layer_offset\":8,"), RCD_EFORMAT, "attn_layer_offset"},
        {CFG("\"expert_layer_offset\":2,"), RCD_EFORMAT, "expert_layer_offset"},
        {CFG("\"attn_layer_period\":0,"), RCD_EFORMAT, NULL},
        {CFG("\"num_key_value_heads\":3,"), RCD_EFORMAT, NULL},
        {CFG("\"num_experts_per_tok\":5,"), RCD_EFORMAT, "num_experts_per_tok"},
        {CFG("\"num_experts_per_tok\":0,"), RCD_EFORMAT, NULL},
        {CFG("\"mamba_dt_rank\":\"full\","), RCD_EFORMAT, "mamba_dt_rank"},
        {CFG("\"mamba_expand\":0,"), RCD_EFORMAT, NULL},
        {CFG("\"rms_norm_eps\":0,"), RCD_EFORMAT, NULL},
        {CFG("\"num_hidden_layers\":2000,"), RCD_EFORMAT, NULL},
        {CFG("\"num_attention_heads\":64,\"num_key_value_heads\":64,"), RCD_EFORMAT, NULL},
        {"{\"model_type\":\"mamba\"}", RCD_EUNSUPPORTED, NULL},
        {"[1]", RCD_EFORMAT, NULL},
    };
    golden_test_refusals(parse, refusals, (int)(sizeof refusals / sizeof refusals[0]));
#undef CFG
}

/* A checkpoint whose config.json disagrees with its tensors is refused with a message naming
 * the tensor: alt_moe_gqa's weights next to an edited config.json. */
static void test_bad_checkpoints(void)
{
    static const golden_edit_t edits[] = {
        /* the unedited copy loads */
        {"alt_moe_gqa", "\"num_experts\": 4", "\"num_experts\": 4", 0, {NULL}},
        {"alt_moe_gqa",
         "\"num_experts\": 4",
         "\"num_experts\": 5",
         RCD_EFORMAT,
         {"feed_forward.router.weight", "model.safetensors"}},
        {"alt_moe_gqa",
         "\"num_experts\": 4",
         "\"num_experts\": 1",
         GOLDEN_EDIT_FAILS,
         {"feed_forward"}},
        {"alt_moe_gqa",
         "\"expert_layer_offset\": 0",
         "\"expert_layer_offset\": 1",
         GOLDEN_EDIT_FAILS,
         {"feed_forward"}},
        {"alt_moe_gqa",
         "\"attn_layer_offset\": 1",
         "\"attn_layer_offset\": 0",
         GOLDEN_EDIT_FAILS,
         {"layers.0."}},
        {"alt_moe_gqa",
         "\"num_key_value_heads\": 2",
         "\"num_key_value_heads\": 4",
         RCD_EFORMAT,
         {"self_attn.k_proj.weight"}},
        {"alt_moe_gqa", "\"mamba_d_state\": 8", "\"mamba_d_state\": 4", RCD_EFORMAT, {"mamba."}},
        {"alt_moe_gqa",
         "\"mamba_proj_bias\": false",
         "\"mamba_proj_bias\": true",
         RCD_ENOTFOUND,
         {"mamba.in_proj.bias"}},
    };
    golden_test_edits(&suite, edits, (int)(sizeof edits / sizeof edits[0]));
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_config);
    RUN(test_chunkings);
    RUN(test_ragged);
    RUN(test_greedy);
    RUN(test_state_roundtrip);
    RUN(test_layouts);
    RUN(test_goldens_discriminate);
    RUN(test_bad_checkpoints);
    return rcd_test_summary();
}
