/* workers/model: config.json parsing for every model family — one generic parser driven by
 * each family's table of fields (key, type, default or required, valid range, target field),
 * and the typed, range-checked reads its derived fields use. Every error names the field. */
#ifndef RCD_WRK_CFG_JSON_H
#define RCD_WRK_CFG_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef enum wrk_cfg_type {
    WRK_CFG_INT,   /* an integer in [lo, hi] into an int */
    WRK_CFG_FLOAT, /* a number in [lo, hi] into a float (ranges are checked on the double) */
    WRK_CFG_BOOL,  /* true or false into a bool; with `why`, only the default is served */
    WRK_CFG_STR,   /* a string that must equal `str` (nothing kept); absent is fine */
} wrk_cfg_type_t;

#define WRK_CFG_NONE (-1) /* off: checked, not kept */

/* One config.json field. Absent (or null, except for STR rows without null_ok) reads as the
 * default, or is an error when `required`. */
typedef struct wrk_cfg_row {
    const char *key;
    wrk_cfg_type_t type;
    double dflt;
    double lo, hi;
    ptrdiff_t off;   /* offsetof(the family's config, the field), or WRK_CFG_NONE */
    bool required;
    const char *str; /* STR: the one value served */
    const char *why; /* BOOL/STR: why other values are refused (RCD_EUNSUPPORTED) */
    bool null_ok;    /* STR: null reads as absent */
} wrk_cfg_row_t;

#define WRK_CFG_I(key_, dflt_, lo_, hi_, off_)                                                    \
    {.key = key_, .type = WRK_CFG_INT, .dflt = dflt_, .lo = lo_, .hi = hi_, .off = off_}
#define WRK_CFG_F(key_, dflt_, lo_, hi_, off_)                                                    \
    {.key = key_, .type = WRK_CFG_FLOAT, .dflt = dflt_, .lo = lo_, .hi = hi_, .off = off_}
#define WRK_CFG_B(key_, dflt_, off_) {.key = key_, .type = WRK_CFG_BOOL, .dflt = dflt_, .off = off_}
/* A flag whose other value would mean another model: refused, not silently computed. */
#define WRK_CFG_ONLY(key_, value_, why_)                                                          \
    {.key = key_, .type = WRK_CFG_BOOL, .dflt = value_, .off = WRK_CFG_NONE, .why = why_}
#define WRK_CFG_S(key_, str_, why_, null_ok_)                                                     \
    {.key = key_, .type = WRK_CFG_STR, .off = WRK_CFG_NONE, .str = str_, .why = why_,             \
     .null_ok = null_ok_}

/* A family's config.json: its model_type, its rows (read in order into a config struct of
 * `size` bytes, zeroed first), then `derive` for the fields that depend on others (may be
 * NULL), then bos/eos/pad_token_id as wrk_cfg_special_tokens reads them against the int at
 * `vocab`. */
typedef struct wrk_cfg_spec {
    const char *model_type;
    const wrk_cfg_row_t *rows;
    size_t n_rows;
    size_t size;
    int (*derive)(const cJSON *root, void *cfg, char *err, size_t errlen);
    ptrdiff_t vocab, bos, eos, pad;
} wrk_cfg_spec_t;

/* Defines the family's spec `spec` over `rows_` and `derive_`, and its typed parser
 * `int fn(const char *json, size_t len, type *cfg, char *err, size_t errlen)`; `lm` is where
 * vocab and bos_id/eos_id/pad_id sit in `type`: empty, or a member path ending in '.'. */
#define WRK_CFG_PARSER(fn, spec, type, model_type_, rows_, derive_, lm)                           \
    static const wrk_cfg_spec_t spec = {.model_type = model_type_,                                \
                                             .rows = rows_,                                       \
                                             .n_rows = sizeof rows_ / sizeof rows_[0],            \
                                             .size = sizeof(type),                                \
                                             .derive = derive_,                                   \
                                             .vocab = offsetof(type, lm vocab),                   \
                                             .bos = offsetof(type, lm bos_id),                    \
                                             .eos = offsetof(type, lm eos_id),                    \
                                             .pad = offsetof(type, lm pad_id)};                   \
    int fn(const char *json, size_t len, type *cfg, char *err, size_t errlen)                     \
    {                                                                                             \
        return wrk_cfg_parse(json, len, &spec, cfg, err, errlen);                                 \
    }

/* Parses json (len bytes) as spec's family's config.json into cfg. RCD_EFORMAT (a value of the
 * wrong type or out of range, not JSON) or RCD_EUNSUPPORTED (another model_type or a setting
 * not served) with a message naming the field. */
int wrk_cfg_parse(const char *json, size_t len, const wrk_cfg_spec_t *spec, void *cfg, char *err,
                  size_t errlen);

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
