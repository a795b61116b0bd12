/* workers: the Mamba (v1) family — config.json parsing and tensor binding, validated
 * against the config so that a bad checkpoint is a clear error naming the file and tensor. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "workers/model/cfg_json.h"
#include "workers/families/mamba.h"

/* Fields whose defaults depend on others: intermediate_size (expand x hidden_size) and
 * time_step_rank ("auto" or absent: ceil(hidden_size / 16)). */
static int derive(const cJSON *root, void *out, char *err, size_t errlen)
{
    wrk_mamba_config_t *cfg = out;
    long v;
    int rc = wrk_cfg_int(root, "intermediate_size", (long)cfg->expand * cfg->hidden, 1, 1 << 18,
                         &v, err, errlen);
    if (rc) return rc;
    cfg->inner = (int)v;
    const cJSON *tsr = cJSON_GetObjectItemCaseSensitive(root, "time_step_rank");
    v = (cfg->hidden + 15) / 16;
    if (!(cJSON_IsString(tsr) && strcmp(tsr->valuestring, "auto") == 0) &&
        (rc = wrk_cfg_int(root, "time_step_rank", v, 1, 1 << 16, &v, err, errlen)))
        return rc;
    cfg->dt_rank = (int)v;
    return 0;
}

#define F(field) offsetof(wrk_mamba_config_t, field)
/* Caps keep every derived size far from overflow and refuse absurd allocations; epsilons are
 * checked as the float they become (1e-55 would round to 0). */
static const wrk_cfg_row_t rows[] = {
    WRK_CFG_S("hidden_act", "silu", "the only activation Mamba uses", false),
    WRK_CFG_I("vocab_size", 50280, 1, 1 << 24, F(vocab)),
    WRK_CFG_I("hidden_size", 768, 1, 1 << 16, F(hidden)),
    WRK_CFG_I("state_size", 16, 1, 1024, F(d_state)),
    WRK_CFG_I("num_hidden_layers", 32, 1, 1024, F(n_layers)),
    WRK_CFG_I("expand", 2, 1, 64, F(expand)),
    WRK_CFG_I("conv_kernel", 4, 1, 64, F(d_conv)),
    WRK_CFG_B("use_bias", false, F(use_bias)),
    WRK_CFG_B("use_conv_bias", true, F(use_conv_bias)),
    WRK_CFG_B("tie_word_embeddings", true, F(tie_embeddings)),
    WRK_CFG_F("layer_norm_epsilon", 1e-5, 1e-30, 1.0, F(eps)),
};

#undef F
WRK_CFG_PARSER(wrk_mamba_config_parse, config, wrk_mamba_config_t, "mamba", rows, derive, )

/* ---- tensor binding ---------------------------------------------------------------------- */

static size_t params_floats(const wrk_mamba_config_t *c)
{
    size_t H = c->hidden, I = c->inner, N = c->d_state, K = c->d_conv;
    size_t per = H + 2 * I + K * I + I + I + N * I + I + H;
    return c->n_layers * per + H;
}

size_t wrk_mamba_mixer_floats(const wrk_mamba_config_t *c)
{
    const size_t H = c->hidden, I = c->inner, N = c->d_state, K = c->d_conv;
    return 2 * I + K * I + I + I + N * I + I + H;
}

int wrk_mamba_bind_mixer(wrk_binder_t *b, const wrk_mamba_config_t *c, const char *prefix,
                         wrk_mamba_layer_t *L)
{
    const int H = c->hidden, I = c->inner, N = c->d_state, K = c->d_conv, R = c->dt_rank;
    char name[192];
    int rc;
#define NAME(s) (snprintf(name, sizeof name, "%s%s", prefix, s), name)
    if ((rc = wrk_bind_mat(b, NAME("in_proj.weight"), 2 * I, H, &L->in_proj))) return rc;
    if (c->use_bias && (rc = wrk_bind_vec(b, NAME("in_proj.bias"), 2 * I, &L->in_b))) return rc;
    if ((rc = wrk_bind_conv(b, NAME("conv1d.weight"), I, K, &L->conv_w))) return rc;
    if (c->use_conv_bias && (rc = wrk_bind_vec(b, NAME("conv1d.bias"), I, &L->conv_b))) return rc;
    if ((rc = wrk_bind_mat(b, NAME("x_proj.weight"), R + 2 * N, I, &L->x_proj))) return rc;
    if ((rc = wrk_bind_mat(b, NAME("dt_proj.weight"), I, R, &L->dt_proj))) return rc;
    if ((rc = wrk_bind_vec(b, NAME("dt_proj.bias"), I, &L->dt_b))) return rc;
    const wrk_st_tensor_t *al = NULL;
    if ((rc = wrk_take_tensor(b->m, NAME("A_log"), 2, (int64_t[]){I, N}, &al, b->err, b->errlen)))
        return rc;
    float *A = b->next;
    b->next += (size_t)N * I;
    for (int ch = 0; ch < I; ch++)
        for (int n = 0; n < N; n++)
            A[(size_t)n * I + ch] = -expf(wrk_tensor_f32(al, (size_t)ch * N + n));
    L->A = A;
    if ((rc = wrk_bind_vec(b, NAME("D"), I, &L->D))) return rc;
    if ((rc = wrk_bind_mat(b, NAME("out_proj.weight"), H, I, &L->out_proj))) return rc;
    if (c->use_bias && (rc = wrk_bind_vec(b, NAME("out_proj.bias"), H, &L->out_b))) return rc;
#undef NAME
    return 0;
}

static int mamba_load(wrk_model_t *m, char *err, size_t errlen)
{
    wrk_mamba_t *mb = m->priv;
    int rc;
    const wrk_mamba_config_t *c = &mb->cfg;
    const int H = c->hidden, I = c->inner, N = c->d_state, K = c->d_conv, R = c->dt_rank;
    char name[128];
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv, A and D", &mb->params,
                               err, errlen)))
        return rc;
    mb->layers = wrk_model_alloc(m, (size_t)c->n_layers, sizeof *mb->layers);
    if (!mb->layers) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    wrk_binder_t b = {.m = m, .next = mb->params, .err = err, .errlen = errlen};

    const char *emb = wrk_st_find(m->st, "backbone.embeddings.weight")
                          ? "backbone.embeddings.weight"
                          : "backbone.embedding.weight"; /* original mamba_ssm naming */
    if ((rc = wrk_bind_mat(&b, emb, c->vocab, H, &m->embed))) return rc;
    if ((rc = wrk_bind_vec(&b, "backbone.norm_f.weight", H, &m->norm_f))) return rc;
    if ((rc = wrk_bind_lm_head(&b, c->tie_embeddings, c->vocab, H))) return rc;
    for (int l = 0; l < c->n_layers; l++) {
        wrk_mamba_layer_t *L = &mb->layers[l];
#define NAME(s) (snprintf(name, sizeof name, "backbone.layers.%d.%s", l, s), name)
        if ((rc = wrk_bind_vec(&b, NAME("norm.weight"), H, &L->norm_w))) return rc;
        snprintf(name, sizeof name, "backbone.layers.%d.mixer.", l);
        if ((rc = wrk_mamba_bind_mixer(&b, c, name, L))) return rc;
#undef NAME
    }
    /* State layout, per layer: conv window then SSM state. */
    m->state_tensors = wrk_model_alloc(m, 2 * (size_t)c->n_layers, sizeof *m->state_tensors);
    if (!m->state_tensors) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    size_t off = 0;
    for (int l = 0; l < c->n_layers; l++) {
        off = wrk_state_tensor_set(&m->state_tensors[2 * l], l, "conv", 2, (int64_t[]){K - 1, I},
                                   sizeof(float), off);
        off = wrk_state_tensor_set(&m->state_tensors[2 * l + 1], l, "ssm", 2, (int64_t[]){N, I},
                                   sizeof(float), off);
    }
    m->info.state_bytes = off;
    m->info.n_state_tensors = 2 * c->n_layers;
    m->info.state_tensors = m->state_tensors;
    m->info.weight_dtype = mb->layers[0].in_proj.dt;
    wrk_model_set_lm(m, c->vocab, c->hidden, c->n_layers, c->bos_id, c->eos_id, c->pad_id, c->eps);
    m->max_matmul_cols = H > I ? H : I;
    m->info.layer_flops =
        2.0 * c->n_layers *
        ((double)2 * I * H + (double)(R + 2 * N) * I + (double)R * I + (double)H * I);
    return 0;
}

const wrk_family_i wrk_family_mamba = {
    .family = WRK_FAMILY_MAMBA,
    .layout_size = sizeof(wrk_mamba_t),
    .config = &config,
    .load = mamba_load,
    .shard = wrk_mamba_shard,
};
