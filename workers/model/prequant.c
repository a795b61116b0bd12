/* workers/model: pre-quantized checkpoints (config.json `quantization_config`): GPTQ and
 * compressed-tensors weight-only int4/int8, checked at load; their codes are decoded from the
 * mapped file on demand (the CPU backend's qg packs), and fp32 matrices whose every value is
 * exactly s * (q - z) of the file are filled only while held (TP shards, the CUDA upload;
 * workers/README.md, "Pre-quantized checkpoints").
 *
 * Layouts read (tensor names are the Linear's `<prefix>`, i.e. the family's `<prefix>.weight`):
 *   GPTQ (AutoGPTQ / GPTQModel / transformers): qweight I32 [in*bits/32, out], packed along
 *     the input dim, low bits first (input i of word row r is bits [(i%(32/bits))*bits, +bits)
 *     of row i/(32/bits)); qzeros I32 [G, ceil(out*bits/32)] packed along the output dim the
 *     same way; scales F16/BF16/F32 [G, out]; g_idx I32 [in] (group of each input column;
 *     i/group_size when absent, required with desc_act). Dequant: w[o][i] =
 *     scales[g][o] * (q - z), g = g_idx[i], z = qzeros + 1 in the classic format
 *     (checkpoint_format "gptq", AutoGPTQ's "zeros + 1") and z = qzeros in "gptq_v2".
 *   compressed-tensors pack-quantized: weight_packed I32 [out, ceil(in*bits/32)] (element i
 *     of a row at bit i*bits, value q + 2^(bits-1)); weight_shape I32/I64 [2] = [out, in];
 *     weight_scale [out, G]; weight_zero_point (asymmetric only) I32 [ceil(out*bits/32), G],
 *     packed along the output dim the same way. int-quantized: weight I8 [out, in],
 *     weight_scale [out, G], weight_zero_point I8/I32 [out, G] (asymmetric only).
 *     Dequant: w[o][i] = scale[o][g] * (q - zp), g = i / group_size (0 for channel).
 * (q - z) is an exact integer; one fp32 multiply by the scale (converted exactly to fp32). */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cjson/cJSON.h>

#include "workers/model/model_int.h"

enum { PQ_GPTQ = 1, PQ_CT_PACK = 2, PQ_CT_INT = 3 };

/* A quantized matrix's tensors in the mapped file: GPTQ qweight, qzeros, scales;
 * compressed-tensors weight_packed or weight, weight_zero_point (NULL: symmetric),
 * weight_scale. */
typedef struct pq_tensors {
    const wrk_st_tensor_t *q, *z, *s;
} pq_tensors_t;

struct wrk_pq {
    int method;
    int bits;
    int group; /* -1: one group per row (per channel) */
    bool sym, desc_act, v2;
    char desc[96];
    void **bufs; /* the sources' arrays */
    int n_bufs, cap_bufs;
    wrk_pq_src_t *src; /* one per quantized matrix, in load order (codes not kept) */
    pq_tensors_t *tens; /* [n_src]: where src[i]'s codes are decoded from */
    int n_src, cap_src;
    /* The fp32 copies (each src's w, a reserved PROT_NONE range): filled while holds > 0. */
    pthread_mutex_t mu;
    int holds;
};

static size_t f32_bytes(const wrk_pq_src_t *d)
{
    return (size_t)d->rows * (size_t)d->cols * sizeof(float);
}

void wrk__pq_free(struct wrk_pq *pq)
{
    if (!pq) return;
    for (int i = 0; i < pq->n_src; i++)
        munmap((void *)pq->src[i].w, f32_bytes(&pq->src[i]));
    pthread_mutex_destroy(&pq->mu);
    for (int i = 0; i < pq->n_bufs; i++)
        free(pq->bufs[i]);
    free(pq->bufs);
    free(pq->src);
    free(pq->tens);
    free(pq);
}

const wrk_pq_src_t *wrk__pq_source(const wrk_model_t *m, const void *data)
{
    for (int i = 0; m->pq && data && i < m->pq->n_src; i++)
        if (m->pq->src[i].w == data) return &m->pq->src[i];
    return NULL;
}

/* Drops src d's fp32 copy: its pages freed, the range unreadable again. */
static void f32_drop(const wrk_pq_src_t *d)
{
    void *w = (void *)d->w;
    (void)madvise(w, f32_bytes(d), MADV_DONTNEED);
    (void)mprotect(w, f32_bytes(d), PROT_NONE);
}

int wrk__pq_f32_hold(const wrk_model_t *m, char *err, size_t errlen)
{
    struct wrk_pq *pq = m->pq;
    if (!pq || !pq->n_src) return 0;
    int rc = 0;
    pthread_mutex_lock(&pq->mu);
    for (int i = 0; !pq->holds && i < pq->n_src; i++) {
        const wrk_pq_src_t *d = &pq->src[i];
        float *w = (float *)d->w;
        if (mprotect(w, f32_bytes(d), PROT_READ | PROT_WRITE)) {
            for (int j = 0; j <= i; j++)
                f32_drop(&pq->src[j]);
            rc = rcd_fail(RCD_ENOMEM, err, errlen,
                          "out of memory for the fp32 copy of a %dx%d quantized matrix", d->rows,
                          d->cols);
            goto out;
        }
        wrk_pq_src_t k;
        if (wrk__pq_src_load(m, d, &k)) {
            for (int j = 0; j <= i; j++)
                f32_drop(&pq->src[j]);
            rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory decoding a %dx%d matrix",
                          d->rows, d->cols);
            goto out;
        }
        /* the values served: s * (q - z), the integer difference exact in fp32, one rounding */
        for (int o = 0; o < d->rows; o++)
            for (int c = 0; c < d->cols; c++) {
                const size_t sg = (size_t)o * d->G + (size_t)d->gidx[c];
                w[(size_t)o * d->cols + c] =
                    k.s[sg] * ((float)k.q[(size_t)o * d->cols + c] - k.z[sg]);
            }
        wrk__pq_src_done(&k);
        (void)mprotect(w, f32_bytes(d), PROT_READ);
    }
    pq->holds++;
out:
    pthread_mutex_unlock(&pq->mu);
    return rc;
}

void wrk__pq_f32_release(const wrk_model_t *m)
{
    struct wrk_pq *pq = m->pq;
    if (!pq || !pq->n_src) return;
    pthread_mutex_lock(&pq->mu);
    if (pq->holds > 0 && --pq->holds == 0)
        for (int i = 0; i < pq->n_src; i++)
            f32_drop(&pq->src[i]);
    pthread_mutex_unlock(&pq->mu);
}

size_t wrk__pq_f32_bytes(const wrk_model_t *m)
{
    struct wrk_pq *pq = m->pq;
    size_t n = 0;
    if (!pq) return 0;
    pthread_mutex_lock(&pq->mu);
    for (int i = 0; pq->holds && i < pq->n_src; i++)
        n += f32_bytes(&pq->src[i]);
    pthread_mutex_unlock(&pq->mu);
    return n;
}

const char *wrk__pq_desc(const struct wrk_pq *pq)
{
    return pq ? pq->desc : NULL;
}

#define QC "quantization_config"

static int refuse(char *err, size_t errlen, const char *path, const char *field, const char *val,
                  const char *allowed)
{
    return rcd_fail(RCD_EUNSUPPORTED, err, errlen, "%s: " QC ".%s %.64s is not supported (%s)",
                    path, field, val, allowed);
}

/* The JSON value as short text for messages. */
static void jtext(const cJSON *v, char *buf, size_t len)
{
    char *s = v ? cJSON_PrintUnformatted(v) : NULL;
    snprintf(buf, len, "%s", s ? s : "(missing)");
    free(s);
}

static bool j_null_or_empty(const cJSON *v)
{
    return !v || cJSON_IsNull(v) || (cJSON_IsFalse(v)) ||
           ((cJSON_IsObject(v) || cJSON_IsArray(v)) && !v->child);
}

/* An integer field in [lo, hi] (or the default when absent and dflt_ok). */
static int j_int(const cJSON *o, const char *name, int dflt, bool dflt_ok, int *out,
                 const char *path, const char *prefix, const char *allowed, char *err,
                 size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    char field[96], t[80];
    snprintf(field, sizeof field, "%s%s", prefix, name);
    if (!v && dflt_ok) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= INT_MIN && v->valuedouble <= INT_MAX) ||
        v->valuedouble != floor(v->valuedouble)) {
        jtext(v, t, sizeof t);
        return refuse(err, errlen, path, field, t, allowed);
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int j_bool(const cJSON *o, const char *name, bool dflt, bool *out, const char *path,
                  const char *prefix, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    char field[96], t[80];
    snprintf(field, sizeof field, "%s%s", prefix, name);
    if (!v || cJSON_IsNull(v)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        jtext(v, t, sizeof t);
        return refuse(err, errlen, path, field, t, "true or false");
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

static int parse_gptq(const cJSON *qc, struct wrk_pq *pq, const char *path, char *err,
                      size_t errlen)
{
    int rc;
    char t[80];
    pq->method = PQ_GPTQ;
    if ((rc = j_int(qc, "bits", 0, false, &pq->bits, path, "", "gptq: 4 or 8", err, errlen)))
        return rc;
    if (pq->bits != 4 && pq->bits != 8) {
        snprintf(t, sizeof t, "%d", pq->bits);
        return refuse(err, errlen, path, "bits", t, "gptq: 4 or 8");
    }
    if ((rc = j_int(qc, "group_size", -1, true, &pq->group, path, "",
                    "-1 or a positive size dividing the input dimension", err, errlen)))
        return rc;
    if (pq->group == 0 || pq->group < -1 || pq->group > (1 << 24)) {
        snprintf(t, sizeof t, "%d", pq->group);
        return refuse(err, errlen, path, "group_size", t,
                      "-1 or a positive size dividing the input dimension");
    }
    if ((rc = j_bool(qc, "sym", true, &pq->sym, path, "", err, errlen)) ||
        (rc = j_bool(qc, "desc_act", false, &pq->desc_act, path, "", err, errlen)))
        return rc;
    static const char *const fmt_keys[] = {"checkpoint_format", "format"};
    for (int i = 0; i < 2; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(qc, fmt_keys[i]);
        if (!f || cJSON_IsNull(f)) continue;
        if (cJSON_IsString(f) && strcmp(f->valuestring, "gptq") == 0) continue;
        if (cJSON_IsString(f) && strcmp(f->valuestring, "gptq_v2") == 0) {
            pq->v2 = true;
            continue;
        }
        jtext(f, t, sizeof t);
        return refuse(err, errlen, path, fmt_keys[i], t, "\"gptq\" or \"gptq_v2\"");
    }
    const cJSON *dyn = cJSON_GetObjectItemCaseSensitive(qc, "dynamic");
    if (!j_null_or_empty(dyn)) {
        jtext(dyn, t, sizeof t);
        return refuse(err, errlen, path, "dynamic", t, "per-module overrides: none");
    }
    snprintf(pq->desc, sizeof pq->desc, "gptq%s int%d group %d %s%s", pq->v2 ? "_v2" : "", pq->bits,
             pq->group, pq->sym ? "sym" : "asym", pq->desc_act ? " act-order" : "");
    return 0;
}

static int parse_ct(const cJSON *qc, struct wrk_pq *pq, const char *path, char *err, size_t errlen)
{
    int rc;
    char t[80];
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(qc, "format");
    if (cJSON_IsString(fmt) && strcmp(fmt->valuestring, "pack-quantized") == 0) {
        pq->method = PQ_CT_PACK;
    } else if (cJSON_IsString(fmt) && strcmp(fmt->valuestring, "int-quantized") == 0) {
        pq->method = PQ_CT_INT;
    } else {
        jtext(fmt, t, sizeof t);
        return refuse(err, errlen, path, "format", t,
                      "compressed-tensors: \"pack-quantized\" or \"int-quantized\"");
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(qc, "quantization_status");
    if (st && !cJSON_IsNull(st) &&
        !(cJSON_IsString(st) && !strcmp(st->valuestring, "compressed"))) {
        jtext(st, t, sizeof t);
        return refuse(err, errlen, path, "quantization_status", t, "\"compressed\"");
    }
    static const char *const none_keys[] = {"kv_cache_scheme", "sparsity_config",
                                            "transform_config"};
    for (int i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(qc, none_keys[i]);
        if (j_null_or_empty(v)) continue;
        jtext(v, t, sizeof t);
        return refuse(err, errlen, path, none_keys[i], t, "null (weight-only quantization)");
    }
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(qc, "config_groups");
    if (!cJSON_IsObject(groups) || cJSON_GetArraySize(groups) != 1) {
        snprintf(t, sizeof t, "with %d groups",
                 cJSON_IsObject(groups) ? cJSON_GetArraySize(groups) : 0);
        return refuse(err, errlen, path, "config_groups", t, "exactly one group");
    }
    const cJSON *g = groups->child;
    char pre[96];
    snprintf(pre, sizeof pre, "config_groups.%.40s.", g->string ? g->string : "?");
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(g, "targets");
    bool ok = cJSON_IsArray(targets) && targets->child;
    for (const cJSON *x = ok ? targets->child : NULL; x; x = x->next)
        ok = ok && cJSON_IsString(x) && strcmp(x->valuestring, "Linear") == 0;
    if (!ok) {
        jtext(targets, t, sizeof t);
        char field[128];
        snprintf(field, sizeof field, "%stargets", pre);
        return refuse(err, errlen, path, field, t, "[\"Linear\"]");
    }
    static const char *const act_keys[] = {"input_activations", "output_activations"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(g, act_keys[i]);
        if (j_null_or_empty(v)) continue;
        char field[128];
        snprintf(field, sizeof field, "%s%s", pre, act_keys[i]);
        jtext(v, t, sizeof t);
        return refuse(err, errlen, path, field, t, "null (weight-only quantization)");
    }
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(g, "weights");
    char wpre[128], field[160];
    snprintf(wpre, sizeof wpre, "%sweights.", pre);
    if (!cJSON_IsObject(w)) {
        jtext(w, t, sizeof t);
        snprintf(field, sizeof field, "%sweights", pre);
        return refuse(err, errlen, path, field, t, "an object");
    }
    const char *bits_ok = pq->method == PQ_CT_PACK ? "4 or 8" : "8";
    if ((rc = j_int(w, "num_bits", 0, false, &pq->bits, path, wpre, bits_ok, err, errlen)))
        return rc;
    if (pq->bits != 8 && (pq->bits != 4 || pq->method != PQ_CT_PACK)) {
        snprintf(t, sizeof t, "%d", pq->bits);
        snprintf(field, sizeof field, "%snum_bits", wpre);
        return refuse(err, errlen, path, field, t, bits_ok);
    }
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(w, "type");
    if (ty && !(cJSON_IsString(ty) && !strcmp(ty->valuestring, "int"))) {
        jtext(ty, t, sizeof t);
        snprintf(field, sizeof field, "%stype", wpre);
        return refuse(err, errlen, path, field, t, "\"int\"");
    }
    if ((rc = j_bool(w, "symmetric", true, &pq->sym, path, wpre, err, errlen))) return rc;
    const cJSON *dyn = cJSON_GetObjectItemCaseSensitive(w, "dynamic");
    if (dyn && !cJSON_IsFalse(dyn) && !cJSON_IsNull(dyn)) {
        jtext(dyn, t, sizeof t);
        snprintf(field, sizeof field, "%sdynamic", wpre);
        return refuse(err, errlen, path, field, t, "false");
    }
    const cJSON *ao = cJSON_GetObjectItemCaseSensitive(w, "actorder");
    if (ao && !cJSON_IsNull(ao) && !cJSON_IsFalse(ao) &&
        !(cJSON_IsString(ao) && !strcmp(ao->valuestring, "static"))) {
        jtext(ao, t, sizeof t);
        snprintf(field, sizeof field, "%sactorder", wpre);
        return refuse(err, errlen, path, field, t, "null or \"static\"");
    }
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(w, "block_structure");
    if (!j_null_or_empty(bs)) {
        jtext(bs, t, sizeof t);
        snprintf(field, sizeof field, "%sblock_structure", wpre);
        return refuse(err, errlen, path, field, t, "null");
    }
    const cJSON *stg = cJSON_GetObjectItemCaseSensitive(w, "strategy");
    if (cJSON_IsString(stg) && !strcmp(stg->valuestring, "channel")) {
        pq->group = -1;
    } else if (cJSON_IsString(stg) && !strcmp(stg->valuestring, "group")) {
        if ((rc = j_int(w, "group_size", 0, false, &pq->group, path, wpre,
                        "a positive size dividing the input dimension", err, errlen)))
            return rc;
        if (pq->group <= 0 || pq->group > (1 << 24)) {
            snprintf(t, sizeof t, "%d", pq->group);
            snprintf(field, sizeof field, "%sgroup_size", wpre);
            return refuse(err, errlen, path, field, t,
                          "a positive size dividing the input dimension");
        }
    } else {
        jtext(stg, t, sizeof t);
        snprintf(field, sizeof field, "%sstrategy", wpre);
        return refuse(err, errlen, path, field, t, "\"group\" or \"channel\"");
    }
    snprintf(pq->desc, sizeof pq->desc, "compressed-tensors %s int%d %s%d %s",
             pq->method == PQ_CT_PACK ? "pack-quantized" : "int-quantized", pq->bits,
             pq->group > 0 ? "group " : "channel", pq->group > 0 ? pq->group : 0,
             pq->sym ? "sym" : "asym");
    return 0;
}

int wrk__pq_parse(const char *config, size_t len, const char *path, struct wrk_pq **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(config, len);
    if (!root) return rcd_fail(RCD_EFORMAT, err, errlen, "%s: not a JSON object", path);
    int rc = 0;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, QC);
    if (!qc || cJSON_IsNull(qc)) goto cleanup;
    if (!cJSON_IsObject(qc)) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen, "%s: " QC " is not an object", path);
        goto cleanup;
    }
    struct wrk_pq *pq = calloc(1, sizeof *pq);
    if (!pq) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto cleanup;
    }
    pthread_mutex_init(&pq->mu, NULL);
    const cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
    char t[80];
    if (cJSON_IsString(qm) && strcmp(qm->valuestring, "gptq") == 0) {
        rc = parse_gptq(qc, pq, path, err, errlen);
    } else if (cJSON_IsString(qm) && strcmp(qm->valuestring, "compressed-tensors") == 0) {
        rc = parse_ct(qc, pq, path, err, errlen);
    } else {
        jtext(qm, t, sizeof t);
        rc = refuse(err, errlen, path, "quant_method", t,
                    "this build reads \"gptq\" and \"compressed-tensors\"");
    }
    if (rc)
        wrk__pq_free(pq);
    else
        *out = pq;
cleanup:
    cJSON_Delete(root);
    return rc;
}

/* ---- per matrix ---- */

static int32_t rd_i32(const wrk_st_tensor_t *t, size_t i)
{
    int32_t v;
    memcpy(&v, (const char *)t->data + 4 * i, 4);
    return v;
}

static int64_t rd_int(const wrk_st_tensor_t *t, size_t i)
{
    if (t->dtype == WRK_DT_I8) return ((const int8_t *)t->data)[i];
    if (t->dtype == WRK_DT_I32) return rd_i32(t, i);
    int64_t v;
    memcpy(&v, (const char *)t->data + 8 * i, 8);
    return v;
}

/* Element i of a dense little-bits-first packing of `bits`-bit values in int32 words
 * (bits 4 or 8 never straddle a word). */
static uint32_t unpack(const wrk_st_tensor_t *t, size_t word0, int64_t i, int bits)
{
    const uint32_t w = (uint32_t)rd_i32(t, word0 + (size_t)(i * bits / 32));
    return (w >> (i * bits % 32)) & ((1u << bits) - 1);
}

static bool is_float(wrk_dtype_t dt)
{
    return dt == WRK_DT_F32 || dt == WRK_DT_F16 || dt == WRK_DT_BF16;
}

/* Takes tensor `prefix`.`suffix`, checking dtype (int_ok: I32 only / I8 too / float) and shape. */
static int take(wrk_model_t *m, const char *prefix, const char *suffix, int want, int ndim,
                const int64_t *shape, bool optional, const wrk_st_tensor_t **out, char *err,
                size_t errlen)
{
    char name[256];
    snprintf(name, sizeof name, "%s.%s", prefix, suffix);
    *out = NULL;
    if (optional && !wrk_st_find(m->st, name)) return 0;
    const wrk_st_tensor_t *t = wrk_st_take(m->st, name);
    if (!t) return rcd_fail(RCD_ENOTFOUND, err, errlen, "checkpoint: tensor %s is missing", name);
    /* want: 0 float, 1 I32, 2 I8 or I32, 3 I32 or I64, 4 I8 */
    bool ok = want == 0   ? is_float(t->dtype)
              : want == 1 ? t->dtype == WRK_DT_I32
              : want == 2 ? t->dtype == WRK_DT_I8 || t->dtype == WRK_DT_I32
              : want == 3 ? t->dtype == WRK_DT_I32 || t->dtype == WRK_DT_I64
                          : t->dtype == WRK_DT_I8;
    if (!ok)
        return rcd_fail(RCD_EFORMAT, err, errlen, "%s: tensor %s has dtype %s (expected %s)",
                        t->file, name, wrk_dtype_name(t->dtype),
                        want == 0   ? "F32, F16 or BF16"
                        : want == 1 ? "I32"
                        : want == 2 ? "I8 or I32"
                        : want == 3 ? "I32 or I64"
                                    : "I8");
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char got[96] = "", exp[96] = "";
        for (int i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "",
                     (long long)t->shape[i]);
        for (int i = 0; i < ndim; i++)
            snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%lld", i ? "," : "",
                     (long long)shape[i]);
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "%s: tensor %s has shape [%s], config.json and " QC " imply [%s]", t->file,
                        name, got, exp);
    }
    *out = t;
    return 0;
}

static int keep_buf(struct wrk_pq *pq, void *p)
{
    if (pq->n_bufs == pq->cap_bufs) {
        int cap = pq->cap_bufs ? 2 * pq->cap_bufs : 32;
        void **n = realloc(pq->bufs, (size_t)cap * sizeof *n);
        if (!n) return RCD_ENOMEM;
        pq->bufs = n;
        pq->cap_bufs = cap;
    }
    pq->bufs[pq->n_bufs++] = p;
    return 0;
}

/* d's shape and its column groups (kept with the model; the codes are decoded on demand by
 * wrk__pq_src_load from the tensors in *t). */
static int src_init(struct wrk_pq *pq, wrk_pq_src_t *d, int rows, int cols, int G, char *err,
                    size_t errlen)
{
    d->rows = rows;
    d->cols = cols;
    d->G = G;
    d->bits = pq->bits;
    d->gidx = malloc((size_t)cols * sizeof *d->gidx);
    if (!d->gidx || keep_buf(pq, d->gidx)) {
        free(d->gidx);
        d->gidx = NULL;
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    }
    return 0;
}

static int bind_gptq(wrk_model_t *m, const struct wrk_pq *pq, const char *prefix, int rows,
                     int cols, wrk_pq_src_t *d, pq_tensors_t *t, char *err, size_t errlen)
{
    const int bits = pq->bits, per = 32 / bits;
    const int gs = pq->group > 0 ? pq->group : cols;
    if (cols % per || cols % gs)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "%s.qweight: input dimension %d is not a multiple of %d (" QC
                        ".group_size %d, %d-bit packing)",
                        prefix, cols, cols % gs ? gs : per, pq->group, bits);
    const int G = cols / gs;
    const wrk_st_tensor_t *gi;
    int rc;
    if ((rc = take(m, prefix, "qweight", 1, 2, (int64_t[]){cols / per, rows}, false, &t->q, err,
                   errlen)) ||
        (rc = take(m, prefix, "qzeros", 1, 2, (int64_t[]){G, (rows * (int64_t)bits + 31) / 32},
                   false, &t->z, err, errlen)) ||
        (rc = take(m, prefix, "scales", 0, 2, (int64_t[]){G, rows}, false, &t->s, err, errlen)) ||
        (rc = take(m, prefix, "g_idx", 1, 1, (int64_t[]){cols}, !pq->desc_act, &gi, err, errlen)))
        return rc;
    for (int i = 0; gi && i < cols; i++) {
        const int32_t g = rd_i32(gi, (size_t)i);
        if (g < 0 || g >= G)
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "%s: tensor %s.g_idx[%d] = %d is outside [0, %d)", gi->file, prefix, i,
                            (int)g, G);
    }
    if ((rc = src_init(m->pq, d, rows, cols, G, err, errlen))) return rc;
    for (int i = 0; i < cols; i++)
        d->gidx[i] = gi ? rd_i32(gi, (size_t)i) : i / gs;
    return 0;
}

static void decode_gptq(const struct wrk_pq *pq, const pq_tensors_t *t, wrk_pq_src_t *d)
{
    const int bits = pq->bits, per = 32 / bits, rows = d->rows, cols = d->cols;
    const int zadd = pq->v2 ? 0 : 1;
    const size_t zw = (size_t)(rows * (int64_t)bits + 31) / 32;
    for (int i = 0; i < cols; i++)
        for (int o = 0; o < rows; o++)
            d->q[(size_t)o * cols + i] = (uint8_t)unpack(
                t->q, (size_t)(i / per) * (size_t)rows + (size_t)o, (int64_t)(i % per), bits);
    for (int g = 0; g < d->G; g++)
        for (int o = 0; o < rows; o++) {
            d->z[(size_t)o * d->G + g] = (float)((int)unpack(t->z, (size_t)g * zw, o, bits) + zadd);
            d->s[(size_t)o * d->G + g] = wrk_tensor_f32(t->s, (size_t)g * rows + o);
        }
}

static int bind_ct(wrk_model_t *m, const struct wrk_pq *pq, const char *prefix, int rows, int cols,
                   wrk_pq_src_t *d, pq_tensors_t *t, char *err, size_t errlen)
{
    const int bits = pq->bits, gs = pq->group > 0 ? pq->group : cols;
    if (cols % gs)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "%s: input dimension %d is not a multiple of " QC " group_size %d", prefix,
                        cols, pq->group);
    const int G = cols / gs, off = 1 << (bits - 1);
    const wrk_st_tensor_t *shp;
    int rc;
    const size_t words = (size_t)(cols * (int64_t)bits + 31) / 32;
    if (pq->method == PQ_CT_PACK) {
        if ((rc = take(m, prefix, "weight_packed", 1, 2, (int64_t[]){rows, (int64_t)words}, false,
                       &t->q, err, errlen)) ||
            (rc = take(m, prefix, "weight_shape", 3, 1, (int64_t[]){2}, false, &shp, err, errlen)))
            return rc;
        if (rd_int(shp, 0) != rows || rd_int(shp, 1) != cols)
            return rcd_fail(RCD_EFORMAT, err, errlen,
                            "%s: tensor %s.weight_shape is [%lld,%lld], config.json implies "
                            "[%d,%d]",
                            shp->file, prefix, (long long)rd_int(shp, 0), (long long)rd_int(shp, 1),
                            rows, cols);
    } else {
        if ((rc = take(m, prefix, "weight", 4, 2, (int64_t[]){rows, cols}, false, &t->q, err,
                       errlen)))
            return rc;
    }
    if ((rc = take(m, prefix, "weight_scale", 0, 2, (int64_t[]){rows, G}, false, &t->s, err,
                   errlen)))
        return rc;
    if (!pq->sym) {
        rc = pq->method == PQ_CT_PACK
                 ? take(m, prefix, "weight_zero_point", 1, 2,
                        (int64_t[]){(rows * (int64_t)bits + 31) / 32, G}, false, &t->z, err,
                        errlen)
                 : take(m, prefix, "weight_zero_point", 2, 2, (int64_t[]){rows, G}, false, &t->z,
                        err, errlen);
        if (rc) return rc;
    }
    for (int o = 0; t->z && pq->method == PQ_CT_INT && o < rows; o++)
        for (int g = 0; g < G; g++) {
            const int64_t z = rd_int(t->z, (size_t)o * G + g);
            if (z < -off || z >= off)
                return rcd_fail(RCD_EFORMAT, err, errlen,
                                "%s: tensor %s.weight_zero_point[%d][%d] = %lld is outside "
                                "[%d, %d)",
                                t->z->file, prefix, o, g, (long long)z, -off, off);
        }
    if ((rc = src_init(m->pq, d, rows, cols, G, err, errlen))) return rc;
    for (int i = 0; i < cols; i++)
        d->gidx[i] = i / gs;
    return 0;
}

/* codes kept unsigned (q + 2^(bits-1)), zero points likewise: q - zp unchanged */
static void decode_ct(const struct wrk_pq *pq, const pq_tensors_t *t, wrk_pq_src_t *d)
{
    const int bits = pq->bits, rows = d->rows, cols = d->cols, G = d->G, off = 1 << (bits - 1);
    const size_t words = (size_t)(cols * (int64_t)bits + 31) / 32;
    for (int o = 0; o < rows; o++) {
        for (int i = 0; i < cols; i++)
            d->q[(size_t)o * cols + i] =
                pq->method == PQ_CT_PACK
                    ? (uint8_t)unpack(t->q, (size_t)o * words, i, bits)
                    : (uint8_t)(((const int8_t *)t->q->data)[(size_t)o * cols + i] + off);
        for (int g = 0; g < G; g++) {
            int z = 0;
            if (t->z && pq->method == PQ_CT_PACK) {
                /* packed along dim 0: element o of column g of [ceil(rows*bits/32), G] */
                const int64_t e = o;
                const uint32_t word = (uint32_t)rd_i32(t->z, (size_t)(e * bits / 32) * G + g);
                z = (int)((word >> (e * bits % 32)) & ((1u << bits) - 1)) - off;
            } else if (t->z) {
                z = (int)rd_int(t->z, (size_t)o * G + g); /* in [-off, off): checked at load */
            }
            d->z[(size_t)o * G + g] = (float)(z + off);
            d->s[(size_t)o * G + g] = wrk_tensor_f32(t->s, (size_t)o * G + g);
        }
    }
}

void wrk__pq_src_done(wrk_pq_src_t *d)
{
    free(d->q);
    free(d->s);
    free(d->z);
    d->q = NULL;
    d->s = d->z = NULL;
}

int wrk__pq_src_load(const wrk_model_t *m, const wrk_pq_src_t *src, wrk_pq_src_t *out)
{
    const struct wrk_pq *pq = m->pq;
    *out = *src;
    out->q = NULL;
    out->s = out->z = NULL;
    if (!pq || src < pq->src || src >= pq->src + pq->n_src) return RCD_EINVAL;
    const pq_tensors_t *t = &pq->tens[src - pq->src];
    out->q = malloc((size_t)src->rows * (size_t)src->cols);
    out->s = malloc((size_t)src->rows * (size_t)src->G * sizeof *out->s);
    out->z = malloc((size_t)src->rows * (size_t)src->G * sizeof *out->z);
    if (!out->q || !out->s || !out->z) {
        wrk__pq_src_done(out);
        return RCD_ENOMEM;
    }
    if (pq->method == PQ_GPTQ)
        decode_gptq(pq, t, out);
    else
        decode_ct(pq, t, out);
    return 0;
}
int wrk__pq_take_mat(wrk_model_t *m, const char *name, int rows, int cols, wrk_mat_t *out,
                     bool *done, char *err, size_t errlen)
{
    *done = false;
    const size_t nl = strlen(name);
    if (nl < 8 || nl > 200 || strcmp(name + nl - 7, ".weight") != 0) return 0;
    char prefix[208], probe[256];
    memcpy(prefix, name, nl - 7);
    prefix[nl - 7] = 0;
    struct wrk_pq *pq = m->pq;
    static const char *const marks[] = {"qweight", "weight_packed", "weight_scale"};
    const char *mark = NULL;
    for (int i = 0; i < 3 && !mark; i++) {
        snprintf(probe, sizeof probe, "%s.%s", prefix, marks[i]);
        if (wrk_st_find(m->st, probe)) mark = marks[i];
    }
    if (!mark) return 0; /* not quantized in this file: read as stored */
    if (!pq)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "checkpoint: tensor %s is quantized but config.json has no " QC, probe);
    const bool want = pq->method == PQ_GPTQ      ? !strcmp(mark, "qweight")
                      : pq->method == PQ_CT_PACK ? !strcmp(mark, "weight_packed")
                                                 : !strcmp(mark, "weight_scale");
    if (!want)
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "checkpoint: tensor %s does not belong to " QC " (%s)", probe, pq->desc);
    if (rows <= 0 || cols <= 0)
        return rcd_fail(RCD_EFORMAT, err, errlen, "checkpoint: %s: empty matrix", prefix);
    if (pq->n_src == pq->cap_src) {
        int cap = pq->cap_src ? 2 * pq->cap_src : 32;
        wrk_pq_src_t *n = realloc(pq->src, (size_t)cap * sizeof *n);
        if (n) pq->src = n;
        pq_tensors_t *nt = n ? realloc(pq->tens, (size_t)cap * sizeof *nt) : NULL;
        if (!nt) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        pq->tens = nt;
        pq->cap_src = cap;
    }
    /* The fp32 matrix's address, reserved, not filled: the CPU backend serves the codes, and
     * whatever reads the values (TP shards, CUDA) fills it with wrk__pq_f32_hold. Unreadable
     * until then, so a reader that does not hold it faults instead of reading zeros. */
    const size_t wb = (size_t)rows * (size_t)cols * sizeof(float);
    void *w = mmap(NULL, wb, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (w == MAP_FAILED)
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of address space for %s (%dx%d)", prefix,
                        rows, cols);
    wrk_pq_src_t d = {.w = w};
    pq_tensors_t t = {0};
    int rc = pq->method == PQ_GPTQ ? bind_gptq(m, pq, prefix, rows, cols, &d, &t, err, errlen)
                                   : bind_ct(m, pq, prefix, rows, cols, &d, &t, err, errlen);
    if (rc) {
        munmap(w, wb);
        return rc;
    }
    pq->tens[pq->n_src] = t;
    pq->src[pq->n_src++] = d;
    *out = (wrk_mat_t){.dt = WRK_DT_F32, .data = w, .rows = rows, .cols = cols};
    *done = true;
    return 0;
}
