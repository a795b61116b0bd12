/* Strict JSON reading shared by tok_load.c and tok_pipeline.c: every accessor fails with a
 * message naming the JSON path; tok__jkeys rejects fields it was not told about. */
#ifndef TOK_JSON_H
#define TOK_JSON_H

#include <cjson/cJSON.h>

#include "workers/tokenizer/tok_int.h"

#define TOK__MAX_ID (1 << 24) /* ids beyond this are refused (they size per-id tables) */

typedef struct {
    tok_t *t;
    char *err;
    size_t errlen;
} tok__ld_t;

/* Fails on any key of o that is not in the NULL-terminated list. */
int tok__jkeys(tok__ld_t *l, const cJSON *o, const char *path, const char *const *keys);
const cJSON *tok__jfield(const cJSON *o, const char *key);
/* A missing or null field takes the default. */
int tok__jbool(tok__ld_t *l, const cJSON *o, const char *key, int def, int *out, const char *path);
/* *out is NULL when absent or null, which is an error if required. */
int tok__jstr(tok__ld_t *l, const cJSON *o, const char *key, int required, const char **out,
              const char *path);
int tok__jid(tok__ld_t *l, const cJSON *v, int32_t *out, const char *path);
int tok__jsize(tok__ld_t *l, const cJSON *o, const char *key, size_t *out, const char *path);
const char *tok__jtype(const cJSON *o);
int tok__jchar(tok__ld_t *l, const cJSON *o, const char *key, char out[4], size_t *len,
               const char *path);
int tok__jpattern(tok__ld_t *l, const cJSON *o, tok__pat_t *p, const char *path);
int tok__junsupported(tok__ld_t *l, const char *path, const char *type);

int tok__parse_normalizer(tok__ld_t *l, const cJSON *o, const char *path);
int tok__parse_pretokenizer(tok__ld_t *l, const cJSON *o, const char *path);
int tok__parse_decoder(tok__ld_t *l, const cJSON *o, const char *path);
int tok__parse_post(tok__ld_t *l, const cJSON *o, const char *path);

#endif
