/* workers/model: the helpers every family's load uses to take its tensors from the
 * safetensors (shape-checked, errors naming file and tensor), convert its small parameters to
 * fp32 and describe its state. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/model/model_int.h"

float wrk_tensor_f32(const wrk_st_tensor_t *t, size_t i)
{
    const uint8_t *p = (const uint8_t *)t->data;
    uint16_t h;
    float f;
    switch (t->dtype) {
    case WRK_DT_F32: memcpy(&f, p + 4 * i, 4); return f;
    case WRK_DT_BF16: memcpy(&h, p + 2 * i, 2); return wrk_bf16_to_f32(h);
    case WRK_DT_F16: memcpy(&h, p + 2 * i, 2); return wrk_f16_to_f32(h);
    default: break; /* integer dtypes: refused by wrk_take_tensor */
    }
    return 0.f;
}

static void fmt_shape(char *buf, size_t len, int ndim, const int64_t *shape)
{
    buf[0] = 0;
    for (int i = 0; i < ndim && i < WRK_ST_MAX_DIMS; i++)
        snprintf(buf + strlen(buf), len - strlen(buf), "%s%lld", i ? "," : "",
                 (long long)shape[i]);
}

int wrk_take_tensor(wrk_model_t *m, const char *name, int ndim, const int64_t *shape,
                    const wrk_st_tensor_t **out, char *err, size_t errlen)
{
    const wrk_st_tensor_t *t = wrk_st_take(m->st, name);
    const size_t nl = strlen(name);
    if (!t && nl > 7 && nl < 200 && strcmp(name + nl - 7, ".weight") == 0) {
        /* stored quantized where the family reads a plain tensor (not a bound matrix) */
        static const char *const q[] = {"qweight", "weight_packed", "weight_scale"};
        char probe[256];
        for (int i = 0; i < 3; i++) {
            snprintf(probe, sizeof probe, "%.*s.%s", (int)(nl - 7), name, q[i]);
            if (wrk_st_find(m->st, probe))
                return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                                "checkpoint: %s is stored quantized (%s), which is not supported "
                                "for this tensor (only the 2-D projection matrices)",
                                name, probe);
        }
    }
    if (!t)
        return rcd_fail(RCD_ENOTFOUND, err, errlen, "checkpoint: tensor %s is missing", name);
    if (t->dtype != WRK_DT_F32 && t->dtype != WRK_DT_F16 && t->dtype != WRK_DT_BF16)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "%s: tensor %s has dtype %s (F32, F16 or BF16 expected here)", t->file,
                        name, wrk_dtype_name(t->dtype));
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[160], exp[160];
        fmt_shape(got, sizeof got, t->ndim, t->shape);
        fmt_shape(exp, sizeof exp, ndim, shape);
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "%s: tensor %s has shape [%s], config.json implies [%s]", t->file, name,
                        got, exp);
    }
    *out = t;
    return 0;
}

int wrk_take_mat(wrk_model_t *m, const char *name, int rows, int cols, wrk_mat_t *out, char *err,
                 size_t errlen)
{
    const wrk_st_tensor_t *t = NULL;
    bool pq_done = false;
    int rc = wrk__pq_take_mat(m, name, rows, cols, out, &pq_done, err, errlen);
    if (rc) return rc;
    if (!pq_done) {
        if ((rc = wrk_take_tensor(m, name, 2, (int64_t[]){rows, cols}, &t, err, errlen)))
            return rc;
        *out = (wrk_mat_t){.dt = t->dtype, .data = t->data, .rows = rows, .cols = cols};
    }
    if (m->n_mats == m->cap_mats) {
        int cap = m->cap_mats ? 2 * m->cap_mats : 64;
        wrk_mat_t *n = realloc(m->mats, (size_t)cap * sizeof *n);
        if (!n) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        m->mats = n;
        m->cap_mats = cap;
    }
    m->mats[m->n_mats++] = *out;
    return 0;
}

size_t wrk_state_tensor_set(wrk_state_tensor_t *t, int layer, const char *what, int ndim,
                            const int64_t *shape, size_t elem_bytes, size_t off)
{
    if (layer >= 0)
        snprintf(t->name, sizeof t->name, "layers.%d.%s", layer, what);
    else
        snprintf(t->name, sizeof t->name, "%s", what);
    t->ndim = ndim;
    t->offset = off;
    t->bytes = elem_bytes;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->bytes *= (size_t)shape[i];
    }
    return off + t->bytes;
}

int wrk_describe_hybrid_state(wrk_model_t *m, int n_layers, const bool *mixer,
                              wrk_mixer_state_fn describe, const void *mx, int n_attn, int kv_width,
                              char *err, size_t errlen)
{
    int n_mixer = 0;
    for (int l = 0; l < n_layers; l++)
        n_mixer += !mixer || mixer[l];
    const int n = 2 * n_mixer + (n_attn > 0);
    m->state_tensors = wrk_model_alloc(m, (size_t)(n ? n : 1), sizeof *m->state_tensors);
    if (!m->state_tensors) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    size_t off = 0;
    int i = 0;
    for (int l = 0; l < n_layers; l++) {
        if (mixer && !mixer[l]) continue;
        off = describe(mx, l, &m->state_tensors[i], off);
        i += 2;
    }
    if (n_attn > 0) /* one uint64, not fp32 */
        off = wrk_state_tensor_set(&m->state_tensors[i++], -1, "kv.n_tokens", 1, (int64_t[]){1},
                                   sizeof(uint64_t), off);
    m->info.state_bytes = off;
    m->info.n_state_tensors = i;
    m->info.state_tensors = m->state_tensors;
    m->info.n_kv_layers = n_attn;
    m->info.kv_width = kv_width;
    m->info.kv_bytes_per_token = (size_t)n_attn * 2 * m->info.kv_width * sizeof(float);
    return 0;
}

void *wrk_model_alloc(wrk_model_t *m, size_t n, size_t size)
{
    if (m->n_owned == WRK_MODEL_MAX_OWNED) return NULL; /* a family's bug: it says so as ENOMEM */
    void *p = calloc(n ? n : 1, size);
    if (p) m->owned[m->n_owned++] = p;
    return p;
}

int wrk_params_alloc(wrk_model_t *m, size_t n, const char *what, float **out, char *err,
                     size_t errlen)
{
    size_t held = 0;
    for (size_t i = 0; i < wrk_st_count(m->st); i++)
        held += (size_t)wrk_st_at(m->st, i)->numel;
    if (n > held)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json describes a larger model than the checkpoint holds "
                        "(%zu parameters needed for %s; %zu in the files)",
                        n, what, held);
    *out = wrk_model_alloc(m, n ? n : 1, sizeof(float));
    return *out ? 0 : rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
}

int wrk_bind_vec_nd(wrk_binder_t *b, const char *name, int ndim, const int64_t *shape,
                    wrk_bind_how_t how, const float **out)
{
    const wrk_st_tensor_t *t = NULL;
    int rc = wrk_take_tensor(b->m, name, ndim, shape, &t, b->err, b->errlen);
    if (rc) return rc;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    /* Block width of a BLOCK_T tensor (callers pass BLOCK_T with ndim 3 only); 0: no transpose. */
    const int64_t bw = how == WRK_BIND_BLOCK_T && ndim == 3 ? shape[2] : 0;
    float *dst = b->next;
    b->next += n;
    for (int64_t i = 0; i < n; i++) {
        float x = wrk_tensor_f32(t, (size_t)i);
        if (how == WRK_BIND_NEG_EXP)
            x = -expf(x);
        else if (how == WRK_BIND_ONE_PLUS)
            x = 1.0f + x;
        else if (how == WRK_BIND_NEG8_SOFTPLUS)
            x = -8.0f * (x > 20.f ? x : log1pf(expf(x)));
        if (bw > 0) {
            const int64_t blk = i / (bw * bw), r = i / bw % bw, col = i % bw;
            dst[(blk * bw + col) * bw + r] = x;
        } else {
            dst[i] = x;
        }
    }
    *out = dst;
    return 0;
}

int wrk_bind_vec_x(wrk_binder_t *b, const char *name, int64_t n, wrk_bind_how_t how,
                   const float **out)
{
    return wrk_bind_vec_nd(b, name, 1, (int64_t[]){n}, how, out);
}

int wrk_bind_vec(wrk_binder_t *b, const char *name, int64_t n, const float **out)
{
    return wrk_bind_vec_x(b, name, n, WRK_BIND_AS_IS, out);
}

int wrk_bind_mat(wrk_binder_t *b, const char *name, int rows, int cols, wrk_mat_t *out)
{
    return wrk_take_mat(b->m, name, rows, cols, out, b->err, b->errlen);
}

int wrk_bind_conv(wrk_binder_t *b, const char *name, int C, int K, const float **out)
{
    const wrk_st_tensor_t *t = NULL;
    int rc = wrk_take_tensor(b->m, name, 3, (int64_t[]){C, 1, K}, &t, b->err, b->errlen);
    if (rc) return rc;
    float *dst = b->next;
    b->next += (size_t)K * C;
    for (int ch = 0; ch < C; ch++)
        for (int k = 0; k < K; k++)
            dst[(size_t)k * C + ch] = wrk_tensor_f32(t, (size_t)ch * K + k);
    *out = dst;
    return 0;
}

int wrk_bind_attn(wrk_binder_t *b, const char *prefix, int H, int qd, int kvd,
                  wrk_mat_t *const w[4], const float **const bias[4])
{
    static const char *const proj[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    const int rows[4] = {qd, kvd, kvd, H}, cols[4] = {H, H, H, qd};
    char name[192];
    int rc;
    for (int j = 0; j < 4; j++) {
        snprintf(name, sizeof name, "%s%s.weight", prefix, proj[j]);
        if ((rc = wrk_bind_mat(b, name, rows[j], cols[j], w[j]))) return rc;
    }
    for (int j = 0; bias && j < 4; j++) {
        snprintf(name, sizeof name, "%s%s.bias", prefix, proj[j]);
        if ((rc = wrk_bind_vec(b, name, rows[j], bias[j]))) return rc;
    }
    return 0;
}

int wrk_bind_lm_head(wrk_binder_t *b, bool tied, int vocab, int hidden)
{
    wrk_model_t *m = b->m;
    m->lm_head = m->embed;
    if (!tied) return wrk_bind_mat(b, "lm_head.weight", vocab, hidden, &m->lm_head);
    if (!wrk_st_find(m->st, "lm_head.weight")) return 0;
    wrk_mat_t dup;
    return wrk_bind_mat(b, "lm_head.weight", vocab, hidden, &dup);
}
