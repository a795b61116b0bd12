/* workers: the Falcon-H1 family (FalconH1ForCausalLM) — config.json parsing and tensor
 * binding, validated against the config so that a bad checkpoint is a clear error naming the
 * file and tensor. The mixers are bound by the Mamba2 family's code. The math follows
 * transformers' torch path (workers/families/falconh1.md). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "workers/families/falconh1.h"
#include "workers/model/cfg_json.h"

/* A list of n numbers (ssm_multipliers, mlp_multipliers); absent or null: all 1. */
static int parse_list(const cJSON *root, const char *key, int n, float *out, char *err,
                      size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    for (int i = 0; i < n; i++)
        out[i] = 1.f;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: \"%s\" must be a list of %d numbers", key, n);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, v)
    {
        if (!cJSON_IsNumber(it) || !(fabs(it->valuedouble) <= 1e6))
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"%s\"[%d] must be a number in [-1e6, 1e6]", key, i);
        out[i++] = (float)it->valuedouble;
    }
    return 0;
}

/* The mixer: I = mamba_d_ssm (null: mamba_expand * hidden_size), P = mamba_d_head ("auto":
 * I / mamba_n_heads), the gate, the in_proj multipliers and time_step_limit. */
static int derive_mixer(const cJSON *root, wrk_falconh1_config_t *cfg, char *err, size_t errlen)
{
    wrk_mamba2_config_t *mx = &cfg->mx;
    int rc;
    long I = (long)mx->expand * mx->hidden;
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(root, "mamba_d_ssm");
    if (!ds) I = 1024; /* the config class's default */
    if (ds && !cJSON_IsNull(ds) &&
        (rc = wrk_cfg_int(root, "mamba_d_ssm", 0, 1, 1 << 18, &I, err, errlen)))
        return rc;
    if ((rc = wrk_granite_mamba_d_head(root, I, mx, err, errlen))) return rc;
    if ((long)mx->n_heads * mx->head_dim != I)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_n_heads * mamba_d_head (%ld) must equal mamba_d_ssm "
                        "(or mamba_expand * hidden_size) (%ld)",
                        (long)mx->n_heads * mx->head_dim, I);
    if (mx->n_heads % mx->n_groups != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_n_heads (%d) must be a multiple of mamba_n_groups (%d)",
                        mx->n_heads, mx->n_groups);
    const long GN = (long)mx->n_groups * mx->d_state;
    if (GN > 1 << 20)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: mamba_n_groups * mamba_d_state (%ld) is larger than %d", GN,
                        1 << 20);
    wrk_mamba2_derive(mx, I, GN);
    bool rms = false, before = true;
    if ((rc = wrk_cfg_bool(root, "mamba_rms_norm", false, &rms, err, errlen)) ||
        (rc = wrk_cfg_bool(root, "mamba_norm_before_gate", true, &before, err, errlen)))
        return rc;
    mx->gate = !rms ? WRK_MAMBA2_GATE_ONLY : before ? WRK_MAMBA2_NORM_GATE : WRK_MAMBA2_GATE_NORM;
    if ((rc = parse_list(root, "ssm_multipliers", 5, mx->proj_mult, err, errlen))) return rc;
    mx->proj_mult_on = true;
    /* transformers clamps dt only in its chunked (prefill) scan, not in the single-token
     * update: any limit but the no-op (<= 0, inf) would make decode disagree with prefill. */
    if ((rc = wrk_cfg_time_step_limit(root, &mx->dt_min, &mx->dt_max, err, errlen))) return rc;
    if (mx->dt_min > 0.f || !isinf(mx->dt_max))
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "config.json: \"time_step_limit\" must be [0, inf] (transformers applies "
                        "another limit in prefill but not in decode)");
    return 0;
}

/* Fields that depend on others or on a structure. */
static int derive(const cJSON *root, void *out, char *err, size_t errlen)
{
    wrk_falconh1_config_t *cfg = out;
    wrk_mamba2_config_t *mx = &cfg->mx;
    long v;
    int rc;
    /* num_key_value_heads: absent is the class default 8, null is num_attention_heads. */
    if ((rc = wrk_granite_kv_heads(root, cfg->n_q, 8, &cfg->n_kv, err, errlen))) return rc;
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (mx->hidden / cfg->n_q < 1 && (!hd || cJSON_IsNull(hd)))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_attention_heads (%d) is larger than hidden_size (%d)",
                        cfg->n_q, mx->hidden);
    if ((rc = wrk_cfg_int(root, "head_dim", mx->hidden / cfg->n_q, 1, 4096, &v, err, errlen)))
        return rc;
    cfg->head_dim = (int)v;
    if (cfg->head_dim % 2)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: RoPE needs an even head_dim (got %d)", cfg->head_dim);
    /* RoPE is always on (wrk_granite_rope_theta: rope_parameters or rope_theta). */
    if ((rc = wrk_granite_rope_theta(root, &cfg->rope_theta, err, errlen))) return rc;
    float mm[2];
    if ((rc = parse_list(root, "mlp_multipliers", 2, mm, err, errlen))) return rc;
    cfg->mlp_gate_mult = mm[0];
    cfg->mlp_down_mult = mm[1];
    return derive_mixer(root, cfg, err, errlen);
}

#define F(field) offsetof(wrk_falconh1_config_t, field)
/* Caps keep every derived size far from overflow and refuse absurd allocations. Defaults are
 * FalconH1Config's (transformers 5.23). mamba_chunk_size only changes transformers' rounding;
 * attention_dropout and the rest are training-only. */
static const wrk_cfg_row_t rows[] = {
    WRK_CFG_S("hidden_act", "silu", "the only activation served for Falcon-H1", false),
    WRK_CFG_I("vocab_size", 128000, 1, 1 << 24, F(mx.vocab)),
    WRK_CFG_I("hidden_size", 4096, 1, 1 << 16, F(mx.hidden)),
    WRK_CFG_I("num_hidden_layers", 32, 1, WRK_FALCONH1_MAX_LAYERS, F(mx.n_layers)),
    WRK_CFG_I("num_attention_heads", 32, 1, 1 << 12, F(n_q)),
    WRK_CFG_I("intermediate_size", 14336, 1, 1 << 18, F(ffn)),
    WRK_CFG_B("attention_bias", false, F(attn_bias)),
    WRK_CFG_B("mlp_bias", false, F(mlp_bias)),
    WRK_CFG_B("projectors_bias", false, F(out_bias)),
    WRK_CFG_F("rms_norm_eps", 1e-5, 1e-30, 1.0, F(mx.eps)),
    WRK_CFG_F("embedding_multiplier", 1.0, -1e6, 1e6, F(embed_mult)),
    WRK_CFG_F("lm_head_multiplier", 1.0, -1e6, 1e6, F(lm_head_mult)),
    WRK_CFG_F("attention_in_multiplier", 1.0, -1e6, 1e6, F(attn_in_mult)),
    WRK_CFG_F("attention_out_multiplier", 1.0, -1e6, 1e6, F(attn_out_mult)),
    WRK_CFG_F("key_multiplier", 1.0, -1e6, 1e6, F(key_mult)),
    WRK_CFG_F("ssm_in_multiplier", 1.0, -1e6, 1e6, F(ssm_in_mult)),
    WRK_CFG_F("ssm_out_multiplier", 1.0, -1e6, 1e6, F(ssm_out_mult)),
    WRK_CFG_I("mamba_expand", 2, 1, 64, F(mx.expand)),
    WRK_CFG_I("mamba_n_heads", 128, 1, 1 << 14, F(mx.n_heads)),
    WRK_CFG_I("mamba_n_groups", 1, 1, 1 << 14, F(mx.n_groups)),
    WRK_CFG_I("mamba_d_state", 256, 1, 1024, F(mx.d_state)),
    WRK_CFG_I("mamba_d_conv", 4, 1, 64, F(mx.d_conv)),
    WRK_CFG_I("mamba_chunk_size", 256, 1, 1 << 20, WRK_CFG_NONE),
    WRK_CFG_B("mamba_proj_bias", false, F(mx.use_bias)),
    WRK_CFG_B("mamba_conv_bias", true, F(mx.use_conv_bias)),
    WRK_CFG_B("tie_word_embeddings", false, F(mx.tie_embeddings)),
};

#undef F
WRK_CFG_PARSER(wrk_falconh1_config_parse, config, wrk_falconh1_config_t, "falcon_h1", rows, derive,
               mx.)

/* ---- tensor binding ---------------------------------------------------------------------- */

static size_t params_floats(const wrk_falconh1_config_t *c)
{
    const size_t H = c->mx.hidden, qd = (size_t)c->n_q * c->head_dim;
    const size_t kvd = (size_t)c->n_kv * c->head_dim, F = c->ffn;
    return (size_t)c->mx.n_layers *
               (wrk_mamba2_mixer_floats(&c->mx) + (qd + 2 * kvd + H) + (2 * F + H) + 2 * H) +
           H;
}

static int bind_layer(wrk_binder_t *b, const wrk_falconh1_config_t *c, int l,
                      wrk_falconh1_layer_t *L)
{
    const int H = c->mx.hidden, qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    const int F = c->ffn;
    char name[160], prefix[64];
    int rc;
    snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
#define NAME(s) (snprintf(name, sizeof name, "%s%s", prefix, s), name)
    if ((rc = wrk_bind_vec(b, NAME("input_layernorm.weight"), H, &L->in_norm)) ||
        (rc = wrk_bind_vec(b, NAME("pre_ff_layernorm.weight"), H, &L->ff_norm)))
        return rc;
    /* The mixer's in_proj bias is mamba_proj_bias, its out_proj bias projectors_bias. */
    wrk_mamba2_config_t mx = c->mx;
    mx.use_bias = false;
    snprintf(name, sizeof name, "%smamba.", prefix);
    if ((rc = wrk_mamba2_bind_mixer(b->m, &mx, name, &b->next, &L->mx, b->err, b->errlen)))
        return rc;
    if (c->mx.use_bias &&
        (rc = wrk_bind_vec(b, NAME("mamba.in_proj.bias"), c->mx.proj_dim, &L->mx.in_b)))
        return rc;
    if (c->out_bias && (rc = wrk_bind_vec(b, NAME("mamba.out_proj.bias"), H, &L->mx.out_b)))
        return rc;
    wrk_granite_layer_t *A = &L->at;
    if ((rc = wrk_bind_attn(
             b, NAME("self_attn."), H, qd, kvd, (wrk_mat_t *[]){&A->q, &A->k, &A->v, &A->o},
             c->attn_bias ? (const float **[]){&A->qb, &A->kb, &A->vb, &A->ob} : NULL)))
        return rc;
    if ((rc = wrk_bind_mat(b, NAME("feed_forward.gate_proj.weight"), F, H, &L->gate)) ||
        (rc = wrk_bind_mat(b, NAME("feed_forward.up_proj.weight"), F, H, &L->up)) ||
        (rc = wrk_bind_mat(b, NAME("feed_forward.down_proj.weight"), H, F, &L->down)))
        return rc;
    if (c->mlp_bias &&
        ((rc = wrk_bind_vec(b, NAME("feed_forward.gate_proj.bias"), F, &L->gate_b)) ||
         (rc = wrk_bind_vec(b, NAME("feed_forward.up_proj.bias"), F, &L->up_b)) ||
         (rc = wrk_bind_vec(b, NAME("feed_forward.down_proj.bias"), H, &L->down_b))))
        return rc;
#undef NAME
    return 0;
}

/* State: per layer the mixer's conv window [K-1][C] and SSM state [NH][P][N] (the Mamba2
 * layout), then the position count the KV part holds (every layer has attention). */
static int describe_state(wrk_model_t *m, const wrk_falconh1_config_t *c, char *err, size_t errlen)
{
    return wrk_describe_hybrid_state(m, c->mx.n_layers, NULL, wrk_mamba2_describe_state, &c->mx,
                                     c->mx.n_layers, c->n_kv * c->head_dim, err, errlen);
}

static int falconh1_load(wrk_model_t *m, char *err, size_t errlen)
{
    wrk_falconh1_t *g = m->priv;
    int rc;
    const wrk_falconh1_config_t *c = &g->cfg;
    const wrk_mamba2_config_t *mx = &c->mx;
    const int H = mx->hidden, V = mx->vocab;
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv, A, D and dt_bias",
                               &g->params, err, errlen)))
        return rc;
    g->layers = wrk_model_alloc(m, (size_t)mx->n_layers, sizeof *g->layers);
    g->inv_freq = wrk_model_alloc(m, (size_t)(c->head_dim / 2 + 1), sizeof(float));
    if (!g->layers || !g->inv_freq) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    wrk_binder_t b = {.m = m, .next = g->params, .err = err, .errlen = errlen};

    if ((rc = wrk_bind_mat(&b, "model.embed_tokens.weight", V, H, &m->embed))) return rc;
    if ((rc = wrk_bind_vec(&b, "model.final_layernorm.weight", H, &m->norm_f))) return rc;
    if ((rc = wrk_bind_lm_head(&b, mx->tie_embeddings, V, H))) return rc;
    for (int l = 0; l < mx->n_layers; l++) {
        wrk_falconh1_layer_t *L = &g->layers[l];
        L->at.attn = true;
        L->at.idx = l;
        if ((rc = bind_layer(&b, c, l, L))) return rc;
    }
    /* inv_freq_j = theta^(-2j/hd), as transformers computes it (in fp32 there). */
    for (int j = 0; j < c->head_dim / 2; j++)
        g->inv_freq[j] = (float)(1.0 / pow((double)c->rope_theta, 2.0 * j / c->head_dim));
    if ((rc = describe_state(m, c, err, errlen))) return rc;

    m->info.weight_dtype = g->layers[0].up.dt;
    wrk_model_set_lm(m, V, H, mx->n_layers, mx->bos_id, mx->eos_id, mx->pad_id, mx->eps);
    m->embed_scale = c->embed_mult;
    m->logit_scale = c->lm_head_mult;
    const int qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    int widest = H > mx->inner ? H : mx->inner;
    if (qd > widest) widest = qd;
    if (c->ffn > widest) widest = c->ffn;
    m->max_matmul_cols = widest;
    const double layer_f = (double)mx->proj_dim * H + (double)H * mx->inner +
                           (double)(qd + 2 * kvd) * H + (double)H * qd + 3.0 * c->ffn * H;
    m->info.layer_flops = 2.0 * mx->n_layers * layer_f;
    return 0;
}

const wrk_family_i wrk_family_falconh1 = {
    .family = WRK_FAMILY_FALCON_H1,
    .layout_size = sizeof(wrk_falconh1_t),
    .config = &config,
    .load = falconh1_load,
};
