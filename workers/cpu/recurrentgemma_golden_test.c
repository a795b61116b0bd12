/* Golden parity of the CPU RecurrentGemma forward against transformers (fixtures from
 * tools/gen_recurrentgemma_goldens.py): every chunking (chunks longer and shorter than the
 * attention window), ragged batches, greedy decode past the window, BF16 weights, state
 * save/restore and its layout, config validation, bad checkpoints, and checks that the
 * goldens do see the window, the bf16 embedding scale and the soft-cap. */
#include <string.h>

#include "tests/support/golden_util.h"

/* --weights q8 / q4 against the fp32 goldens: max |dlogit| measured 1.64e-2 (q8) and 1.86e-1 (q4)
 * over all ISAs and chunkings (Sapphire Rapids; weights and per-token int8 activations); bound about 2x that: the quantization error
 * is the same on every CPU, what else moves is fp32 rounding, orders of magnitude smaller,
 * while a wrong scale or nibble order moves logits by O(1) (workers/README.md). */
#define TOL_Q8 0.033f
#define TOL_Q4 0.4f

/* The bf16 matmul must be no further from the goldens than transformers' own bf16 forward of
 * the same checkpoint: max |dlogit| of that against the tiny_mqa_w16_bf16 goldens
 * (tools/hf_bf16_error.py). */
#define TOL_BF16_MATMUL 1.23e-2f
#include "workers/families/recurrentgemma.h"

#define TOL_F32 1e-4f

static const char *fp32_cases[] = {"tiny_mqa_w16", "attn_first_w4", "odd_sizes", "hawk_k1",
                                   "attn_only_hd16"};
/* Chunks 1, 4 and 8 straddle every window (4, 5, 7, 16); 64 is the whole sequence. Ragged
 * steps of 9 tokens are longer than some windows. */
static const golden_suite_t suite = {
    .family = "recurrentgemma",
    .family_id = WRK_FAMILY_RECURRENTGEMMA,
    .cases = fp32_cases,
    .n_cases = (int)(sizeof fp32_cases / sizeof fp32_cases[0]),
    .tol = TOL_F32,
    .opts = {.n_slots = 8, .max_step_tokens = 64},
    .ragged_pattern = {1, 3, 7, 2, 9, 1, 1, 4},
    .ragged_last_row = true,
};

/* test_greedy: 32 greedy tokens, all past the window for W <= 8, crossing it for W = 16. */
GOLDEN_SUITE_CASES(suite)

/* The tiny model in BF16. The engine computes in fp32 from the rounded weights, so its exact
 * reference is transformers' fp32 forward of the upcast bf16 weights (goldens in the _bf16
 * directory): every chunking within TOL_F32 of it, greedy tokens identical (also to the fp32
 * model's). Against the fp32 goldens the rounding of the weights moves this model's logits by
 * 4.8e-3 (HF's own bf16 forward by 1.3e-2), so that bound is 2e-2. */
#define TOL_BF16_VS_F32 2e-2f
static void test_bf16_weights(void)
{
    golden_t g, g32;
    int ok = golden_load(suite.family, "tiny_mqa_w16_bf16", &g) == 0;
    ok = golden_load(suite.family, "tiny_mqa_w16", &g32) == 0 && ok;
    CHECK(ok);
    wrk_model_t *m = ok ? golden_model(g.dir) : NULL;
    if (m) {
        float worst;
        int mis;
        CHECK(g.n_gen == 32 && g.n_gen == g32.n_gen &&
              memcmp(g.greedy, g32.greedy, sizeof(int32_t) * (size_t)(g.n_prompt + g.n_gen)) == 0);
        if (golden_greedy(&suite, g.dir, &g, &worst, &mis) == 0)
            CHECK_MSG(mis < 0, "bf16: greedy token %d differs", mis);
        CHECK(wrk_model_info(m)->weight_dtype == WRK_DT_BF16);
        float w = 0.f, w32 = 0.f;
        for (int threads = 1; threads <= 2; threads++) {
            wrk_backend_t *b = golden_backend(&suite, m, NULL, threads);
            if (!b) continue;
            float d = golden_check_chunks(b, &g, TOL_F32, "bf16");
            if (!(d <= w)) w = d;
            const golden_seq_t *q = golden_find_seq(&g32, 24);
            d = q ? golden_run_chunked(b, q, g32.V, 8) : NAN;
            CHECK_MSG(d <= TOL_BF16_VS_F32, "bf16 vs fp32 len24: max diff %g", d);
            if (!(d <= w32)) w32 = d;
            wrk_backend_destroy(b);
        }
        fprintf(stderr, "  bf16: max |dlogit| %.2e vs rounded-weight goldens, %.2e vs fp32\n", w,
                w32);
    }
    wrk_model_free(m);
    golden_free(&g32);
    golden_free(&g);
}

/* State read out after a prefix (longer than the window) and written into another slot
 * continues exactly; a copied slot (fork) too. The layout is the documented one. A blob whose
 * position is not a valid count (NaN, negative, fractional) starts the sequence afresh,
 * whatever the rest of the blob holds. */
static void test_state_roundtrip(void)
{
    golden_t g;
    if (golden_load(suite.family, "tiny_mqa_w16", &g)) {
        CHECK(0);
        golden_free(&g);
        return;
    }
    wrk_model_t *m = golden_model(g.dir);
    if (!m) {
        golden_free(&g);
        return;
    }
    char err[512];
    const wrk_model_info_t *mi = wrk_model_info(m);
    CHECK(mi->family == WRK_FAMILY_RECURRENTGEMMA);
    CHECK(strcmp(mi->architecture, "RecurrentGemmaForCausalLM") == 0);
    /* position [2]; layers r,r,a,r: conv [3][48] + rg_lru [48]; key/value [16][1][12]. */
    CHECK(mi->state_bytes == (size_t)(2 + 3 * (3 * 48 + 48) + 2 * 16 * 12) * 4);
    CHECK(mi->n_state_tensors == 9);
    CHECK(strcmp(mi->state_tensors[0].name, "position") == 0);
    CHECK(strcmp(mi->state_tensors[1].name, "layers.0.conv") == 0);
    CHECK(strcmp(mi->state_tensors[2].name, "layers.0.rg_lru") == 0);
    CHECK(strcmp(mi->state_tensors[5].name, "layers.2.key") == 0);
    CHECK(strcmp(mi->state_tensors[6].name, "layers.2.value") == 0);
    CHECK(mi->state_tensors[5].ndim == 3 && mi->state_tensors[5].shape[0] == 16 &&
          mi->state_tensors[5].shape[1] == 1 && mi->state_tensors[5].shape[2] == 12);
    CHECK(mi->state_tensors[1].ndim == 2 && mi->state_tensors[1].shape[0] == 3 &&
          mi->state_tensors[1].shape[1] == 48);
    /* MLP 3 x 72 x 48 per layer; recurrent 3 x 48 x 48 + gates 2 x 48 x 12; attention
     * q 48x48, k and v 12x48, o 48x48; two flops per weight. */
    CHECK(mi->layer_flops == 2.0 * (4 * 3.0 * 72 * 48 + 3 * (3.0 * 48 * 48 + 2.0 * 48 * 12) +
                                    (2.0 * 48 * 48 + 2.0 * 12 * 48)));
    golden_check_state_layout(mi);
    wrk_backend_t *b = golden_backend(&suite, m, NULL, 2);
    const golden_seq_t *q = golden_find_seq(&g, 24);
    if (!b || !q) {
        CHECK(0);
        wrk_backend_destroy(b);
        wrk_model_free(m);
        golden_free(&g);
        return;
    }
    const int V = g.V, cut = 19; /* past W = 16: the ring has wrapped */
    float *out = malloc((size_t)q->n * V * sizeof(float));
    float *blob = malloc(mi->state_bytes);
    golden_check_state_roundtrip(b, q, V, cut, TOL_F32, blob);
    CHECK(blob[0] == (float)cut && blob[1] == 0.f); /* the position */
    /* Corrupt positions: the rest of the blob is stale state of another sequence. */
    static const float bad[][2] = {
        {NAN, 0.f}, {-1.f, 0.f}, {2.5f, 0.f}, {3.f, INFINITY}, {16777216.f, 0.f}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        blob[0] = bad[i][0];
        blob[1] = bad[i][1];
        CHECK(wrk_state_write_n(b, 7, blob, mi->state_bytes) == 0);
        wrk_seq_t s = {
            .slot = 7, .n_tokens = q->n, .tokens = q->tokens, .n_logits = q->n, .logits = out};
        CHECK(wrk_step(b, &s, 1, err, sizeof err) == 0);
        float d = golden_max_diff(out, q->logits, (size_t)q->n * V);
        CHECK_MSG(d <= TOL_F32, "corrupt position %zu: max diff %g from a fresh start", i, d);
    }
    /* Positions past 2^24 are kept exactly (lo, hi) and read back. */
    float pos[2];
    wrk_rg_pos_set(pos, ((int64_t)5 << 24) + 12345);
    CHECK(pos[0] == 12345.f && pos[1] == 5.f);
    CHECK(wrk_rg_pos_get(pos) == ((int64_t)5 << 24) + 12345);
    free(blob);
    free(out);
    wrk_backend_destroy(b);
    wrk_model_free(m);
    golden_free(&g);
}

/* The goldens must be able to fail: they see the window (the same weights without one differ
 * past W), the bf16-rounded embedding scale (sqrt(48) = 6.928 vs 6.9375) and the soft-cap. */
static float run_variant(const char *name, int which, int n)
{
    golden_t g;
    float d = NAN;
    if (golden_load(suite.family, name, &g)) {
        golden_free(&g);
        return d;
    }
    wrk_model_t *m = golden_model(g.dir);
    const golden_seq_t *q = golden_find_seq(&g, n);
    if (m && q) {
        struct wrk_model *mm = (struct wrk_model *)m;
        if (which == 0) mm->embed_scale = sqrtf((float)mm->info.hidden_size);
        if (which == 1) mm->logit_softcap = 0.f;
        wrk_backend_t *b = golden_backend(&suite, m, NULL, 1);
        if (b) d = golden_run_chunked(b, q, g.V, 8);
        wrk_backend_destroy(b);
    }
    wrk_model_free(m);
    golden_free(&g);
    return d;
}

static void test_goldens_discriminate(void)
{
    golden_t g;
    float *nowindow = NULL; /* len24 logits of the same weights without a window */
    if (golden_load(suite.family, "tiny_mqa_w16", &g) == 0 &&
        (nowindow = golden_load_extra(&g, "nowindow_len24", (size_t)24 * g.V))) {
        wrk_model_t *m = golden_model(g.dir);
        wrk_backend_t *b = m ? golden_backend(&suite, m, NULL, 1) : NULL;
        const golden_seq_t *q = golden_find_seq(&g, 24);
        if (b && q) {
            const int V = g.V, W = 16;
            CHECK(((struct wrk_model *)m)->embed_scale == 6.9375f);
            float *out = malloc((size_t)q->n * V * sizeof(float));
            golden_run_into(b, 0, q, V, 8, out);
            float d_in = golden_max_diff(out, nowindow, (size_t)W * V);
            float d_out = golden_max_diff(out + (size_t)W * V, nowindow + (size_t)W * V,
                                          (size_t)(q->n - W) * V);
            fprintf(stderr, "  window-free logits vs ours: rows < W %.2e, rows >= W %.2e\n", d_in,
                    d_out);
            CHECK(d_in <= TOL_F32);
            CHECK(d_out > 100 * TOL_F32);
            free(out);
        } else {
            CHECK(0);
        }
        wrk_backend_destroy(b);
        wrk_model_free(m);
    } else {
        CHECK(0);
    }
    free(nowindow);
    golden_free(&g);
    float d = run_variant("tiny_mqa_w16", 0, 24);
    fprintf(stderr, "  embedding scale sqrt(D), not its bf16 rounding: max |dlogit| %.2e\n", d);
    CHECK(d > 10 * TOL_F32);
    d = run_variant("odd_sizes", 1, 24);
    fprintf(stderr, "  no soft-cap on odd_sizes: max |dlogit| %.2e\n", d);
    CHECK(d > 100 * TOL_F32);
}

static int parse(const char *json, wrk_rg_config_t *c, char *err, size_t errlen)
{
    return wrk_rg_config_parse(json, strlen(json), c, err, errlen);
}

static void test_config(void)
{
    char err[512];
    wrk_rg_config_t c;
/* cJSON takes the first of duplicate keys: overrides go first, ending in a comma. */
#define CFG(extra)                                                                                 \
    "{" extra "\"model_type\":\"recurrent_gemma\",\"hidden_size\":48,\"num_attention_heads\":4,"   \
    "\"num_key_value_heads\":1,\"intermediate_size\":144,\"vocab_size\":256,"                      \
    "\"num_hidden_layers\":4,\"attention_window_size\":16}"
    CHECK(parse(CFG(""), &c, err, sizeof err) == 0);
    CHECK(c.head_dim == 12 && c.lru_width == 48 && c.block_w == 12 && c.mlp == 72);
    CHECK(c.n_pattern == 3 && !c.pattern_attn[0] && c.pattern_attn[2]);
    CHECK(c.n_attn == 1 && c.n_rec == 3);
    CHECK(c.rot_base == 6 && c.rot_freqs == 3 && c.rope_theta == 10000.f);
    CHECK(c.softcap == 30.f && c.eps == 1e-6f && c.d_conv == 4 && c.tie_embeddings);
    CHECK(c.bos_id == -1 && !c.attn_bias);
    /* The hub's 2b config: _block_types, top-level rope fields. */
    CHECK(parse(CFG("\"_block_types\":[\"attention\"],\"rope_theta\":100.0,"
                    "\"partial_rotary_factor\":0.25,"),
                &c, err, sizeof err) == 0);
    CHECK(c.n_pattern == 1 && c.n_attn == 4 && c.rope_theta == 100.f && c.rot_base == 3 &&
          c.rot_freqs == 2);
    /* block_types wins over _block_types. */
    CHECK(parse(CFG("\"block_types\":[\"recurrent\"],\"_block_types\":[\"attention\"],"), &c, err,
                sizeof err) == 0);
    CHECK(c.n_attn == 0 && c.n_rec == 4);
    CHECK(parse(CFG("\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":500,"
                    "\"partial_rotary_factor\":0.5},\"head_dim\":10,"),
                &c, err, sizeof err) == 0);
    CHECK(c.head_dim == 10 && c.rot_base == 5 && c.rot_freqs == 3 && c.rope_theta == 500.f);
    CHECK(parse(CFG("\"rope_parameters\":{\"rope_type\":\"yarn\"},"), &c, err, sizeof err) ==
          RCD_EUNSUPPORTED);
    CHECK(strstr(err, "rope_type") != NULL);
    CHECK(parse(CFG("\"partial_rotary_factor\":1.0,\"head_dim\":5,"), &c, err, sizeof err) ==
          RCD_EFORMAT); /* 5 dims round up to 6 rotated */
    CHECK(parse(CFG("\"num_key_value_heads\":3,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "num_key_value_heads") != NULL);
    CHECK(parse(CFG("\"lru_width\":50,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "lru_width") != NULL);
    CHECK(parse(CFG("\"block_types\":[\"recurrent\",\"mlp\"],"), &c, err, sizeof err) ==
          RCD_EFORMAT);
    CHECK(strstr(err, "block_types") != NULL);
    CHECK(parse(CFG("\"block_types\":[],"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"block_types\":\"recurrent\","), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"hidden_activation\":\"gelu\","), &c, err, sizeof err) == RCD_EUNSUPPORTED);
    CHECK(parse(CFG("\"logits_soft_cap\":0,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"logits_soft_cap\":null,"), &c, err, sizeof err) == 0);
    CHECK(parse(CFG("\"rms_norm_eps\":0,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"attention_window_size\":0,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"conv1d_width\":0,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"intermediate_size\":1,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"num_attention_heads\":64,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "smaller than num_attention_heads") != NULL);
    CHECK(parse(CFG("\"num_attention_heads\":64,\"head_dim\":4,\"lru_width\":64,"), &c, err,
                sizeof err) == 0);
    CHECK(parse(CFG("\"hidden_size\":2.5,"), &c, err, sizeof err) == RCD_EFORMAT);
    CHECK(parse(CFG("\"attention_window_size\":1048576,\"num_key_value_heads\":4,"
                    "\"head_dim\":4096,"),
                &c, err, sizeof err) == RCD_EFORMAT); /* state over 4 GiB */
    CHECK(strstr(err, "4 GiB") != NULL);
    CHECK(parse("{\"model_type\":\"mamba\"}", &c, err, sizeof err) == RCD_EUNSUPPORTED);
    CHECK(parse("[1]", &c, err, sizeof err) == RCD_EFORMAT);
#undef CFG
}

/* A checkpoint whose config.json disagrees with its tensors is refused with a message naming
 * the tensor: a case's weights next to an edited config.json. */
static void test_bad_checkpoints(void)
{
    static const golden_edit_t edits[] = {
        {"tiny_mqa_w16",
         "\"conv1d_width\": 4",
         "\"conv1d_width\": 3",
         RCD_EFORMAT,
         {"model.layers.0.temporal_block.conv_1d.weight", "model.safetensors", "[48,1,4]"}},
        {"tiny_mqa_w16",
         "\"num_key_value_heads\": 1",
         "\"num_key_value_heads\": 2",
         RCD_EFORMAT,
         {"model.layers.2.temporal_block.k_proj.weight"}},
        {"tiny_mqa_w16",
         "\"lru_width\": 48",
         "\"lru_width\": 24",
         RCD_EFORMAT,
         {"linear_y.weight"}},
        {"tiny_mqa_w16",
         "\"intermediate_size\": 144",
         "\"intermediate_size\": 146",
         RCD_EFORMAT,
         {"mlp_block.gate_proj.weight"}},
        /* The pattern decides which tensors a layer has. */
        {"tiny_mqa_w16",
         "\"block_types\": [\n    \"recurrent\",",
         "\"block_types\": [\n    \"attention\",",
         RCD_ENOTFOUND,
         {"model.layers.0.temporal_block.q_proj.weight"}},
        {"tiny_mqa_w16",
         "\"attention_bias\": false",
         "\"attention_bias\": true",
         RCD_ENOTFOUND,
         {"q_proj.bias"}},
        {"attn_first_w4",
         "\"attention_bias\": true",
         "\"attention_bias\": false",
         RCD_EFORMAT,
         {"unexpected tensor", "_proj.bias"}},
        /* tied with a right-shaped head in the file loads */
        {"attn_first_w4",
         "\"tie_word_embeddings\": false",
         "\"tie_word_embeddings\": true",
         0,
         {NULL}},
        {"tiny_mqa_w16",
         "\"tie_word_embeddings\": true",
         "\"tie_word_embeddings\": false",
         RCD_ENOTFOUND,
         {"lm_head.weight"}},
        {"tiny_mqa_w16",
         "\"num_hidden_layers\": 4",
         "\"num_hidden_layers\": 5",
         GOLDEN_EDIT_FAILS,
         {"model.layers.4"}},
        {"attn_only_hd16", "\"head_dim\": 16", "\"head_dim\": 8", RCD_EFORMAT, {"q_proj.weight"}},
        {"tiny_mqa_w16",
         "\"hidden_activation\": \"gelu_pytorch_tanh\"",
         "\"hidden_activation\": \"relu\"",
         RCD_EUNSUPPORTED,
         {"config.json", "hidden_activation"}},
        /* A window change is state layout only: the weights load, the state grows. */
        {"tiny_mqa_w16",
         "\"attention_window_size\": 16",
         "\"attention_window_size\": 32",
         0,
         {NULL}},
    };
    golden_test_edits(&suite, edits, (int)(sizeof edits / sizeof edits[0]));
}

/* The opt-in bf16 matmul on the BF16 copy (golden_util.h): within TOL_BF16_MATMUL. */
static void test_bf16_matmul(void)
{
    golden_test_bf16_matmul(&suite, "tiny_mqa_w16_bf16", "tiny_mqa_w16_bf16", TOL_BF16_MATMUL);
}

/* --weights q8|q4 on the first fp32 case: within the measured bounds (workers/README.md,
 * "Quantized weights"), every chunking bit-identical, fingerprint per format. */
static void test_quantized(void)
{
    golden_test_quantized(&suite, "tiny_mqa_w16", TOL_Q8, TOL_Q4);
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
    RUN(test_goldens_discriminate);
    RUN(test_bad_checkpoints);
    RUN(test_quantized);
    return rcd_test_summary();
}
