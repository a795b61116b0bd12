/* Golden parity of the CPU Falcon-H1 forward against transformers (fixtures from
 * tools/gen_falconh1_goldens.py): every muP multiplier away from 1, GQA/MQA/MHA, both
 * mamba_rms_norm settings and both norm_before_gate orders, tied and untied heads, every
 * bias flag, odd sizes; every chunking, ragged batches, greedy decode; the state layout
 * (Mamba part + position count + KV) and its round trip; config refusals naming the field,
 * and checks that the goldens see each Falcon-H1-specific multiplier. */
#include <math.h>
#include <string.h>

#include "tests/support/golden_util.h"
#include "workers/families/falconh1.h"

#define TOL_F32 1e-4f

static const char *fp32_cases[] = {"gqa_norm_before_gate", "mqa_nonorm_tied",
                                   "odd_bias_gate_first"};
#define N_CASES (int)(sizeof fp32_cases / sizeof fp32_cases[0])
static const golden_suite_t suite = {
    .family = "falconh1",
    .family_id = WRK_FAMILY_FALCON_H1,
    .cases = fp32_cases,
    .n_cases = N_CASES,
    .tol = TOL_F32,
    /* Small KV blocks: every sequence crosses many. */
    .opts = {.n_slots = 8, .max_step_tokens = 64, .kv_block_tokens = 4, .n_kv_blocks = 96},
    .ragged_pattern = {1, 3, 7, 2, 5, 1, 1, 4},
};

GOLDEN_SUITE_CASES(suite)

/* Batch invariance: every sequence's logits in ragged batches (all of a fixture's sequences
 * together, uneven chunks, 2 threads) are bit-identical to the same sequence run alone. */
static void test_batch_invariant(void)
{
    for (int ci = 0; ci < N_CASES; ci++) {
        golden_t g;
        if (golden_load(suite.family, fp32_cases[ci], &g)) {
            CHECK(0);
            continue;
        }
        wrk_model_t *m = golden_model(g.dir);
        wrk_backend_t *b = m ? golden_backend(&suite, m, NULL, 2) : NULL;
        char err[512];
        const int V = g.V, ns = g.n_seqs;
        float *alone[GOLDEN_MAX_SEQS], *mixed[GOLDEN_MAX_SEQS];
        int pos[GOLDEN_MAX_SEQS] = {0};
        for (int i = 0; b && i < ns; i++) {
            alone[i] = malloc((size_t)g.seqs[i].n * V * sizeof(float));
            mixed[i] = malloc((size_t)g.seqs[i].n * V * sizeof(float));
            CHECK(golden_run_into(b, 0, &g.seqs[i], V, 64, alone[i]) == 0);
            wrk_state_reset(b, i + 1);
        }
        for (int step = 0; b && step < 64; step++) {
            wrk_seq_t batch[GOLDEN_MAX_SEQS];
            int nb = 0;
            for (int i = 0; i < ns; i++) {
                const golden_seq_t *q = &g.seqs[i];
                const int want = suite.ragged_pattern[(step + 2 * i) % 8] + (step % 3 == 0 ? 5 : 0);
                const int len = q->n - pos[i] < want ? q->n - pos[i] : want;
                if (len <= 0) continue;
                batch[nb++] = (wrk_seq_t){.slot = i + 1,
                                          .n_tokens = len,
                                          .tokens = q->tokens + pos[i],
                                          .n_logits = len,
                                          .logits = mixed[i] + (size_t)pos[i] * V};
                pos[i] += len;
            }
            if (!nb) break;
            CHECK_MSG(wrk_step(b, batch, nb, err, sizeof err) == 0, "%s", err);
        }
        for (int i = 0; b && i < ns; i++) {
            const size_t n = (size_t)g.seqs[i].n * V;
            CHECK_MSG(memcmp(alone[i], mixed[i], n * sizeof(float)) == 0,
                      "%s %s: batched logits differ from alone (max %g)", fp32_cases[ci],
                      g.seqs[i].name, golden_max_diff(alone[i], mixed[i], n));
            free(alone[i]);
            free(mixed[i]);
        }
        wrk_backend_destroy(b);
        wrk_model_free(m);
        golden_free(&g);
    }
}

/* The state layout and the variable-size state: read after a prefix, written into another
 * slot, continued exactly; a copied slot (fork) too. */
static void test_state_roundtrip(void)
{
    golden_t g;
    wrk_model_t *m = golden_open(suite.family, "gqa_norm_before_gate", &g);
    if (!m) return;
    char err[512];
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(strcmp(mi->architecture, "FalconH1ForCausalLM") == 0);
    /* 2 layers of conv [K-1=3][C=64+2*2*16=128] and ssm [8][8][16], then the count. */
    CHECK(mi->state_bytes == (size_t)2 * (3 * 128 + 8 * 8 * 16) * 4 + 8);
    CHECK(mi->n_state_tensors == 5);
    CHECK(strcmp(mi->state_tensors[0].name, "layers.0.conv") == 0);
    CHECK(strcmp(mi->state_tensors[3].name, "layers.1.ssm") == 0);
    /* Every layer has attention: 2 layers x K,V x 2 kv heads x hd 8 x 4 bytes. */
    CHECK(mi->n_kv_layers == 2 && mi->kv_width == 16 && mi->kv_bytes_per_token == 2 * 2 * 16 * 4);
    /* No sharded forward: tensor parallelism is refused, naming the architecture. */
    wrk_backend_t *tp = NULL;
    wrk_backend_opts_t o = suite.opts;
    o.n_threads = 1;
    o.tp = 2;
    CHECK(wrk_cpu_backend_create(m, &o, &tp, err, sizeof err) == RCD_EUNSUPPORTED && !tp);
    CHECK(strstr(err, "FalconH1ForCausalLM") != NULL);
    golden_check_kv_state_roundtrip(&suite, m, &g.seqs[g.n_seqs - 1], g.V, 10);
    wrk_model_free(m);
    golden_free(&g);
}

/* The goldens must be able to fail: each multiplier or variant, changed, moves the logits of
 * at least one fixture far beyond the tolerance. */
enum { N_VARIANTS = 12 };
static bool mutate(wrk_model_t *m, int which)
{
    wrk_falconh1_t *fh = ((struct wrk_model *)m)->priv;
    wrk_falconh1_config_t *c = &fh->cfg;
    bool applies = true;
    switch (which) {
    case 0:
        c->ssm_in_mult = 1.f;
        break;
    case 1:
        c->ssm_out_mult = 1.f;
        break;
    case 2:
        c->attn_in_mult = 1.f;
        break;
    case 3:
        c->attn_out_mult = 1.f;
        break;
    case 4:
        c->key_mult = 1.f;
        break;
    case 5:
        c->mx.proj_mult_on = false;
        break;
    case 6:
        c->mlp_gate_mult = 1.f;
        break;
    case 7:
        c->mlp_down_mult = 1.f;
        break;
    case 8: /* the other norm order */
        applies = c->mx.gate != WRK_MAMBA2_GATE_ONLY;
        c->mx.gate =
            c->mx.gate == WRK_MAMBA2_NORM_GATE ? WRK_MAMBA2_GATE_NORM : WRK_MAMBA2_NORM_GATE;
        break;
    case 9: /* full-width gated norm instead of per group */
        applies = c->mx.gate != WRK_MAMBA2_GATE_ONLY && c->mx.n_groups > 1;
        c->mx.norm_group = c->mx.inner;
        break;
    case 10:
        ((struct wrk_model *)m)->logit_scale = 1.f;
        break;
    case 11:
        ((struct wrk_model *)m)->embed_scale = 1.f;
        break;
    }
    return applies;
}

static void test_goldens_discriminate(void)
{
    static const char *const what[N_VARIANTS] = {"ssm_in_multiplier ignored",
                                                 "ssm_out_multiplier ignored",
                                                 "attention_in_multiplier ignored",
                                                 "attention_out_multiplier ignored",
                                                 "key_multiplier ignored",
                                                 "ssm_multipliers ignored",
                                                 "mlp_multipliers[0] (gate) ignored",
                                                 "mlp_multipliers[1] (down) ignored",
                                                 "the other norm/gate order ignored",
                                                 "full-width gated norm ignored",
                                                 "lm_head_multiplier ignored",
                                                 "embedding_multiplier ignored"};
    golden_test_discriminate(&suite, what, N_VARIANTS, mutate, NULL);
}

static int parse(const char *json, char *err, size_t errlen)
{
    wrk_falconh1_config_t c;
    return wrk_falconh1_config_parse(json, strlen(json), &c, err, errlen);
}

static void test_config(void)
{
    char err[512];
/* cJSON takes the first of duplicate keys: overrides go first, ending in a comma. */
#define CFG(extra)                                                                                 \
    "{" extra "\"model_type\":\"falcon_h1\",\"hidden_size\":32,\"num_hidden_layers\":2,"           \
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"mamba_d_ssm\":64,"                      \
    "\"mamba_n_heads\":8,\"mamba_d_head\":\"auto\",\"mamba_n_groups\":2,\"mamba_d_state\":16,"     \
    "\"vocab_size\":256,\"intermediate_size\":48,\"mamba_rms_norm\":true,"                         \
    "\"ssm_multipliers\":[0.5,1,2,3,4],\"mlp_multipliers\":[0.25,2],"                              \
    "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":500.0}}"
    wrk_falconh1_config_t c;
    const char *ok = CFG("");
    CHECK(wrk_falconh1_config_parse(ok, strlen(ok), &c, err, sizeof err) == 0);
    CHECK(c.head_dim == 8 && c.n_kv == 2 && c.mx.head_dim == 8 && c.mx.inner == 64);
    CHECK(c.mx.conv_dim == 128 && c.mx.proj_dim == 200 && c.mx.norm_group == 32);
    CHECK(c.mx.gate == WRK_MAMBA2_NORM_GATE && c.mx.proj_mult_on && c.mx.proj_mult[0] == 0.5f);
    CHECK(c.mx.proj_mult[4] == 4.f && c.mlp_gate_mult == 0.25f && c.mlp_down_mult == 2.f);
    CHECK(c.rope_theta == 500.f && c.mx.eps == 1e-5f && !c.mx.use_bias && c.mx.use_conv_bias);
    CHECK(c.embed_mult == 1.f && c.key_mult == 1.f && !c.out_bias && !c.mx.tie_embeddings);
    /* mamba_d_ssm null: expand * hidden; absent: the class default 1024. */
    const char *dn = CFG("\"mamba_d_ssm\":null,\"mamba_rms_norm\":false,\"mamba_expand\":3,"
                         "\"mamba_n_heads\":4,\"mamba_d_head\":24,\"num_key_value_heads\":null,"
                         "\"rope_parameters\":null,\"rope_theta\":100,");
    CHECK(wrk_falconh1_config_parse(dn, strlen(dn), &c, err, sizeof err) == 0);
    CHECK(c.mx.inner == 96 && c.mx.head_dim == 24 && c.mx.gate == WRK_MAMBA2_GATE_ONLY);
    CHECK(c.n_kv == 4 && c.rope_theta == 100.f);
    CHECK(parse(CFG("\"mamba_d_ssm\":null,"), err, sizeof err) == 0); /* 2 x 32 = 64 */
    CHECK(parse(CFG("\"mamba_norm_before_gate\":false,"), err, sizeof err) == 0);
    CHECK(parse(CFG("\"head_dim\":6,"), err, sizeof err) == 0);
    /* Refusals name the field. */
    static const golden_refusal_t refusals[] = {
        {CFG("\"time_step_limit\":[0.001,0.1],"), RCD_EUNSUPPORTED, "time_step_limit"},
        {CFG("\"rope_scaling\":{\"type\":\"linear\",\"factor\":2},"), RCD_EUNSUPPORTED,
         "rope_scaling"},
        {CFG("\"rope_parameters\":{\"rope_type\":\"yarn\",\"factor\":2},"), RCD_EUNSUPPORTED,
         "rope_type"},
        {CFG("\"hidden_act\":\"gelu\","), RCD_EUNSUPPORTED, "hidden_act"},
        {CFG("\"ssm_multipliers\":[1,1,1,1],"), RCD_EFORMAT, "ssm_multipliers"},
        {CFG("\"mlp_multipliers\":[1,\"2\"],"), RCD_EFORMAT, "mlp_multipliers"},
        {CFG("\"key_multiplier\":\"2\","), RCD_EFORMAT, "key_multiplier"},
        {CFG("\"mamba_d_head\":4,"), RCD_EFORMAT, "mamba_d_head"},
        {CFG("\"mamba_d_ssm\":60,"), RCD_EFORMAT, NULL},
        {CFG("\"mamba_n_groups\":3,"), RCD_EFORMAT, NULL},
        {CFG("\"num_key_value_heads\":3,"), RCD_EFORMAT, NULL},
        {CFG("\"head_dim\":7,"), RCD_EFORMAT, NULL},
        {CFG("\"rms_norm_eps\":0,"), RCD_EFORMAT, NULL},
        {CFG("\"mamba_rms_norm\":\"yes\","), RCD_EFORMAT, NULL},
        {CFG("\"num_hidden_layers\":2000,"), RCD_EFORMAT, NULL},
        {"{\"model_type\":\"granitemoehybrid\"}", RCD_EUNSUPPORTED, NULL},
        {"[1]", RCD_EFORMAT, NULL},
    };
    golden_test_refusals(parse, refusals, (int)(sizeof refusals / sizeof refusals[0]));
#undef CFG
}

/* A checkpoint whose config.json disagrees with its tensors is refused with a message naming
 * the tensor. */
static void test_bad_checkpoints(void)
{
    static const golden_edit_t edits[] = {
        {"mqa_nonorm_tied", "\"mamba_rms_norm\": false", "\"mamba_rms_norm\": false", 0, {NULL}},
        {"mqa_nonorm_tied",
         "\"mamba_rms_norm\": false",
         "\"mamba_rms_norm\": true",
         RCD_ENOTFOUND,
         {"mamba.norm.weight"}},
        {"gqa_norm_before_gate",
         "\"mamba_rms_norm\": true",
         "\"mamba_rms_norm\": false",
         RCD_EFORMAT,
         {"unexpected tensor", "norm.weight"}},
        {"gqa_norm_before_gate",
         "\"projectors_bias\": false",
         "\"projectors_bias\": true",
         RCD_ENOTFOUND,
         {"mamba.out_proj.bias"}},
        {"odd_bias_gate_first",
         "\"projectors_bias\": true",
         "\"projectors_bias\": false",
         RCD_EFORMAT,
         {"out_proj.bias"}},
        {"gqa_norm_before_gate",
         "\"num_key_value_heads\": 2",
         "\"num_key_value_heads\": 4",
         RCD_EFORMAT,
         {"self_attn.k_proj.weight"}},
        {"mqa_nonorm_tied",
         "\"tie_word_embeddings\": true",
         "\"tie_word_embeddings\": false",
         RCD_ENOTFOUND,
         {"lm_head.weight"}},
        {"gqa_norm_before_gate",
         "\"intermediate_size\": 48",
         "\"intermediate_size\": 40",
         RCD_EFORMAT,
         {"feed_forward.gate_proj.weight"}},
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
    RUN(test_batch_invariant);
    RUN(test_state_roundtrip);
    RUN(test_goldens_discriminate);
    RUN(test_bad_checkpoints);
    return rcd_test_summary();
}
