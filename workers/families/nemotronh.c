/* workers: the Nemotron-H family (NemotronHForCausalLM) — config.json parsing and tensor
 * binding, validated against the config so that a bad checkpoint is a clear error naming the
 * file and tensor. Mamba blocks are bound by the Mamba2 family's code. The math follows
 * transformers 5.23's torch path (see docs/specs/nemotronh.md). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "workers/families/granite.h"
#include "workers/families/nemotronh.h"
#include "workers/model/cfg_json.h"

/* The block kinds: layers_block_type (alias layer_types) wins over hybrid_override_pattern,
 * as in transformers' __post_init__; neither: transformers' default ["linear_attention",
 * "moe", "full_attention", "mlp"]. num_hidden_layers is ignored (the list's length rules). */
static int parse_layers(const cJSON *root, wrk_nemotronh_config_t *cfg, char *err, size_t errlen)
{
    static const char *const names[] = {"linear_attention", "full_attention", "mlp", "moe"};
    static const char kinds[] = {WRK_NH_MAMBA, WRK_NH_ATTN, WRK_NH_MLP, WRK_NH_MOE};
    const char *key = "layers_block_type";
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        key = "layer_types";
        v = cJSON_GetObjectItemCaseSensitive(root, key);
    }
    int L = 0;
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1 ||
            cJSON_GetArraySize(v) > WRK_NEMOTRONH_MAX_LAYERS)
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"%s\" must be a list of 1 to %d strings", key,
                            WRK_NEMOTRONH_MAX_LAYERS);
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            const char *s = cJSON_IsString(it) ? it->valuestring : "";
            size_t j = 0;
            while (j < 4 && strcmp(s, names[j]) != 0)
                j++;
            if (j == 4)
                return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                "config.json: \"%s\"[%d] must be \"linear_attention\", "
                                "\"full_attention\", \"mlp\" or \"moe\"",
                                key, L);
            cfg->kind[L++] = kinds[j];
        }
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "hybrid_override_pattern");
        const char *s = "ME*-";
        if (p && !cJSON_IsNull(p)) {
            if (!cJSON_IsString(p))
                return rcd_fail(RCD_EFORMAT, err, errlen,
                                "config.json: \"hybrid_override_pattern\" must be a string");
            s = p->valuestring;
        }
        const size_t n = strlen(s);
        if (n < 1 || n > WRK_NEMOTRONH_MAX_LAYERS)
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"hybrid_override_pattern\" must have 1 to %d letters",
                            WRK_NEMOTRONH_MAX_LAYERS);
        for (size_t i = 0; i < n; i++) {
            if (!strchr("M*-E", s[i]))
                return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                "config.json: \"hybrid_override_pattern\"[%zu] must be one of "
                                "M, *, -, E",
                                i);
            cfg->kind[L++] = s[i];
        }
    }
    cfg->mx.n_layers = L;
    for (int l = 0; l < L; l++) {
        cfg->n_mamba += cfg->kind[l] == WRK_NH_MAMBA;
        cfg->n_attn += cfg->kind[l] == WRK_NH_ATTN;
        cfg->n_mlp += cfg->kind[l] == WRK_NH_MLP;
        cfg->n_moe += cfg->kind[l] == WRK_NH_MOE;
    }
    return 0;
}

/* transformers pops these aliases in __post_init__; present, they win. */
static int aliases(const cJSON *root, wrk_nemotronh_config_t *cfg, char *err, size_t errlen)
{
    wrk_mamba2_config_t *mx = &cfg->mx;
    long v;
    double d;
    int rc;
    if ((rc = wrk_cfg_int(root, "mamba_n_groups", mx->n_groups, 1, 1 << 14, &v, err, errlen)))
        return rc;
    mx->n_groups = (int)v;
    if ((rc = wrk_cfg_int(root, "mamba_d_conv", mx->d_conv, 1, 64, &v, err, errlen))) return rc;
    mx->d_conv = (int)v;
    if ((rc = wrk_cfg_num(root, "mamba_dt_min", mx->dt_min, 0.0, 1e6, &d, err, errlen))) return rc;
    mx->dt_min = (float)d;
    return wrk_cfg_bool(root, "mamba_conv_bias", mx->use_conv_bias, &mx->use_conv_bias, err,
                        errlen);
}

/* A string field that must be null or absent (refused otherwise, naming it). */
static int only_null(const cJSON *root, const char *key, const char *why, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (v && !cJSON_IsNull(v))
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen, "config.json: \"%s\" must be null: %s", key,
                        why);
    return 0;
}

static int derive(const cJSON *root, void *out, char *err, size_t errlen)
{
    wrk_nemotronh_config_t *cfg = out;
    wrk_mamba2_config_t *mx = &cfg->mx;
    long v;
    int rc;
    if ((rc = parse_layers(root, cfg, err, errlen)) || (rc = aliases(root, cfg, err, errlen)))
        return rc;
    if ((rc = only_null(root, "sliding_window", "only full causal attention is served", err,
                        errlen)))
        return rc;
    /* moe_latent_size: null (experts on H) or the latent width */
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(root, "moe_latent_size");
    v = 0;
    if (lat && !cJSON_IsNull(lat) &&
        (rc = wrk_cfg_int(root, "moe_latent_size", 1, 1, 1 << 16, &v, err, errlen)))
        return rc;
    cfg->latent = (int)v;
    if ((rc = wrk_granite_kv_heads(root, cfg->n_q, cfg->n_q, &cfg->n_kv, err, errlen))) return rc;
    cfg->attn_scale = (float)pow((double)cfg->head_dim, -0.5);
    /* transformers 5.23 builds exactly one shared expert whatever n_shared_experts says, and
     * drops the multi-token-prediction layers' weights. */
    if ((rc = wrk_cfg_int(root, "n_shared_experts", 1, 0, 1 << 12, &v, err, errlen))) return rc;
    if (v != 1)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "config.json: \"n_shared_experts\": %ld is not supported (transformers "
                        "5.23 builds exactly one shared expert)",
                        v);
    if ((rc = wrk_cfg_int(root, "num_nextn_predict_layers", 0, 0, 1 << 12, &v, err, errlen)))
        return rc;
    if (v != 0)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "config.json: \"num_nextn_predict_layers\": %ld is not supported (no "
                        "multi-token prediction)",
                        v);
    if (cfg->n_moe == 0) {
        cfg->n_experts = cfg->top_k = 0;
    } else if (cfg->n_experts < 2 || cfg->n_experts % cfg->n_group != 0 ||
               cfg->n_experts / cfg->n_group < 2)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: n_routed_experts (%d) must be n_group (%d) groups of at "
                        "least 2 experts",
                        cfg->n_experts, cfg->n_group);
    if (cfg->n_moe && (cfg->topk_group < 1 || cfg->topk_group > cfg->n_group))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: topk_group (%d) must be in [1, n_group (%d)]",
                        cfg->topk_group, cfg->n_group);
    if (cfg->n_moe &&
        (cfg->top_k < 1 || cfg->top_k > cfg->topk_group * (cfg->n_experts / cfg->n_group)))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_experts_per_tok (%d) must be in [1, the experts of "
                        "topk_group groups (%d)] (at most %d)",
                        cfg->top_k, cfg->topk_group * (cfg->n_experts / cfg->n_group),
                        WRK_NEMOTRONH_MAX_TOPK);
    /* The mixer: I = mamba_num_heads * mamba_head_dim (expand is ignored by transformers);
     * dt is clamped to [time_step_min, inf) (time_step_limit is ignored by its mixer). */
    const long I = (long)mx->n_heads * mx->head_dim;
    if (I > 1 << 18)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_num_heads * mamba_head_dim (%ld) is larger than %d", I,
                        1 << 18);
    if (mx->n_heads % mx->n_groups != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_num_heads (%d) must be a multiple of n_groups (%d)",
                        mx->n_heads, mx->n_groups);
    const long GN = (long)mx->n_groups * mx->d_state;
    if (GN > 1 << 20)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: n_groups * ssm_state_size (%ld) is larger than %d", GN,
                        1 << 20);
    mx->expand = 0;
    mx->dt_max = INFINITY;
    wrk_mamba2_derive(mx, I, GN);
    return 0;
}

#define F(field) offsetof(wrk_nemotronh_config_t, field)
/* Caps keep every derived size far from overflow and refuse absurd allocations. Fields that
 * transformers 5.23 reads but that do not change the fp32 forward (chunk_size, expand,
 * time_step_limit/max/floor, residual_in_fp32, rescale_prenorm_residual, mamba_proj_bias,
 * moe_shared_expert_overlap, use_mamba_kernels, max_position_embeddings) are not read, nor is
 * tie_word_embeddings: NemotronHForCausalLM declares no tied weights, so lm_head.weight is
 * always its own tensor (save_pretrained writes it even when the flag says tied). */
static const wrk_cfg_row_t rows[] = {
    WRK_CFG_S("mlp_hidden_act", "relu2", "the only MLP activation served for Nemotron-H", false),
    WRK_CFG_S("mamba_hidden_act", "silu", "the only Mamba activation served", false),
    WRK_CFG_S("mamba_ssm_cache_dtype", "float32", "SSM states are kept in fp32", true),
    WRK_CFG_ONLY("attention_bias", false,
                 "transformers 5.23 builds Nemotron-H's attention projections without bias"),
    WRK_CFG_I("vocab_size", 131072, 1, 1 << 24, F(mx.vocab)),
    WRK_CFG_I("hidden_size", 4096, 1, 1 << 16, F(mx.hidden)),
    WRK_CFG_I("num_attention_heads", 32, 1, 1 << 12, F(n_q)),
    WRK_CFG_I("head_dim", 128, 1, 4096, F(head_dim)),
    WRK_CFG_I("intermediate_size", 21504, 1, 1 << 18, F(mlp_dim)),
    WRK_CFG_B("mlp_bias", false, F(mlp_bias)),
    WRK_CFG_I("ssm_state_size", 128, 1, 1024, F(mx.d_state)),
    WRK_CFG_I("mamba_num_heads", 128, 1, 1 << 14, F(mx.n_heads)),
    WRK_CFG_I("mamba_head_dim", 64, 1, 4096, F(mx.head_dim)),
    WRK_CFG_I("n_groups", 8, 1, 1 << 14, F(mx.n_groups)),
    WRK_CFG_I("conv_kernel", 4, 1, 64, F(mx.d_conv)),
    WRK_CFG_F("time_step_min", 0.001, 0.0, 1e6, F(mx.dt_min)),
    WRK_CFG_B("use_conv_bias", true, F(mx.use_conv_bias)),
    WRK_CFG_B("use_bias", false, F(mx.use_bias)),
    WRK_CFG_I("n_routed_experts", 8, 0, 1 << 12, F(n_experts)),
    WRK_CFG_I("num_experts_per_tok", 2, 0, WRK_NEMOTRONH_MAX_TOPK, F(top_k)),
    WRK_CFG_I("moe_intermediate_size", 7688, 1, 1 << 18, F(expert_dim)),
    WRK_CFG_I("moe_shared_expert_intermediate_size", 7688, 1, 1 << 18, F(shared_dim)),
    WRK_CFG_F("routed_scaling_factor", 1.0, -1e6, 1e6, F(routed_scale)),
    WRK_CFG_I("n_group", 1, 1, 1 << 12, F(n_group)),
    WRK_CFG_I("topk_group", 1, 1, 1 << 12, F(topk_group)),
    WRK_CFG_B("norm_topk_prob", true, F(norm_topk)),
    WRK_CFG_F("layer_norm_epsilon", 1e-5, 1e-30, 1.0, F(mx.eps)),
};

#undef F
WRK_CFG_PARSER(wrk_nemotronh_config_parse, config, wrk_nemotronh_config_t, "nemotron_h", rows,
               derive, mx.)

/* ---- tensor binding ---------------------------------------------------------------------- */

static size_t params_floats(const wrk_nemotronh_config_t *c)
{
    const size_t H = c->mx.hidden, F = c->mlp_dim, S = c->shared_dim, E = c->n_experts;
    return (size_t)c->n_mamba * wrk_mamba2_mixer_floats(&c->mx) + (size_t)c->n_mlp * (F + H) +
           (size_t)c->n_moe * (S + H + E + (c->latent ? (size_t)c->latent + H : 0)) +
           (size_t)c->mx.n_layers * H + H;
}

static int bind_mlp(wrk_binder_t *b, const wrk_nemotronh_config_t *c, const char *prefix, int F,
                    wrk_nemotronh_layer_t *L)
{
    const int H = c->mx.hidden;
    char name[192];
    int rc;
#define NAME(s) (snprintf(name, sizeof name, "%s%s", prefix, s), name)
    if ((rc = wrk_bind_mat(b, NAME("up_proj.weight"), F, H, &L->up)) ||
        (rc = wrk_bind_mat(b, NAME("down_proj.weight"), H, F, &L->down)))
        return rc;
    if (c->mlp_bias && ((rc = wrk_bind_vec(b, NAME("up_proj.bias"), F, &L->up_b)) ||
                        (rc = wrk_bind_vec(b, NAME("down_proj.bias"), H, &L->down_b))))
        return rc;
#undef NAME
    return 0;
}

static int bind_layer(wrk_binder_t *b, const wrk_nemotronh_config_t *c, const char *root, int l,
                      wrk_nemotronh_layer_t *L)
{
    const int H = c->mx.hidden, qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    const int E = c->n_experts, Fe = c->expert_dim, D = c->latent ? c->latent : H;
    char name[192], prefix[96];
    int rc;
    snprintf(prefix, sizeof prefix, "%slayers.%d.mixer.", root, l);
    snprintf(name, sizeof name, "%slayers.%d.norm.weight", root, l);
    if ((rc = wrk_bind_vec(b, name, H, &L->norm))) return rc;
#define NAME(s) (snprintf(name, sizeof name, "%s%s", prefix, s), name)
    switch (L->kind) {
    case WRK_NH_MAMBA:
        if ((rc = wrk_mamba2_bind_mixer(b->m, &c->mx, prefix, &b->next, &L->mx, b->err, b->errlen)))
            return rc;
        L->mx.norm_w = L->norm;
        return 0;
    case WRK_NH_ATTN:
        return wrk_bind_attn(b, prefix, H, qd, kvd, (wrk_mat_t *[]){&L->q, &L->k, &L->v, &L->o},
                             NULL);
    case WRK_NH_MLP:
        return bind_mlp(b, c, prefix, c->mlp_dim, L);
    default:
        break;
    }
    /* MoE: router, correction bias, the experts (saved one tensor per expert), shared MLP. */
    if ((rc = wrk_bind_mat(b, NAME("gate.weight"), E, H, &L->router)) ||
        (rc = wrk_bind_vec(b, NAME("gate.e_score_correction_bias"), E, &L->corr)))
        return rc;
    L->ex_up = wrk_model_alloc(b->m, (size_t)E, sizeof *L->ex_up);
    L->ex_down = wrk_model_alloc(b->m, (size_t)E, sizeof *L->ex_down);
    if (!L->ex_up || !L->ex_down) return rcd_fail(RCD_ENOMEM, b->err, b->errlen, "out of memory");
    for (int e = 0; e < E; e++) {
        snprintf(name, sizeof name, "%sexperts.%d.up_proj.weight", prefix, e);
        if ((rc = wrk_bind_mat(b, name, Fe, D, &L->ex_up[e]))) return rc;
        snprintf(name, sizeof name, "%sexperts.%d.down_proj.weight", prefix, e);
        if ((rc = wrk_bind_mat(b, name, D, Fe, &L->ex_down[e]))) return rc;
    }
    if (c->latent) {
        if ((rc = wrk_bind_mat(b, NAME("fc1_latent_proj.weight"), D, H, &L->lat_in)) ||
            (rc = wrk_bind_mat(b, NAME("fc2_latent_proj.weight"), H, D, &L->lat_out)))
            return rc;
        if (c->mlp_bias && ((rc = wrk_bind_vec(b, NAME("fc1_latent_proj.bias"), D, &L->lat_in_b)) ||
                            (rc = wrk_bind_vec(b, NAME("fc2_latent_proj.bias"), H, &L->lat_out_b))))
            return rc;
    }
#undef NAME
    snprintf(name, sizeof name, "%sshared_experts.", prefix);
    return bind_mlp(b, c, name, c->shared_dim, L);
}

/* State: per Mamba layer the conv window [K-1][C] and SSM state [NH][P][N] (the Mamba2
 * layout), then, with attention layers, the position count the KV part holds. */
static int describe_state(wrk_model_t *m, const wrk_nemotronh_config_t *c, char *err, size_t errlen)
{
    bool mixer[WRK_NEMOTRONH_MAX_LAYERS];
    for (int l = 0; l < c->mx.n_layers; l++)
        mixer[l] = c->kind[l] == WRK_NH_MAMBA;
    return wrk_describe_hybrid_state(m, c->mx.n_layers, mixer, wrk_mamba2_describe_state, &c->mx,
                                     c->n_attn, c->n_kv * c->head_dim, err, errlen);
}

static int nemotronh_load(wrk_model_t *m, char *err, size_t errlen)
{
    wrk_nemotronh_t *g = m->priv;
    int rc;
    const wrk_nemotronh_config_t *c = &g->cfg;
    const wrk_mamba2_config_t *mx = &c->mx;
    const int H = mx->hidden, V = mx->vocab;
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv, A, D and dt_bias",
                               &g->params, err, errlen)))
        return rc;
    g->layers = wrk_model_alloc(m, (size_t)mx->n_layers, sizeof *g->layers);
    if (!g->layers) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    wrk_binder_t b = {.m = m, .next = g->params, .err = err, .errlen = errlen};
    /* save_pretrained writes HF's original "backbone." names; a model saved under its module
     * names says "model.". */
    const char *root = wrk_st_find(m->st, "model.embeddings.weight") ? "model." : "backbone.";
    char name[96];
    snprintf(name, sizeof name, "%sembeddings.weight", root);
    if ((rc = wrk_bind_mat(&b, name, V, H, &m->embed))) return rc;
    snprintf(name, sizeof name, "%snorm_f.weight", root);
    if ((rc = wrk_bind_vec(&b, name, H, &m->norm_f))) return rc;
    if ((rc = wrk_bind_lm_head(&b, false, V, H))) return rc; /* never tied: see rows[] */
    int count[256] = {0};
    for (int l = 0; l < mx->n_layers; l++) {
        wrk_nemotronh_layer_t *L = &g->layers[l];
        L->kind = c->kind[l];
        L->idx = count[(unsigned char)L->kind]++;
        if ((rc = bind_layer(&b, c, root, l, L))) return rc;
    }
    if ((rc = describe_state(m, c, err, errlen))) return rc;

    m->info.weight_dtype = m->embed.dt;
    wrk_model_set_lm(m, V, H, mx->n_layers, mx->bos_id, mx->eos_id, mx->pad_id, mx->eps);
    const int qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    int widest = H > mx->inner ? H : mx->inner;
    if (qd > widest) widest = qd;
    if (c->n_mlp && c->mlp_dim > widest) widest = c->mlp_dim;
    if (c->n_moe && c->shared_dim > widest) widest = c->shared_dim;
    if (c->n_moe && c->expert_dim > widest) widest = c->expert_dim;
    if (c->n_moe && c->latent > widest) widest = c->latent;
    m->max_matmul_cols = widest;
    const double mamba_f = (double)mx->proj_dim * H + (double)H * mx->inner;
    const double attn_f = (double)(qd + 2 * kvd) * H + (double)H * qd;
    const double mlp_f = 2.0 * c->mlp_dim * H;
    const double moe_d = c->latent ? c->latent : H;
    const double moe_f = 2.0 * c->shared_dim * H + (double)c->n_experts * H +
                         2.0 * c->top_k * (double)c->expert_dim * moe_d +
                         (c->latent ? 2.0 * c->latent * H : 0.0);
    m->info.layer_flops =
        2.0 * (c->n_mamba * mamba_f + c->n_attn * attn_f + c->n_mlp * mlp_f + c->n_moe * moe_f);
    return 0;
}

const wrk_family_i wrk_family_nemotronh = {
    .family = WRK_FAMILY_NEMOTRON_H,
    .layout_size = sizeof(wrk_nemotronh_t),
    .config = &config,
    .load = nemotronh_load,
};
