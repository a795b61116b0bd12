/* Loading of tokenizer.json / tokenizer_config.json into a tok_t, the getters, and tok_free.
 * Every component type and field is checked: anything not implemented is a load error that
 * names its JSON path, so a tokenizer is either reproduced exactly or refused. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

#define MAX_ID (1 << 24)

typedef struct {
    tok_t *t;
    char *err;
    size_t errlen;
} ld_t;

/* ---- small JSON helpers ---------------------------------------------------------------- */

/* Fails on any key of o that is not in the NULL-terminated list. */
static int known_keys(ld_t *l, const cJSON *o, const char *path, const char *const *keys)
{
    for (const cJSON *c = o->child; c; c = c->next) {
        int ok = 0;
        for (const char *const *k = keys; *k && !ok; k++)
            ok = strcmp(c->string, *k) == 0;
        if (!ok)
            return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen,
                            "%s: field \"%s\" is not supported", path, c->string);
    }
    return 0;
}

static const cJSON *field(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static int get_bool(ld_t *l, const cJSON *o, const char *key, int def, int *out,
                    const char *path)
{
    const cJSON *v = field(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected a boolean", path, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* String field; *out NULL when absent or null (if allowed). */
static int get_str(ld_t *l, const cJSON *o, const char *key, int required, const char **out,
                   const char *path)
{
    const cJSON *v = field(o, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: missing", path, key);
        return 0;
    }
    if (!cJSON_IsString(v))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected a string", path, key);
    *out = v->valuestring;
    return 0;
}

static int get_id(ld_t *l, const cJSON *v, int32_t *out, const char *path)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= MAX_ID ||
        (double)(int64_t)v->valuedouble != v->valuedouble)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen,
                        "%s: expected a token id in [0, %d)", path, MAX_ID);
    *out = (int32_t)v->valuedouble;
    return 0;
}

static int get_size(ld_t *l, const cJSON *o, const char *key, size_t *out, const char *path)
{
    const cJSON *v = field(o, key);
    if (!v || !cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e9 ||
        (double)(int64_t)v->valuedouble != v->valuedouble)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected a count", path, key);
    *out = (size_t)v->valuedouble;
    return 0;
}

static const char *type_of(const cJSON *o)
{
    const cJSON *t = field(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* A single character (Metaspace replacement, Strip content). */
static int get_char(ld_t *l, const cJSON *o, const char *key, char out[4], size_t *len,
                    const char *path)
{
    const char *s;
    int rc = get_str(l, o, key, 1, &s, path);
    if (rc)
        return rc;
    size_t n = strlen(s);
    size_t k = tok__utf8_seq((const unsigned char *)s, n);
    if (!k || k != n)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected one character", path,
                        key);
    memcpy(out, s, k);
    *len = k;
    return 0;
}

/* A Pattern: {"String": "..."} or {"Regex": "..."}. */
static int get_pattern(ld_t *l, const cJSON *o, tok__pat_t *p, const char *path)
{
    const cJSON *v = field(o, "pattern");
    memset(p, 0, sizeof(*p));
    if (!cJSON_IsObject(v) || !v->child || v->child->next || !cJSON_IsString(v->child))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen,
                        "%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", path);
    const char *s = v->child->valuestring;
    if (strcmp(v->child->string, "String") == 0)
        return tok__pat_set_literal(p, s, strlen(s));
    if (strcmp(v->child->string, "Regex") == 0) {
        char msg[200];
        int rc = tok__pat_compile_regex(p, s, strlen(s), msg, sizeof(msg));
        if (rc)
            return rcd_fail(rc, l->err, l->errlen, "%s.pattern: %s", path, msg);
        return 0;
    }
    return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s.pattern: kind \"%s\" is not supported",
                    path, v->child->string);
}

static int unsupported_type(ld_t *l, const char *path, const char *type)
{
    if (!type)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.type: missing", path);
    return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s.type \"%s\" is not supported", path,
                    type);
}

/* ---- normalizers ----------------------------------------------------------------------- */

static int parse_normalizer(ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    const char *type = type_of(o);
    char sub[256];
    int rc;
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
    if (type && strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "normalizers", NULL};
        if ((rc = known_keys(l, o, path, keys)))
            return rc;
        const cJSON *arr = field(o, "normalizers");
        if (!cJSON_IsArray(arr))
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.normalizers: expected an array",
                            path);
        int i = 0;
        for (const cJSON *c = arr->child; c; c = c->next, i++) {
            snprintf(sub, sizeof(sub), "%s.normalizers[%d]", path, i);
            if ((rc = parse_normalizer(l, c, sub)))
                return rc;
        }
        return 0;
    }
    if (t->n_norms == TOK__MAX_STAGES)
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s: more than %d normalizers",
                        path, TOK__MAX_STAGES);
    tok__norm_t *n = &t->norms[t->n_norms];
    memset(n, 0, sizeof(*n));
    static const char *const k_type[] = {"type", NULL};
    if (type && (strcmp(type, "NFC") == 0 || strcmp(type, "NFD") == 0 ||
                 strcmp(type, "NFKC") == 0 || strcmp(type, "NFKD") == 0)) {
        if ((rc = known_keys(l, o, path, k_type)))
            return rc;
        n->kind = strcmp(type, "NFC") == 0    ? TOK__N_NFC
                  : strcmp(type, "NFD") == 0  ? TOK__N_NFD
                  : strcmp(type, "NFKC") == 0 ? TOK__N_NFKC
                                              : TOK__N_NFKD;
    } else if (type && strcmp(type, "Prepend") == 0) {
        static const char *const keys[] = {"type", "prepend", NULL};
        const char *s;
        if ((rc = known_keys(l, o, path, keys)) || (rc = get_str(l, o, "prepend", 1, &s, path)))
            return rc;
        n->kind = TOK__N_PREPEND;
        n->str = strdup(s);
        n->str_len = strlen(s);
        if (!n->str)
            return RCD_ENOMEM;
    } else if (type && strcmp(type, "Replace") == 0) {
        static const char *const keys[] = {"type", "pattern", "content", NULL};
        const char *s;
        if ((rc = known_keys(l, o, path, keys)) || (rc = get_str(l, o, "content", 1, &s, path)))
            return rc;
        n->kind = TOK__N_REPLACE;
        n->str = strdup(s);
        n->str_len = strlen(s);
        if (!n->str)
            return RCD_ENOMEM;
        t->n_norms++; /* owned from here on, even if the pattern fails */
        return get_pattern(l, o, &n->pat, path);
    } else if (type && strcmp(type, "Strip") == 0) {
        static const char *const keys[] = {"type", "strip_left", "strip_right", NULL};
        if ((rc = known_keys(l, o, path, keys)) ||
            (rc = get_bool(l, o, "strip_left", 1, &n->left, path)) ||
            (rc = get_bool(l, o, "strip_right", 1, &n->right, path)))
            return rc;
        n->kind = TOK__N_STRIP;
    } else {
        return unsupported_type(l, path, type);
    }
    t->n_norms++;
    return 0;
}

/* ---- pre-tokenizers -------------------------------------------------------------------- */

static int parse_prepend_scheme(ld_t *l, const cJSON *o, int *out, const char *path)
{
    const char *s;
    int rc = get_str(l, o, "prepend_scheme", 0, &s, path);
    if (rc)
        return rc;
    if (!s) { /* older files: add_prefix_space */
        int aps;
        if ((rc = get_bool(l, o, "add_prefix_space", 1, &aps, path)))
            return rc;
        *out = aps ? TOK__PREPEND_ALWAYS : TOK__PREPEND_NEVER;
        return 0;
    }
    if (strcmp(s, "always") == 0)
        *out = TOK__PREPEND_ALWAYS;
    else if (strcmp(s, "first") == 0)
        *out = TOK__PREPEND_FIRST;
    else if (strcmp(s, "never") == 0)
        *out = TOK__PREPEND_NEVER;
    else
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen,
                        "%s.prepend_scheme \"%s\" is not supported", path, s);
    return 0;
}

static int parse_pretokenizer(ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    const char *type = type_of(o);
    char sub[256];
    int rc;
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
    if (type && strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "pretokenizers", NULL};
        if ((rc = known_keys(l, o, path, keys)))
            return rc;
        const cJSON *arr = field(o, "pretokenizers");
        if (!cJSON_IsArray(arr))
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen,
                            "%s.pretokenizers: expected an array", path);
        int i = 0;
        for (const cJSON *c = arr->child; c; c = c->next, i++) {
            snprintf(sub, sizeof(sub), "%s.pretokenizers[%d]", path, i);
            if ((rc = parse_pretokenizer(l, c, sub)))
                return rc;
        }
        return 0;
    }
    if (t->n_pres == TOK__MAX_STAGES)
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s: more than %d pre-tokenizers",
                        path, TOK__MAX_STAGES);
    tok__pre_t *p = &t->pres[t->n_pres];
    memset(p, 0, sizeof(*p));
    if (type && strcmp(type, "ByteLevel") == 0) {
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets",
                                           "use_regex", NULL};
        int trim;
        if ((rc = known_keys(l, o, path, keys)) ||
            (rc = get_bool(l, o, "add_prefix_space", 1, &p->add_prefix_space, path)) ||
            (rc = get_bool(l, o, "trim_offsets", 1, &trim, path)) || /* offsets only */
            (rc = get_bool(l, o, "use_regex", 1, &p->use_regex, path)))
            return rc;
        p->kind = TOK__P_BYTELEVEL;
        t->n_pres++;
        if (p->use_regex) {
            char msg[200];
            rc = tok__pat_compile_regex(&p->pat, tok__gpt2_pattern, strlen(tok__gpt2_pattern),
                                        msg, sizeof(msg));
            if (rc)
                return rcd_fail(rc, l->err, l->errlen, "%s: GPT-2 regex: %s", path, msg);
        }
        return 0;
    }
    if (type && strcmp(type, "Metaspace") == 0) {
        static const char *const keys[] = {"type", "replacement", "prepend_scheme", "split",
                                           "add_prefix_space", "str_rep", NULL};
        if ((rc = known_keys(l, o, path, keys)) ||
            (rc = get_char(l, o, "replacement", p->rep, &p->rep_len, path)) ||
            (rc = parse_prepend_scheme(l, o, &p->prepend, path)) ||
            (rc = get_bool(l, o, "split", 1, &p->split, path)))
            return rc;
        p->kind = TOK__P_METASPACE;
        t->n_pres++;
        return 0;
    }
    if (type && strcmp(type, "Split") == 0) {
        static const char *const keys[] = {"type", "pattern", "behavior", "invert", NULL};
        const char *b;
        if ((rc = known_keys(l, o, path, keys)) ||
            (rc = get_str(l, o, "behavior", 1, &b, path)) ||
            (rc = get_bool(l, o, "invert", 0, &p->invert, path)))
            return rc;
        if (strcmp(b, "Removed") == 0)
            p->behavior = TOK__SPLIT_REMOVED;
        else if (strcmp(b, "Isolated") == 0)
            p->behavior = TOK__SPLIT_ISOLATED;
        else if (strcmp(b, "MergedWithPrevious") == 0)
            p->behavior = TOK__SPLIT_MERGED_PREV;
        else if (strcmp(b, "MergedWithNext") == 0)
            p->behavior = TOK__SPLIT_MERGED_NEXT;
        else if (strcmp(b, "Contiguous") == 0)
            p->behavior = TOK__SPLIT_CONTIGUOUS;
        else
            return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen,
                            "%s.behavior \"%s\" is not supported", path, b);
        p->kind = TOK__P_SPLIT;
        t->n_pres++;
        return get_pattern(l, o, &p->pat, path);
    }
    if (type && strcmp(type, "Digits") == 0) {
        static const char *const keys[] = {"type", "individual_digits", NULL};
        if ((rc = known_keys(l, o, path, keys)) ||
            (rc = get_bool(l, o, "individual_digits", 0, &p->individual, path)))
            return rc;
        p->kind = TOK__P_DIGITS;
        t->n_pres++;
        return 0;
    }
    return unsupported_type(l, path, type);
}

/* ---- decoders -------------------------------------------------------------------------- */

static int parse_decoder(ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    const char *type = type_of(o);
    char sub[256];
    int rc;
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
    if (type && strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "decoders", NULL};
        if ((rc = known_keys(l, o, path, keys)))
            return rc;
        const cJSON *arr = field(o, "decoders");
        if (!cJSON_IsArray(arr))
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.decoders: expected an array",
                            path);
        int i = 0;
        for (const cJSON *c = arr->child; c; c = c->next, i++) {
            snprintf(sub, sizeof(sub), "%s.decoders[%d]", path, i);
            if ((rc = parse_decoder(l, c, sub)))
                return rc;
        }
        return 0;
    }
    if (t->n_decs == TOK__MAX_STAGES)
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s: more than %d decoders", path,
                        TOK__MAX_STAGES);
    tok__dec_t *d = &t->decs[t->n_decs];
    memset(d, 0, sizeof(*d));
    static const char *const k_type[] = {"type", NULL};
    if (type && strcmp(type, "ByteLevel") == 0) {
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets",
                                           "use_regex", NULL};
        if ((rc = known_keys(l, o, path, keys)))
            return rc;
        d->kind = TOK__D_BYTELEVEL;
    } else if (type && strcmp(type, "Metaspace") == 0) {
        static const char *const keys[] = {"type", "replacement", "prepend_scheme", "split",
                                           "add_prefix_space", "str_rep", NULL};
        int scheme, split;
        if ((rc = known_keys(l, o, path, keys)) ||
            (rc = get_char(l, o, "replacement", d->rep, &d->rep_len, path)) ||
            (rc = parse_prepend_scheme(l, o, &scheme, path)) ||
            (rc = get_bool(l, o, "split", 1, &split, path)))
            return rc;
        d->kind = TOK__D_METASPACE;
        d->drop_first = scheme != TOK__PREPEND_NEVER;
    } else if (type && strcmp(type, "Replace") == 0) {
        static const char *const keys[] = {"type", "pattern", "content", NULL};
        const char *s;
        if ((rc = known_keys(l, o, path, keys)) || (rc = get_str(l, o, "content", 1, &s, path)))
            return rc;
        d->kind = TOK__D_REPLACE;
        d->content = strdup(s);
        d->content_len = strlen(s);
        if (!d->content)
            return RCD_ENOMEM;
        t->n_decs++;
        return get_pattern(l, o, &d->pat, path);
    } else if (type && strcmp(type, "ByteFallback") == 0) {
        if ((rc = known_keys(l, o, path, k_type)))
            return rc;
        d->kind = TOK__D_BYTEFALLBACK;
    } else if (type && strcmp(type, "Fuse") == 0) {
        if ((rc = known_keys(l, o, path, k_type)))
            return rc;
        d->kind = TOK__D_FUSE;
    } else if (type && strcmp(type, "Strip") == 0) {
        static const char *const keys[] = {"type", "content", "start", "stop", NULL};
        char c[4];
        size_t cl;
        if ((rc = known_keys(l, o, path, keys)) ||
            (rc = get_char(l, o, "content", c, &cl, path)) ||
            (rc = get_size(l, o, "start", &d->start, path)) ||
            (rc = get_size(l, o, "stop", &d->stop, path)))
            return rc;
        tok__utf8_next((const unsigned char *)c, &d->strip_cp);
        d->kind = TOK__D_STRIP;
    } else {
        return unsupported_type(l, path, type);
    }
    t->n_decs++;
    return 0;
}

/* ---- post-processor -------------------------------------------------------------------- */

static int append_ids(int32_t **v, size_t *n, const int32_t *add, size_t k, int front)
{
    int32_t *p = realloc(*v, (*n + k + 1) * sizeof(*p));
    if (!p)
        return RCD_ENOMEM;
    if (front) {
        memmove(p + k, p, *n * sizeof(*p));
        memcpy(p, add, k * sizeof(*p));
    } else {
        memcpy(p + *n, add, k * sizeof(*p));
    }
    *v = p;
    *n += k;
    return 0;
}

/* One special token of a processor: a [content, id] pair (Bert/Roberta). */
static int pair_id(ld_t *l, const cJSON *o, const char *key, int32_t *id, const char *path)
{
    const cJSON *v = field(o, key);
    char sub[256];
    snprintf(sub, sizeof(sub), "%s.%s", path, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 || !cJSON_IsString(v->child))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected [token, id]", sub);
    return get_id(l, v->child->next, id, sub);
}

static int parse_template(ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    static const char *const keys[] = {"type", "single", "pair", "special_tokens", NULL};
    int rc = known_keys(l, o, path, keys);
    if (rc)
        return rc;
    const cJSON *single = field(o, "single"), *sp = field(o, "special_tokens");
    if (!cJSON_IsArray(single))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.single: expected an array", path);
    int32_t *pre = NULL, *post = NULL;
    size_t n_pre = 0, n_post = 0;
    int seen_a = 0, i = 0;
    char sub[256];
    for (const cJSON *it = single->child; it; it = it->next, i++) {
        snprintf(sub, sizeof(sub), "%s.single[%d]", path, i);
        const cJSON *body = it->child;
        if (!cJSON_IsObject(it) || !body || body->next || !cJSON_IsObject(body)) {
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected one piece", sub);
            goto cleanup;
        }
        const cJSON *idv = field(body, "id");
        if (!cJSON_IsString(idv)) {
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.id: expected a string", sub);
            goto cleanup;
        }
        if (strcmp(body->string, "Sequence") == 0) {
            if (strcmp(idv->valuestring, "A") != 0 || seen_a) {
                rc = rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen,
                              "%s: only one sequence \"A\" is supported in a single template",
                              sub);
                goto cleanup;
            }
            seen_a = 1;
            continue;
        }
        if (strcmp(body->string, "SpecialToken") != 0) {
            rc = rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s: piece \"%s\" is not supported",
                          sub, body->string);
            goto cleanup;
        }
        const cJSON *st = field(sp, idv->valuestring);
        const cJSON *ids = st ? field(st, "ids") : NULL;
        if (!cJSON_IsArray(ids)) {
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen,
                          "%s.special_tokens: no ids for \"%s\"", path, idv->valuestring);
            goto cleanup;
        }
        for (const cJSON *x = ids->child; x; x = x->next) {
            int32_t id;
            if ((rc = get_id(l, x, &id, sub)))
                goto cleanup;
            if ((rc = seen_a ? append_ids(&post, &n_post, &id, 1, 0)
                             : append_ids(&pre, &n_pre, &id, 1, 0)))
                goto cleanup;
        }
    }
    if (!seen_a) {
        rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.single: no sequence \"A\"", path);
        goto cleanup;
    }
    /* a later processor of a Sequence wraps what the earlier ones produced */
    if ((rc = append_ids(&t->post_pre, &t->n_post_pre, pre, n_pre, 1)) ||
        (rc = append_ids(&t->post_post, &t->n_post_post, post, n_post, 0)))
        goto cleanup;
cleanup:
    free(pre);
    free(post);
    return rc;
}

static int parse_post(ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    const char *type = type_of(o);
    char sub[256];
    int rc;
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
    if (type && strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "processors", NULL};
        if ((rc = known_keys(l, o, path, keys)))
            return rc;
        const cJSON *arr = field(o, "processors");
        if (!cJSON_IsArray(arr))
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.processors: expected an array",
                            path);
        int i = 0;
        for (const cJSON *c = arr->child; c; c = c->next, i++) {
            snprintf(sub, sizeof(sub), "%s.processors[%d]", path, i);
            if ((rc = parse_post(l, c, sub)))
                return rc;
        }
        return 0;
    }
    if (type && strcmp(type, "ByteLevel") == 0) { /* offsets only; ids unchanged */
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets",
                                           "use_regex", NULL};
        return known_keys(l, o, path, keys);
    }
    if (type && strcmp(type, "TemplateProcessing") == 0)
        return parse_template(l, o, path);
    if (type && (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0)) {
        static const char *const keys[] = {"type", "sep", "cls", "trim_offsets",
                                           "add_prefix_space", NULL};
        int32_t cls, sep;
        if ((rc = known_keys(l, o, path, keys)) || (rc = pair_id(l, o, "cls", &cls, path)) ||
            (rc = pair_id(l, o, "sep", &sep, path)))
            return rc;
        if ((rc = append_ids(&t->post_pre, &t->n_post_pre, &cls, 1, 1)) ||
            (rc = append_ids(&t->post_post, &t->n_post_post, &sep, 1, 0)))
            return rc;
        return 0;
    }
    return unsupported_type(l, path, type);
}

/* ---- model ----------------------------------------------------------------------------- */

static int opt_affix(ld_t *l, const cJSON *o, const char *key, char **out, size_t *len,
                     const char *path)
{
    const char *s;
    int rc = get_str(l, o, key, 0, &s, path);
    if (rc || !s || !*s) /* "" behaves exactly as none */
        return rc;
    *out = strdup(s);
    *len = strlen(s);
    return *out ? 0 : RCD_ENOMEM;
}

static int merge_token(ld_t *l, const char *s, size_t n, int32_t *id, const char *path)
{
    *id = tok__strmap_get(&l->t->bpe.vocab, s, n);
    if (*id < 0)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: token \"%.*s\" is not in the vocab",
                        path, (int)(n > 64 ? 64 : n), s);
    return 0;
}

static int parse_model(ld_t *l, const cJSON *o)
{
    tok__bpe_t *m = &l->t->bpe;
    const char *path = "model";
    static const char *const keys[] = {"type", "dropout", "unk_token",
                                       "continuing_subword_prefix", "end_of_word_suffix",
                                       "fuse_unk", "byte_fallback", "ignore_merges", "vocab",
                                       "merges", NULL};
    int rc;
    tok__buf_t tmp = {0};
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "model: missing or not an object");
    const char *type = type_of(o);
    if (type ? strcmp(type, "BPE") != 0 : !field(o, "merges"))
        return unsupported_type(l, path, type);
    if ((rc = known_keys(l, o, path, keys)))
        return rc;
    const cJSON *dropout = field(o, "dropout");
    if (dropout && !cJSON_IsNull(dropout) &&
        !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0))
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen,
                        "model.dropout: BPE dropout is not supported (not deterministic)");
    const char *unk;
    if ((rc = get_str(l, o, "unk_token", 0, &unk, path)) ||
        (rc = get_bool(l, o, "fuse_unk", 0, &m->fuse_unk, path)) ||
        (rc = get_bool(l, o, "byte_fallback", 0, &m->byte_fallback, path)) ||
        (rc = get_bool(l, o, "ignore_merges", 0, &m->ignore_merges, path)) ||
        (rc = opt_affix(l, o, "continuing_subword_prefix", &m->prefix, &m->prefix_len, path)) ||
        (rc = opt_affix(l, o, "end_of_word_suffix", &m->suffix, &m->suffix_len, path)))
        return rc;
    if (unk && !(m->unk_name = strdup(unk)))
        return RCD_ENOMEM;

    const cJSON *vocab = field(o, "vocab");
    if (!cJSON_IsObject(vocab))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "model.vocab: expected an object");
    if ((rc = tok__strmap_init(&m->vocab, (size_t)cJSON_GetArraySize(vocab))))
        return rc;
    char sub[320];
    for (const cJSON *c = vocab->child; c; c = c->next) {
        int32_t id;
        snprintf(sub, sizeof(sub), "model.vocab[\"%.64s\"]", c->string);
        if ((rc = get_id(l, c, &id, sub)))
            return rc;
        rc = tok__strmap_add(&m->vocab, c->string, strlen(c->string), id);
        if (rc == 1)
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: duplicate token", sub);
        if (rc == RCD_EEXISTS)
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: id %d is used twice", sub, id);
        if (rc)
            return rc;
    }
    m->unk_id = unk ? tok__strmap_get(&m->vocab, unk, strlen(unk)) : -1;

    const cJSON *merges = field(o, "merges");
    if (!cJSON_IsArray(merges))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "model.merges: expected an array");
    size_t n_merges = (size_t)cJSON_GetArraySize(merges);
    if ((rc = tok__mergemap_init(&m->merges, n_merges)))
        return rc;
    uint32_t rank = 0;
    for (const cJSON *c = merges->child; c; c = c->next, rank++) {
        const char *a, *b;
        size_t na, nb;
        snprintf(sub, sizeof(sub), "model.merges[%u]", rank);
        if (cJSON_IsString(c)) { /* "a b": exactly one space, as HF requires */
            a = c->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return rcd_fail(RCD_EFORMAT, l->err, l->errlen,
                                "%s: expected \"left right\"", sub);
            na = (size_t)(sp - a);
            b = sp + 1;
            nb = strlen(b);
        } else if (cJSON_IsArray(c) && cJSON_GetArraySize(c) == 2 && cJSON_IsString(c->child) &&
                   cJSON_IsString(c->child->next)) {
            a = c->child->valuestring;
            na = strlen(a);
            b = c->child->next->valuestring;
            nb = strlen(b);
        } else {
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected a pair", sub);
        }
        int32_t ia, ib, inew;
        if ((rc = merge_token(l, a, na, &ia, sub)) || (rc = merge_token(l, b, nb, &ib, sub)))
            goto cleanup;
        tmp.n = 0;
        const char *bb = b;
        size_t nbb = nb;
        if (m->prefix && nb >= m->prefix_len && memcmp(b, m->prefix, m->prefix_len) == 0) {
            bb += m->prefix_len;
            nbb -= m->prefix_len;
        }
        if ((rc = tok__buf_put(&tmp, a, na)) || (rc = tok__buf_put(&tmp, bb, nbb)))
            goto cleanup;
        if ((rc = merge_token(l, tmp.p, tmp.n, &inew, sub)))
            goto cleanup;
        tok__mergemap_put(&m->merges, ia, ib, rank, inew);
    }
    rc = tok__bpe_finish_load(m, l->err, l->errlen);
cleanup:
    tok__buf_free(&tmp);
    return rc;
}

/* ---- added tokens ---------------------------------------------------------------------- */

static int parse_added(ld_t *l, const cJSON *arr)
{
    tok_t *t = l->t;
    static const char *const keys[] = {"id", "content", "single_word", "lstrip", "rstrip",
                                       "normalized", "special", NULL};
    tok__buf_t pool = {0}, norm = {0}, tmp = {0};
    pcre2_match_data *md = NULL;
    int rc = 0;
    if (!arr || cJSON_IsNull(arr))
        return 0;
    if (!cJSON_IsArray(arr))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "added_tokens: expected an array");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = calloc(n ? n : 1, sizeof(*t->added));
    if (!t->added || (rc = tok__strmap_init(&t->added_map, n)))
        return RCD_ENOMEM;
    char path[64];
    int i = 0;
    for (const cJSON *c = arr->child; c; c = c->next, i++) {
        snprintf(path, sizeof(path), "added_tokens[%d]", i);
        if (!cJSON_IsObject(c)) {
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
            goto cleanup;
        }
        tok__added_t *a = &t->added[t->n_added];
        const char *content;
        int sw, ls, rs, nz, sp;
        if ((rc = known_keys(l, c, path, keys)) ||
            (rc = get_str(l, c, "content", 1, &content, path)) ||
            (rc = get_id(l, field(c, "id"), &a->id, path)) ||
            (rc = get_bool(l, c, "single_word", 0, &sw, path)) ||
            (rc = get_bool(l, c, "lstrip", 0, &ls, path)) ||
            (rc = get_bool(l, c, "rstrip", 0, &rs, path)) ||
            (rc = get_bool(l, c, "special", 0, &sp, path)) ||
            (rc = get_bool(l, c, "normalized", !sp, &nz, path)))
            goto cleanup;
        size_t len = strlen(content);
        if (!len) /* HF ignores empty added tokens */
            continue;
        a->single_word = (uint8_t)sw;
        a->lstrip = (uint8_t)ls;
        a->rstrip = (uint8_t)rs;
        a->special = (uint8_t)sp;
        a->normalized = (uint8_t)nz;
        a->off = (uint32_t)pool.n;
        a->len = (uint32_t)len;
        if ((rc = tok__buf_put(&pool, content, len + 1)))
            goto cleanup;
        if (nz) { /* matched against the normalized text, in its normalized form */
            char msg[200];
            if ((rc = tok__normalize(t, content, len, &norm, &tmp, &md, msg, sizeof(msg)))) {
                rc = rcd_fail(rc, l->err, l->errlen, "%s: normalizing: %s", path, msg);
                goto cleanup;
            }
            a->norm_off = (uint32_t)pool.n;
            a->norm_len = (uint32_t)norm.n;
            if ((rc = tok__buf_put(&pool, norm.p, norm.n + 1)))
                goto cleanup;
        }
        rc = tok__strmap_add(&t->added_map, content, len, a->id);
        if (rc == RCD_EEXISTS) {
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: id %d is used twice", path,
                          a->id);
            goto cleanup;
        }
        if (rc < 0)
            goto cleanup;
        rc = 0;
        t->n_added++;
    }
    t->added_pool = pool.p;
    t->added_pool_n = pool.n;
    pool.p = NULL;
    for (size_t k = 0; k < t->n_added && !rc; k++) {
        const tok__added_t *a = &t->added[k];
        rc = a->normalized
                 ? (a->norm_len ? tok__trie_add(&t->trie_norm, t->added_pool + a->norm_off,
                                                a->norm_len, (int32_t)k)
                                : 0)
                 : tok__trie_add(&t->trie_raw, t->added_pool + a->off, a->len, (int32_t)k);
    }
cleanup:
    tok__buf_free(&pool);
    tok__buf_free(&norm);
    tok__buf_free(&tmp);
    pcre2_match_data_free(md);
    return rc;
}

/* ---- files ----------------------------------------------------------------------------- */

static int read_file(const char *path, size_t max, char **out, size_t *len, char *err,
                     size_t errlen)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    int rc = 0;
    *out = NULL;
    if (!f)
        return rcd_fail(errno == ENOENT ? RCD_ENOTFOUND : RCD_EIO, err, errlen, "%s: %s", path,
                        strerror(errno));
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = rcd_fail(RCD_EIO, err, errlen, "%s: not a regular file", path);
        goto cleanup;
    }
    if ((size_t)st.st_size > max) {
        rc = rcd_fail(RCD_ETOOBIG, err, errlen, "%s: %lld bytes exceeds the limit of %zu", path,
                      (long long)st.st_size, max);
        goto cleanup;
    }
    *out = malloc((size_t)st.st_size + 1);
    if (!*out) {
        rc = RCD_ENOMEM;
        goto cleanup;
    }
    *len = fread(*out, 1, (size_t)st.st_size, f);
    if (*len != (size_t)st.st_size) {
        rc = rcd_fail(RCD_EIO, err, errlen, "%s: short read", path);
        goto cleanup;
    }
    (*out)[*len] = 0;
cleanup:
    if (rc) {
        free(*out);
        *out = NULL;
    }
    fclose(f);
    return rc;
}

/* cJSON strings are NUL-terminated, so a "\u0000" escape would silently cut a token short. */
static int has_nul_escape(const char *s, size_t n)
{
    for (const char *p = s; (p = memmem(p, n - (size_t)(p - s), "\\u0000", 6)); p++) {
        size_t bs = 0;
        while (p - bs > s && p[-(ptrdiff_t)bs - 1] == '\\')
            bs++;
        if (bs % 2 == 0)
            return 1;
    }
    return 0;
}

static int parse_json(const char *file, const char *text, size_t n, cJSON **out, char *err,
                      size_t errlen)
{
    if (has_nul_escape(text, n))
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "%s: strings containing U+0000 are not supported", file);
    *out = cJSON_ParseWithLength(text, n);
    if (!*out) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= text && at <= text + n ? (size_t)(at - text) : 0;
        return rcd_fail(RCD_EFORMAT, err, errlen, "%s: invalid JSON near byte %zu", file, off);
    }
    return 0;
}

static int config_token(tok_t *t, const cJSON *cfg, const char *key, int32_t *id)
{
    const cJSON *v = field(cfg, key);
    *id = -1;
    if (cJSON_IsObject(v))
        v = field(v, "content");
    if (!cJSON_IsString(v))
        return 0;
    *id = tok_piece_to_id(t, v->valuestring, strlen(v->valuestring));
    return 0;
}

static int parse_config(tok_t *t, const cJSON *cfg)
{
    config_token(t, cfg, "bos_token", &t->bos);
    config_token(t, cfg, "eos_token", &t->eos);
    const cJSON *ct = field(cfg, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct)) {
        tmpl = ct->valuestring;
    } else if (cJSON_IsArray(ct)) {
        for (const cJSON *c = ct->child; c; c = c->next) {
            const cJSON *name = field(c, "name"), *body = field(c, "template");
            if (!cJSON_IsString(body))
                continue;
            if (!tmpl || (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0))
                tmpl = body->valuestring;
        }
    }
    if (tmpl && !(t->chat_template = strdup(tmpl)))
        return RCD_ENOMEM;
    return 0;
}

static int finish(tok_t *t)
{
    size_t vs = t->bpe.vocab.n_ids;
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id + 1 > vs)
            vs = (size_t)t->added[i].id + 1;
    t->vocab_size = vs;
    t->added_by_id = malloc((vs ? vs : 1) * sizeof(*t->added_by_id));
    t->special_by_id = calloc(vs ? vs : 1, 1);
    if (!t->added_by_id || !t->special_by_id)
        return RCD_ENOMEM;
    for (size_t i = 0; i < vs; i++)
        t->added_by_id[i] = -1;
    for (size_t i = 0; i < t->n_added; i++)
        t->added_by_id[t->added[i].id] = (int32_t)i;
    /* skip_special_tokens goes by content: any id whose string is a special token's */
    for (size_t i = 0; i < vs; i++) {
        size_t len;
        const char *s = tok__id_str(t, (int32_t)i, &len);
        int32_t a = s ? tok__strmap_get(&t->added_map, s, len) : -1;
        if (a >= 0 && t->added_by_id[a] >= 0 && t->added[t->added_by_id[a]].special)
            t->special_by_id[i] = 1;
    }
    int code;
    PCRE2_SIZE off;
    t->word_re = pcre2_compile(
        (PCRE2_SPTR) "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]",
        PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &code, &off, NULL);
    if (!t->word_re)
        return RCD_EINTERNAL;
    pcre2_jit_compile(t->word_re, PCRE2_JIT_COMPLETE);
    return 0;
}

int tok_load(const char *path, const tok_opts_t *opts, tok_t **out, char *err, size_t errlen)
{
    tok_t *t = NULL;
    char *text = NULL, *file = NULL, *cfg_file = NULL;
    cJSON *root = NULL, *cfg = NULL;
    size_t len;
    int rc;
    struct stat st;
    size_t max_file = opts && opts->max_file_bytes ? opts->max_file_bytes : (size_t)256 << 20;

    *out = NULL;
    if (!path)
        return rcd_fail(RCD_EINVAL, err, errlen, "tok_load: no path");
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + 32;
        file = malloc(n);
        cfg_file = malloc(n);
        if (!file || !cfg_file) {
            rc = RCD_ENOMEM;
            goto cleanup;
        }
        snprintf(file, n, "%s/tokenizer.json", path);
        snprintf(cfg_file, n, "%s/tokenizer_config.json", path);
    } else if (!(file = strdup(path))) {
        rc = RCD_ENOMEM;
        goto cleanup;
    }
    if ((rc = read_file(file, max_file, &text, &len, err, errlen)) ||
        (rc = parse_json(file, text, len, &root, err, errlen)))
        goto cleanup;
    free(text);
    text = NULL;

    t = calloc(1, sizeof(*t));
    if (!t) {
        rc = RCD_ENOMEM;
        goto cleanup;
    }
    t->bos = t->eos = -1;
    t->bpe.unk_id = -1;
    t->max_input = opts && opts->max_input_bytes ? opts->max_input_bytes : (size_t)64 << 20;
    ld_t l = {t, err, errlen};
    char msg[512];
    l.err = msg;
    l.errlen = sizeof(msg);
    msg[0] = 0;

    static const char *const top[] = {"version", "truncation", "padding", "added_tokens",
                                      "normalizer", "pre_tokenizer", "model", "decoder",
                                      "post_processor", NULL};
    if (!cJSON_IsObject(root)) {
        rc = rcd_fail(RCD_EFORMAT, msg, sizeof(msg), "expected a JSON object");
        goto fail;
    }
    /* truncation and padding are batching policies of HF's encode, not tokenization: the
     * daemon enforces its own context limits, so they are accepted and not applied. */
    if ((rc = known_keys(&l, root, "(top level)", top)))
        goto fail;
    const cJSON *c;
    if ((c = field(root, "normalizer")) && !cJSON_IsNull(c) &&
        (rc = parse_normalizer(&l, c, "normalizer")))
        goto fail;
    if ((c = field(root, "pre_tokenizer")) && !cJSON_IsNull(c) &&
        (rc = parse_pretokenizer(&l, c, "pre_tokenizer")))
        goto fail;
    if ((rc = parse_model(&l, field(root, "model"))))
        goto fail;
    if ((c = field(root, "decoder")) && !cJSON_IsNull(c)) {
        t->has_decoder = 1;
        if ((rc = parse_decoder(&l, c, "decoder")))
            goto fail;
    }
    if ((c = field(root, "post_processor")) && !cJSON_IsNull(c) &&
        (rc = parse_post(&l, c, "post_processor")))
        goto fail;
    if ((rc = parse_added(&l, field(root, "added_tokens"))) || (rc = finish(t)))
        goto fail;
    for (size_t i = 0; i < t->n_post_pre + t->n_post_post; i++) {
        int32_t id = i < t->n_post_pre ? t->post_pre[i] : t->post_post[i - t->n_post_pre];
        if ((size_t)id >= t->vocab_size) {
            rc = rcd_fail(RCD_EFORMAT, msg, sizeof(msg),
                          "post_processor: id %d is outside the vocabulary", id);
            goto fail;
        }
    }

    if (cfg_file) {
        rc = read_file(cfg_file, max_file, &text, &len, msg, sizeof(msg));
        if (rc == RCD_ENOTFOUND) {
            rc = 0;
        } else if (rc) {
            goto fail_cfg;
        } else {
            if ((rc = parse_json(cfg_file, text, len, &cfg, msg, sizeof(msg))))
                goto fail_cfg;
            if (!cJSON_IsObject(cfg)) {
                rc = rcd_fail(RCD_EFORMAT, msg, sizeof(msg), "%s: expected an object", cfg_file);
                goto fail_cfg;
            }
            if ((rc = parse_config(t, cfg)))
                goto fail_cfg;
        }
    }
    *out = t;
    t = NULL;
    goto cleanup;
fail:
    if (rc == RCD_ENOMEM && !msg[0])
        snprintf(msg, sizeof(msg), "out of memory");
    rc = rcd_fail(rc, err, errlen, "%s: %s", file, msg);
    goto cleanup;
fail_cfg:
    rc = rcd_fail(rc, err, errlen, "%s", msg);
cleanup:
    tok_free(t);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    free(text);
    free(file);
    free(cfg_file);
    return rc;
}

void tok_free(tok_t *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_norms; i++) {
        tok__pat_free(&t->norms[i].pat);
        free(t->norms[i].str);
    }
    for (size_t i = 0; i < t->n_pres; i++)
        tok__pat_free(&t->pres[i].pat);
    for (size_t i = 0; i < t->n_decs; i++) {
        tok__pat_free(&t->decs[i].pat);
        free(t->decs[i].content);
    }
    tok__bpe_free(&t->bpe);
    free(t->post_pre);
    free(t->post_post);
    free(t->added);
    free(t->added_pool);
    tok__strmap_free(&t->added_map);
    free(t->added_by_id);
    free(t->special_by_id);
    tok__trie_free(&t->trie_raw);
    tok__trie_free(&t->trie_norm);
    pcre2_code_free(t->word_re);
    free(t->chat_template);
    free(t);
}

/* ---- getters --------------------------------------------------------------------------- */

const char *tok__id_str(const tok_t *t, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->vocab_size)
        return NULL;
    int32_t a = t->added_by_id ? t->added_by_id[id] : -1;
    if (a >= 0) {
        *len = t->added[a].len;
        return t->added_pool + t->added[a].off;
    }
    return tok__strmap_str(&t->bpe.vocab, id, len);
}

size_t tok_vocab_size(const tok_t *t)
{
    return t->vocab_size;
}

const char *tok_id_to_piece(const tok_t *t, int32_t id, size_t *len)
{
    size_t n = 0;
    const char *s = tok__id_str(t, id, &n);
    if (len)
        *len = s ? n : 0;
    return s;
}

int32_t tok_piece_to_id(const tok_t *t, const char *piece, size_t len)
{
    int32_t id = tok__strmap_get(&t->added_map, piece, len);
    return id >= 0 ? id : tok__strmap_get(&t->bpe.vocab, piece, len);
}

int tok_is_special(const tok_t *t, int32_t id)
{
    return id >= 0 && (size_t)id < t->vocab_size && t->special_by_id[id];
}

int32_t tok_bos_id(const tok_t *t)
{
    return t->bos;
}

int32_t tok_eos_id(const tok_t *t)
{
    return t->eos;
}

const char *tok_chat_template(const tok_t *t)
{
    return t->chat_template;
}
