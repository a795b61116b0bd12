/* workers: the Mamba2 family (Mamba2ForCausalLM) — config.json parsing and tensor binding,
 * validated against the config so that a bad checkpoint is a clear error naming the file and
 * tensor. The math follows transformers' torch path (see ../shared/specs/mamba2.md). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "workers/model/cfg_json.h"
#include "workers/families/mamba2.h"

/* The sizes that follow from the table's: I = expand * hidden_size = num_heads * head_dim, the
 * conv and in_proj widths, the gated-norm group; and time_step_limit. */
static int derive(const cJSON *root, void *out, char *err, size_t errlen)
{
    wrk_mamba2_config_t *cfg = out;
    long I = (long)cfg->expand * cfg->hidden;
    if (I != (long)cfg->n_heads * cfg->head_dim)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: expand * hidden_size (%ld) must equal num_heads * head_dim "
                        "(%ld)",
                        I, (long)cfg->n_heads * cfg->head_dim);
    if (I > 1 << 18)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: expand * hidden_size (%ld) is larger than %d", I, 1 << 18);
    if (cfg->n_heads % cfg->n_groups != 0)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: num_heads (%d) must be a multiple of n_groups (%d)",
                        cfg->n_heads, cfg->n_groups);
    long GN = (long)cfg->n_groups * cfg->d_state;
    if (GN > 1 << 20)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: n_groups * state_size (%ld) is larger than %d", GN, 1 << 20);
    wrk_mamba2_derive(cfg, I, GN);
    return wrk_cfg_time_step_limit(root, &cfg->dt_min, &cfg->dt_max, err, errlen);
}

#define F(field) offsetof(wrk_mamba2_config_t, field)
/* Caps keep every derived size far from overflow and refuse absurd allocations; epsilons are
 * checked as the float they become (1e-55 would round to 0). rms_norm and norm_before_gate
 * are ignored by transformers, but their other values would mean another model. */
static const wrk_cfg_row_t rows[] = {
    WRK_CFG_S("hidden_act", "silu", "the only activation Mamba2 uses", false),
    WRK_CFG_ONLY("rms_norm", true, "LayerNorm; Mamba2 here uses RMSNorm, as transformers does"),
    WRK_CFG_ONLY("norm_before_gate", false,
                 "transformers' Mamba2 gates with silu(z) before the gated RMSNorm"),
    WRK_CFG_I("vocab_size", 32768, 1, 1 << 24, F(vocab)),
    WRK_CFG_I("hidden_size", 4096, 1, 1 << 16, F(hidden)),
    WRK_CFG_I("num_hidden_layers", 64, 1, 1024, F(n_layers)),
    WRK_CFG_I("num_heads", 128, 1, 1 << 14, F(n_heads)),
    WRK_CFG_I("head_dim", 64, 1, 4096, F(head_dim)),
    WRK_CFG_I("state_size", 128, 1, 1024, F(d_state)),
    WRK_CFG_I("n_groups", 8, 1, 1 << 14, F(n_groups)),
    WRK_CFG_I("conv_kernel", 4, 1, 64, F(d_conv)),
    WRK_CFG_I("expand", 2, 1, 64, F(expand)),
    WRK_CFG_B("use_bias", false, F(use_bias)),
    WRK_CFG_B("use_conv_bias", true, F(use_conv_bias)),
    WRK_CFG_B("tie_word_embeddings", false, F(tie_embeddings)),
    WRK_CFG_B("residual_in_fp32", true, WRK_CFG_NONE),
    WRK_CFG_F("layer_norm_epsilon", 1e-5, 1e-30, 1.0, F(eps)),
};

#undef F
WRK_CFG_PARSER(wrk_mamba2_config_parse, config, wrk_mamba2_config_t, "mamba2", rows, derive, )

void wrk_mamba2_derive(wrk_mamba2_config_t *c, long inner, long gn)
{
    c->inner = (int)inner;
    c->conv_dim = (int)(inner + 2 * gn);
    c->proj_dim = c->inner + c->conv_dim + c->n_heads;
    /* transformers 5.x normalizes the gated RMSNorm per group of I / G channels (the spec, read
     * at an older commit, says full width; they agree for G = 1, every released checkpoint). */
    c->norm_group = c->inner / c->n_groups;
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
    if (c->gate != WRK_MAMBA2_GATE_ONLY &&
        (rc = wrk_bind_vec(&b, NAME("norm.weight"), I, &L->gnorm_w)))
        return rc;
    if ((rc = wrk_bind_mat(&b, NAME("out_proj.weight"), H, I, &L->out_proj))) return rc;
    if (c->use_bias && (rc = wrk_bind_vec(&b, NAME("out_proj.bias"), H, &L->out_b))) return rc;
#undef NAME
    *params = b.next;
    return 0;
}

size_t wrk_mamba2_describe_state(const void *cfg, int layer, wrk_state_tensor_t *t, size_t off)
{
    const wrk_mamba2_config_t *c = cfg;
    off = wrk_state_tensor_set(&t[0], layer, "conv", 2, (int64_t[]){c->d_conv - 1, c->conv_dim},
                               sizeof(float), off);
    return wrk_state_tensor_set(&t[1], layer, "ssm", 3,
                                (int64_t[]){c->n_heads, c->head_dim, c->d_state}, sizeof(float),
                                off);
}

static int mamba2_load(wrk_model_t *m, char *err, size_t errlen)
{
    wrk_mamba2_t *mb = m->priv;
    int rc;
    const wrk_mamba2_config_t *c = &mb->cfg;
    const int H = c->hidden, I = c->inner;
    char name[128];
    if ((rc = wrk_params_alloc(m, params_floats(c), "norms, biases, conv, A, D and dt_bias",
                               &mb->params, err, errlen)))
        return rc;
    mb->layers = wrk_model_alloc(m, (size_t)c->n_layers, sizeof *mb->layers);
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
    m->state_tensors = wrk_model_alloc(m, 2 * (size_t)c->n_layers, sizeof *m->state_tensors);
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

const wrk_family_i wrk_family_mamba2 = {
    .family = WRK_FAMILY_MAMBA2,
    .layout_size = sizeof(wrk_mamba2_t),
    .config = &config,
    .load = mamba2_load,
    .shard = wrk_mamba2_shard,
};
