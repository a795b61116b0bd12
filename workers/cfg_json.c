/* workers: typed, range-checked reads of config.json fields (see cfg_json.h). */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "common/rcd_error.h"
#include "workers/cfg_json.h"

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
