/* workers: loading a checkpoint directory (config.json + safetensors) into a wrk_model_t,
 * and the model fingerprint that checkpoints are tied to. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "common/rcd_path.h"
#include "workers/model_int.h"

#define CONFIG_MAX_BYTES (4u << 20)

static int read_small_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    int rc = 0;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rcd_fail(errno == ENOENT ? RCD_ENOTFOUND : RCD_EIO, err, errlen, "%s: %s", path,
                        strerror(errno));
    buf = malloc(CONFIG_MAX_BYTES + 1);
    if (!buf) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto cleanup;
    }
    size_t n = fread(buf, 1, CONFIG_MAX_BYTES + 1, f);
    if (ferror(f)) {
        rc = rcd_fail(RCD_EIO, err, errlen, "%s: read error", path);
        goto cleanup;
    }
    if (n > CONFIG_MAX_BYTES) {
        rc = rcd_fail(RCD_ETOOBIG, err, errlen, "%s: larger than %u bytes", path,
                      CONFIG_MAX_BYTES);
        goto cleanup;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    buf = NULL;
cleanup:
    free(buf);
    fclose(f);
    return rc;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    const wrk_st_tensor_t *x = *(const wrk_st_tensor_t *const *)a;
    const wrk_st_tensor_t *y = *(const wrk_st_tensor_t *const *)b;
    return strcmp(x->name, y->name);
}

/* Hash of the canonical config, the tensor table (sorted by name) and every weight byte. */
static int fingerprint(wrk_model_t *m, const char *config, size_t config_len, char *err,
                       size_t errlen)
{
    int rc = 0;
    size_t n = wrk_st_count(m->st);
    const wrk_st_tensor_t **sorted = malloc((n ? n : 1) * sizeof *sorted);
    cJSON *root = cJSON_ParseWithLength(config, config_len);
    char *canon = root ? cJSON_PrintUnformatted(root) : NULL;
    XXH3_state_t *st = XXH3_createState();
    if (!sorted || !canon || !st) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto cleanup;
    }
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, canon, strlen(canon) + 1);
    for (size_t i = 0; i < n; i++) sorted[i] = wrk_st_at(m->st, i);
    qsort(sorted, n, sizeof *sorted, cmp_tensor_name);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const wrk_st_tensor_t *t = sorted[i];
        int32_t meta[2] = {(int32_t)t->dtype, t->ndim};
        XXH3_64bits_update(st, t->name, strlen(t->name) + 1);
        XXH3_64bits_update(st, meta, sizeof meta);
        XXH3_64bits_update(st, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        XXH3_64bits_update(st, t->data, t->nbytes);
        total += t->nbytes;
    }
    m->info.fingerprint = XXH3_64bits_digest(st);
    m->info.weight_bytes = total;
    snprintf(m->info.fingerprint_hex, sizeof m->info.fingerprint_hex, "%016llx",
             (unsigned long long)m->info.fingerprint);
cleanup:
    XXH3_freeState(st);
    free(canon);
    cJSON_Delete(root);
    free(sorted);
    return rc;
}

static const wrk_family_i *const families[] = {&wrk_family_mamba, &wrk_family_mamba2,
                                               &wrk_family_granite, &wrk_family_recurrentgemma};
#define N_FAMILIES (sizeof families / sizeof families[0])

/* Reads architectures[0] and picks the family by model_type. */
static int pick_family(wrk_model_t *m, const char *config, size_t len, const char *path, char *err,
                       size_t errlen)
{
    int rc = 0;
    cJSON *root = cJSON_ParseWithLength(config, len);
    if (!root || !cJSON_IsObject(root)) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen, "%s: not a JSON object", path);
        goto cleanup;
    }
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, 0) : NULL;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen, "%s: model_type missing", path);
        goto cleanup;
    }
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(families[i]->model_type, mt->valuestring) == 0) m->fam = families[i];
    if (!m->fam) {
        char list[256] = "";
        for (size_t i = 0; i < N_FAMILIES; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s\"%s\"", i ? ", " : "",
                     families[i]->model_type);
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                      "%s: model_type \"%.64s\" is not supported (this build serves %s)", path,
                      mt->valuestring, list);
        goto cleanup;
    }
    snprintf(m->arch, sizeof m->arch, "%s",
             cJSON_IsString(a0) ? a0->valuestring : m->fam->model_type);
cleanup:
    cJSON_Delete(root);
    return rc;
}

int wrk_model_load(const char *dir, wrk_model_t **out, char *err, size_t errlen)
{
    int rc;
    char path[RCD_PATH_MAX];
    char *config = NULL;
    size_t config_len = 0;
    *out = NULL;
    wrk_model_t *m = calloc(1, sizeof *m);
    if (!m) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");

    if ((rc = rcd_path_join(path, sizeof path, dir, "config.json"))) {
        rc = rcd_fail(rc, err, errlen, "model directory path too long");
        goto cleanup;
    }
    if ((rc = read_small_file(path, &config, &config_len, err, errlen))) goto cleanup;
    if ((rc = pick_family(m, config, config_len, path, err, errlen))) goto cleanup;
    if ((rc = wrk_st_open_dir(dir, &m->st, err, errlen))) goto cleanup;
    char sub[1024];
    if ((rc = m->fam->load(m, config, config_len, sub, sizeof sub))) {
        /* config problems name config.json; tensor problems already name their file */
        if (strncmp(sub, "config.json", 11) == 0)
            rcd_fail(rc, err, errlen, "%s/%s", dir, sub);
        else
            rcd_fail(rc, err, errlen, "%s", sub);
        goto cleanup;
    }
    const wrk_st_tensor_t *extra = wrk_st_first_unused(m->st);
    if (extra) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen,
                      "%s: unexpected tensor %s (not part of a %s model with this config.json)",
                      extra->file, extra->name, m->arch);
        goto cleanup;
    }
    if ((rc = fingerprint(m, config, config_len, err, errlen))) goto cleanup;
    m->info.family = m->fam->family;
    m->info.architecture = m->arch;
    *out = m;
    m = NULL;
cleanup:
    free(config);
    wrk_model_free(m);
    return rc;
}

void wrk_model_free(wrk_model_t *m)
{
    if (!m) return;
    if (m->fam) m->fam->unload(m);
    wrk_st_close(m->st);
    free(m->state_tensors);
    free(m->mats);
    wrk_packs_free(m->packs);
    free(m);
}

float wrk_tensor_f32(const wrk_st_tensor_t *t, size_t i)
{
    const uint8_t *p = (const uint8_t *)t->data;
    uint16_t h;
    float f;
    switch (t->dtype) {
    case WRK_DT_F32: memcpy(&f, p + 4 * i, 4); return f;
    case WRK_DT_BF16: memcpy(&h, p + 2 * i, 2); return wrk_bf16_to_f32(h);
    case WRK_DT_F16: memcpy(&h, p + 2 * i, 2); return wrk_f16_to_f32(h);
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
    if (!t)
        return rcd_fail(RCD_ENOTFOUND, err, errlen, "checkpoint: tensor %s is missing", name);
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
    int rc = wrk_take_tensor(m, name, 2, (int64_t[]){rows, cols}, &t, err, errlen);
    if (rc) return rc;
    *out = (wrk_mat_t){.dt = t->dtype, .data = t->data, .rows = rows, .cols = cols};
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

const wrk_model_info_t *wrk_model_info(const wrk_model_t *m)
{
    return &m->info;
}

void wrk_model_set_lm(wrk_model_t *m, int vocab, int hidden, int n_layers, int bos_id,
                      int eos_id, int pad_id, float norm_eps)
{
    m->info.vocab_size = vocab;
    m->info.hidden_size = hidden;
    m->info.n_layers = n_layers;
    m->info.bos_token_id = bos_id;
    m->info.eos_token_id = eos_id;
    m->info.pad_token_id = pad_id;
    m->norm_eps = norm_eps;
    m->embed_scale = 1.0f;
    m->logit_scale = 1.0f;
    m->logit_softcap = 0.0f;
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

int wrk_params_alloc(const wrk_model_t *m, size_t n, const char *what, float **out, char *err,
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
    *out = malloc((n ? n : 1) * sizeof(float));
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

int wrk_bind_lm_head(wrk_binder_t *b, bool tied, int vocab, int hidden)
{
    wrk_model_t *m = b->m;
    m->lm_head = m->embed;
    if (!tied) return wrk_bind_mat(b, "lm_head.weight", vocab, hidden, &m->lm_head);
    if (!wrk_st_find(m->st, "lm_head.weight")) return 0;
    wrk_mat_t dup;
    return wrk_bind_mat(b, "lm_head.weight", vocab, hidden, &dup);
}
