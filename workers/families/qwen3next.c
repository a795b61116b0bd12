/* workers: the Qwen3-Next family (Qwen3NextForCausalLM) — config.json parsing and tensor
 * binding, validated against the config so that a bad checkpoint is a clear error naming the
 * file and tensor. The math follows transformers 5.23's torch path (docs/specs/qwen3_next.md). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "workers/families/qwen3next.h"
#include "workers/model/cfg_json.h"

/* layer_types: one "linear_attention" / "full_attention" per layer; absent, transformers
 * derives it from full_attention_interval (default 4): layer l is full attention when
 * (l + 1) % interval == 0. */
static int parse_layer_types(const cJSON *root, wrk_qwen3next_config_t *cfg, char *err,
                             size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    const int L = cfg->n_layers;
    int rc;
    if (!v || cJSON_IsNull(v)) {
        long iv;
        if ((rc = wrk_cfg_int(root, "full_attention_interval", 4, 1, 1 << 20, &iv, err, errlen)))
            return rc;
        for (int l = 0; l < L; l++)
            cfg->attn[l] = (l + 1) % iv == 0;
    } else {
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != L)
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"layer_types\" must be a list of num_hidden_layers "
                            "(%d) strings",
                            L);
        int l = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            const char *s = cJSON_IsString(it) ? it->valuestring : "";
            if (!strcmp(s, "linear_attention"))
                cfg->attn[l] = false;
            else if (!strcmp(s, "full_attention"))
                cfg->attn[l] = true;
            else
                return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                "config.json: \"layer_types\"[%d] must be \"linear_attention\" or "
                                "\"full_attention\"",
                                l);
            l++;
        }
    }
    for (int l = 0; l < L; l++) {
        cfg->n_attn += cfg->attn[l];
        cfg->n_gdn += !cfg->attn[l];
    }
    return 0;
}

/* Which layers run the MoE block: num_experts > 0, (l + 1) % decoder_sparse_step == 0 and l
 * not in mlp_only_layers. */
static int parse_moe_layers(const cJSON *root, wrk_qwen3next_config_t *cfg, char *err,
                            size_t errlen)
{
    bool only[WRK_QWEN3NEXT_MAX_LAYERS] = {0};
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "mlp_only_layers");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsArray(v))
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"mlp_only_layers\" must be a list of layer indices");
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            /* the range first: casting an out-of-range double is undefined */
            if (!cJSON_IsNumber(it) || !(it->valuedouble >= 0) ||
                it->valuedouble >= cfg->n_layers || it->valuedouble != floor(it->valuedouble))
                return rcd_fail(RCD_EFORMAT, err, errlen,
                                "config.json: \"mlp_only_layers\" must hold layer indices in "
                                "[0, %d)",
                                cfg->n_layers);
            only[(int)it->valuedouble] = true;
        }
    }
    bool any = false;
    for (int l = 0; l < cfg->n_layers; l++) {
        cfg->moe[l] = cfg->n_experts > 0 && (l + 1) % cfg->sparse_step == 0 && !only[l];
        any |= cfg->moe[l];
    }
    if (any && (cfg->top_k < 1 || cfg->top_k > cfg->n_experts))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_experts_per_tok (%d) must be in [1, num_experts (%d)] "
                        "(at most %d)",
                        cfg->top_k, cfg->n_experts, WRK_QWEN3NEXT_MAX_TOPK);
    return 0;
}

/* rope_parameters {rope_type "default", rope_theta, partial_rotary_factor} (transformers 5.x),
 * or the older top-level rope_theta / partial_rotary_factor; rope_scaling is refused. */
static int parse_rope(const cJSON *root, wrk_qwen3next_config_t *cfg, char *err, size_t errlen)
{
    double theta = 10000.0, prf = 0.25;
    int rc;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "config.json: \"rope_scaling\" is not supported (plain RoPE only)");
    if ((rc = wrk_cfg_num(root, "rope_theta", theta, 1e-3, 1e12, &theta, err, errlen)) ||
        (rc = wrk_cfg_num(root, "partial_rotary_factor", prf, 0.0, 1.0, &prf, err, errlen)))
        return rc;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (rp && !cJSON_IsNull(rp)) {
        if (!cJSON_IsObject(rp))
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"rope_parameters\" must be an object");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (t && !cJSON_IsNull(t) && !(cJSON_IsString(t) && !strcmp(t->valuestring, "default")))
            return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                            "config.json: rope_parameters.rope_type must be \"default\"");
        if ((rc = wrk_cfg_num(rp, "rope_theta", theta, 1e-3, 1e12, &theta, err, errlen)) ||
            (rc = wrk_cfg_num(rp, "partial_rotary_factor", prf, 0.0, 1.0, &prf, err, errlen)))
            return rc;
    }
    cfg->rope_theta = (float)theta;
    cfg->rot_dim = (int)(cfg->head_dim * prf);
    if (cfg->rot_dim % 2)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "config.json: head_dim * partial_rotary_factor (%d) must be even",
                        cfg->rot_dim);
    return 0;
}

static int derive(const cJSON *root, void *out, char *err, size_t errlen)
{
    wrk_qwen3next_config_t *cfg = out;
    int rc;
    if ((rc = parse_layer_types(root, cfg, err, errlen))) return rc;
    if ((rc = parse_moe_layers(root, cfg, err, errlen))) return rc;
    if ((rc = parse_rope(root, cfg, err, errlen))) return rc;
    if (cfg->n_q % cfg->n_kv != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_attention_heads (%d) must be a multiple of "
                        "num_key_value_heads (%d)",
                        cfg->n_q, cfg->n_kv);
    if (cfg->nv % cfg->nk != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: linear_num_value_heads (%d) must be a multiple of "
                        "linear_num_key_heads (%d)",
                        cfg->nv, cfg->nk);
    cfg->key_dim = cfg->nk * cfg->dk;
    cfg->value_dim = cfg->nv * cfg->dv;
    cfg->conv_dim = 2 * cfg->key_dim + cfg->value_dim;
    if ((long)cfg->key_dim > 1 << 18 || (long)cfg->value_dim > 1 << 18 ||
        (long)cfg->n_q * cfg->head_dim > 1 << 18 || (long)cfg->nv * cfg->dk * cfg->dv > 1 << 26)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: the attention or linear-attention widths are too large");
    return 0;
}

#define F(field) offsetof(wrk_qwen3next_config_t, field)
static const wrk_cfg_row_t rows[] = {
    WRK_CFG_S("hidden_act", "silu", "the only activation served for Qwen3-Next", false),
    WRK_CFG_I("vocab_size", 151936, 1, 1 << 24, F(vocab)),
    WRK_CFG_I("hidden_size", 2048, 1, 1 << 16, F(hidden)),
    WRK_CFG_I("num_hidden_layers", 48, 1, WRK_QWEN3NEXT_MAX_LAYERS, F(n_layers)),
    WRK_CFG_I("num_attention_heads", 16, 1, 1 << 12, F(n_q)),
    WRK_CFG_I("num_key_value_heads", 2, 1, 1 << 12, F(n_kv)),
    WRK_CFG_I("head_dim", 256, 1, 4096, F(head_dim)),
    WRK_CFG_B("attention_bias", false, F(attn_bias)),
    WRK_CFG_F("rms_norm_eps", 1e-6, 1e-30, 1.0, F(eps)),
    WRK_CFG_B("tie_word_embeddings", false, F(tie_embeddings)),
    WRK_CFG_I("intermediate_size", 5632, 1, 1 << 18, F(ffn_dim)),
    WRK_CFG_I("linear_conv_kernel_dim", 4, 1, 64, F(d_conv)),
    WRK_CFG_I("linear_key_head_dim", 128, 1, 4096, F(dk)),
    WRK_CFG_I("linear_value_head_dim", 128, 1, 4096, F(dv)),
    WRK_CFG_I("linear_num_key_heads", 16, 1, 1 << 12, F(nk)),
    WRK_CFG_I("linear_num_value_heads", 32, 1, 1 << 12, F(nv)),
    WRK_CFG_I("decoder_sparse_step", 1, 1, 1 << 20, F(sparse_step)),
    WRK_CFG_I("moe_intermediate_size", 512, 1, 1 << 18, F(expert_dim)),
    WRK_CFG_I("shared_expert_intermediate_size", 512, 0, 1 << 18, F(shared_dim)),
    WRK_CFG_I("num_experts_per_tok", 10, 0, WRK_QWEN3NEXT_MAX_TOPK, F(top_k)),
    WRK_CFG_I("num_experts", 512, 0, 1 << 12, F(n_experts)),
    WRK_CFG_B("norm_topk_prob", true, F(norm_topk)),
};
#undef F
WRK_CFG_PARSER(wrk_qwen3next_config_parse, config, wrk_qwen3next_config_t, "qwen3_next", rows,
               derive, )

/* ---- tensor binding ---------------------------------------------------------------------- */

static size_t params_floats(const wrk_qwen3next_config_t *c)
{
    const size_t H = c->hidden, hd = c->head_dim, qd = (size_t)c->n_q * hd;
    const size_t kvd = (size_t)c->n_kv * hd;
    const size_t gdn = (size_t)c->conv_dim * c->d_conv + 2 * (size_t)c->nv + c->dv;
    const size_t attn = 2 * hd + (c->attn_bias ? 2 * qd + 2 * kvd + H : 0);
    return (size_t)c->n_gdn * gdn + (size_t)c->n_attn * attn + (size_t)c->n_layers * 2 * H + H;
}

/* The shared expert of width 0 (no shared expert): its empty tensors are taken, not used. */
static int take_empty(wrk_binder_t *b, const char *name, int rows, int cols)
{
    const wrk_st_tensor_t *t = NULL;
    return wrk_take_tensor(b->m, name, 2, (int64_t[]){rows, cols}, &t, b->err, b->errlen);
}

static int bind_layer(wrk_binder_t *b, const wrk_qwen3next_config_t *c, int l,
                      wrk_qwen3next_layer_t *L, wrk_mat_t *ex)
{
    const int H = c->hidden, hd = c->head_dim, qd = c->n_q * hd, kvd = c->n_kv * hd;
    const int E = c->n_experts, Fx = c->expert_dim, S = c->shared_dim;
    char name[160], prefix[64];
    int rc;
    snprintf(prefix, sizeof prefix, "model.layers.%d.", l);
#define NAME(s) (snprintf(name, sizeof name, "%s%s", prefix, s), name)
    if ((rc = wrk_bind_vec_x(b, NAME("input_layernorm.weight"), H, WRK_BIND_ONE_PLUS,
                             &L->in_norm)) ||
        (rc = wrk_bind_vec_x(b, NAME("post_attention_layernorm.weight"), H, WRK_BIND_ONE_PLUS,
                             &L->post_norm)))
        return rc;
    if (L->attn) {
        if ((rc = wrk_bind_mat(b, NAME("self_attn.q_proj.weight"), 2 * qd, H, &L->q)) ||
            (rc = wrk_bind_mat(b, NAME("self_attn.k_proj.weight"), kvd, H, &L->k)) ||
            (rc = wrk_bind_mat(b, NAME("self_attn.v_proj.weight"), kvd, H, &L->v)) ||
            (rc = wrk_bind_mat(b, NAME("self_attn.o_proj.weight"), H, qd, &L->o)) ||
            (rc = wrk_bind_vec_x(b, NAME("self_attn.q_norm.weight"), hd, WRK_BIND_ONE_PLUS,
                                 &L->q_norm)) ||
            (rc = wrk_bind_vec_x(b, NAME("self_attn.k_norm.weight"), hd, WRK_BIND_ONE_PLUS,
                                 &L->k_norm)))
            return rc;
        /* q_proj's bias is [2 NQ hd]: query and gate, like its rows. */
        if (c->attn_bias &&
            ((rc = wrk_bind_vec(b, NAME("self_attn.q_proj.bias"), 2 * qd, &L->qb)) ||
             (rc = wrk_bind_vec(b, NAME("self_attn.k_proj.bias"), kvd, &L->kb)) ||
             (rc = wrk_bind_vec(b, NAME("self_attn.v_proj.bias"), kvd, &L->vb)) ||
             (rc = wrk_bind_vec(b, NAME("self_attn.o_proj.bias"), H, &L->ob))))
            return rc;
    } else {
        if ((rc = wrk_bind_mat(b, NAME("linear_attn.in_proj_qkvz.weight"),
                               2 * c->key_dim + 2 * c->value_dim, H, &L->qkvz)) ||
            (rc = wrk_bind_mat(b, NAME("linear_attn.in_proj_ba.weight"), 2 * c->nv, H, &L->ba)) ||
            (rc = wrk_bind_conv(b, NAME("linear_attn.conv1d.weight"), c->conv_dim, c->d_conv,
                                &L->conv_w)) ||
            (rc = wrk_bind_vec(b, NAME("linear_attn.dt_bias"), c->nv, &L->dt_b)) ||
            (rc = wrk_bind_vec_x(b, NAME("linear_attn.A_log"), c->nv, WRK_BIND_NEG_EXP, &L->A)) ||
            (rc = wrk_bind_vec(b, NAME("linear_attn.norm.weight"), c->dv, &L->gnorm)) ||
            (rc = wrk_bind_mat(b, NAME("linear_attn.out_proj.weight"), H, c->value_dim, &L->out)))
            return rc;
    }
    if (!L->moe) {
        if ((rc = wrk_bind_mat(b, NAME("mlp.gate_proj.weight"), c->ffn_dim, H, &L->gate)) ||
            (rc = wrk_bind_mat(b, NAME("mlp.up_proj.weight"), c->ffn_dim, H, &L->up)) ||
            (rc = wrk_bind_mat(b, NAME("mlp.down_proj.weight"), H, c->ffn_dim, &L->down)))
            return rc;
    } else {
        if ((rc = wrk_bind_mat(b, NAME("mlp.gate.weight"), E, H, &L->router)) ||
            (rc = wrk_bind_mat(b, NAME("mlp.shared_expert_gate.weight"), 1, H, &L->sh_gate)))
            return rc;
        if (S > 0 &&
            ((rc = wrk_bind_mat(b, NAME("mlp.shared_expert.gate_proj.weight"), S, H, &L->gate)) ||
             (rc = wrk_bind_mat(b, NAME("mlp.shared_expert.up_proj.weight"), S, H, &L->up)) ||
             (rc = wrk_bind_mat(b, NAME("mlp.shared_expert.down_proj.weight"), H, S, &L->down))))
            return rc;
        if (S == 0 && ((rc = take_empty(b, NAME("mlp.shared_expert.gate_proj.weight"), 0, H)) ||
                       (rc = take_empty(b, NAME("mlp.shared_expert.up_proj.weight"), 0, H)) ||
                       (rc = take_empty(b, NAME("mlp.shared_expert.down_proj.weight"), H, 0))))
            return rc;
        L->ex_gate = ex;
        L->ex_up = ex + E;
        L->ex_down = ex + 2 * E;
        for (int e = 0; e < E; e++) {
            char en[96];
            snprintf(en, sizeof en, "mlp.experts.%d.gate_proj.weight", e);
            if ((rc = wrk_bind_mat(b, NAME(en), Fx, H, &L->ex_gate[e]))) return rc;
            snprintf(en, sizeof en, "mlp.experts.%d.up_proj.weight", e);
            if ((rc = wrk_bind_mat(b, NAME(en), Fx, H, &L->ex_up[e]))) return rc;
            snprintf(en, sizeof en, "mlp.experts.%d.down_proj.weight", e);
            if ((rc = wrk_bind_mat(b, NAME(en), H, Fx, &L->ex_down[e]))) return rc;
        }
    }
#undef NAME
    return 0;
}

/* State: per GDN layer "layers.<l>.conv" [K-1][C], "layers.<l>.recurrent" [nv][dk][dv] (S at
 * the last block boundary), "layers.<l>.pending_k" [nv][B][dk], "layers.<l>.pending_u"
 * [nv][B][dv], "layers.<l>.pending_g" [nv][B] (the open block, B = 64), then with GDN layers
 * "gdn.n_pending" (uint64: the open block's tokens) and with attention layers "kv.n_tokens"
 * (the positions the KV part holds). */
static int describe_state(wrk_model_t *m, const wrk_qwen3next_config_t *c, char *err, size_t errlen)
{
    const int n = 5 * c->n_gdn + (c->n_gdn > 0) + (c->n_attn > 0);
    m->state_tensors = wrk_model_alloc(m, (size_t)(n ? n : 1), sizeof *m->state_tensors);
    if (!m->state_tensors) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    size_t off = 0;
    int i = 0;
    const int64_t B = WRK_QWEN3NEXT_GDN_BLOCK;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->attn[l]) continue;
        off = wrk_state_tensor_set(&m->state_tensors[i++], l, "conv", 2,
                                   (int64_t[]){c->d_conv - 1, c->conv_dim}, sizeof(float), off);
        off = wrk_state_tensor_set(&m->state_tensors[i++], l, "recurrent", 3,
                                   (int64_t[]){c->nv, c->dk, c->dv}, sizeof(float), off);
        off = wrk_state_tensor_set(&m->state_tensors[i++], l, "pending_k", 3,
                                   (int64_t[]){c->nv, B, c->dk}, sizeof(float), off);
        off = wrk_state_tensor_set(&m->state_tensors[i++], l, "pending_u", 3,
                                   (int64_t[]){c->nv, B, c->dv}, sizeof(float), off);
        off = wrk_state_tensor_set(&m->state_tensors[i++], l, "pending_g", 2, (int64_t[]){c->nv, B},
                                   sizeof(float), off);
    }
    if (c->n_gdn > 0)
        off = wrk_state_tensor_set(&m->state_tensors[i++], -1, "gdn.n_pending", 1, (int64_t[]){1},
                                   sizeof(uint64_t), off);
    if (c->n_attn > 0)
        off = wrk_state_tensor_set(&m->state_tensors[i++], -1, "kv.n_tokens", 1, (int64_t[]){1},
                                   sizeof(uint64_t), off);
    m->info.state_bytes = off;
    m->info.n_state_tensors = i;
    m->info.state_tensors = m->state_tensors;
    m->info.n_kv_layers = c->n_attn;
    m->info.kv_width = c->n_kv * c->head_dim;
    m->info.kv_bytes_per_token = (size_t)c->n_attn * 2 * m->info.kv_width * sizeof(float);
    return 0;
}

static int qwen3next_load(wrk_model_t *m, char *err, size_t errlen)
{
    wrk_qwen3next_t *g = m->priv;
    const wrk_qwen3next_config_t *c = &g->cfg;
    const int H = c->hidden, V = c->vocab, E = c->n_experts;
    int rc;
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv, A and dt_bias",
                               &g->params, err, errlen)))
        return rc;
    int n_moe = 0;
    for (int l = 0; l < c->n_layers; l++)
        n_moe += c->moe[l];
    g->layers = wrk_model_alloc(m, (size_t)c->n_layers, sizeof *g->layers);
    g->inv_freq = wrk_model_alloc(m, (size_t)(c->head_dim / 2 + 1), sizeof(float));
    wrk_mat_t *ex = wrk_model_alloc(m, (size_t)n_moe * 3 * E + 1, sizeof(wrk_mat_t));
    if (!g->layers || !g->inv_freq || !ex)
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    wrk_binder_t b = {.m = m, .next = g->params, .err = err, .errlen = errlen};
    if ((rc = wrk_bind_mat(&b, "model.embed_tokens.weight", V, H, &m->embed))) return rc;
    if ((rc = wrk_bind_vec_x(&b, "model.norm.weight", H, WRK_BIND_ONE_PLUS, &m->norm_f))) return rc;
    if ((rc = wrk_bind_lm_head(&b, c->tie_embeddings, V, H))) return rc;
    int n_attn = 0, n_gdn = 0;
    for (int l = 0; l < c->n_layers; l++) {
        wrk_qwen3next_layer_t *L = &g->layers[l];
        L->attn = c->attn[l];
        L->moe = c->moe[l];
        L->idx = L->attn ? n_attn++ : n_gdn++;
        if ((rc = bind_layer(&b, c, l, L, ex))) return rc;
        if (L->moe) ex += 3 * E;
    }
    /* inv_freq_j = theta^(-2j/rot), as transformers computes it (fp32 there). */
    for (int j = 0; j < c->rot_dim / 2; j++)
        g->inv_freq[j] = (float)(1.0 / pow((double)c->rope_theta, 2.0 * j / c->rot_dim));
    if ((rc = describe_state(m, c, err, errlen))) return rc;

    m->info.weight_dtype = m->embed.dt;
    wrk_model_set_lm(m, V, H, c->n_layers, c->bos_id, c->eos_id, c->pad_id, c->eps);
    m->embed_scale = 1.f;
    m->logit_scale = 1.f;
    const int qd = c->n_q * c->head_dim, kvd = c->n_kv * c->head_dim;
    int widest = H;
    const int w[] = {qd, c->value_dim, c->ffn_dim, c->expert_dim, c->shared_dim};
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
        if (w[i] > widest) widest = w[i];
    m->max_matmul_cols = widest;
    const double gdn_f =
        (double)(2 * c->key_dim + 2 * c->value_dim + 2 * c->nv) * H + (double)H * c->value_dim;
    const double attn_f = (double)(2 * qd + 2 * kvd) * H + (double)H * qd;
    double f = 0.0;
    for (int l = 0; l < c->n_layers; l++) {
        f += c->attn[l] ? attn_f : gdn_f;
        f += c->moe[l] ? (double)(E + 1) * H + 3.0 * c->shared_dim * H +
                             3.0 * c->top_k * (double)c->expert_dim * H
                       : 3.0 * c->ffn_dim * H;
    }
    m->info.layer_flops = 2.0 * f;
    return 0;
}

const wrk_family_i wrk_family_qwen3next = {
    .family = WRK_FAMILY_QWEN3_NEXT,
    .layout_size = sizeof(wrk_qwen3next_t),
    .config = &config,
    .load = qwen3next_load,
};
