/* workers: the Mamba2 family (Mamba2ForCausalLM) — config.json parsing and tensor binding,
 * validated against the config so that a bad checkpoint is a clear error naming the file and
 * tensor. The math follows transformers' torch path (see ../shared/specs/mamba2.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "workers/cfg_json.h"
#include "workers/mamba2.h"

int wrk_mamba2_config_parse(const char *json, size_t len, wrk_mamba2_config_t *cfg, char *err,
                            size_t errlen)
{
    int rc = 0;
    long v;
    double eps;
    cJSON *root = cJSON_ParseWithLength(json, len);
    memset(cfg, 0, sizeof *cfg);
    if (!root || !cJSON_IsObject(root)) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen, "config.json: not a JSON object");
        goto cleanup;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt) || strcmp(mt->valuestring, "mamba2") != 0) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen, "config.json: model_type is not \"mamba2\"");
        goto cleanup;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0)) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                      "config.json: hidden_act must be \"silu\" (the only activation Mamba2 "
                      "uses)");
        goto cleanup;
    }
    /* Fields transformers ignores but whose non-default values would mean another model:
     * refuse rather than silently compute something else. */
    bool flag = true;
    if ((rc = wrk_cfg_bool(root, "rms_norm", true, &flag, err, errlen))) goto cleanup;
    if (!flag) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                      "config.json: \"rms_norm\": false (LayerNorm) is not supported; "
                      "Mamba2 here uses RMSNorm, as transformers does");
        goto cleanup;
    }
    if ((rc = wrk_cfg_bool(root, "norm_before_gate", false, &flag, err, errlen))) goto cleanup;
    if (flag) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                      "config.json: \"norm_before_gate\": true is not supported (transformers' "
                      "Mamba2 gates with silu(z) before the gated RMSNorm)");
        goto cleanup;
    }
    /* Caps keep every derived size far from overflow and refuse absurd allocations. */
    if ((rc = wrk_cfg_int(root, "vocab_size", 32768, 1, 1 << 24, &v, err, errlen))) goto cleanup;
    cfg->vocab = (int)v;
    if ((rc = wrk_cfg_int(root, "hidden_size", 4096, 1, 1 << 16, &v, err, errlen))) goto cleanup;
    cfg->hidden = (int)v;
    if ((rc = wrk_cfg_int(root, "num_hidden_layers", 64, 1, 1024, &v, err, errlen))) goto cleanup;
    cfg->n_layers = (int)v;
    if ((rc = wrk_cfg_int(root, "num_heads", 128, 1, 1 << 14, &v, err, errlen))) goto cleanup;
    cfg->n_heads = (int)v;
    if ((rc = wrk_cfg_int(root, "head_dim", 64, 1, 4096, &v, err, errlen))) goto cleanup;
    cfg->head_dim = (int)v;
    if ((rc = wrk_cfg_int(root, "state_size", 128, 1, 1024, &v, err, errlen))) goto cleanup;
    cfg->d_state = (int)v;
    if ((rc = wrk_cfg_int(root, "n_groups", 8, 1, 1 << 14, &v, err, errlen))) goto cleanup;
    cfg->n_groups = (int)v;
    if ((rc = wrk_cfg_int(root, "conv_kernel", 4, 1, 64, &v, err, errlen))) goto cleanup;
    cfg->d_conv = (int)v;
    long expand;
    if ((rc = wrk_cfg_int(root, "expand", 2, 1, 64, &expand, err, errlen))) goto cleanup;
    long I = expand * cfg->hidden;
    if (I != (long)cfg->n_heads * cfg->head_dim) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen,
                      "config.json: expand * hidden_size (%ld) must equal num_heads * head_dim "
                      "(%ld)",
                      I, (long)cfg->n_heads * cfg->head_dim);
        goto cleanup;
    }
    if (I > 1 << 18) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen,
                      "config.json: expand * hidden_size (%ld) is larger than %d", I, 1 << 18);
        goto cleanup;
    }
    if (cfg->n_heads % cfg->n_groups != 0) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen,
                      "config.json: num_heads (%d) must be a multiple of n_groups (%d)",
                      cfg->n_heads, cfg->n_groups);
        goto cleanup;
    }
    long GN = (long)cfg->n_groups * cfg->d_state;
    if (GN > 1 << 20) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen,
                      "config.json: n_groups * state_size (%ld) is larger than %d", GN, 1 << 20);
        goto cleanup;
    }
    cfg->inner = (int)I;
    cfg->conv_dim = (int)(I + 2 * GN);
    cfg->proj_dim = cfg->inner + cfg->conv_dim + cfg->n_heads;
    cfg->norm_group = cfg->inner / cfg->n_groups;
    if ((rc = wrk_cfg_time_step_limit(root, &cfg->dt_min, &cfg->dt_max, err, errlen)))
        goto cleanup;
    if ((rc = wrk_cfg_bool(root, "use_bias", false, &cfg->use_bias, err, errlen))) goto cleanup;
    if ((rc = wrk_cfg_bool(root, "use_conv_bias", true, &cfg->use_conv_bias, err, errlen)))
        goto cleanup;
    if ((rc = wrk_cfg_bool(root, "tie_word_embeddings", false, &cfg->tie_embeddings, err, errlen)))
        goto cleanup;
    if ((rc = wrk_cfg_bool(root, "residual_in_fp32", true, &flag, err, errlen))) goto cleanup;
    /* Checked as the float it becomes: 1e-55 would round to 0. */
    if ((rc = wrk_cfg_num(root, "layer_norm_epsilon", 1e-5, 1e-30, 1.0, &eps, err, errlen)))
        goto cleanup;
    cfg->eps = (float)eps;
    if ((rc = wrk_cfg_special_tokens(root, cfg->vocab, &cfg->bos_id, &cfg->eos_id, &cfg->pad_id,
                                     err, errlen)))
        goto cleanup;
cleanup:
    cJSON_Delete(root);
    return rc;
}

/* ---- tensor binding ---------------------------------------------------------------------- */

size_t wrk_mamba2_mixer_floats(const wrk_mamba2_config_t *c)
{
    size_t H = c->hidden, I = c->inner, C = c->conv_dim, NH = c->n_heads, K = c->d_conv;
    return (size_t)c->proj_dim + K * C + C + 3 * NH + I + H;
}

static size_t params_floats(const wrk_mamba2_config_t *c)
{
    return c->n_layers * ((size_t)c->hidden + wrk_mamba2_mixer_floats(c)) + c->hidden;
}

int wrk_mamba2_bind_mixer(wrk_model_t *m, const wrk_mamba2_config_t *c, const char *prefix,
                          float **params, wrk_mamba2_layer_t *L, char *err, size_t errlen)
{
    const int H = c->hidden, I = c->inner, K = c->d_conv, C = c->conv_dim, NH = c->n_heads;
    wrk_binder_t b = {.m = m, .next = *params, .err = err, .errlen = errlen};
    char name[160];
    int rc;
#define NAME(s) (snprintf(name, sizeof name, "%s%s", prefix, s), name)
    /* Exactly z, xBC, dt: transformers' split has no room for mamba_ssm's extra d_mlp rows. */
    if ((rc = wrk_bind_mat(&b, NAME("in_proj.weight"), c->proj_dim, H, &L->in_proj))) return rc;
    if (c->use_bias && (rc = wrk_bind_vec(&b, NAME("in_proj.bias"), c->proj_dim, &L->in_b)))
        return rc;
    if ((rc = wrk_bind_conv(&b, NAME("conv1d.weight"), C, K, &L->conv_w))) return rc;
    if (c->use_conv_bias && (rc = wrk_bind_vec(&b, NAME("conv1d.bias"), C, &L->conv_b))) return rc;
    if ((rc = wrk_bind_vec(&b, NAME("dt_bias"), NH, &L->dt_b))) return rc;
    if ((rc = wrk_bind_vec_x(&b, NAME("A_log"), NH, WRK_BIND_NEG_EXP, &L->A))) return rc;
    if ((rc = wrk_bind_vec(&b, NAME("D"), NH, &L->D))) return rc;
    if ((rc = wrk_bind_vec(&b, NAME("norm.weight"), I, &L->gnorm_w))) return rc;
    if ((rc = wrk_bind_mat(&b, NAME("out_proj.weight"), H, I, &L->out_proj))) return rc;
    if (c->use_bias && (rc = wrk_bind_vec(&b, NAME("out_proj.bias"), H, &L->out_b))) return rc;
#undef NAME
    *params = b.next;
    return 0;
}

size_t wrk_mamba2_describe_state(const wrk_mamba2_config_t *c, int layer, wrk_state_tensor_t *t,
                                 size_t off)
{
    off = wrk_state_tensor_set(&t[0], layer, "conv", 2, (int64_t[]){c->d_conv - 1, c->conv_dim},
                               sizeof(float), off);
    return wrk_state_tensor_set(&t[1], layer, "ssm", 3,
                                (int64_t[]){c->n_heads, c->head_dim, c->d_state}, sizeof(float),
                                off);
}

static int mamba2_load(wrk_model_t *m, const char *json, size_t len, char *err, size_t errlen)
{
    wrk_mamba2_t *mb = calloc(1, sizeof *mb);
    if (!mb) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    m->priv = mb;
    int rc = wrk_mamba2_config_parse(json, len, &mb->cfg, err, errlen);
    if (rc) return rc;
    const wrk_mamba2_config_t *c = &mb->cfg;
    const int H = c->hidden, I = c->inner;
    char name[128];
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv, A, D and dt_bias",
                               &mb->params, err, errlen)))
        return rc;
    mb->layers = calloc((size_t)c->n_layers, sizeof *mb->layers);
    if (!mb->layers) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    wrk_binder_t b = {.m = m, .next = mb->params, .err = err, .errlen = errlen};

    const char *emb = wrk_st_find(m->st, "backbone.embeddings.weight")
                          ? "backbone.embeddings.weight"
                          : "backbone.embedding.weight"; /* renamed by HF's load hook */
    if ((rc = wrk_bind_mat(&b, emb, c->vocab, H, &m->embed))) return rc;
    if ((rc = wrk_bind_vec(&b, "backbone.norm_f.weight", H, &m->norm_f))) return rc;
    if ((rc = wrk_bind_lm_head(&b, c->tie_embeddings, c->vocab, H))) return rc;
    for (int l = 0; l < c->n_layers; l++) {
        wrk_mamba2_layer_t *L = &mb->layers[l];
#define NAME(s) (snprintf(name, sizeof name, "backbone.layers.%d.%s", l, s), name)
        if ((rc = wrk_bind_vec(&b, NAME("norm.weight"), H, &L->norm_w))) return rc;
        snprintf(name, sizeof name, "backbone.layers.%d.mixer.", l);
        if ((rc = wrk_mamba2_bind_mixer(m, c, name, &b.next, L, err, errlen))) return rc;
#undef NAME
    }
    /* State layout, per layer: conv window then SSM state. */
    m->state_tensors = calloc(2 * (size_t)c->n_layers, sizeof *m->state_tensors);
    if (!m->state_tensors) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    size_t off = 0;
    for (int l = 0; l < c->n_layers; l++)
        off = wrk_mamba2_describe_state(c, l, &m->state_tensors[2 * l], off);
    m->info.state_bytes = off;
    m->info.n_state_tensors = 2 * c->n_layers;
    m->info.state_tensors = m->state_tensors;
    m->info.weight_dtype = mb->layers[0].in_proj.dt;
    wrk_model_set_lm(m, c->vocab, c->hidden, c->n_layers, c->bos_id, c->eos_id, c->pad_id, c->eps);
    m->max_matmul_cols = H > I ? H : I;
    m->info.layer_flops = 2.0 * c->n_layers * ((double)c->proj_dim * H + (double)H * I);
    return 0;
}

static void mamba2_unload(wrk_model_t *m)
{
    wrk_mamba2_t *mb = m->priv;
    if (!mb) return;
    free(mb->params);
    free(mb->layers);
    free(mb);
    m->priv = NULL;
}

const wrk_family_i wrk_family_mamba2 = {
    .model_type = "mamba2",
    .family = WRK_FAMILY_MAMBA2,
    .load = mamba2_load,
    .unload = mamba2_unload,
    .cpu_init = wrk_mamba2_cpu_init,
    .cpu_free = wrk_mamba2_cpu_free,
    .cpu_step = wrk_mamba2_cpu_step,
    .shard = wrk_mamba2_shard,
};
