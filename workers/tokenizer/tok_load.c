/* Loading of tokenizer.json / tokenizer_config.json into a tok_t (files, model, added tokens,
 * config; the pipeline parts are in tok_pipeline.c), the getters, and tok_free. Every type
 * and field is checked: anything not implemented is a load error naming its JSON path, so a
 * tokenizer is either reproduced exactly or refused. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/rcd_error.h"
#include "common/rcd_path.h"
#include "workers/tokenizer/tok_int.h"
#include "workers/tokenizer/tok_json.h"

/* ---- model ----------------------------------------------------------------------------- */

static int opt_affix(tok__ld_t *l, const cJSON *o, const char *key, char **out, size_t *len,
                     const char *path)
{
    const char *s;
    int rc = tok__jstr(l, o, key, 0, &s, path);
    if (rc || !s || !*s) /* "" behaves exactly as none */
        return rc;
    *out = strdup(s);
    *len = strlen(s);
    return *out ? 0 : RCD_ENOMEM;
}

static int merge_token(tok__ld_t *l, const char *s, size_t n, int32_t *id, const char *path)
{
    *id = tok__strmap_get(&l->t->bpe.vocab, s, n);
    if (*id < 0)
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: token \"%.*s\" is not in the vocab",
                        path, (int)(n > 64 ? 64 : n), s);
    return 0;
}

static int parse_model(tok__ld_t *l, const cJSON *o)
{
    tok__bpe_t *m = &l->t->bpe;
    const char *path = "model";
    static const char *const keys[] = {"type",
                                       "dropout",
                                       "unk_token",
                                       "continuing_subword_prefix",
                                       "end_of_word_suffix",
                                       "fuse_unk",
                                       "byte_fallback",
                                       "ignore_merges",
                                       "vocab",
                                       "merges",
                                       NULL};
    int rc;
    tok__buf_t tmp = {0};
    if (!cJSON_IsObject(o))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "model: missing or not an object");
    const char *type = tok__jtype(o);
    if (type ? strcmp(type, "BPE") != 0 : !tok__jfield(o, "merges"))
        return tok__junsupported(l, path, type);
    if ((rc = tok__jkeys(l, o, path, keys))) return rc;
    const cJSON *dropout = tok__jfield(o, "dropout");
    if (dropout && !cJSON_IsNull(dropout) &&
        !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0))
        return rcd_fail(RCD_EUNSUPPORTED, l->err, l->errlen,
                        "model.dropout: BPE dropout is not supported (not deterministic)");
    const char *unk;
    if ((rc = tok__jstr(l, o, "unk_token", 0, &unk, path)) ||
        (rc = tok__jbool(l, o, "fuse_unk", 0, &m->fuse_unk, path)) ||
        (rc = tok__jbool(l, o, "byte_fallback", 0, &m->byte_fallback, path)) ||
        (rc = tok__jbool(l, o, "ignore_merges", 0, &m->ignore_merges, path)) ||
        (rc = opt_affix(l, o, "continuing_subword_prefix", &m->prefix, &m->prefix_len, path)) ||
        (rc = opt_affix(l, o, "end_of_word_suffix", &m->suffix, &m->suffix_len, path)))
        return rc;
    if (unk && !(m->unk_name = strdup(unk))) return RCD_ENOMEM;

    const cJSON *vocab = tok__jfield(o, "vocab");
    if (!cJSON_IsObject(vocab))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "model.vocab: expected an object");
    if ((rc = tok__strmap_init(&m->vocab, (size_t)cJSON_GetArraySize(vocab)))) return rc;
    char sub[320];
    for (const cJSON *c = vocab->child; c; c = c->next) {
        int32_t id = 0;
        snprintf(sub, sizeof(sub), "model.vocab[\"%.64s\"]", c->string);
        if ((rc = tok__jid(l, c, &id, sub))) return rc;
        rc = tok__strmap_add(&m->vocab, c->string, strlen(c->string), id);
        if (rc == 1) return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: duplicate token", sub);
        if (rc == RCD_EEXISTS)
            return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: id %d is used twice", sub, id);
        if (rc) return rc;
    }
    m->unk_id = unk ? tok__strmap_get(&m->vocab, unk, strlen(unk)) : -1;

    const cJSON *merges = tok__jfield(o, "merges");
    if (!cJSON_IsArray(merges))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "model.merges: expected an array");
    size_t n_merges = (size_t)cJSON_GetArraySize(merges);
    if ((rc = tok__mergemap_init(&m->merges, n_merges))) return rc;
    uint32_t rank = 0;
    for (const cJSON *c = merges->child; c; c = c->next, rank++) {
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        snprintf(sub, sizeof(sub), "model.merges[%u]", rank);
        if (cJSON_IsString(c)) { /* "a b": exactly one space, as HF requires */
            a = c->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected \"left right\"", sub);
                goto cleanup; /* tmp may hold an earlier merge's bytes */
            }
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
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: expected a pair", sub);
            goto cleanup;
        }
        int32_t ia = 0, ib = 0, inew = 0;
        if ((rc = merge_token(l, a, na, &ia, sub)) || (rc = merge_token(l, b, nb, &ib, sub)))
            goto cleanup;
        tmp.n = 0;
        const char *bb = b;
        size_t nbb = nb;
        if (m->prefix && nb >= m->prefix_len && memcmp(b, m->prefix, m->prefix_len) == 0) {
            bb += m->prefix_len;
            nbb -= m->prefix_len;
        }
        if ((rc = tok__buf_put(&tmp, a, na)) || (rc = tok__buf_put(&tmp, bb, nbb))) goto cleanup;
        if ((rc = merge_token(l, tmp.p, tmp.n, &inew, sub))) goto cleanup;
        tok__mergemap_put(&m->merges, ia, ib, rank, inew);
    }
    rc = tok__bpe_finish_load(m, l->err, l->errlen);
cleanup:
    tok__buf_free(&tmp);
    return rc;
}

/* ---- added tokens ---------------------------------------------------------------------- */

static int parse_added(tok__ld_t *l, const cJSON *arr)
{
    tok_t *t = l->t;
    static const char *const keys[] = {"id",     "content",    "single_word", "lstrip",
                                       "rstrip", "normalized", "special",     NULL};
    tok__buf_t pool = {0}, norm = {0}, tmp = {0};
    pcre2_match_data *md = NULL;
    int rc = 0;
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr))
        return rcd_fail(RCD_EFORMAT, l->err, l->errlen, "added_tokens: expected an array");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = calloc(n ? n : 1, sizeof(*t->added));
    if (!t->added || (rc = tok__strmap_init(&t->added_map, n))) return RCD_ENOMEM;
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
        int sw = 0, ls = 0, rs = 0, nz = 0, sp = 0;
        if ((rc = tok__jkeys(l, c, path, keys)) ||
            (rc = tok__jstr(l, c, "content", 1, &content, path)) ||
            (rc = tok__jid(l, tok__jfield(c, "id"), &a->id, path)) ||
            (rc = tok__jbool(l, c, "single_word", 0, &sw, path)) ||
            (rc = tok__jbool(l, c, "lstrip", 0, &ls, path)) ||
            (rc = tok__jbool(l, c, "rstrip", 0, &rs, path)) ||
            (rc = tok__jbool(l, c, "special", 0, &sp, path)) ||
            (rc = tok__jbool(l, c, "normalized", !sp, &nz, path)))
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
        if ((rc = tok__buf_put(&pool, content, len + 1))) goto cleanup;
        if (nz) { /* matched against the normalized text, in its normalized form */
            char msg[200];
            if ((rc = tok__normalize(t, content, len, &norm, &tmp, NULL, &md, msg, sizeof(msg)))) {
                rc = rcd_fail(rc, l->err, l->errlen, "%s: normalizing: %s", path, msg);
                goto cleanup;
            }
            a->norm_off = (uint32_t)pool.n;
            a->norm_len = (uint32_t)norm.n;
            if ((rc = tok__buf_put(&pool, norm.p, norm.n + 1))) goto cleanup;
        }
        rc = tok__strmap_add(&t->added_map, content, len, a->id);
        if (rc == RCD_EEXISTS) {
            rc = rcd_fail(RCD_EFORMAT, l->err, l->errlen, "%s: id %d is used twice", path, a->id);
            goto cleanup;
        }
        if (rc < 0) goto cleanup;
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
    for (const char *p = s; (p = tok__find(p, n - (size_t)(p - s), "\\u0000", 6)); p++) {
        size_t bs = 0;
        while (p - bs > s && p[-(ptrdiff_t)bs - 1] == '\\')
            bs++;
        if (bs % 2 == 0) return 1;
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

static int config_token(tok_t *t, const cJSON *cfg, const char *key, int32_t *id, char **str)
{
    const cJSON *v = tok__jfield(cfg, key);
    *id = -1;
    if (cJSON_IsObject(v)) v = tok__jfield(v, "content");
    if (!cJSON_IsString(v)) return 0;
    *id = tok_piece_to_id(t, v->valuestring, strlen(v->valuestring));
    if (!(*str = strdup(v->valuestring))) return RCD_ENOMEM;
    return 0;
}

static int parse_config(tok_t *t, const cJSON *cfg)
{
    if (config_token(t, cfg, "bos_token", &t->bos, &t->bos_token) ||
        config_token(t, cfg, "eos_token", &t->eos, &t->eos_token))
        return RCD_ENOMEM;
    const cJSON *ct = tok__jfield(cfg, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct)) {
        tmpl = ct->valuestring;
    } else if (cJSON_IsArray(ct)) {
        for (const cJSON *c = ct->child; c; c = c->next) {
            const cJSON *name = tok__jfield(c, "name"), *body = tok__jfield(c, "template");
            if (!cJSON_IsString(body)) continue;
            if (!tmpl || (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0))
                tmpl = body->valuestring;
        }
    }
    if (tmpl && !(t->chat_template = strdup(tmpl))) return RCD_ENOMEM;
    return 0;
}

static int finish(tok_t *t)
{
    size_t vs = t->bpe.vocab.n_ids;
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id + 1 > vs) vs = (size_t)t->added[i].id + 1;
    t->vocab_size = vs;
    t->added_by_id = malloc((vs ? vs : 1) * sizeof(*t->added_by_id));
    t->special_by_id = calloc(vs ? vs : 1, 1);
    if (!t->added_by_id || !t->special_by_id) return RCD_ENOMEM;
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
    if (!t->word_re) return RCD_EINTERNAL;
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
    if (!path) return rcd_fail(RCD_EINVAL, err, errlen, "tok_load: no path");
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + 32;
        file = malloc(n);
        cfg_file = malloc(n);
        if (!file || !cfg_file) {
            rc = RCD_ENOMEM;
            goto cleanup;
        }
        if ((rc = rcd_path_join(file, n, path, "tokenizer.json")) ||
            (rc = rcd_path_join(cfg_file, n, path, "tokenizer_config.json"))) {
            rc = rcd_fail(rc, err, errlen, "tokenizer directory path too long: %.200s", path);
            goto cleanup;
        }
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
    t->max_input = opts && opts->max_input_bytes ? opts->max_input_bytes : (size_t)8 << 20;
    tok__ld_t l = {t, err, errlen};
    char msg[512];
    l.err = msg;
    l.errlen = sizeof(msg);
    msg[0] = 0;

    static const char *const top[] = {
        "version",       "truncation", "padding", "added_tokens",   "normalizer",
        "pre_tokenizer", "model",      "decoder", "post_processor", NULL};
    if (!cJSON_IsObject(root)) {
        rc = rcd_fail(RCD_EFORMAT, msg, sizeof(msg), "expected a JSON object");
        goto fail;
    }
    /* truncation and padding are batching policies of HF's encode, not tokenization: the
     * daemon enforces its own context limits, so they are accepted and not applied. */
    if ((rc = tok__jkeys(&l, root, "(top level)", top))) goto fail;
    const cJSON *c;
    if ((c = tok__jfield(root, "normalizer")) && !cJSON_IsNull(c) &&
        (rc = tok__parse_normalizer(&l, c, "normalizer")))
        goto fail;
    if ((c = tok__jfield(root, "pre_tokenizer")) && !cJSON_IsNull(c) &&
        (rc = tok__parse_pretokenizer(&l, c, "pre_tokenizer")))
        goto fail;
    if ((rc = parse_model(&l, tok__jfield(root, "model")))) goto fail;
    if ((c = tok__jfield(root, "decoder")) && !cJSON_IsNull(c)) {
        t->has_decoder = 1;
        if ((rc = tok__parse_decoder(&l, c, "decoder"))) goto fail;
    }
    if ((c = tok__jfield(root, "post_processor")) && !cJSON_IsNull(c) &&
        (rc = tok__parse_post(&l, c, "post_processor")))
        goto fail;
    if ((rc = parse_added(&l, tok__jfield(root, "added_tokens"))) || (rc = finish(t))) goto fail;
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
            if ((rc = parse_json(cfg_file, text, len, &cfg, msg, sizeof(msg)))) goto fail_cfg;
            if (!cJSON_IsObject(cfg)) {
                rc = rcd_fail(RCD_EFORMAT, msg, sizeof(msg), "%s: expected an object", cfg_file);
                goto fail_cfg;
            }
            if ((rc = parse_config(t, cfg))) goto fail_cfg;
        }
    }
    *out = t;
    t = NULL;
    goto cleanup;
fail:
    if (rc == RCD_ENOMEM && !msg[0]) snprintf(msg, sizeof(msg), "out of memory");
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
    if (!t) return;
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
    free(t->bos_token);
    free(t->eos_token);
    free(t);
}

/* ---- getters --------------------------------------------------------------------------- */

const char *tok__id_str(const tok_t *t, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->vocab_size) return NULL;
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
    if (len) *len = s ? n : 0;
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

const char *tok_bos_token(const tok_t *t)
{
    return t->bos_token;
}

const char *tok_eos_token(const tok_t *t)
{
    return t->eos_token;
}

const char *tok_chat_template(const tok_t *t)
{
    return t->chat_template;
}
