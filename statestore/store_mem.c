/* statestore: the in-memory backing of store.h — a chained hash table of sessions keyed by
 * id, each owning a metadata block and (after the first commit) one state blob. */
#include "statestore/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

typedef struct mem_sess {
    struct mem_sess *next;
    store_session_t rec; /* rec.meta owned here */
    void *state;         /* state_bytes, NULL until the first commit */
} mem_sess_t;

typedef struct mem_store {
    store_t base;
    uint64_t fingerprint;
    size_t max_sessions, n, n_buckets;
    mem_sess_t **buckets;
} mem_store_t;

int store_check_id(const char *id, char *err, size_t errlen)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0) return rcd_fail(RCD_EINVAL, err, errlen, "session id is empty");
    if (n > STORE_ID_MAX)
        return rcd_fail(RCD_EINVAL, err, errlen, "session id longer than %d bytes", STORE_ID_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return rcd_fail(RCD_EINVAL, err, errlen,
                            "session id has a byte outside [A-Za-z0-9._:-] at offset %zu", i);
    }
    return 0;
}

static mem_sess_t **mem_find(mem_store_t *m, const char *id)
{
    uint64_t h = XXH3_64bits(id, strlen(id));
    mem_sess_t **pp = &m->buckets[h % m->n_buckets];
    while (*pp && strcmp((*pp)->rec.id, id) != 0)
        pp = &(*pp)->next;
    return pp;
}

/* Packs metadata into one block: the entry array followed by the strings. */
static int meta_copy(const store_meta_t *meta, int n_meta, store_meta_t **out)
{
    *out = NULL;
    if (n_meta == 0) return 0;
    if (n_meta < 0 || n_meta > STORE_META_MAX) return RCD_EINVAL;
    size_t bytes = 0;
    for (int i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value || !meta[i].key[0]) return RCD_EINVAL;
        bytes += strlen(meta[i].key) + strlen(meta[i].value) + 2;
    }
    if (bytes > STORE_META_BYTES) return RCD_ETOOBIG;
    store_meta_t *blk = malloc(sizeof(*blk) * (size_t)n_meta + bytes);
    if (!blk) return RCD_ENOMEM;
    char *p = (char *)(blk + n_meta);
    for (int i = 0; i < n_meta; i++) {
        size_t kl = strlen(meta[i].key) + 1, vl = strlen(meta[i].value) + 1;
        memcpy(p, meta[i].key, kl);
        blk[i].key = p;
        p += kl;
        memcpy(p, meta[i].value, vl);
        blk[i].value = p;
        p += vl;
    }
    *out = blk;
    return 0;
}

static int rec_copy(const store_session_t *src, store_session_t *out)
{
    if (!out) return 0;
    *out = *src;
    out->meta = NULL;
    return meta_copy(src->meta, src->n_meta, &out->meta);
}

static int mem_insert(mem_store_t *m, const char *id, const char *parent, const store_meta_t *meta,
                      int n_meta, int64_t now_ms, mem_sess_t **out)
{
    int rc = store_check_id(id, NULL, 0);
    if (rc) return rc;
    mem_sess_t **pp = mem_find(m, id);
    if (*pp) return RCD_EEXISTS;
    if (m->n >= m->max_sessions) return RCD_ETOOBIG;
    mem_sess_t *s = calloc(1, sizeof(*s));
    if (!s) return RCD_ENOMEM;
    rc = meta_copy(meta, n_meta, &s->rec.meta);
    if (rc) {
        free(s);
        return rc;
    }
    snprintf(s->rec.id, sizeof(s->rec.id), "%s", id);
    snprintf(s->rec.parent_id, sizeof(s->rec.parent_id), "%s", parent ? parent : "");
    s->rec.n_meta = n_meta;
    s->rec.created_ms = s->rec.updated_ms = now_ms;
    *pp = s;
    m->n++;
    *out = s;
    return 0;
}

static int mem_create(store_t *st, const char *id, const char *parent, const store_meta_t *meta,
                      int n_meta, int64_t now_ms, store_session_t *out)
{
    mem_store_t *m = (mem_store_t *)st;
    mem_sess_t *s, *src = NULL;
    if (parent) {
        src = *mem_find(m, parent);
        if (!src) return RCD_ENOTFOUND;
        if (n_meta == 0) {
            meta = src->rec.meta;
            n_meta = src->rec.n_meta;
        }
    }
    void *state = NULL;
    if (src && src->state) {
        state = malloc(st->state_bytes);
        if (!state) return RCD_ENOMEM;
        memcpy(state, src->state, st->state_bytes);
    }
    int rc = mem_insert(m, id, parent, meta, n_meta, now_ms, &s);
    if (rc) {
        free(state);
        return rc;
    }
    if (src) {
        s->state = state;
        s->rec.has_state = state != NULL;
        s->rec.version = src->rec.version;
        s->rec.n_tokens = src->rec.n_tokens;
    }
    return rec_copy(&s->rec, out);
}

static int mem_get(store_t *st, const char *id, store_session_t *out)
{
    mem_sess_t *s = *mem_find((mem_store_t *)st, id);
    if (!s) return RCD_ENOTFOUND;
    return rec_copy(&s->rec, out);
}

static int mem_read_state(store_t *st, const char *id, uint64_t *version, void *dst)
{
    mem_sess_t *s = *mem_find((mem_store_t *)st, id);
    if (!s) return RCD_ENOTFOUND;
    if (version) *version = s->rec.version;
    if (!s->state) return RCD_EAGAIN;
    memcpy(dst, s->state, st->state_bytes);
    return 0;
}

static int mem_commit(store_t *st, const char *id, uint64_t expected_version, const void *state,
                      uint64_t add_tokens, int64_t now_ms, uint64_t *new_version)
{
    mem_sess_t *s = *mem_find((mem_store_t *)st, id);
    if (!s) return RCD_ENOTFOUND;
    if (s->rec.version != expected_version) return RCD_EMISMATCH;
    if (!s->state) {
        s->state = malloc(st->state_bytes);
        if (!s->state) return RCD_ENOMEM;
    }
    memcpy(s->state, state, st->state_bytes);
    s->rec.has_state = true;
    s->rec.version++;
    s->rec.n_tokens += add_tokens;
    s->rec.updated_ms = now_ms;
    if (new_version) *new_version = s->rec.version;
    return 0;
}

static void sess_free(mem_sess_t *s)
{
    free(s->rec.meta);
    free(s->state);
    free(s);
}

static int mem_remove(store_t *st, const char *id)
{
    mem_store_t *m = (mem_store_t *)st;
    mem_sess_t **pp = mem_find(m, id);
    mem_sess_t *s = *pp;
    if (!s) return RCD_ENOTFOUND;
    *pp = s->next;
    m->n--;
    sess_free(s);
    return 0;
}

static size_t mem_count(const store_t *st)
{
    return ((const mem_store_t *)st)->n;
}

static void mem_close(store_t *st)
{
    mem_store_t *m = (mem_store_t *)st;
    for (size_t b = 0; b < m->n_buckets; b++) {
        mem_sess_t *s = m->buckets[b];
        while (s) {
            mem_sess_t *next = s->next;
            sess_free(s);
            s = next;
        }
    }
    free(m->buckets);
    free(m);
}

static const store_i mem_vt = {
    .name = "memory",
    .close = mem_close,
    .create = mem_create,
    .get = mem_get,
    .read_state = mem_read_state,
    .commit = mem_commit,
    .remove = mem_remove,
    .count = mem_count,
};

int store_mem_open(const store_opts_t *opts, store_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!opts || opts->state_bytes == 0)
        return rcd_fail(RCD_EINVAL, err, errlen, "store: state_bytes must be > 0");
    mem_store_t *m = calloc(1, sizeof(*m));
    if (!m) return rcd_fail(RCD_ENOMEM, err, errlen, "store: out of memory");
    m->base.vt = &mem_vt;
    m->base.state_bytes = opts->state_bytes;
    m->fingerprint = opts->fingerprint;
    m->max_sessions = opts->max_sessions ? opts->max_sessions : 1024;
    m->n_buckets = 1024;
    m->buckets = calloc(m->n_buckets, sizeof(*m->buckets));
    if (!m->buckets) {
        free(m);
        return rcd_fail(RCD_ENOMEM, err, errlen, "store: out of memory");
    }
    *out = &m->base;
    return 0;
}

/* ---- thin wrappers over the vtable ------------------------------------------------------ */

int store_create(store_t *s, const char *id, const store_meta_t *meta, int n_meta, int64_t now_ms,
                 store_session_t *out)
{
    return s->vt->create(s, id, NULL, meta, n_meta, now_ms, out);
}

int store_fork(store_t *s, const char *src, const char *dst, const store_meta_t *meta, int n_meta,
               int64_t now_ms, store_session_t *out)
{
    return s->vt->create(s, dst, src, meta, n_meta, now_ms, out);
}

int store_get(store_t *s, const char *id, store_session_t *out)
{
    return s->vt->get(s, id, out);
}

int store_read_state(store_t *s, const char *id, uint64_t *version, void *dst)
{
    return s->vt->read_state(s, id, version, dst);
}

int store_commit(store_t *s, const char *id, uint64_t expected_version, const void *state,
                 uint64_t add_tokens, int64_t now_ms, uint64_t *new_version)
{
    return s->vt->commit(s, id, expected_version, state, add_tokens, now_ms, new_version);
}

int store_delete(store_t *s, const char *id)
{
    return s->vt->remove(s, id);
}

size_t store_count(const store_t *s)
{
    return s->vt->count(s);
}

void store_close(store_t *s)
{
    if (s) s->vt->close(s);
}

void store_session_clear(store_session_t *ss)
{
    if (ss) {
        free(ss->meta);
        ss->meta = NULL;
        ss->n_meta = 0;
    }
}
