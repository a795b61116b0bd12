/* workers/model: the table-driven config.json parser and typed, range-checked reads of
 * config.json fields (see cfg_json.h). */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "common/rcd_error.h"
#include "workers/model/cfg_json.h"

int wrk_cfg_int(const cJSON *root, const char *key, long dflt, long lo, long hi, long *out,
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

int wrk_cfg_bool(const cJSON *root, const char *key, bool dflt, bool *out, char *err, size_t errlen)
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
int wrk_cfg_token_id(const cJSON *root, const char *key, int *out, char *err, size_t errlen)
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

int wrk_cfg_special_tokens(const cJSON *root, int vocab, int *bos, int *eos, int *pad, char *err,
                           size_t errlen)
{
    int rc;
    if ((rc = wrk_cfg_token_id(root, "bos_token_id", bos, err, errlen)) ||
        (rc = wrk_cfg_token_id(root, "eos_token_id", eos, err, errlen)) ||
        (rc = wrk_cfg_token_id(root, "pad_token_id", pad, err, errlen)))
        return rc;
    if (*bos >= vocab) *bos = -1;
    if (*eos >= vocab) *eos = -1;
    if (*pad >= vocab) *pad = -1;
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

int wrk_cfg_time_step_limit(const cJSON *root, float *lo_out, float *hi_out, char *err,
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
    *lo_out = (float)lo;
    *hi_out = (float)hi;
    return 0;
}

int wrk_cfg_num(const cJSON *root, const char *key, double dflt, double lo, double hi, double *out,
                char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi))
        return rcd_fail(RCD_EFORMAT, err, errlen,
                        "config.json: \"%s\" must be a number in [%g, %g]", key, lo, hi);
    *out = v->valuedouble;
    return 0;
}

static int read_row(const cJSON *root, const wrk_cfg_row_t *r, char *base, char *err,
                    size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, r->key);
    void *dst = r->off == WRK_CFG_NONE ? NULL : base + r->off;
    if (r->type == WRK_CFG_STR) {
        if (!v || (r->null_ok && cJSON_IsNull(v)) ||
            (cJSON_IsString(v) && strcmp(v->valuestring, r->str) == 0))
            return 0;
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen, "config.json: %s must be \"%s\"%s%s%s",
                        r->key, r->str, r->why ? " (" : "", r->why ? r->why : "",
                        r->why ? ")" : "");
    }
    if (r->required && (!v || cJSON_IsNull(v)))
        return rcd_fail(RCD_EFORMAT, err, errlen, "config.json: required field \"%s\" missing",
                        r->key);
    int rc = 0;
    switch (r->type) {
    case WRK_CFG_INT: {
        long x = 0;
        rc = wrk_cfg_int(root, r->key, (long)r->dflt, (long)r->lo, (long)r->hi, &x, err, errlen);
        if (!rc && dst) *(int *)dst = (int)x;
        break;
    }
    case WRK_CFG_FLOAT: {
        double x = 0;
        rc = wrk_cfg_num(root, r->key, r->dflt, r->lo, r->hi, &x, err, errlen);
        if (!rc && dst) *(float *)dst = (float)x;
        break;
    }
    case WRK_CFG_BOOL: {
        bool x = false;
        rc = wrk_cfg_bool(root, r->key, r->dflt != 0, &x, err, errlen);
        if (!rc && r->why && x != (r->dflt != 0))
            rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                          "config.json: \"%s\": %s is not supported (%s)", r->key,
                          x ? "true" : "false", r->why);
        if (!rc && dst) *(bool *)dst = x;
        break;
    }
    case WRK_CFG_STR: break;
    }
    return rc;
}

int wrk_cfg_parse(const char *json, size_t len, const wrk_cfg_spec_t *spec, void *cfg, char *err,
                  size_t errlen)
{
    int rc = 0;
    char *base = cfg;
    cJSON *root = cJSON_ParseWithLength(json, len);
    memset(cfg, 0, spec->size);
    if (!root || !cJSON_IsObject(root)) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen, "config.json: not a JSON object");
        goto cleanup;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt) || strcmp(mt->valuestring, spec->model_type) != 0) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen, "config.json: model_type is not \"%s\"",
                      spec->model_type);
        goto cleanup;
    }
    for (size_t i = 0; i < spec->n_rows; i++)
        if ((rc = read_row(root, &spec->rows[i], base, err, errlen))) goto cleanup;
    if (spec->derive && (rc = spec->derive(root, cfg, err, errlen))) goto cleanup;
    rc = wrk_cfg_special_tokens(root, *(int *)(base + spec->vocab), (int *)(base + spec->bos),
                                (int *)(base + spec->eos), (int *)(base + spec->pad), err, errlen);
cleanup:
    cJSON_Delete(root);
    return rc;
}
