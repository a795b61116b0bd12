/* Parsing of the pipeline parts of tokenizer.json (normalizer, pre_tokenizer, decoder,
 * post_processor) and the strict JSON helpers the loader shares: unknown types and fields are
 * errors that name their JSON path. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"
#include "workers/tokenizer/tok_json.h"

/* ---- small JSON helpers ---------------------------------------------------------------- */

/* Fails on any key of o that is not in the NULL-terminated list. */
int tok__jkeys(tok__ld_t *l, const cJSON *o, const char *path, const char *const *keys)
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

const cJSON *tok__jfield(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

int tok__jbool(tok__ld_t *l, const cJSON *o, const char *key, int def, int *out, const char *path)
{
    const cJSON *v = tok__jfield(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected a boolean", path, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* String tok__jfield; *out NULL when absent or null (if allowed). */
int tok__jstr(tok__ld_t *l, const cJSON *o, const char *key, int required, const char **out,
              const char *path)
{
    const cJSON *v = tok__jfield(o, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) {
        if (required) return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: missing", path, key);
        return 0;
    }
    if (!cJSON_IsString(v))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected a string", path, key);
    *out = v->valuestring;
    return 0;
}

int tok__jid(tok__ld_t *l, const cJSON *v, int32_t *out, const char *path)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TOK__MAX_ID ||
        (double)(int64_t)v->valuedouble != v->valuedouble)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected a token id in [0, %d)", path,
                        TOK__MAX_ID);
    *out = (int32_t)v->valuedouble;
    return 0;
}

int tok__jsize(tok__ld_t *l, const cJSON *o, const char *key, size_t *out, const char *path)
{
    const cJSON *v = tok__jfield(o, key);
    if (!v || !cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e9 ||
        (double)(int64_t)v->valuedouble != v->valuedouble)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected a count", path, key);
    *out = (size_t)v->valuedouble;
    return 0;
}

const char *tok__jtype(const cJSON *o)
{
    const cJSON *t = tok__jfield(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* A single character (Metaspace replacement, Strip content). */
int tok__jchar(tok__ld_t *l, const cJSON *o, const char *key, char out[4], size_t *len,
               const char *path)
{
    const char *s;
    int rc = tok__jstr(l, o, key, 1, &s, path);
    if (rc) return rc;
    size_t n = strlen(s);
    size_t k = tok__utf8_seq((const unsigned char *)s, n);
    if (!k || k != n)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected one character", path, key);
    memcpy(out, s, k);
    *len = k;
    return 0;
}

/* A Pattern: {"String": "..."} or {"Regex": "..."}. */
int tok__jpattern(tok__ld_t *l, const cJSON *o, tok__pat_t *p, const char *path)
{
    const cJSON *v = tok__jfield(o, "pattern");
    memset(p, 0, sizeof(*p));
    if (!cJSON_IsObject(v) || !v->child || v->child->next || !cJSON_IsString(v->child))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen,
                        "%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", path);
    const char *s = v->child->valuestring;
    if (strcmp(v->child->string, "String") == 0) return tok__pat_set_literal(p, s, strlen(s));
    if (strcmp(v->child->string, "Regex") == 0) {
        char msg[200];
        int rc = tok__pat_compile_regex(p, s, strlen(s), msg, sizeof(msg));
        if (rc) return rcd_fail(rc, l->err, l->errlen, "%s.pattern: %s", path, msg);
        return 0;
    }
    return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s.pattern: kind \"%s\" is not supported",
                    path, v->child->string);
}

int tok__junsupported(tok__ld_t *l, const char *path, const char *type)
{
    if (!type) return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.type: missing", path);
    return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s.type \"%s\" is not supported", path,
                    type);
}

/* A "Sequence" stage, {"type": "Sequence", FIELD: [stage, ...]}: each stage parsed by `each`. */
static int parse_sequence(tok__ld_t *l, const cJSON *o, const char *path, const char *field,
                          int (*each)(tok__ld_t *, const cJSON *, const char *))
{
    const char *const keys[] = {"type", field, NULL};
    char sub[256];
    int rc = tok__jkeys(l, o, path, keys);
    if (rc) return rc;
    const cJSON *arr = tok__jfield(o, field);
    if (!cJSON_IsArray(arr))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.%s: expected an array", path, field);
    int i = 0;
    for (const cJSON *c = arr->child; c; c = c->next, i++) {
        snprintf(sub, sizeof(sub), "%s.%s[%d]", path, field, i);
        if ((rc = each(l, c, sub))) return rc;
    }
    return 0;
}

/* ---- normalizers ----------------------------------------------------------------------- */

int tok__parse_normalizer(tok__ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    const char *type = tok__jtype(o);
    int rc;
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
    if (type && strcmp(type, "Sequence") == 0)
        return parse_sequence(l, o, path, "normalizers", tok__parse_normalizer);
    if (t->n_norms == TOK__MAX_STAGES)
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s: more than %d normalizers", path,
                        TOK__MAX_STAGES);
    tok__norm_t *n = &t->norms[t->n_norms];
    memset(n, 0, sizeof(*n));
    static const char *const k_type[] = {"type", NULL};
    if (type && (strcmp(type, "NFC") == 0 || strcmp(type, "NFD") == 0 ||
                 strcmp(type, "NFKC") == 0 || strcmp(type, "NFKD") == 0)) {
        if ((rc = tok__jkeys(l, o, path, k_type))) return rc;
        n->kind = strcmp(type, "NFC") == 0    ? TOK__N_NFC
                  : strcmp(type, "NFD") == 0  ? TOK__N_NFD
                  : strcmp(type, "NFKC") == 0 ? TOK__N_NFKC
                                              : TOK__N_NFKD;
    } else if (type && strcmp(type, "Prepend") == 0) {
        static const char *const keys[] = {"type", "prepend", NULL};
        const char *s;
        if ((rc = tok__jkeys(l, o, path, keys)) || (rc = tok__jstr(l, o, "prepend", 1, &s, path)))
            return rc;
        n->kind = TOK__N_PREPEND;
        n->str = strdup(s);
        n->str_len = strlen(s);
        if (!n->str) return RCD_ENOMEM;
    } else if (type && strcmp(type, "Replace") == 0) {
        static const char *const keys[] = {"type", "pattern", "content", NULL};
        const char *s;
        if ((rc = tok__jkeys(l, o, path, keys)) || (rc = tok__jstr(l, o, "content", 1, &s, path)))
            return rc;
        n->kind = TOK__N_REPLACE;
        n->str = strdup(s);
        n->str_len = strlen(s);
        if (!n->str) return RCD_ENOMEM;
        t->n_norms++; /* owned from here on, even if the pattern fails */
        return tok__jpattern(l, o, &n->pat, path);
    } else if (type && strcmp(type, "Strip") == 0) {
        static const char *const keys[] = {"type", "strip_left", "strip_right", NULL};
        if ((rc = tok__jkeys(l, o, path, keys)) ||
            (rc = tok__jbool(l, o, "strip_left", 1, &n->left, path)) ||
            (rc = tok__jbool(l, o, "strip_right", 1, &n->right, path)))
            return rc;
        n->kind = TOK__N_STRIP;
    } else {
        return tok__junsupported(l, path, type);
    }
    t->n_norms++;
    return 0;
}

/* ---- pre-tokenizers -------------------------------------------------------------------- */

static int parse_prepend_scheme(tok__ld_t *l, const cJSON *o, int *out, const char *path)
{
    const char *s;
    int rc = tok__jstr(l, o, "prepend_scheme", 0, &s, path);
    if (rc) return rc;
    if (!s) { /* older files: add_prefix_space */
        int aps = 0;
        if ((rc = tok__jbool(l, o, "add_prefix_space", 1, &aps, path))) return rc;
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

int tok__parse_pretokenizer(tok__ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    const char *type = tok__jtype(o);
    int rc;
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
    if (type && strcmp(type, "Sequence") == 0)
        return parse_sequence(l, o, path, "pretokenizers", tok__parse_pretokenizer);
    if (t->n_pres == TOK__MAX_STAGES)
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s: more than %d pre-tokenizers",
                        path, TOK__MAX_STAGES);
    tok__pre_t *p = &t->pres[t->n_pres];
    memset(p, 0, sizeof(*p));
    if (type && strcmp(type, "ByteLevel") == 0) {
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex",
                                           NULL};
        int trim = 0;
        if ((rc = tok__jkeys(l, o, path, keys)) ||
            (rc = tok__jbool(l, o, "add_prefix_space", 1, &p->add_prefix_space, path)) ||
            (rc = tok__jbool(l, o, "trim_offsets", 1, &trim, path)) || /* offsets only */
            (rc = tok__jbool(l, o, "use_regex", 1, &p->use_regex, path)))
            return rc;
        p->kind = TOK__P_BYTELEVEL;
        t->n_pres++;
        if (p->use_regex) {
            char msg[200];
            rc = tok__pat_compile_regex(&p->pat, tok__gpt2_pattern, strlen(tok__gpt2_pattern), msg,
                                        sizeof(msg));
            if (rc) return rcd_fail(rc, l->err, l->errlen, "%s: GPT-2 regex: %s", path, msg);
        }
        return 0;
    }
    if (type && strcmp(type, "Metaspace") == 0) {
        static const char *const keys[] = {
            "type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep", NULL};
        if ((rc = tok__jkeys(l, o, path, keys)) ||
            (rc = tok__jchar(l, o, "replacement", p->rep, &p->rep_len, path)) ||
            (rc = parse_prepend_scheme(l, o, &p->prepend, path)) ||
            (rc = tok__jbool(l, o, "split", 1, &p->split, path)))
            return rc;
        p->kind = TOK__P_METASPACE;
        t->n_pres++;
        return 0;
    }
    if (type && strcmp(type, "Split") == 0) {
        static const char *const keys[] = {"type", "pattern", "behavior", "invert", NULL};
        const char *b;
        if ((rc = tok__jkeys(l, o, path, keys)) ||
            (rc = tok__jstr(l, o, "behavior", 1, &b, path)) ||
            (rc = tok__jbool(l, o, "invert", 0, &p->invert, path)))
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
        return tok__jpattern(l, o, &p->pat, path);
    }
    if (type && strcmp(type, "Digits") == 0) {
        static const char *const keys[] = {"type", "individual_digits", NULL};
        if ((rc = tok__jkeys(l, o, path, keys)) ||
            (rc = tok__jbool(l, o, "individual_digits", 0, &p->individual, path)))
            return rc;
        p->kind = TOK__P_DIGITS;
        t->n_pres++;
        return 0;
    }
    return tok__junsupported(l, path, type);
}

/* ---- decoders -------------------------------------------------------------------------- */

int tok__parse_decoder(tok__ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    const char *type = tok__jtype(o);
    int rc;
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
    if (type && strcmp(type, "Sequence") == 0)
        return parse_sequence(l, o, path, "decoders", tok__parse_decoder);
    if (t->n_decs == TOK__MAX_STAGES)
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen, "%s: more than %d decoders", path,
                        TOK__MAX_STAGES);
    tok__dec_t *d = &t->decs[t->n_decs];
    memset(d, 0, sizeof(*d));
    static const char *const k_type[] = {"type", NULL};
    if (type && strcmp(type, "ByteLevel") == 0) {
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex",
                                           NULL};
        if ((rc = tok__jkeys(l, o, path, keys))) return rc;
        d->kind = TOK__D_BYTELEVEL;
    } else if (type && strcmp(type, "Metaspace") == 0) {
        static const char *const keys[] = {
            "type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep", NULL};
        int scheme = 0, split = 0;
        if ((rc = tok__jkeys(l, o, path, keys)) ||
            (rc = tok__jchar(l, o, "replacement", d->rep, &d->rep_len, path)) ||
            (rc = parse_prepend_scheme(l, o, &scheme, path)) ||
            (rc = tok__jbool(l, o, "split", 1, &split, path)))
            return rc;
        d->kind = TOK__D_METASPACE;
        d->drop_first = scheme != TOK__PREPEND_NEVER;
    } else if (type && strcmp(type, "Replace") == 0) {
        static const char *const keys[] = {"type", "pattern", "content", NULL};
        const char *s;
        if ((rc = tok__jkeys(l, o, path, keys)) || (rc = tok__jstr(l, o, "content", 1, &s, path)))
            return rc;
        d->kind = TOK__D_REPLACE;
        d->content = strdup(s);
        d->content_len = strlen(s);
        if (!d->content) return RCD_ENOMEM;
        t->n_decs++;
        return tok__jpattern(l, o, &d->pat, path);
    } else if (type && strcmp(type, "ByteFallback") == 0) {
        if ((rc = tok__jkeys(l, o, path, k_type))) return rc;
        d->kind = TOK__D_BYTEFALLBACK;
    } else if (type && strcmp(type, "Fuse") == 0) {
        if ((rc = tok__jkeys(l, o, path, k_type))) return rc;
        d->kind = TOK__D_FUSE;
    } else if (type && strcmp(type, "Strip") == 0) {
        static const char *const keys[] = {"type", "content", "start", "stop", NULL};
        char c[4];
        size_t cl = 0;
        if ((rc = tok__jkeys(l, o, path, keys)) ||
            (rc = tok__jchar(l, o, "content", c, &cl, path)) ||
            (rc = tok__jsize(l, o, "start", &d->start, path)) ||
            (rc = tok__jsize(l, o, "stop", &d->stop, path)))
            return rc;
        tok__utf8_next((const unsigned char *)c, &d->strip_cp);
        d->kind = TOK__D_STRIP;
    } else {
        return tok__junsupported(l, path, type);
    }
    t->n_decs++;
    return 0;
}

/* ---- post-processor -------------------------------------------------------------------- */

static int append_ids(int32_t **v, size_t *n, const int32_t *add, size_t k, int front)
{
    if (!k) return 0;
    int32_t *p = realloc(*v, (*n + k + 1) * sizeof(*p));
    if (!p) return RCD_ENOMEM;
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
static int pair_id(tok__ld_t *l, const cJSON *o, const char *key, int32_t *id, const char *path)
{
    const cJSON *v = tok__jfield(o, key);
    char sub[256];
    snprintf(sub, sizeof(sub), "%s.%s", path, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 || !cJSON_IsString(v->child))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected [token, id]", sub);
    return tok__jid(l, v->child->next, id, sub);
}

static int parse_template(tok__ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    static const char *const keys[] = {"type", "single", "pair", "special_tokens", NULL};
    int rc = tok__jkeys(l, o, path, keys);
    if (rc) return rc;
    const cJSON *single = tok__jfield(o, "single"), *sp = tok__jfield(o, "special_tokens");
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
        const cJSON *idv = tok__jfield(body, "id");
        if (!cJSON_IsString(idv)) {
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.id: expected a string", sub);
            goto cleanup;
        }
        if (strcmp(body->string, "Sequence") == 0) {
            if (strcmp(idv->valuestring, "A") != 0 || seen_a) {
                rc = rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen,
                              "%s: only one sequence \"A\" is supported in a single template", sub);
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
        const cJSON *st = tok__jfield(sp, idv->valuestring);
        const cJSON *ids = st ? tok__jfield(st, "ids") : NULL;
        if (!cJSON_IsArray(ids)) {
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s.special_tokens: no ids for \"%s\"",
                          path, idv->valuestring);
            goto cleanup;
        }
        for (const cJSON *x = ids->child; x; x = x->next) {
            int32_t id = 0;
            if ((rc = tok__jid(l, x, &id, sub))) goto cleanup;
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

int tok__parse_post(tok__ld_t *l, const cJSON *o, const char *path)
{
    tok_t *t = l->t;
    const char *type = tok__jtype(o);
    int rc;
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected an object", path);
    if (type && strcmp(type, "Sequence") == 0)
        return parse_sequence(l, o, path, "processors", tok__parse_post);
    if (type && strcmp(type, "ByteLevel") == 0) { /* offsets only; ids unchanged */
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex",
                                           NULL};
        return tok__jkeys(l, o, path, keys);
    }
    if (type && strcmp(type, "TemplateProcessing") == 0) return parse_template(l, o, path);
    if (type && (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0)) {
        static const char *const keys[] = {"type", "sep", "cls", "trim_offsets", "add_prefix_space",
                                           NULL};
        int32_t cls = 0, sep = 0;
        if ((rc = tok__jkeys(l, o, path, keys)) || (rc = pair_id(l, o, "cls", &cls, path)) ||
            (rc = pair_id(l, o, "sep", &sep, path)))
            return rc;
        if ((rc = append_ids(&t->post_pre, &t->n_post_pre, &cls, 1, 1)) ||
            (rc = append_ids(&t->post_post, &t->n_post_post, &sep, 1, 0)))
            return rc;
        return 0;
    }
    return tok__junsupported(l, path, type);
}
