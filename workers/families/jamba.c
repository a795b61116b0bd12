/* workers: the Jamba family (JambaForCausalLM) — config.json parsing and tensor binding,
 * validated against the config so that a bad checkpoint is a clear error naming the file and
 * tensor. The Mamba layers are bound by the Mamba family's code. The math follows
 * transformers' torch path (see docs/specs/jamba.md). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "workers/families/granite.h"
#include "workers/families/jamba.h"
#include "workers/model/cfg_json.h"

/* Fields that depend on others: the layer pattern (periods / offsets), the KV heads (absent:
 * 8 as transformers' default; null: the query heads), head_dim, dt rank ("auto":
 * ceil(hidden / 16)), the Mamba inner width, experts against top-k. */
static int derive(const cJSON *root, void *out, char *err, size_t errlen)
{
    wrk_jamba_config_t *cfg = out;
    wrk_mamba_config_t *mx = &cfg->mx;
    long v;
    int rc;
    /* num_local_experts is transformers' alias of num_experts (attribute_map). */
    const cJSON *ne = cJSON_GetObjectItemCaseSensitive(root, "num_experts");
    if ((!ne || cJSON_IsNull(ne)) &&
        cJSON_GetObjectItemCaseSensitive(root, "num_local_experts")) {
        if ((rc = wrk_cfg_int(root, "num_local_experts", 16, 1, 1 << 12, &v, err, errlen)))
            return rc;
        cfg->n_experts = (int)v;
    }
    if (cfg->attn_offset >= cfg->attn_period)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: attn_layer_offset (%d) must be smaller than "
                        "attn_layer_period (%d)",
                        cfg->attn_offset, cfg->attn_period);
    if (cfg->expert_offset >= cfg->expert_period)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: expert_layer_offset (%d) must be smaller than "
                        "expert_layer_period (%d)",
                        cfg->expert_offset, cfg->expert_period);
    for (int l = 0; l < mx->n_layers; l++) {
        cfg->attn[l] = l % cfg->attn_period == cfg->attn_offset;
        cfg->moe[l] = cfg->n_experts > 1 && l % cfg->expert_period == cfg->expert_offset;
        cfg->n_attn += cfg->attn[l];
        cfg->n_mamba += !cfg->attn[l];
        cfg->n_moe += cfg->moe[l];
    }
    if ((rc = wrk_granite_kv_heads(root, cfg->n_q, 8, &cfg->n_kv, err, errlen))) return rc;
    /* transformers takes config.head_dim when present, else hidden_size / heads. */
    if (mx->hidden / cfg->n_q < 1 && !cJSON_GetObjectItemCaseSensitive(root, "head_dim"))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_attention_heads (%d) is larger than hidden_size (%d)",
                        cfg->n_q, mx->hidden);
    if ((rc = wrk_cfg_int(root, "head_dim", mx->hidden / cfg->n_q, 1, 4096, &v, err, errlen)))
        return rc;
    cfg->head_dim = (int)v;
    const cJSON *dr = cJSON_GetObjectItemCaseSensitive(root, "mamba_dt_rank");
    v = (mx->hidden + 15) / 16;
    if (!(cJSON_IsString(dr) && strcmp(dr->valuestring, "auto") == 0) &&
        (rc = wrk_cfg_int(root, "mamba_dt_rank", v, 1, 1 << 16, &v, err, errlen)))
        return rc;
    mx->dt_rank = (int)v;
    const long I = (long)mx->expand * mx->hidden;
    if (I > 1 << 18)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_expand * hidden_size (%ld) is larger than %d", I,
                        1 << 18);
    mx->inner = (int)I;
    if (cfg->n_moe && (cfg->top_k < 1 || cfg->top_k > cfg->n_experts))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_experts_per_tok (%d) must be in [1, num_experts (%d)] "
                        "(at most %d)",
                        cfg->top_k, cfg->n_experts, WRK_JAMBA_MAX_TOPK);
    return 0;
}

#define F(field) offsetof(wrk_jamba_config_t, field)
/* Caps keep every derived size far from overflow and refuse absurd allocations; epsilons are
 * checked as the float they become (1e-55 would round to 0). */
static const wrk_cfg_row_t rows[] = {
    WRK_CFG_S("hidden_act", "silu", "the only activation served for Jamba", false),
    WRK_CFG_I("vocab_size", 65536, 1, 1 << 24, F(mx.vocab)),
    WRK_CFG_I("hidden_size", 4096, 1, 1 << 16, F(mx.hidden)),
    WRK_CFG_I("intermediate_size", 14336, 1, 1 << 18, F(ffn_dim)),
    WRK_CFG_I("num_hidden_layers", 32, 1, WRK_JAMBA_MAX_LAYERS, F(mx.n_layers)),
    WRK_CFG_I("num_attention_heads", 32, 1, 1 << 12, F(n_q)),
    WRK_CFG_F("rms_norm_eps", 1e-6, 1e-30, 1.0, F(mx.eps)),
    WRK_CFG_I("num_experts", 16, 1, 1 << 12, F(n_experts)),
    WRK_CFG_I("num_experts_per_tok", 2, 0, WRK_JAMBA_MAX_TOPK, F(top_k)),
    WRK_CFG_I("expert_layer_period", 2, 1, 1 << 16, F(expert_period)),
    WRK_CFG_I("expert_layer_offset", 1, 0, 1 << 16, F(expert_offset)),
    WRK_CFG_I("attn_layer_period", 8, 1, 1 << 16, F(attn_period)),
    WRK_CFG_I("attn_layer_offset", 4, 0, 1 << 16, F(attn_offset)),
    WRK_CFG_I("mamba_d_state", 16, 1, 1024, F(mx.d_state)),
    WRK_CFG_I("mamba_d_conv", 4, 1, 64, F(mx.d_conv)),
    WRK_CFG_I("mamba_expand", 2, 1, 64, F(mx.expand)),
    WRK_CFG_B("mamba_conv_bias", true, F(mx.use_conv_bias)),
    WRK_CFG_B("mamba_proj_bias", false, F(mx.use_bias)),
    WRK_CFG_B("tie_word_embeddings", false, F(mx.tie_embeddings)),
};

#undef F
WRK_CFG_PARSER(wrk_jamba_config_parse, config, wrk_jamba_config_t, "jamba", rows, derive, mx.)

/* ---- tensor binding ---------------------------------------------------------------------- */

static size_t params_floats(const wrk_jamba_config_t *c)
{
    const size_t H = c->mx.hidden;
    return (size_t)c->n_mamba *
               (wrk_mamba_mixer_floats(&c->mx) + c->mx.dt_rank + 2 * (size_t)c->mx.d_state) +
           (size_t)c->mx.n_layers * 2 * H + H;
}

static int bind_layer(wrk_binder_t *b, const wrk_jamba_config_t *c, int l, wrk_jamba_layer_t *L)
{
    const int H = c->mx.hidden, qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    const int F = c->ffn_dim, E = c->n_experts;
    char name[192], prefix[64];
    int rc;
    snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
#define NAME(s) (snprintf(name, sizeof name, "%s%s", prefix, s), name)
    if ((rc = wrk_bind_vec(b, NAME("input_layernorm.weight"), H, &L->in_norm)) ||
        (rc = wrk_bind_vec(b, NAME("pre_ff_layernorm.weight"), H, &L->ff_norm)))
        return rc;
    if (L->attn) {
        if ((rc = wrk_bind_attn(b, NAME("self_attn."), H, qd, kvd,
                                (wrk_mat_t *[]){&L->q, &L->k, &L->v, &L->o}, NULL)))
            return rc;
    } else {
        snprintf(name, sizeof name, "%smamba.", prefix);
        if ((rc = wrk_mamba_bind_mixer(b, &c->mx, name, &L->mx))) return rc;
        if ((rc = wrk_bind_vec(b, NAME("mamba.dt_layernorm.weight"), c->mx.dt_rank,
                               &L->mx.dt_norm)) ||
            (rc =
                 wrk_bind_vec(b, NAME("mamba.b_layernorm.weight"), c->mx.d_state, &L->mx.b_norm)) ||
            (rc = wrk_bind_vec(b, NAME("mamba.c_layernorm.weight"), c->mx.d_state, &L->mx.c_norm)))
            return rc;
        L->mx.norm_w = L->in_norm;
    }
    if (!L->moe)
        return (rc = wrk_bind_mat(b, NAME("feed_forward.gate_proj.weight"), F, H, &L->gate)) ||
                       (rc = wrk_bind_mat(b, NAME("feed_forward.up_proj.weight"), F, H, &L->up)) ||
                       (rc = wrk_bind_mat(b, NAME("feed_forward.down_proj.weight"), H, F, &L->down))
                   ? rc
                   : 0;
    if ((rc = wrk_bind_mat(b, NAME("feed_forward.router.weight"), E, H, &L->router))) return rc;
    L->ex = wrk_model_alloc(b->m, (size_t)E * 3, sizeof *L->ex);
    if (!L->ex) return rcd_fail(RCD_ENOMEM, b->err, b->errlen, "out of memory");
    /* transformers 5.23 saves the experts unstacked, as the original checkpoints do. */
    for (int e = 0; e < E; e++) {
        char en[64];
        snprintf(en, sizeof en, "feed_forward.experts.%d.", e);
#define ENAME(s) (snprintf(name, sizeof name, "%s%s%s", prefix, en, s), name)
        if ((rc = wrk_bind_mat(b, ENAME("gate_proj.weight"), F, H, &L->ex[3 * e])) ||
            (rc = wrk_bind_mat(b, ENAME("up_proj.weight"), F, H, &L->ex[3 * e + 1])) ||
            (rc = wrk_bind_mat(b, ENAME("down_proj.weight"), H, F, &L->ex[3 * e + 2])))
            return rc;
#undef ENAME
    }
#undef NAME
    return 0;
}

/* State: per Mamba layer the conv window [K-1][I] and SSM state [N][I] (the Mamba layout),
 * then, with attention layers, the position count the KV part holds. */
static size_t mamba_state(const void *cfg, int layer, wrk_state_tensor_t *t, size_t off)
{
    const wrk_mamba_config_t *mx = cfg;
    const int K = mx->d_conv, I = mx->inner, N = mx->d_state;
    off = wrk_state_tensor_set(&t[0], layer, "conv", 2, (int64_t[]){K - 1, I}, sizeof(float), off);
    return wrk_state_tensor_set(&t[1], layer, "ssm", 2, (int64_t[]){N, I}, sizeof(float), off);
}

static int describe_state(wrk_model_t *m, const wrk_jamba_config_t *c, char *err, size_t errlen)
{
    bool mixer[WRK_JAMBA_MAX_LAYERS];
    for (int l = 0; l < c->mx.n_layers; l++)
        mixer[l] = !c->attn[l];
    return wrk_describe_hybrid_state(m, c->mx.n_layers, mixer, mamba_state, &c->mx, c->n_attn,
                                     c->n_kv * c->head_dim, err, errlen);
}

static int jamba_load(wrk_model_t *m, char *err, size_t errlen)
{
    wrk_jamba_t *g = m->priv;
    int rc;
    const wrk_jamba_config_t *c = &g->cfg;
    const wrk_mamba_config_t *mx = &c->mx;
    const int H = mx->hidden, V = mx->vocab;
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv, A and D", &g->params, err,
                               errlen)))
        return rc;
    g->layers = wrk_model_alloc(m, (size_t)mx->n_layers, sizeof *g->layers);
    if (!g->layers) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    wrk_binder_t b = {.m = m, .next = g->params, .err = err, .errlen = errlen};

    if ((rc = wrk_bind_mat(&b, "model.embed_tokens.weight", V, H, &m->embed))) return rc;
    if ((rc = wrk_bind_vec(&b, "model.final_layernorm.weight", H, &m->norm_f))) return rc;
    if ((rc = wrk_bind_lm_head(&b, mx->tie_embeddings, V, H))) return rc;
    int n_attn = 0, n_mamba = 0;
    for (int l = 0; l < mx->n_layers; l++) {
        wrk_jamba_layer_t *L = &g->layers[l];
        L->attn = c->attn[l];
        L->moe = c->moe[l];
        L->idx = L->attn ? n_attn++ : n_mamba++;
        if ((rc = bind_layer(&b, c, l, L))) return rc;
    }
    if ((rc = describe_state(m, c, err, errlen))) return rc;

    m->info.weight_dtype = m->embed.dt;
    wrk_model_set_lm(m, V, H, mx->n_layers, mx->bos_id, mx->eos_id, mx->pad_id, mx->eps);
    const int qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    const int I = mx->inner, N = mx->d_state, R = mx->dt_rank, F = c->ffn_dim;
    int widest = H > I ? H : I;
    if (qd > widest) widest = qd;
    if (F > widest) widest = F;
    if (R > widest) widest = R;
    m->max_matmul_cols = widest;
    const double mamba_f = 2.0 * I * H + (double)(R + 2 * N) * I + (double)R * I + (double)H * I;
    const double attn_f = (double)(qd + 2 * kvd) * H + (double)H * qd;
    const double mlp_f = 3.0 * F * H;
    const double moe_f = (double)c->n_experts * H + c->top_k * mlp_f;
    m->info.layer_flops = 2.0 * (c->n_mamba * mamba_f + c->n_attn * attn_f +
                                 (mx->n_layers - c->n_moe) * mlp_f + c->n_moe * moe_f);
    return 0;
}

const wrk_family_i wrk_family_jamba = {
    .family = WRK_FAMILY_JAMBA,
    .layout_size = sizeof(wrk_jamba_t),
    .config = &config,
    .load = jamba_load,
};
