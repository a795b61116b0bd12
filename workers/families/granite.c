/* workers: the Granite 4.0-H family (GraniteMoeHybridForCausalLM) — config.json parsing and
 * tensor binding, validated against the config so that a bad checkpoint is a clear error
 * naming the file and tensor. The Mamba layers are bound by the Mamba2 family's code. The
 * math follows transformers' torch path (see ../shared/specs/granitemoehybrid.md). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "workers/model/cfg_json.h"
#include "workers/families/granite.h"

/* layer_types (or its alias layers_block_type): one string per layer. transformers 5.x
 * writes "linear_attention" / "full_attention"; released checkpoints say "mamba" /
 * "attention". Absent: every layer is a Mamba layer. */
static int parse_layer_types(const cJSON *root, wrk_granite_config_t *cfg, char *err, size_t errlen)
{
    const char *key = "layer_types";
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        key = "layers_block_type";
        v = cJSON_GetObjectItemCaseSensitive(root, key);
    }
    const int L = cfg->mx.n_layers;
    if (!v || cJSON_IsNull(v)) {
        cfg->n_mamba = L;
        return 0;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != L)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: \"%s\" must be a list of num_hidden_layers (%d) strings", key,
                        L);
    int l = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, v)
    {
        const char *s = cJSON_IsString(it) ? it->valuestring : "";
        if (!strcmp(s, "mamba") || !strcmp(s, "linear_attention"))
            cfg->attn[l] = false;
        else if (!strcmp(s, "attention") || !strcmp(s, "full_attention"))
            cfg->attn[l] = true;
        else
            return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                            "config.json: \"%s\"[%d] must be \"mamba\"/\"linear_attention\" or "
                            "\"attention\"/\"full_attention\"",
                            key, l);
        cfg->n_attn += cfg->attn[l];
        cfg->n_mamba += !cfg->attn[l];
        l++;
    }
    return 0;
}

int wrk_granite_rope_theta(const cJSON *root, float *rope_theta, char *err, size_t errlen)
{
    double theta = 10000.0;
    int rc;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "config.json: \"rope_scaling\" is not supported (plain RoPE only)");
    if (rp && !cJSON_IsNull(rp)) {
        if (!cJSON_IsObject(rp))
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"rope_parameters\" must be an object");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (t && !cJSON_IsNull(t) && !(cJSON_IsString(t) && !strcmp(t->valuestring, "default")))
            return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                            "config.json: rope_parameters.rope_type must be \"default\"");
        if ((rc = wrk_cfg_num(rp, "rope_theta", theta, 1e-3, 1e12, &theta, err, errlen))) return rc;
    } else if ((rc = wrk_cfg_num(root, "rope_theta", theta, 1e-3, 1e12, &theta, err, errlen))) {
        return rc;
    }
    *rope_theta = (float)theta;
    return 0;
}

int wrk_granite_kv_heads(const cJSON *root, int n_q, int absent, int *n_kv, char *err,
                         size_t errlen)
{
    long v;
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(root, "num_key_value_heads");
    int rc =
        wrk_cfg_int(root, "num_key_value_heads", kv ? n_q : absent, 1, 1 << 12, &v, err, errlen);
    if (rc) return rc;
    *n_kv = (int)v;
    if (n_q % *n_kv != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_attention_heads (%d) must be a multiple of "
                        "num_key_value_heads (%d)",
                        n_q, *n_kv);
    return 0;
}

int wrk_granite_mamba_d_head(const cJSON *root, long I, wrk_mamba2_config_t *mx, char *err,
                             size_t errlen)
{
    long v;
    int rc;
    if (I > 1 << 18)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_expand * hidden_size (%ld) is larger than %d", I,
                        1 << 18);
    const cJSON *dh = cJSON_GetObjectItemCaseSensitive(root, "mamba_d_head");
    v = I / mx->n_heads;
    if (!(!dh || cJSON_IsNull(dh) || (cJSON_IsString(dh) && !strcmp(dh->valuestring, "auto"))) &&
        (rc = wrk_cfg_int(root, "mamba_d_head", 0, 1, 4096, &v, err, errlen)))
        return rc;
    mx->head_dim = (int)v;
    return 0;
}

/* position_embedding_type: only "rope" enables positions (Granite 4.0-H says "nope"). */
static int parse_positions(const cJSON *root, wrk_granite_config_t *cfg, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "position_embedding_type");
    cfg->rope = false;
    cfg->rope_theta = 10000.f;
    if (!v || cJSON_IsNull(v) || (cJSON_IsString(v) && !strcmp(v->valuestring, "nope"))) return 0;
    if (!cJSON_IsString(v) || strcmp(v->valuestring, "rope") != 0)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "config.json: \"position_embedding_type\" must be null, \"nope\" or "
                        "\"rope\"");
    cfg->rope = true;
    return wrk_granite_rope_theta(root, &cfg->rope_theta, err, errlen);
}

/* Fields that depend on others or on a structure: layer_types, the KV heads (default: the
 * query heads) and head_dim, positions, the expert count against top-k, and the Mamba mixer's
 * geometry (validated even with no Mamba layer, as transformers does). */
static int derive(const cJSON *root, void *out, char *err, size_t errlen)
{
    wrk_granite_config_t *cfg = out;
    wrk_mamba2_config_t *mx = &cfg->mx;
    long v;
    int rc;
    if ((rc = parse_layer_types(root, cfg, err, errlen))) return rc;
    if ((rc = wrk_granite_kv_heads(root, cfg->n_q, cfg->n_q, &cfg->n_kv, err, errlen))) return rc;
    /* transformers takes config.head_dim when present, else hidden_size / heads. */
    if (mx->hidden / cfg->n_q < 1 && !cJSON_GetObjectItemCaseSensitive(root, "head_dim"))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_attention_heads (%d) is larger than hidden_size (%d)",
                        cfg->n_q, mx->hidden);
    if ((rc = wrk_cfg_int(root, "head_dim", mx->hidden / cfg->n_q, 1, 4096, &v, err, errlen)))
        return rc;
    cfg->head_dim = (int)v;
    if ((rc = parse_positions(root, cfg, err, errlen))) return rc;
    if (cfg->rope && cfg->head_dim % 2)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: RoPE needs an even head dimension (got %d)", cfg->head_dim);
    if (cfg->logits_div == 0.f)
        return rcd_fail(RCD_EFORMAT, err, errlen, "config.json: \"logits_scaling\" must not be 0");
    if (cfg->n_experts > 0 && (cfg->top_k < 1 || cfg->top_k > cfg->n_experts))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_experts_per_tok (%d) must be in [1, num_local_experts "
                        "(%d)] (at most %d)",
                        cfg->top_k, cfg->n_experts, WRK_GRANITE_MAX_TOPK);
    const long I = (long)mx->expand * mx->hidden;
    if ((rc = wrk_granite_mamba_d_head(root, I, mx, err, errlen))) return rc;
    if ((long)mx->n_heads * mx->head_dim != I)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_n_heads * mamba_d_head (%ld) must equal mamba_expand * "
                        "hidden_size (%ld)",
                        (long)mx->n_heads * mx->head_dim, I);
    if (mx->n_heads % mx->n_groups != 0 || I % mx->n_groups != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_n_heads (%d) must be a multiple of mamba_n_groups (%d)",
                        mx->n_heads, mx->n_groups);
    const long GN = (long)mx->n_groups * mx->d_state;
    if (GN > 1 << 20)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_n_groups * mamba_d_state (%ld) is larger than %d", GN,
                        1 << 20);
    wrk_mamba2_derive(mx, I, GN);
    return wrk_cfg_time_step_limit(root, &mx->dt_min, &mx->dt_max, err, errlen);
}

#define F(field) offsetof(wrk_granite_config_t, field)
/* Caps keep every derived size far from overflow and refuse absurd allocations; epsilons are
 * checked as the float they become (1e-55 would round to 0). */
static const wrk_cfg_row_t rows[] = {
    WRK_CFG_S("hidden_act", "silu", "the only activation served for Granite 4.0-H", false),
    WRK_CFG_I("vocab_size", 32000, 1, 1 << 24, F(mx.vocab)),
    WRK_CFG_I("hidden_size", 4096, 1, 1 << 16, F(mx.hidden)),
    WRK_CFG_I("num_hidden_layers", 32, 1, WRK_GRANITE_MAX_LAYERS, F(mx.n_layers)),
    WRK_CFG_I("num_attention_heads", 32, 1, 1 << 12, F(n_q)),
    WRK_CFG_B("attention_bias", false, F(attn_bias)),
    WRK_CFG_F("attention_multiplier", 1.0, -1e6, 1e6, F(attn_mult)),
    WRK_CFG_F("embedding_multiplier", 1.0, -1e6, 1e6, F(embed_mult)),
    WRK_CFG_F("residual_multiplier", 1.0, -1e6, 1e6, F(resid_mult)),
    WRK_CFG_F("logits_scaling", 1.0, -1e6, 1e6, F(logits_div)),
    WRK_CFG_F("rms_norm_eps", 1e-6, 1e-30, 1.0, F(mx.eps)),
    WRK_CFG_I("num_local_experts", 8, 0, 1 << 12, F(n_experts)),
    WRK_CFG_I("num_experts_per_tok", 2, 0, WRK_GRANITE_MAX_TOPK, F(top_k)),
    WRK_CFG_I("intermediate_size", 11008, 1, 1 << 18, F(expert_dim)),
    WRK_CFG_I("shared_intermediate_size", 1024, 1, 1 << 18, F(shared_dim)),
    WRK_CFG_I("mamba_expand", 2, 1, 64, F(mx.expand)),
    WRK_CFG_I("mamba_n_heads", 128, 1, 1 << 14, F(mx.n_heads)),
    WRK_CFG_I("mamba_n_groups", 1, 1, 1 << 14, F(mx.n_groups)),
    WRK_CFG_I("mamba_d_state", 256, 1, 1024, F(mx.d_state)),
    WRK_CFG_I("mamba_d_conv", 4, 1, 64, F(mx.d_conv)),
    WRK_CFG_B("mamba_proj_bias", false, F(mx.use_bias)),
    WRK_CFG_B("mamba_conv_bias", true, F(mx.use_conv_bias)),
    WRK_CFG_B("tie_word_embeddings", false, F(mx.tie_embeddings)),
};

#undef F
WRK_CFG_PARSER(wrk_granite_config_parse, config, wrk_granite_config_t, "granitemoehybrid", rows,
               derive, mx.)

/* ---- tensor binding ---------------------------------------------------------------------- */

static size_t params_floats(const wrk_granite_config_t *c)
{
    const size_t H = c->mx.hidden, qd = (size_t)c->n_q * c->head_dim;
    const size_t kvd = (size_t)c->n_kv * c->head_dim;
    return (size_t)c->n_mamba * wrk_mamba2_mixer_floats(&c->mx) +
           (size_t)c->n_attn * (qd + 2 * kvd + H) + (size_t)c->mx.n_layers * 2 * H + H;
}

/* A stacked [E][rows][cols] expert tensor, bound as expert 0's matrix. */
static int experts(wrk_binder_t *b, const char *name, int E, int rows, int cols, wrk_mat_t *out)
{
    const wrk_st_tensor_t *t = NULL;
    int rc = wrk_take_tensor(b->m, name, 3, (int64_t[]){E, rows, cols}, &t, b->err, b->errlen);
    if (rc) return rc;
    *out = (wrk_mat_t){.dt = t->dtype, .data = t->data, .rows = rows, .cols = cols};
    return 0;
}

static int bind_layer(wrk_binder_t *b, const wrk_granite_config_t *c, int l, wrk_granite_layer_t *L)
{
    const int H = c->mx.hidden, qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    const int S = c->shared_dim, F = c->expert_dim, E = c->n_experts;
    char name[160], prefix[64];
    int rc;
    snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
#define NAME(s) (snprintf(name, sizeof name, "%s%s", prefix, s), name)
    if ((rc = wrk_bind_vec(b, NAME("input_layernorm.weight"), H, &L->in_norm)) ||
        (rc = wrk_bind_vec(b, NAME("post_attention_layernorm.weight"), H, &L->post_norm)))
        return rc;
    if (L->attn) {
        if ((rc = wrk_bind_attn(
                 b, NAME("self_attn."), H, qd, kvd, (wrk_mat_t *[]){&L->q, &L->k, &L->v, &L->o},
                 c->attn_bias ? (const float **[]){&L->qb, &L->kb, &L->vb, &L->ob} : NULL)))
            return rc;
    } else {
        snprintf(name, sizeof name, "%smamba.", prefix);
        if ((rc = wrk_mamba2_bind_mixer(b->m, &c->mx, name, &b->next, &L->mx, b->err, b->errlen)))
            return rc;
        L->mx.norm_w = L->in_norm;
    }
    if ((rc = wrk_bind_mat(b, NAME("shared_mlp.input_linear.weight"), 2 * S, H, &L->sh_in)) ||
        (rc = wrk_bind_mat(b, NAME("shared_mlp.output_linear.weight"), H, S, &L->sh_out)))
        return rc;
    if (E > 0 &&
        ((rc = wrk_bind_mat(b, NAME("block_sparse_moe.router.layer.weight"), E, H, &L->router)) ||
         (rc = experts(b, NAME("block_sparse_moe.input_linear.weight"), E, 2 * F, H, &L->ex_in)) ||
         (rc = experts(b, NAME("block_sparse_moe.output_linear.weight"), E, H, F, &L->ex_out))))
        return rc;
#undef NAME
    return 0;
}

/* State: per Mamba layer the conv window [K-1][C] and SSM state [NH][P][N] (the Mamba2
 * layout), then, with attention layers, the position count the KV part holds. */
static int describe_state(wrk_model_t *m, const wrk_granite_config_t *c, char *err, size_t errlen)
{
    bool mixer[WRK_GRANITE_MAX_LAYERS];
    for (int l = 0; l < c->mx.n_layers; l++)
        mixer[l] = !c->attn[l];
    return wrk_describe_hybrid_state(m, c->mx.n_layers, mixer, wrk_mamba2_describe_state, &c->mx,
                                     c->n_attn, c->n_kv * c->head_dim, err, errlen);
}

static int granite_load(wrk_model_t *m, char *err, size_t errlen)
{
    wrk_granite_t *g = m->priv;
    int rc;
    const wrk_granite_config_t *c = &g->cfg;
    const wrk_mamba2_config_t *mx = &c->mx;
    const int H = mx->hidden, V = mx->vocab;
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv, A, D and dt_bias",
                               &g->params, err, errlen)))
        return rc;
    g->layers = wrk_model_alloc(m, (size_t)mx->n_layers, sizeof *g->layers);
    g->inv_freq = wrk_model_alloc(m, (size_t)(c->head_dim / 2 + 1) , sizeof(float));
    if (!g->layers || !g->inv_freq)
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    wrk_binder_t b = {.m = m, .next = g->params, .err = err, .errlen = errlen};

    if ((rc = wrk_bind_mat(&b, "model.embed_tokens.weight", V, H, &m->embed))) return rc;
    if ((rc = wrk_bind_vec(&b, "model.norm.weight", H, &m->norm_f))) return rc;
    if ((rc = wrk_bind_lm_head(&b, mx->tie_embeddings, V, H))) return rc;
    int n_attn = 0, n_mamba = 0;
    for (int l = 0; l < mx->n_layers; l++) {
        wrk_granite_layer_t *L = &g->layers[l];
        L->attn = c->attn[l];
        L->idx = L->attn ? n_attn++ : n_mamba++;
        if ((rc = bind_layer(&b, c, l, L))) return rc;
    }
    /* inv_freq_j = theta^(-2j/hd), as transformers computes it (in fp32 there; the double
     * here differs by at most an ulp). */
    for (int j = 0; j < c->head_dim / 2; j++)
        g->inv_freq[j] = (float)(1.0 / pow((double)c->rope_theta, 2.0 * j / c->head_dim));
    if ((rc = describe_state(m, c, err, errlen))) return rc;

    m->info.weight_dtype = g->layers[0].sh_in.dt;
    wrk_model_set_lm(m, V, H, mx->n_layers, mx->bos_id, mx->eos_id, mx->pad_id, mx->eps);
    m->embed_scale = c->embed_mult;
    m->logit_scale = 1.0f / c->logits_div;
    const int qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    int widest = H > mx->inner ? H : mx->inner;
    if (qd > widest) widest = qd;
    if (c->shared_dim > widest) widest = c->shared_dim;
    if (c->expert_dim > widest) widest = c->expert_dim;
    m->max_matmul_cols = widest;
    const double mamba_f = (double)mx->proj_dim * H + (double)H * mx->inner;
    const double attn_f = (double)(qd + 2 * kvd) * H + (double)H * qd;
    const double mlp_f =
        3.0 * c->shared_dim * H +
        (c->n_experts ? (double)c->n_experts * H + 3.0 * c->top_k * (double)c->expert_dim * H
                      : 0.0);
    m->info.layer_flops = 2.0 * (c->n_mamba * mamba_f + c->n_attn * attn_f + mx->n_layers * mlp_f);
    return 0;
}

const wrk_family_i wrk_family_granite = {
    .family = WRK_FAMILY_GRANITE,
    .layout_size = sizeof(wrk_granite_t),
    .config = &config,
    .load = granite_load,
};
