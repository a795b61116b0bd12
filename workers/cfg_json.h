/* workers: typed, range-checked reads of config.json fields shared by the model families'
 * config parsers (every error names the field). */
#ifndef RCD_WRK_CFG_JSON_H
#define RCD_WRK_CFG_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

/* An integer field in [lo, hi]; absent or null -> dflt (or an error when dflt < lo: required). */
int wrk_cfg_int(const cJSON *root, const char *key, long dflt, long lo, long hi, long *out,
                char *err, size_t errlen);
/* A boolean field; absent or null -> dflt. */
int wrk_cfg_bool(const cJSON *root, const char *key, bool dflt, bool *out, char *err,
                 size_t errlen);
/* A number field in [lo, hi] (finite); absent or null -> dflt. */
int wrk_cfg_num(const cJSON *root, const char *key, double dflt, double lo, double hi, double *out,
                char *err, size_t errlen);
/* Token ids may be null, absent (-1), an integer or (HF allows it for eos) a list: the first. */
int wrk_cfg_token_id(const cJSON *root, const char *key, int *out, char *err, size_t errlen);
/* bos_token_id, eos_token_id, pad_token_id as wrk_cfg_token_id reads them; an id outside the
 * vocabulary (some configs name one) reads as -1: none. */
int wrk_cfg_special_tokens(const cJSON *root, int vocab, int *bos, int *eos, int *pad, char *err,
                           size_t errlen);
/* "time_step_limit": [min, max] after softplus; max may be {"__float__": "Infinity"} or the
 * string "inf"/"Infinity". Absent -> (0, inf). */
int wrk_cfg_time_step_limit(const cJSON *root, float *lo, float *hi, char *err, size_t errlen);

#endif
