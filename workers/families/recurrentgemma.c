/* workers: the RecurrentGemma family (RecurrentGemmaForCausalLM, Griffin) — config.json parsing
 * and tensor binding, validated against the config so that a bad checkpoint is a clear error
 * naming the file and tensor. The math follows transformers 5.x (see
 * ../shared/specs/recurrentgemma.md and the quirks in workers/README.md). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "workers/model/cfg_json.h"
#include "workers/families/recurrentgemma.h"

/* block_types (transformers 5.x), else _block_types (the name recurrentgemma-2b's hub config
 * uses, which 5.x ignores in favour of the default — the same pattern for that checkpoint),
 * else the default recurrent, recurrent, attention. */
static int get_pattern(const cJSON *root, wrk_rg_config_t *cfg, char *err, size_t errlen)
{
    const cJSON *bt = cJSON_GetObjectItemCaseSensitive(root, "block_types");
    const char *key = "block_types";
    if (!bt || cJSON_IsNull(bt)) {
        bt = cJSON_GetObjectItemCaseSensitive(root, "_block_types");
        key = "_block_types";
    }
    if (!bt || cJSON_IsNull(bt)) {
        cfg->n_pattern = 3;
        cfg->pattern_attn[0] = cfg->pattern_attn[1] = false;
        cfg->pattern_attn[2] = true;
        return 0;
    }
    int n = cJSON_IsArray(bt) ? cJSON_GetArraySize(bt) : 0;
    if (n < 1 || n > WRK_RG_MAX_PATTERN)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: \"%s\" must be a list of 1 to %d of \"recurrent\" and "
                        "\"attention\"",
                        key, WRK_RG_MAX_PATTERN);
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(bt, i);
        if (cJSON_IsString(e) && strcmp(e->valuestring, "recurrent") == 0)
            cfg->pattern_attn[i] = false;
        else if (cJSON_IsString(e) && strcmp(e->valuestring, "attention") == 0)
            cfg->pattern_attn[i] = true;
        else
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"%s\"[%d] must be \"recurrent\" or \"attention\"", key,
                            i);
    }
    cfg->n_pattern = n;
    return 0;
}

/* rope_parameters {rope_type, rope_theta, partial_rotary_factor} (5.x), else the top-level
 * rope_theta / partial_rotary_factor of older configs; defaults 10000 and 0.5. */
static int get_rope(const cJSON *root, wrk_rg_config_t *cfg, char *err, size_t errlen)
{
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *src = root;
    if (rp && !cJSON_IsNull(rp)) {
        if (!cJSON_IsObject(rp))
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"rope_parameters\" must be an object");
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (rt && !(cJSON_IsString(rt) && strcmp(rt->valuestring, "default") == 0))
            return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                            "config.json: rope_parameters.rope_type must be \"default\" (the only "
                            "RoPE RecurrentGemma supports)");
        src = rp;
    }
    double theta = 10000.0, prf = 0.5;
    int rc = wrk_cfg_num(src, "rope_theta", 10000.0, 1.0, 1e12, &theta, err, errlen);
    if (!rc) rc = wrk_cfg_num(src, "partial_rotary_factor", 0.5, 0.0, 1.0, &prf, err, errlen);
    if (rc) return rc;
    cfg->rope_theta = (float)theta;
    /* Python's int(head_dim * factor), then arange(0, dim, 2): ceil(dim / 2) frequencies. */
    cfg->rot_base = (int)floor((double)cfg->head_dim * prf);
    cfg->rot_freqs = (cfg->rot_base + 1) / 2;
    if (2 * cfg->rot_freqs > cfg->head_dim)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: partial_rotary_factor %g rotates %d dims of a head of %d "
                        "(transformers cannot run this either)",
                        prf, 2 * cfg->rot_freqs, cfg->head_dim);
    return 0;
}

/* Fields that depend on others or on a structure: the MLP width (intermediate_size / 2), the
 * KV heads (default: the query heads), head_dim, the LRU width and its blocks, RoPE, the
 * block pattern, and the state's size. */
static int derive(const cJSON *root, void *out, char *err, size_t errlen)
{
    wrk_rg_config_t *cfg = out;
    long v;
    int rc;
    if ((rc = wrk_cfg_int(root, "intermediate_size", 3 * 2560, 2, 1 << 20, &v, err, errlen)))
        return rc;
    cfg->mlp = (int)(v / 2);
    if ((rc = wrk_cfg_int(root, "num_key_value_heads", cfg->n_heads, 1, 4096, &v, err, errlen)))
        return rc;
    cfg->n_kv_heads = (int)v;
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_attention_heads (%d) must be a multiple of "
                        "num_key_value_heads (%d)",
                        cfg->n_heads, cfg->n_kv_heads);
    /* transformers derives head_dim = hidden_size // heads but lets config.json override it. */
    const cJSON *hdj = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (cfg->hidden < cfg->n_heads && (!hdj || cJSON_IsNull(hdj)))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: hidden_size (%d) is smaller than num_attention_heads (%d) "
                        "and no head_dim is given",
                        cfg->hidden, cfg->n_heads);
    if ((rc = wrk_cfg_int(root, "head_dim", cfg->hidden / cfg->n_heads, 1, 4096, &v, err, errlen)))
        return rc;
    cfg->head_dim = (int)v;
    if ((long)cfg->n_heads * cfg->head_dim > 1 << 18)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_attention_heads * head_dim is larger than %d", 1 << 18);
    if ((rc = wrk_cfg_int(root, "lru_width", cfg->hidden, 1, 1 << 18, &v, err, errlen))) return rc;
    cfg->lru_width = (int)v;
    if (cfg->lru_width % cfg->n_heads != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: lru_width (%d) must be a multiple of num_attention_heads "
                        "(%d): the RG-LRU gates are one block per head",
                        cfg->lru_width, cfg->n_heads);
    cfg->block_w = cfg->lru_width / cfg->n_heads;
    if ((rc = get_rope(root, cfg, err, errlen))) return rc;
    if ((rc = get_pattern(root, cfg, err, errlen))) return rc;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (cfg->pattern_attn[l % cfg->n_pattern])
            cfg->n_attn++;
        else
            cfg->n_rec++;
    }
    /* The KV rings dominate the state: refuse a sequence state over 4 GiB. */
    double state = (double)cfg->n_attn * 2 * wrk_rg_ring_floats(cfg) +
                   (double)cfg->n_rec * wrk_rg_rec_floats(cfg);
    if (state * 4 > 4.0 * (1 << 30))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: the per-sequence state (%.0f MiB: attention_window_size x "
                        "num_key_value_heads x head_dim per attention layer) is over 4 GiB",
                        state * 4 / (1 << 20));
    return 0;
}

#define F(field) offsetof(wrk_rg_config_t, field)
/* Caps keep every derived size far from overflow and refuse absurd allocations; epsilons are
 * checked as the float they become (1e-55 would round to 0). */
static const wrk_cfg_row_t rows[] = {
    WRK_CFG_S("hidden_activation", "gelu_pytorch_tanh", NULL, true),
    WRK_CFG_I("vocab_size", 256000, 1, 1 << 24, F(vocab)),
    WRK_CFG_I("hidden_size", 2560, 1, 1 << 16, F(hidden)),
    WRK_CFG_I("num_hidden_layers", 26, 1, 1024, F(n_layers)),
    WRK_CFG_I("num_attention_heads", 10, 1, 4096, F(n_heads)),
    WRK_CFG_I("attention_window_size", 2048, 1, 1 << 20, F(window)),
    WRK_CFG_I("conv1d_width", 4, 1, 64, F(d_conv)),
    WRK_CFG_F("logits_soft_cap", 30.0, 1e-6, 1e6, F(softcap)),
    WRK_CFG_F("rms_norm_eps", 1e-6, 1e-30, 1.0, F(eps)),
    WRK_CFG_B("attention_bias", false, F(attn_bias)),
    WRK_CFG_B("tie_word_embeddings", true, F(tie_embeddings)),
};

#undef F
WRK_CFG_PARSER(wrk_rg_config_parse, config, wrk_rg_config_t, "recurrent_gemma", rows, derive, )

/* ---- tensor binding ---------------------------------------------------------------------- */

static size_t params_floats(const wrk_rg_config_t *c)
{
    size_t D = c->hidden, M = c->mlp, Lw = c->lru_width, K = c->d_conv, bw = c->block_w;
    size_t QD = (size_t)c->n_heads * c->head_dim, KVD = (size_t)c->n_kv_heads * c->head_dim;
    size_t common = 2 * D + 2 * M + D;
    size_t rec = 3 * Lw + D + K * Lw + Lw + 2 * Lw * bw + 2 * Lw + Lw;
    size_t att = (c->attn_bias ? QD + 2 * KVD : 0) + D;
    return c->n_layers * common + c->n_rec * rec + c->n_attn * att + D;
}

static int bind_recurrent(wrk_binder_t *b, const wrk_rg_config_t *c, int l, wrk_rg_layer_t *L)
{
    const int D = c->hidden, Lw = c->lru_width, K = c->d_conv, NQ = c->n_heads, bw = c->block_w;
    char name[160];
    int rc;
#define NAME(s) (snprintf(name, sizeof name, "model.layers.%d.temporal_block.%s", l, s), name)
    if ((rc = wrk_bind_mat(b, NAME("linear_y.weight"), Lw, D, &L->lin_y))) return rc;
    if ((rc = wrk_bind_vec(b, NAME("linear_y.bias"), Lw, &L->y_b))) return rc;
    if ((rc = wrk_bind_mat(b, NAME("linear_x.weight"), Lw, D, &L->lin_x))) return rc;
    if ((rc = wrk_bind_vec(b, NAME("linear_x.bias"), Lw, &L->x_b))) return rc;
    if ((rc = wrk_bind_mat(b, NAME("linear_out.weight"), D, Lw, &L->lin_out))) return rc;
    if ((rc = wrk_bind_vec(b, NAME("linear_out.bias"), D, &L->out_b))) return rc;
    if ((rc = wrk_bind_conv(b, NAME("conv_1d.weight"), Lw, K, &L->conv_w))) return rc;
    if ((rc = wrk_bind_vec(b, NAME("conv_1d.bias"), Lw, &L->conv_b))) return rc;
    const int64_t gw[3] = {NQ, bw, bw}, gb[2] = {NQ, bw};
    if ((rc = wrk_bind_vec_nd(b, NAME("rg_lru.input_gate_weight"), 3, gw, WRK_BIND_BLOCK_T,
                              &L->gate_x)))
        return rc;
    if ((rc = wrk_bind_vec_nd(b, NAME("rg_lru.input_gate_bias"), 2, gb, WRK_BIND_AS_IS,
                              &L->gate_xb)))
        return rc;
    if ((rc = wrk_bind_vec_nd(b, NAME("rg_lru.recurrent_gate_weight"), 3, gw, WRK_BIND_BLOCK_T,
                              &L->gate_a)))
        return rc;
    if ((rc = wrk_bind_vec_nd(b, NAME("rg_lru.recurrent_gate_bias"), 2, gb, WRK_BIND_AS_IS,
                              &L->gate_ab)))
        return rc;
    if ((rc = wrk_bind_vec_x(b, NAME("rg_lru.recurrent_param"), Lw, WRK_BIND_NEG8_SOFTPLUS,
                             &L->neg8_sp)))
        return rc;
#undef NAME
    return 0;
}

static int bind_attention(wrk_binder_t *b, const wrk_rg_config_t *c, int l, wrk_rg_layer_t *L)
{
    const int D = c->hidden, QD = c->n_heads * c->head_dim, KVD = c->n_kv_heads * c->head_dim;
    char name[160];
    int rc;
#define NAME(s) (snprintf(name, sizeof name, "model.layers.%d.temporal_block.%s", l, s), name)
    if ((rc = wrk_bind_mat(b, NAME("q_proj.weight"), QD, D, &L->q))) return rc;
    if ((rc = wrk_bind_mat(b, NAME("k_proj.weight"), KVD, D, &L->k))) return rc;
    if ((rc = wrk_bind_mat(b, NAME("v_proj.weight"), KVD, D, &L->v))) return rc;
    if (c->attn_bias) {
        if ((rc = wrk_bind_vec(b, NAME("q_proj.bias"), QD, &L->q_b))) return rc;
        if ((rc = wrk_bind_vec(b, NAME("k_proj.bias"), KVD, &L->k_b))) return rc;
        if ((rc = wrk_bind_vec(b, NAME("v_proj.bias"), KVD, &L->v_b))) return rc;
    }
    if ((rc = wrk_bind_mat(b, NAME("o_proj.weight"), D, QD, &L->o))) return rc;
    if ((rc = wrk_bind_vec(b, NAME("o_proj.bias"), D, &L->o_b))) return rc; /* always, as in HF */
#undef NAME
    return 0;
}

/* State tensor descriptions; returns the bytes of the whole blob. */
static int describe_state(wrk_model_t *m, wrk_rg_t *rg, char *err, size_t errlen)
{
    const wrk_rg_config_t *c = &rg->cfg;
    const int n = 1 + 2 * c->n_layers;
    m->state_tensors = wrk_model_alloc(m, (size_t)n, sizeof *m->state_tensors);
    if (!m->state_tensors) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    wrk_state_tensor_t *st = m->state_tensors;
    size_t off = wrk_state_tensor_set(st++, -1, "position", 1, (int64_t[]){WRK_RG_POS_FLOATS},
                                      sizeof(float), 0);
    for (int l = 0; l < c->n_layers; l++, st += 2) {
        wrk_rg_layer_t *L = &rg->layers[l];
        L->state_off = off / sizeof(float);
        if (L->attn) {
            const int64_t ring[3] = {c->window, c->n_kv_heads, c->head_dim};
            off = wrk_state_tensor_set(&st[0], l, "key", 3, ring, sizeof(float), off);
            off = wrk_state_tensor_set(&st[1], l, "value", 3, ring, sizeof(float), off);
        } else {
            off = wrk_state_tensor_set(
                &st[0], l, "conv", 2, (int64_t[]){c->d_conv - 1, c->lru_width}, sizeof(float), off);
            off = wrk_state_tensor_set(&st[1], l, "rg_lru", 1, (int64_t[]){c->lru_width},
                                       sizeof(float), off);
        }
    }
    m->info.state_bytes = off;
    m->info.n_state_tensors = n;
    m->info.state_tensors = m->state_tensors;
    return 0;
}

static int rg_load(wrk_model_t *m, char *err, size_t errlen)
{
    wrk_rg_t *rg = m->priv;
    int rc;
    const wrk_rg_config_t *c = &rg->cfg;
    const int D = c->hidden, M = c->mlp;
    char name[160];
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv and RG-LRU gates",
                               &rg->params, err, errlen)))
        return rc;
    rg->layers = wrk_model_alloc(m, (size_t)c->n_layers, sizeof *rg->layers);
    rg->inv_freq = wrk_model_alloc(m, ((size_t)c->rot_freqs + 1) , sizeof(float));
    if (!rg->layers || !rg->inv_freq)
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    /* 1 / theta^(arange(0, dim, 2) / dim) in fp32, as transformers builds inv_freq. */
    for (int i = 0; i < c->rot_freqs; i++)
        rg->inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->rot_base);
    wrk_binder_t b = {.m = m, .next = rg->params, .err = err, .errlen = errlen};

    if ((rc = wrk_bind_mat(&b, "model.embed_tokens.weight", c->vocab, D, &m->embed))) return rc;
    if ((rc = wrk_bind_vec_x(&b, "model.final_norm.weight", D, WRK_BIND_ONE_PLUS, &m->norm_f)))
        return rc;
    if ((rc = wrk_bind_lm_head(&b, c->tie_embeddings, c->vocab, D))) return rc;
    int n_attn = 0, n_rec = 0;
    for (int l = 0; l < c->n_layers; l++) {
        wrk_rg_layer_t *L = &rg->layers[l];
        L->attn = c->pattern_attn[l % c->n_pattern];
        L->idx = L->attn ? n_attn++ : n_rec++;
#define NAME(s) (snprintf(name, sizeof name, "model.layers.%d.%s", l, s), name)
        if ((rc = wrk_bind_vec_x(&b, NAME("temporal_pre_norm.weight"), D, WRK_BIND_ONE_PLUS,
                                 &L->tnorm_w)))
            return rc;
        if ((rc = wrk_bind_vec_x(&b, NAME("channel_pre_norm.weight"), D, WRK_BIND_ONE_PLUS,
                                 &L->cnorm_w)))
            return rc;
        if ((rc = wrk_bind_mat(&b, NAME("mlp_block.gate_proj.weight"), M, D, &L->gate))) return rc;
        if ((rc = wrk_bind_vec(&b, NAME("mlp_block.gate_proj.bias"), M, &L->gate_b))) return rc;
        if ((rc = wrk_bind_mat(&b, NAME("mlp_block.up_proj.weight"), M, D, &L->up))) return rc;
        if ((rc = wrk_bind_vec(&b, NAME("mlp_block.up_proj.bias"), M, &L->up_b))) return rc;
        if ((rc = wrk_bind_mat(&b, NAME("mlp_block.down_proj.weight"), D, M, &L->down))) return rc;
        if ((rc = wrk_bind_vec(&b, NAME("mlp_block.down_proj.bias"), D, &L->down_b))) return rc;
#undef NAME
        rc = L->attn ? bind_attention(&b, c, l, L) : bind_recurrent(&b, c, l, L);
        if (rc) return rc;
    }
    if ((rc = describe_state(m, rg, err, errlen))) return rc;
    const int QD = c->n_heads * c->head_dim, KVD = c->n_kv_heads * c->head_dim;
    const int Lw = c->lru_width;
    m->info.weight_dtype = rg->layers[0].gate.dt;
    wrk_model_set_lm(m, c->vocab, D, c->n_layers, c->bos_id, c->eos_id, c->pad_id, c->eps);
    /* transformers keeps sqrt(hidden_size) as a bfloat16 buffer and casts it to the compute
     * dtype: the scale is sqrt(D) rounded to bf16 (50.5 for D = 2560), also in fp32. */
    m->embed_scale = wrk_bf16_to_f32(wrk_f32_to_bf16(sqrtf((float)D)));
    m->logit_softcap = c->softcap;
    int cols = D > M ? D : M;
    if (Lw > cols) cols = Lw;
    if (QD > cols) cols = QD;
    m->max_matmul_cols = cols;
    const double mlp = 3.0 * M * D;
    const double rec = 3.0 * Lw * D + 2.0 * Lw * c->block_w;
    const double att = 2.0 * QD * D + 2.0 * KVD * D;
    m->info.layer_flops = 2.0 * (c->n_layers * mlp + c->n_rec * rec + c->n_attn * att);
    return 0;
}

const wrk_family_i wrk_family_recurrentgemma = {
    .family = WRK_FAMILY_RECURRENTGEMMA,
    .layout_size = sizeof(wrk_rg_t),
    .config = &config,
    .load = rg_load,
};
