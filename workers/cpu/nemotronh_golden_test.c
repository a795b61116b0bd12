/* Golden parity of the CPU Nemotron-H forward against transformers 5.23 (fixtures from
 * tools/gen_nemotronh_goldens.py): several block patterns (M, *, -, E), GQA/MQA/MHA, MoE with
 * grouped sigmoid routing (with and without top-k normalization), dense, Mamba-only, odd
 * sizes; every chunking, ragged batches, greedy decode; the state layout and the
 * variable-size state round trip; config validation and refusals, and checks that the
 * goldens see each Nemotron-H detail. */
#include <math.h>
#include <string.h>

#include "tests/support/golden_util.h"
#include "workers/families/nemotronh.h"

#define TOL_F32 1e-4f

static const char *fp32_cases[] = {"moe_gqa_tied", "dense_mha_untied", "mqa_odd",
                                   "all_mamba",    "moe_groups4",      "moe_latent_bias"};
#define N_CASES (int)(sizeof fp32_cases / sizeof fp32_cases[0])
static const golden_suite_t suite = {
    .family = "nemotronh",
    .family_id = WRK_FAMILY_NEMOTRON_H,
    .cases = fp32_cases,
    .n_cases = N_CASES,
    .tol = TOL_F32,
    /* Small KV blocks: every sequence crosses many. */
    .opts = {.n_slots = 8, .max_step_tokens = 64, .kv_block_tokens = 4, .n_kv_blocks = 96},
    .ragged_pattern = {1, 3, 7, 2, 5, 1, 1, 4},
};

GOLDEN_SUITE_CASES(suite)

/* The state layout (M - M E * -: two Mamba layers, one attention layer) and the variable-size
 * state: read after a prefix, written into another slot, continued exactly; a fork too. */
static void test_state_roundtrip(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "moe_gqa_tied", &g);
    if (!m) return;
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(strcmp(mi->architecture, "NemotronHForCausalLM") == 0);
    /* 2 mamba layers of conv [K-1=3][C=64+2*2*16=128] and ssm [8][8][16], then the count. */
    CHECK(mi->state_bytes == (size_t)2 * (3 * 128 + 8 * 8 * 16) * 4 + 8);
    CHECK(mi->n_state_tensors == 5);
    CHECK(strcmp(mi->state_tensors[0].name, "layers.0.conv") == 0);
    CHECK(strcmp(mi->state_tensors[3].name, "layers.2.ssm") == 0);
    /* 1 attention layer x K,V x 2 kv heads x hd 8 x 4 bytes. */
    CHECK(mi->n_kv_layers == 1 && mi->kv_width == 16 && mi->kv_bytes_per_token == 2 * 16 * 4);
    golden_check_kv_state_roundtrip(&suite, m, &g.seqs[g.n_seqs - 1], g.V, 10);
    wrk_model_free(m);
    golden_free(&g);
}

/* Only Mamba blocks: a fixed-size state and no KV cache. */
static void test_fixed_state_without_attention(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "all_mamba", &g);
    if (!m) return;
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(mi->n_kv_layers == 0 && mi->kv_bytes_per_token == 0 && mi->n_state_tensors == 4);
    CHECK(mi->state_bytes == (size_t)2 * (3 * 128 + 8 * 8 * 16) * 4);
    wrk_model_free(m);
    golden_free(&g);
}

/* The goldens must be able to fail: each Nemotron-H detail, changed, moves the logits of at
 * least one fixture far beyond the tolerance. */
static bool mutate(wrk_model_t *m, int which)
{
    wrk_nemotronh_t *nh = ((struct wrk_model *)m)->priv;
    wrk_nemotronh_config_t *c = &nh->cfg;
    bool applies = true;
    switch (which) {
    case 0: /* full-width gated norm instead of transformers' I/G groups */
        applies = c->mx.n_groups > 1 && c->n_mamba > 0;
        c->mx.norm_group = c->mx.inner;
        break;
    case 1: /* no top-k normalization */
        applies = c->n_moe > 0 && c->norm_topk;
        c->norm_topk = false;
        break;
    case 2: /* routed_scaling_factor ignored */
        applies = c->n_moe > 0 && c->routed_scale != 1.f;
        c->routed_scale = 1.f;
        break;
    case 3: /* no group-limited routing */
        applies = c->n_moe > 0 && c->n_group > 1;
        c->topk_group = c->n_group;
        break;
    case 4: /* time_step_min not applied */
        applies = c->n_mamba > 0 && c->mx.dt_min > 0.f;
        c->mx.dt_min = 0.f;
        break;
    case 5: /* the correction bias added to the weights too: drop it from the choice */
        applies = c->n_moe > 0;
        for (int l = 0; l < c->mx.n_layers; l++)
            if (nh->layers[l].kind == WRK_NH_MOE) nh->layers[l].corr = nh->layers[l].norm;
        break;
    }
    return applies;
}

static void test_goldens_discriminate(void)
{
    static const char *const what[] = {"full-width gated norm",     "no top-k normalization",
                                       "routed_scaling_factor 1",   "no group-limited routing",
                                       "time_step_min not applied", "another correction bias"};
    /* dt rarely falls under time_step_min in the fixtures: only check it moves at all. */
    static const float min_diff[] = {100 * TOL_F32, 100 * TOL_F32, 100 * TOL_F32,
                                     100 * TOL_F32, 0.f,           100 * TOL_F32};
    golden_test_discriminate(&suite, what, 6, mutate, min_diff);
}

static int parse(const char *json, char *err, size_t errlen)
{
    wrk_nemotronh_config_t c;
    return wrk_nemotronh_config_parse(json, strlen(json), &c, err, errlen);
}

static void test_config(void)
{
    char err[512];
/* cJSON takes the first of duplicate keys: overrides go first, ending in a comma. */
#define CFG(extra)                                                                                 \
    "{" extra "\"model_type\":\"nemotron_h\",\"hidden_size\":32,\"num_hidden_layers\":52,"         \
    "\"hybrid_override_pattern\":\"M*-E\",\"num_attention_heads\":4,\"num_key_value_heads\":2,"    \
    "\"head_dim\":8,\"mamba_num_heads\":8,\"mamba_head_dim\":8,\"n_groups\":2,"                    \
    "\"ssm_state_size\":16,\"vocab_size\":256,\"n_routed_experts\":8,\"n_group\":2,"               \
    "\"topk_group\":1,\"num_experts_per_tok\":2,\"layer_norm_epsilon\":1e-5,"                      \
    "\"time_step_limit\":[0.0,{\"__float__\":\"Infinity\"}]}"
    wrk_nemotronh_config_t c;
    const char *ok = CFG("");
    CHECK(wrk_nemotronh_config_parse(ok, strlen(ok), &c, err, sizeof err) == 0);
    CHECK(c.mx.n_layers == 4 && c.n_mamba == 1 && c.n_attn == 1 && c.n_mlp == 1 && c.n_moe == 1);
    CHECK(c.kind[0] == 'M' && c.kind[1] == '*' && c.kind[2] == '-' && c.kind[3] == 'E');
    CHECK(c.mx.inner == 64 && c.mx.conv_dim == 128 && c.mx.proj_dim == 200 &&
          c.mx.norm_group == 32);
    CHECK(c.mx.dt_min == 0.001f && isinf(c.mx.dt_max) && c.norm_topk && c.routed_scale == 1.f);
    CHECK(c.mx.d_conv == 4 && c.mx.use_conv_bias && !c.mx.use_bias && !c.mlp_bias);
    CHECK(c.mlp_dim == 21504 && c.expert_dim == 7688 && c.shared_dim == 7688);
    CHECK(fabsf(c.attn_scale - 1.f / sqrtf(8.f)) < 1e-7f);
    /* layers_block_type wins over the pattern; aliases transformers pops. */
    const char *alias = CFG("\"layers_block_type\":[\"full_attention\",\"mlp\"],"
                            "\"mamba_n_groups\":4,\"mamba_d_conv\":3,\"mamba_dt_min\":0.01,");
    CHECK(wrk_nemotronh_config_parse(alias, strlen(alias), &c, err, sizeof err) == 0);
    CHECK(c.mx.n_layers == 2 && c.n_attn == 1 && c.n_mlp == 1 && c.n_moe == 0);
    CHECK(c.mx.n_groups == 4 && c.mx.d_conv == 3 && c.mx.dt_min == 0.01f);
    const char *dflt = CFG("\"hybrid_override_pattern\":null,");
    CHECK(wrk_nemotronh_config_parse(dflt, strlen(dflt), &c, err, sizeof err) == 0);
    CHECK(c.mx.n_layers == 4 && c.kind[0] == 'M' && c.kind[1] == 'E' && c.kind[2] == '*');
    /* Refusals name the field. */
    static const golden_refusal_t bad[] = {
        {CFG("\"mlp_hidden_act\":\"silu\","), RCD_EUNSUPPORTED, "mlp_hidden_act"},
        {CFG("\"mamba_hidden_act\":\"gelu\","), RCD_EUNSUPPORTED, "mamba_hidden_act"},
        {CFG("\"moe_latent_size\":0,"), RCD_EFORMAT, "moe_latent_size"},
        {CFG("\"n_shared_experts\":2,"), RCD_EUNSUPPORTED, "n_shared_experts"},
        {CFG("\"n_shared_experts\":0,"), RCD_EUNSUPPORTED, "n_shared_experts"},
        {CFG("\"num_nextn_predict_layers\":1,"), RCD_EUNSUPPORTED, "num_nextn_predict_layers"},
        {CFG("\"attention_bias\":true,"), RCD_EUNSUPPORTED, "attention_bias"},
        {CFG("\"sliding_window\":128,"), RCD_EUNSUPPORTED, "sliding_window"},
        {CFG("\"mamba_ssm_cache_dtype\":\"bfloat16\","), RCD_EUNSUPPORTED, "mamba_ssm_cache_dtype"},
        {CFG("\"hybrid_override_pattern\":\"M*X\","), RCD_EUNSUPPORTED, "hybrid_override_pattern"},
        {CFG("\"layers_block_type\":[\"mamba\"],"), RCD_EUNSUPPORTED, "layers_block_type"},
        {CFG("\"hybrid_override_pattern\":\"\","), RCD_EFORMAT, "hybrid_override_pattern"},
        {CFG("\"num_key_value_heads\":3,"), RCD_EFORMAT, "num_key_value_heads"},
        {CFG("\"n_groups\":3,"), RCD_EFORMAT, "n_groups"},
        {CFG("\"n_group\":3,"), RCD_EFORMAT, "n_group"},
        {CFG("\"topk_group\":3,"), RCD_EFORMAT, "topk_group"},
        {CFG("\"num_experts_per_tok\":5,"), RCD_EFORMAT, "num_experts_per_tok"},
        {CFG("\"layer_norm_epsilon\":0,"), RCD_EFORMAT, "layer_norm_epsilon"},
        {CFG("\"model_type\":\"mamba2\","), RCD_EUNSUPPORTED, "model_type"},
    };
    golden_test_refusals(parse, bad, (int)(sizeof bad / sizeof bad[0]));
    /* No MoE block: the expert fields are not checked. */
    CHECK(parse(CFG("\"hybrid_override_pattern\":\"M*\",\"n_routed_experts\":0,"), err,
                sizeof err) == 0);
    CHECK(parse("[1]", err, sizeof err) == RCD_EFORMAT);
#undef CFG
}

/* A checkpoint whose config.json disagrees with its tensors is refused with a message naming
 * the tensor. */
static void test_bad_checkpoints(void)
{
    static const golden_edit_t edits[] = {
        {"moe_gqa_tied", "\"n_routed_experts\": 8", "\"n_routed_experts\": 8", 0, {NULL}},
        {"moe_gqa_tied",
         "\"moe_intermediate_size\": 12",
         "\"moe_intermediate_size\": 16",
         RCD_EFORMAT,
         {"experts.0.up_proj.weight"}},
        {"moe_gqa_tied",
         "\"num_key_value_heads\": 2",
         "\"num_key_value_heads\": 4",
         RCD_EFORMAT,
         {"mixer.k_proj.weight"}},
        /* transformers never ties Nemotron-H's head: the flag changes nothing. */
        {"moe_gqa_tied",
         "\"tie_word_embeddings\": true",
         "\"tie_word_embeddings\": false",
         0,
         {NULL}},
        {"moe_gqa_tied",
         "\"mlp_bias\": false",
         "\"mlp_bias\": true",
         RCD_ENOTFOUND,
         {"up_proj.bias"}},
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
    RUN(test_fixed_state_without_attention);
    RUN(test_goldens_discriminate);
    RUN(test_bad_checkpoints);
    return rcd_test_summary();
}
