/* workers: the Mamba2 family (Mamba2ForCausalLM) — config.json parsing and tensor binding,
 * validated against the config so that a bad checkpoint is a clear error naming the file and
 * tensor. The math follows transformers' torch path (see ../shared/specs/mamba2.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "workers/mamba2.h"

/* Reads an integer field; absent → dflt (or an error when dflt < lo: required). */
static int get_int(const cJSON *root, const char *key, long dflt, long lo, long hi, long *out,
                   char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (dflt < lo)
            return rcd_fail(RCD_EFORMAT, err, errlen, "config.json: required field \"%s\" missing",
                            key);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < (double)lo || v->valuedouble > (double)hi)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: \"%s\" must be an integer in [%ld, %ld]", key, lo, hi);
    *out = (long)v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *key, bool dflt, bool *out, char *err,
                    size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return rcd_fail(RCD_EFORMAT, err, errlen, "config.json: \"%s\" must be true or false", key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Token ids may be null, absent, an integer or (HF allows it for eos) a list: take the first. */
static int get_token_id(const cJSON *root, const char *key, int *out, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = -1;
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
        v->valuedouble > 1e9)
        return rcd_fail(RCD_EFORMAT, err, errlen, "config.json: \"%s\" is not a token id", key);
    *out = (int)v->valuedouble;
    return 0;
}

/* One element of time_step_limit. JSON has no infinity: transformers 5.x writes
 * {"__float__": "Infinity"}; strings "inf"/"Infinity" (any case, signed) are accepted too. (Older
 * releases wrote a bare Infinity token, which is not JSON and which the loader refuses before we
 * get here.) */
static bool limit_value(const cJSON *v, double *out)
{
    const cJSON *s = v;
    if (cJSON_IsNumber(v)) {
        *out = v->valuedouble;
        return true;
    }
    if (cJSON_IsObject(v)) s = cJSON_GetObjectItemCaseSensitive(v, "__float__");
    if (!cJSON_IsString(s)) return false;
    const char *t = s->valuestring;
    double sign = 1.0;
    if (*t == '-' || *t == '+') sign = *t++ == '-' ? -1.0 : 1.0;
    if (strcasecmp(t, "infinity") != 0 && strcasecmp(t, "inf") != 0)
        return false; /* NaN and anything else */
    *out = sign * INFINITY;
    return true;
}

static int get_time_step_limit(const cJSON *root, wrk_mamba2_config_t *cfg, char *err,
                               size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "time_step_limit");
    double lo = 0.0, hi = INFINITY;
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 ||
            !limit_value(cJSON_GetArrayItem(v, 0), &lo) ||
            !limit_value(cJSON_GetArrayItem(v, 1), &hi) || !(lo <= hi) || hi <= 0.0)
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "config.json: \"time_step_limit\" must be a list of two numbers "
                            "[min, max] with min <= max and max > 0 (max may be "
                            "{\"__float__\": \"Infinity\"})");
    }
    cfg->dt_min = (float)lo;
    cfg->dt_max = (float)hi;
    return 0;
}

int wrk_mamba2_config_parse(const char *json, size_t len, wrk_mamba2_config_t *cfg, char *err,
                            size_t errlen)
{
    int rc = 0;
    long v;
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
    if ((rc = get_bool(root, "rms_norm", true, &flag, err, errlen))) goto cleanup;
    if (!flag) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                      "config.json: \"rms_norm\": false (LayerNorm) is not supported; "
                      "Mamba2 here uses RMSNorm, as transformers does");
        goto cleanup;
    }
    if ((rc = get_bool(root, "norm_before_gate", false, &flag, err, errlen))) goto cleanup;
    if (flag) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                      "config.json: \"norm_before_gate\": true is not supported (transformers' "
                      "Mamba2 gates with silu(z) before the gated RMSNorm)");
        goto cleanup;
    }
    /* Caps keep every derived size far from overflow and refuse absurd allocations. */
    if ((rc = get_int(root, "vocab_size", 32768, 1, 1 << 24, &v, err, errlen))) goto cleanup;
    cfg->vocab = (int)v;
    if ((rc = get_int(root, "hidden_size", 4096, 1, 1 << 16, &v, err, errlen))) goto cleanup;
    cfg->hidden = (int)v;
    if ((rc = get_int(root, "num_hidden_layers", 64, 1, 1024, &v, err, errlen))) goto cleanup;
    cfg->n_layers = (int)v;
    if ((rc = get_int(root, "num_heads", 128, 1, 1 << 14, &v, err, errlen))) goto cleanup;
    cfg->n_heads = (int)v;
    if ((rc = get_int(root, "head_dim", 64, 1, 4096, &v, err, errlen))) goto cleanup;
    cfg->head_dim = (int)v;
    if ((rc = get_int(root, "state_size", 128, 1, 1024, &v, err, errlen))) goto cleanup;
    cfg->d_state = (int)v;
    if ((rc = get_int(root, "n_groups", 8, 1, 1 << 14, &v, err, errlen))) goto cleanup;
    cfg->n_groups = (int)v;
    if ((rc = get_int(root, "conv_kernel", 4, 1, 64, &v, err, errlen))) goto cleanup;
    cfg->d_conv = (int)v;
    long expand;
    if ((rc = get_int(root, "expand", 2, 1, 64, &expand, err, errlen))) goto cleanup;
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
    if ((rc = get_time_step_limit(root, cfg, err, errlen))) goto cleanup;
    if ((rc = get_bool(root, "use_bias", false, &cfg->use_bias, err, errlen))) goto cleanup;
    if ((rc = get_bool(root, "use_conv_bias", true, &cfg->use_conv_bias, err, errlen)))
        goto cleanup;
    if ((rc = get_bool(root, "tie_word_embeddings", false, &cfg->tie_embeddings, err, errlen)))
        goto cleanup;
    if ((rc = get_bool(root, "residual_in_fp32", true, &flag, err, errlen))) goto cleanup;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    cfg->eps = 1e-5f;
    if (eps && !cJSON_IsNull(eps)) {
        /* Checked as the float it becomes: 1e-55 would round to 0. */
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble >= 1e-30) || eps->valuedouble > 1) {
            rc = rcd_fail(RCD_EFORMAT, err, errlen,
                          "config.json: layer_norm_epsilon must be a number in [1e-30, 1]");
            goto cleanup;
        }
        cfg->eps = (float)eps->valuedouble;
    }
    if ((rc = get_token_id(root, "bos_token_id", &cfg->bos_id, err, errlen))) goto cleanup;
    if ((rc = get_token_id(root, "eos_token_id", &cfg->eos_id, err, errlen))) goto cleanup;
    if ((rc = get_token_id(root, "pad_token_id", &cfg->pad_id, err, errlen))) goto cleanup;
    if (cfg->bos_id >= cfg->vocab) cfg->bos_id = -1;
    if (cfg->eos_id >= cfg->vocab) cfg->eos_id = -1;
    if (cfg->pad_id >= cfg->vocab) cfg->pad_id = -1;
cleanup:
    cJSON_Delete(root);
    return rc;
}

/* ---- tensor binding ---------------------------------------------------------------------- */

typedef struct binder {
    wrk_model_t *m;
    float *next; /* bump pointer into the family's params */
    char *err;
    size_t errlen;
} binder_t;

/* A small parameter converted to fp32 into the params pool; `neg_exp` stores -exp(v) (A). */
static int vec_x(binder_t *b, const char *name, int64_t n, bool neg_exp, const float **out)
{
    const wrk_st_tensor_t *t = NULL;
    int rc = wrk_take_tensor(b->m, name, 1, (int64_t[]){n}, &t, b->err, b->errlen);
    if (rc) return rc;
    float *dst = b->next;
    b->next += n;
    for (int64_t i = 0; i < n; i++) {
        float x = wrk_tensor_f32(t, (size_t)i);
        dst[i] = neg_exp ? -expf(x) : x;
    }
    *out = dst;
    return 0;
}

static int vec(binder_t *b, const char *name, int64_t n, const float **out)
{
    return vec_x(b, name, n, false, out);
}

static int mat(binder_t *b, const char *name, int rows, int cols, wrk_mat_t *out)
{
    return wrk_take_mat(b->m, name, rows, cols, out, b->err, b->errlen);
}

static size_t params_floats(const wrk_mamba2_config_t *c)
{
    size_t H = c->hidden, I = c->inner, C = c->conv_dim, NH = c->n_heads, K = c->d_conv;
    size_t per = H + (size_t)c->proj_dim + K * C + C + 3 * NH + I + H;
    return c->n_layers * per + H;
}

static int mamba2_load(wrk_model_t *m, const char *json, size_t len, char *err, size_t errlen)
{
    wrk_mamba2_t *mb = calloc(1, sizeof *mb);
    if (!mb) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    m->priv = mb;
    int rc = wrk_mamba2_config_parse(json, len, &mb->cfg, err, errlen);
    if (rc) return rc;
    const wrk_mamba2_config_t *c = &mb->cfg;
    const int H = c->hidden, I = c->inner, K = c->d_conv, C = c->conv_dim, NH = c->n_heads;
    char name[128];
    /* Every small parameter is converted from one checkpoint element, so a config that needs
     * more than the checkpoint holds is wrong: refuse before allocating for it. */
    size_t held = 0;
    for (size_t i = 0; i < wrk_st_count(m->st); i++)
        held += (size_t)wrk_st_at(m->st, i)->numel;
    if (params_floats(c) > held)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json describes a larger model than the checkpoint holds "
                        "(%zu parameters needed for norms, biases, conv, A, D and dt_bias; %zu "
                        "in the files)",
                        params_floats(c), held);
    mb->params = malloc(params_floats(c) * sizeof(float));
    mb->layers = calloc((size_t)c->n_layers, sizeof *mb->layers);
    if (!mb->params || !mb->layers) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    binder_t b = {.m = m, .next = mb->params, .err = err, .errlen = errlen};

    const char *emb = wrk_st_find(m->st, "backbone.embeddings.weight")
                          ? "backbone.embeddings.weight"
                          : "backbone.embedding.weight"; /* renamed by HF's load hook */
    if ((rc = mat(&b, emb, c->vocab, H, &m->embed))) return rc;
    if ((rc = vec(&b, "backbone.norm_f.weight", H, &m->norm_f))) return rc;
    m->lm_head = m->embed;
    if (!c->tie_embeddings) {
        if ((rc = mat(&b, "lm_head.weight", c->vocab, H, &m->lm_head))) return rc;
    } else if (wrk_st_find(m->st, "lm_head.weight")) {
        /* A tied checkpoint may carry a duplicate head; it must at least have the right shape. */
        wrk_mat_t dup;
        if ((rc = mat(&b, "lm_head.weight", c->vocab, H, &dup))) return rc;
    }
    for (int l = 0; l < c->n_layers; l++) {
        wrk_mamba2_layer_t *L = &mb->layers[l];
#define NAME(s) (snprintf(name, sizeof name, "backbone.layers.%d.%s", l, s), name)
        if ((rc = vec(&b, NAME("norm.weight"), H, &L->norm_w))) return rc;
        /* Exactly z, xBC, dt: transformers' split has no room for mamba_ssm's extra d_mlp rows. */
        if ((rc = mat(&b, NAME("mixer.in_proj.weight"), c->proj_dim, H, &L->in_proj))) return rc;
        if (c->use_bias && (rc = vec(&b, NAME("mixer.in_proj.bias"), c->proj_dim, &L->in_b)))
            return rc;
        const wrk_st_tensor_t *cw = NULL;
        if ((rc = wrk_take_tensor(m, NAME("mixer.conv1d.weight"), 3, (int64_t[]){C, 1, K}, &cw, err,
                                  errlen)))
            return rc;
        float *cwt = b.next;
        b.next += (size_t)K * C;
        for (int ch = 0; ch < C; ch++)
            for (int k = 0; k < K; k++)
                cwt[(size_t)k * C + ch] = wrk_tensor_f32(cw, (size_t)ch * K + k);
        L->conv_w = cwt;
        if (c->use_conv_bias && (rc = vec(&b, NAME("mixer.conv1d.bias"), C, &L->conv_b))) return rc;
        if ((rc = vec(&b, NAME("mixer.dt_bias"), NH, &L->dt_b))) return rc;
        if ((rc = vec_x(&b, NAME("mixer.A_log"), NH, true, &L->A))) return rc;
        if ((rc = vec(&b, NAME("mixer.D"), NH, &L->D))) return rc;
        if ((rc = vec(&b, NAME("mixer.norm.weight"), I, &L->gnorm_w))) return rc;
        if ((rc = mat(&b, NAME("mixer.out_proj.weight"), H, I, &L->out_proj))) return rc;
        if (c->use_bias && (rc = vec(&b, NAME("mixer.out_proj.bias"), H, &L->out_b))) return rc;
#undef NAME
    }
    /* State layout, per layer: conv window then SSM state. */
    m->state_tensors = calloc(2 * (size_t)c->n_layers, sizeof *m->state_tensors);
    if (!m->state_tensors) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    size_t off = 0;
    for (int l = 0; l < c->n_layers; l++) {
        wrk_state_tensor_t *cv = &m->state_tensors[2 * l], *ss = cv + 1;
        snprintf(cv->name, sizeof cv->name, "layers.%d.conv", l);
        cv->ndim = 2;
        cv->shape[0] = K - 1;
        cv->shape[1] = C;
        cv->offset = off;
        cv->bytes = wrk_mamba2_conv_floats(c) * sizeof(float);
        off += cv->bytes;
        snprintf(ss->name, sizeof ss->name, "layers.%d.ssm", l);
        ss->ndim = 3;
        ss->shape[0] = NH;
        ss->shape[1] = c->head_dim;
        ss->shape[2] = c->d_state;
        ss->offset = off;
        ss->bytes = (size_t)NH * c->head_dim * c->d_state * sizeof(float);
        off += ss->bytes;
    }
    m->info.state_bytes = off;
    m->info.n_state_tensors = 2 * c->n_layers;
    m->info.state_tensors = m->state_tensors;
    m->info.weight_dtype = mb->layers[0].in_proj.dt;
    m->info.vocab_size = c->vocab;
    m->info.hidden_size = c->hidden;
    m->info.n_layers = c->n_layers;
    m->info.bos_token_id = c->bos_id;
    m->info.eos_token_id = c->eos_id;
    m->info.pad_token_id = c->pad_id;
    m->norm_eps = c->eps;
    m->embed_scale = 1.0f;
    m->logit_scale = 1.0f;
    m->logit_softcap = 0.0f;
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
};
