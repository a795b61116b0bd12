/* statestore: the store behind store.h — the session index (a chained hash table owned by the
 * loop thread), the host cache (the common LRU list of cached state blobs under a byte
 * budget), and the public calls. The job queue that runs their checkpoint I/O is in
 * store_job.c, open, the startup scan and close in store_scan.c. */
#include "statestore/store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "statestore/store_int.h"

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

int store_check_tenant(const char *t, size_t n)
{
    if (!t || n == 0 || n > STORE_TENANT_MAX) return RCD_EINVAL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return RCD_EINVAL;
    }
    return 0;
}

int store_check_sid(const char *sid)
{
    const char *sep = sid ? strchr(sid, STORE_SCOPE_SEP) : NULL;
    if (!sep) return store_check_id(sid, NULL, 0);
    if (store_check_tenant(sid, (size_t)(sep - sid))) return RCD_EINVAL;
    return store_check_id(sep + 1, NULL, 0);
}

int store_scope_id(char out[STORE_SID_MAX + 1], const char *tenant, const char *id)
{
    out[0] = 0;
    if (store_check_id(id, NULL, 0)) return RCD_EINVAL;
    if (!tenant || !tenant[0]) {
        snprintf(out, STORE_SID_MAX + 1, "%s", id);
        return 0;
    }
    if (store_check_tenant(tenant, strlen(tenant))) return RCD_EINVAL;
    snprintf(out, STORE_SID_MAX + 1, "%s%c%s", tenant, STORE_SCOPE_SEP, id);
    return 0;
}

const char *store_unscope_id(const char *sid)
{
    const char *sep = strchr(sid, STORE_SCOPE_SEP);
    return sep ? sep + 1 : sid;
}

/* ---- index ------------------------------------------------------------------------------ */

sess_t **store__find(store_t *s, const char *id)
{
    uint64_t h = XXH3_64bits(id, strlen(id));
    sess_t **pp = &s->buckets[h % s->n_buckets];
    while (*pp && strcmp((*pp)->rec.id, id) != 0)
        pp = &(*pp)->next;
    return pp;
}

static sess_t *lookup(store_t *s, const char *id)
{
    return id && store_check_sid(id) == 0 ? *store__find(s, id) : NULL;
}

static uint32_t eff_ttl(const store_t *s, const store_session_t *r)
{
    return r->ttl_s ? r->ttl_s : s->default_ttl_s;
}

/* updated_ms + ttl, saturated: updated_ms comes from a file and may be anything. */
static int64_t deadline_ms(int64_t updated_ms, uint32_t ttl_s)
{
    int64_t d = (int64_t)ttl_s * 1000;
    return updated_ms > INT64_MAX - d ? INT64_MAX : updated_ms + d;
}

static int rec_copy(const store_t *s, const store_session_t *src, store_session_t *out)
{
    if (!out) return 0;
    *out = *src;
    out->meta = NULL;
    out->eff_ttl_s = eff_ttl(s, src);
    out->expires_ms = out->eff_ttl_s ? deadline_ms(src->updated_ms, out->eff_ttl_s) : 0;
    return ckpt_meta_pack(src->meta, src->n_meta, &out->meta);
}

/* ---- host cache ------------------------------------------------------------------------- */

void store__cache_drop(store_t *s, sess_t *x)
{
    if (!x->state) return;
    rcd_lru_unlink(&s->lru, &x->lru);
    if (!x->lent) free(x->state_mem ? x->state_mem : x->state); /* a lent one: its job frees it */
    x->state = x->state_mem = NULL;
    x->lent = false;
    s->st.cache_bytes -= x->cached_len;
    x->cached_len = 0;
}

static void cache_set(store_t *s, sess_t *x, void *blob, void *mem, size_t len, bool lent)
{
    store__cache_drop(s, x);
    s->st.cache_bytes += len;
    x->cached_len = len;
    x->state = blob;
    x->state_mem = mem;
    x->lent = lent;
    rcd_lru_push(&s->lru, &x->lru);
    while (s->dir && s->st.cache_bytes > s->cache_budget && rcd_lru_oldest(&s->lru))
        store__cache_drop(s, RCD_CONTAINER_OF(rcd_lru_oldest(&s->lru), sess_t, lru));
}

/* Takes ownership of blob as x's cached state; evicts the least recently used states beyond
 * the budget (memory-only stores keep everything: the cache is their only copy). */
void store__cache_put(store_t *s, sess_t *x, void *blob, size_t len)
{
    cache_set(s, x, blob, NULL, len, false);
}

void store__cache_put_mem(store_t *s, sess_t *x, void *blob, void *mem, size_t len)
{
    cache_set(s, x, blob, mem, len, false);
}

void store__cache_lend(store_t *s, sess_t *x, void *blob, size_t len)
{
    cache_set(s, x, blob, NULL, len, true);
}

void store__sess_free(store_t *s, sess_t *x)
{
    store__cache_drop(s, x);
    free(x->rec.meta);
    free(x);
}

int store__insert(store_t *s, const ckpt_hdr_t *h, sess_t **out)
{
    sess_t **pp = store__find(s, h->id);
    if (*pp) return RCD_EEXISTS;
    sess_t *x = calloc(1, sizeof(*x));
    if (!x) return RCD_ENOMEM;
    int rc = ckpt_meta_pack(h->meta, h->n_meta, &x->rec.meta);
    if (rc) {
        free(x);
        return rc;
    }
    snprintf(x->rec.id, sizeof(x->rec.id), "%s", h->id);
    snprintf(x->rec.parent_id, sizeof(x->rec.parent_id), "%s", h->parent);
    snprintf(x->rec.owner, sizeof(x->rec.owner), "%s", h->owner);
    x->rec.ttl_s = h->ttl_s;
    x->rec.n_meta = h->n_meta;
    x->rec.version = h->version;
    x->rec.n_tokens = h->n_tokens;
    x->rec.created_ms = h->created_ms;
    x->rec.updated_ms = h->updated_ms;
    x->rec.has_state = h->payload_bytes > 0;
    x->rec.state_len = h->payload_bytes;
    x->rec.ext_len = h->ext_bytes;
    x->rec.fingerprint = h->fingerprint;
    x->rec.foreign = h->fingerprint != s->fingerprint;
    x->phash = h->payload_hash;
    x->gen = ++s->next_gen;
    *pp = x;
    s->n++;
    *out = x;
    return 0;
}

void store__unindex(store_t *s, sess_t *x)
{
    sess_t **pp = store__find(s, x->rec.id);
    if (*pp == x) {
        *pp = x->next;
        s->n--;
    }
    store__sess_free(s, x);
}

/* ---- public calls ----------------------------------------------------------------------- */

static int create_common(store_t *s, const char *id, const char *src_id, const store_meta_t *meta,
                         int n_meta, const store_attrs_t *attrs, int64_t now_ms,
                         store_session_t *out, store_done_cb cb, void *user)
{
    int rc = store_check_sid(id);
    if (rc) return rc;
    if (s->authority && !rds_ready(s->rds)) return RCD_EUNAVAILABLE;
    sess_t *src = NULL, *x = NULL;
    const char *owner = attrs && attrs->owner ? attrs->owner : "";
    uint32_t ttl_s = attrs ? attrs->ttl_s : 0;
    if (src_id) {
        if (!(src = lookup(s, src_id))) return RCD_ENOTFOUND;
        if (src->rec.foreign) return RCD_EMISMATCH;
        if (src->pending) return RCD_EBUSY;
        if (n_meta == 0) {
            meta = src->rec.meta;
            n_meta = src->rec.n_meta;
        }
        if (!owner[0]) owner = src->rec.owner;
        if (!ttl_s) ttl_s = src->rec.ttl_s;
    }
    if ((rc = ckpt_meta_check(meta, n_meta, owner, ttl_s))) return rc;
    if (*store__find(s, id)) return RCD_EEXISTS;
    if (s->n >= s->max_sessions) return RCD_ETOOBIG;
    ckpt_hdr_t h = {
        .fingerprint = s->fingerprint, .created_ms = now_ms, .updated_ms = now_ms, .ttl_s = ttl_s};
    snprintf(h.id, sizeof(h.id), "%s", id);
    snprintf(h.owner, sizeof(h.owner), "%s", owner);
    if (src) {
        snprintf(h.parent, sizeof(h.parent), "%s", src_id);
        h.version = src->rec.version;
        h.n_tokens = src->rec.n_tokens;
        h.payload_bytes = src->rec.has_state ? src->rec.state_len : 0;
        h.ext_bytes = src->rec.has_state ? src->rec.ext_len : 0;
    }
    if ((rc = ckpt_meta_pack(meta, n_meta, &h.meta))) return rc;
    h.n_meta = n_meta;
    job_t *j = NULL;
    rc = store__insert(s, &h, &x);
    ckpt_hdr_free(&h);
    if (rc) return rc;
    if (!(j = store__job_new(s, J_CREATE, x, cb, user)) || (rc = store__job_header(s, j, x)))
        goto fail;
    x->rec.has_state = src && src->rec.has_state;
    if (x->rec.has_state) {
        j->h.payload_bytes = src->rec.state_len; /* a variable-size blob is copied whole */
        if (!(j->state = malloc((size_t)src->rec.state_len))) goto fail;
        if (src->state) {
            memcpy(j->state, src->state, (size_t)src->rec.state_len);
            j->h.payload_hash = XXH3_64bits(j->state, (size_t)src->rec.state_len);
            store__kv_tensors(s, j); /* sections included: the fork keeps them */
        } else {
            j->from_disk = true;
            snprintf(j->src, sizeof(j->src), "%s", src_id);
            j->src_version = src->rec.version;
        }
    }
    if ((rc = rec_copy(s, &x->rec, out))) goto fail;
    x->pending = true;
    store__enqueue(s, j);
    return 0;
fail:
    if (j) store__job_free(j);
    store__unindex(s, x);
    return rc ? rc : RCD_ENOMEM;
}

int store_create(store_t *s, const char *id, const store_meta_t *meta, int n_meta,
                 const store_attrs_t *attrs, int64_t now_ms, store_session_t *out, store_done_cb cb,
                 void *user)
{
    return create_common(s, id, NULL, meta, n_meta, attrs, now_ms, out, cb, user);
}

int store_fork(store_t *s, const char *src, const char *dst, const store_meta_t *meta, int n_meta,
               const store_attrs_t *attrs, int64_t now_ms, store_session_t *out, store_done_cb cb,
               void *user)
{
    return create_common(s, dst, src, meta, n_meta, attrs, now_ms, out, cb, user);
}

int store_get(store_t *s, const char *id, store_session_t *out)
{
    sess_t *x = lookup(s, id);
    if (!x) return RCD_ENOTFOUND;
    return rec_copy(s, &x->rec, out);
}

int store_load(store_t *s, const char *id, void *dst, uint64_t *version, store_done_cb cb,
               void *user, char *err, size_t errlen)
{
    sess_t *x = lookup(s, id);
    if (!x) return rcd_fail(RCD_ENOTFOUND, err, errlen, "session '%s' not found", id);
    if (version) *version = x->rec.version;
    if (x->rec.foreign)
        return rcd_fail(RCD_EMISMATCH, err, errlen,
                        "session '%s' was checkpointed by model fingerprint %016" PRIx64
                        "; the loaded model's fingerprint is %016" PRIx64,
                        id, x->rec.fingerprint, s->fingerprint);
    if (x->pending)
        return rcd_fail(RCD_EBUSY, err, errlen, "session '%s' has a commit in flight", id);
    if (!x->rec.has_state) return rcd_fail(RCD_EAGAIN, err, errlen, "session has no state yet");
    if (x->state) {
        memcpy(dst, x->state, x->cached_len);
        rcd_lru_touch(&s->lru, &x->lru);
        s->st.cache_hits++;
        return 0;
    }
    s->st.cache_misses++;
    s->st.disk_loads++;
    job_t *j = store__job_new(s, J_LOAD, x, cb, user);
    if (!j) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    j->h.version = x->rec.version;
    j->h.payload_bytes = x->rec.state_len; /* what the read must find */
    j->dst = dst;
    store__enqueue(s, j);
    return STORE_PENDING;
}

int store_commit(store_t *s, const char *id, uint64_t expected_version, void *state,
                 uint64_t add_tokens, int64_t now_ms, store_done_cb cb, void *user)
{
    return store_commit_n(s, id, expected_version, state, s->state_bytes, add_tokens, now_ms, cb,
                          user);
}

int store_commit_n(store_t *s, const char *id, uint64_t expected_version, void *state, size_t len,
                   uint64_t add_tokens, int64_t now_ms, store_done_cb cb, void *user)
{
    sess_t *x = lookup(s, id);
    int rc = 0;
    job_t *j = NULL;
    size_t sl;
    ckpt_ext_t ext;
    if (len == 0 || !state ||
        ckpt_ext_split(state, len, s->state_bytes, s->kv_bpt, &sl, &ext, NULL, 0))
        rc = RCD_EINVAL; /* the state part off the size rule, or malformed sections */
    else if (!x)
        rc = RCD_ENOTFOUND;
    else if (x->rec.foreign)
        rc = RCD_EMISMATCH;
    else if (x->pending)
        rc = RCD_EBUSY;
    else if (x->rec.version != expected_version)
        rc = RCD_EMISMATCH;
    else if (s->authority && !rds_ready(s->rds))
        rc = RCD_EUNAVAILABLE; /* nothing is committed that Redis cannot fence */
    else if (!(j = store__job_new(s, J_COMMIT, x, cb, user)) || (rc = store__job_header(s, j, x)))
        rc = rc ? rc : RCD_ENOMEM;
    if (rc) {
        if (j) store__job_free(j);
        free(state);
        return rc;
    }
    j->h.version = x->rec.version + 1;
    j->h.n_tokens = x->rec.n_tokens + add_tokens;
    j->h.updated_ms = now_ms;
    j->h.payload_bytes = len;
    j->h.payload_hash = s->dir || s->rds ? XXH3_64bits(state, len) : 0;
    j->state = state;
    store__kv_tensors(s, j);
    if (s->authority) { /* the commit script replaces exactly this version */
        store__ident(x, j->expect);
        j->has_expect = true;
    }
    x->pending = true;
    store__enqueue(s, j);
    return 0;
}

/* Forgets x at once; its files (and shared-tier copy) go in the background. Authority mode:
 * the delete script runs when the files are gone (store_job.c, before any later script of the
 * same id); `cond` makes it conditional on x's version (expiry: a replica's idle copy must not
 * delete a session another replica moved on). */
static int delete_sess(store_t *s, sess_t *x, bool cond, store_done_cb cb, void *user)
{
    job_t *j = store__job_new(s, J_DELETE, x, cb, user);
    if (!j) return RCD_ENOMEM;
    if (s->authority) {
        if (cond) store__ident(x, j->expect);
        j->has_expect = cond;
    } else if (s->rds) { /* ordered before any later write of the same id on the one connection */
        char key[STORE_RDS_KEY_MAX];
        store__rds_key(s, key, x->rec.id);
        rds_del(s->rds, key);
    }
    store__unindex(s, x);
    store__enqueue(s, j);
    return 0;
}

int store_delete(store_t *s, const char *id, store_done_cb cb, void *user)
{
    sess_t *x = lookup(s, id);
    if (!x) return RCD_ENOTFOUND;
    if (x->pending) return RCD_EBUSY;
    if (s->authority && !rds_ready(s->rds)) return RCD_EUNAVAILABLE;
    return delete_sess(s, x, false, cb, user);
}

/* An expired session's files are gone, or could not be removed (told through warn_cb: the
 * session is out of the index either way; the next startup scan would find leftovers). */
static void expire_done(void *user, int rc, uint64_t version, const char *msg)
{
    store_t *s = user;
    (void)version;
    if (rc && s->warn_cb) s->warn_cb(s->warn_user, NULL, msg);
}

size_t store_expire(store_t *s, int64_t now_ms, store_busy_fn busy, store_expired_fn expired,
                    void *user, int64_t *next_ms)
{
    int64_t next = INT64_MAX;
    size_t n = 0;
    for (size_t b = 0; b < s->n_buckets; b++) {
        sess_t *nx;
        for (sess_t *x = s->buckets[b]; x; x = nx) {
            nx = x->next; /* x may leave the chain below */
            uint32_t ttl = eff_ttl(s, &x->rec);
            if (!ttl || x->rec.foreign) continue;
            int64_t at = deadline_ms(x->rec.updated_ms, ttl), up = x->rec.updated_ms;
            if (now_ms < at) {
                if (at < next) next = at;
                continue;
            }
            if (x->pending || (busy && busy(user, x->rec.id))) {
                next = now_ms; /* due, but held: look again soon */
                continue;
            }
            if (expired) {
                store_session_t r;
                int64_t idle = up < 0 && now_ms > INT64_MAX + up ? INT64_MAX : now_ms - up;
                if (rec_copy(s, &x->rec, &r) == 0) expired(user, &r, idle);
                store_session_clear(&r);
            }
            if (delete_sess(s, x, true, expire_done, s) != 0) {
                next = now_ms; /* out of memory: try again at the next sweep */
                continue;
            }
            s->st.expired++;
            n++;
        }
    }
    if (next_ms) *next_ms = next;
    return n;
}

size_t store_count(const store_t *s)
{
    return s->n;
}

void store_owner_usage(const store_t *s, const char *owner, uint64_t *sessions, uint64_t *bytes)
{
    uint64_t n = 0, b = 0;
    for (size_t i = 0; i < s->n_buckets; i++)
        for (const sess_t *x = s->buckets[i]; x; x = x->next)
            if (!strcmp(x->rec.owner, owner)) {
                n++;
                b += x->rec.has_state ? x->rec.state_len - x->rec.ext_len : 0;
            }
    *sessions = n;
    *bytes = b;
}

void store_scope_usage(const store_t *s, const char *tenant, uint64_t *sessions, uint64_t *bytes)
{
    uint64_t n = 0, b = 0;
    size_t tl = strlen(tenant);
    for (size_t i = 0; i < s->n_buckets; i++)
        for (const sess_t *x = s->buckets[i]; x; x = x->next)
            if (!strncmp(x->rec.id, tenant, tl) && x->rec.id[tl] == '~') {
                n++;
                b += x->rec.has_state ? x->rec.state_len - x->rec.ext_len : 0;
            }
    *sessions = n;
    *bytes = b;
}

void store_total_usage(const store_t *s, uint64_t *sessions, uint64_t *bytes)
{
    uint64_t n = 0, b = 0;
    for (size_t i = 0; i < s->n_buckets; i++)
        for (const sess_t *x = s->buckets[i]; x; x = x->next) {
            n++;
            b += x->rec.has_state ? x->rec.state_len - x->rec.ext_len : 0;
        }
    *sessions = n;
    *bytes = b;
}

size_t store_state_bytes(const store_t *s)
{
    return s->state_bytes;
}

bool store_durable(const store_t *s)
{
    return s->dir != NULL;
}

bool store_shared(const store_t *s)
{
    return s->rds != NULL;
}

bool store_authority(const store_t *s)
{
    return s->rds != NULL && s->authority;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void store__ident(const sess_t *x, uint8_t out[STORE_IDENT_LEN])
{
    /* the header's offsets 24..71 (ckpt.h), little-endian */
    put_u64(out, x->rec.version);
    put_u64(out + 8, x->rec.n_tokens);
    put_u64(out + 16, (uint64_t)x->rec.created_ms);
    put_u64(out + 24, (uint64_t)x->rec.updated_ms);
    put_u64(out + 32, x->rec.has_state ? x->rec.state_len : 0);
    put_u64(out + 40, x->phash);
}

void store__drop_local(store_t *s, sess_t *x)
{
    job_t *j = store__job_new(s, J_DELETE, x, NULL, NULL);
    store__unindex(s, x);
    if (!j) return; /* out of memory: the files stay; the next sync compares them again */
    j->no_wt = true;
    store__enqueue(s, j);
}

/* ---- shared tier: lookup on a miss ------------------------------------------------------ */

int store__shared_check(const char *id, uint64_t fingerprint, size_t state_bytes, size_t kv_bpt,
                        const char *data, size_t len, ckpt_hdr_t *h, int64_t *hl, char *why,
                        size_t whylen)
{
    int rc = 0;
    /* Outside bytes: the same checks as a file. */
    *hl = ckpt_header_len((const uint8_t *)data, len, NULL, 0);
    if (*hl < 0 || ckpt_parse((const uint8_t *)data, len, h, NULL, 0))
        rc = rcd_fail(RCD_ECORRUPT, why, whylen, "shared-tier checkpoint is corrupt");
    else if (strcmp(h->id, id) != 0 || (uint64_t)len != (uint64_t)*hl + h->payload_bytes)
        rc = rcd_fail(RCD_ECORRUPT, why, whylen, "shared-tier checkpoint is malformed");
    else if (h->fingerprint != fingerprint)
        rc = rcd_fail(RCD_EMISMATCH, why, whylen,
                      "session '%s' was checkpointed by model fingerprint %016" PRIx64
                      "; the loaded model's fingerprint is %016" PRIx64,
                      h->id, h->fingerprint, fingerprint);
    else if (h->payload_bytes &&
             (!ckpt_hdr_payload_ok(h, state_bytes, kv_bpt) || h->dtype != CKPT_DTYPE_F32 ||
              XXH3_64bits(data + *hl, (size_t)h->payload_bytes) != h->payload_hash ||
              ckpt_payload_check(h, data + *hl, state_bytes, kv_bpt, NULL, 0)))
        rc = rcd_fail(RCD_ECORRUPT, why, whylen, "shared-tier checkpoint fails its checks");
    return rc;
}

static void fetch_done(void *user, int rc, const char *data, size_t len, const char *msg)
{
    job_t *j = user;
    store_t *s = j->s;
    char why[400] = "";
    ckpt_hdr_t h = {0};
    sess_t *x;
    uint64_t version = 0;
    int64_t hl;
    if (rc) {
        s->st.redis_errors++;
        rc = rcd_fail(RCD_EUNAVAILABLE, why, sizeof(why), "shared tier unavailable: %s", msg);
        goto done;
    }
    if (!data) {
        s->st.redis_misses++;
        rc = rcd_fail(RCD_ENOTFOUND, why, sizeof(why), "not in the shared tier");
        goto done;
    }
    rc = store__shared_check(j->h.id, s->fingerprint, s->state_bytes, s->kv_bpt, data, len, &h, &hl,
                             why, sizeof(why));
    if (rc) goto done;
    s->st.redis_hits++;
    if ((x = *store__find(s, h.id))) { /* created here meanwhile */
        version = x->rec.version;
        goto done;
    }
    if (s->n >= s->max_sessions) {
        rc = rcd_fail(RCD_ETOOBIG, why, sizeof(why), "session store full");
        goto done;
    }
    if (h.payload_bytes) {
        /* The reply's own buffer (the verified bytes, header then payload): no second copy. */
        if ((j->mem = rds_take(s->rds, data)))
            j->state = (char *)j->mem + hl;
        else if ((j->state = malloc((size_t)h.payload_bytes)))
            memcpy(j->state, data + hl, (size_t)h.payload_bytes);
        else
            rc = RCD_ENOMEM;
    }
    if (!rc) rc = store__insert(s, &h, &x);
    if (rc) {
        snprintf(why, sizeof(why), "%s", rcd_strerror(rc));
        goto done;
    }
    ckpt_hdr_free(&j->h);
    j->h = h; /* written to the local disk as it is, then indexed (J_CREATE) */
    j->gen = x->gen;
    if (s->authority) {
        /* Redis holds the version: answer from the verified bytes at once (host cache) and
         * write the local copy behind, without fsync. The session is not `pending`: a load is
         * served from the cache, and any later job of the id (commit, load from disk, delete)
         * queues behind the copy's write, so the disk sees them in order (README.md). */
        store_done_cb cb = j->cb;
        void *cu = j->user;
        j->cb = NULL;
        j->cache_copy = true;
        version = x->rec.version;
        if (j->state) store__cache_lend(s, x, j->state, (size_t)h.payload_bytes);
        s->st.redis_behind++;
        store__enqueue(s, j);
        if (cb) cb(cu, 0, version, "");
        return;
    }
    x->pending = true;
    store__enqueue(s, j);
    return;
done:
    ckpt_hdr_free(&h);
    if (j->cb) j->cb(j->user, rc, version, why);
    store__job_free(j);
}

int store_fetch(store_t *s, const char *id, store_done_cb cb, void *user)
{
    if (!s->rds) return RCD_ENOTFOUND;
    int rc = store_check_sid(id);
    if (rc) return rc;
    job_t *j = store__job_new(s, J_CREATE, NULL, cb, user);
    if (!j) return RCD_ENOMEM;
    j->no_wt = true;
    snprintf(j->h.id, sizeof(j->h.id), "%s", id);
    char key[STORE_RDS_KEY_MAX];
    store__rds_key(s, key, id);
    if (rds_get(s->rds, key, fetch_done, j) != 0) {
        store__job_free(j);
        return RCD_ENOTFOUND; /* shared tier down: a miss */
    }
    return 0;
}

/* ---- authority mode: the check before a copy is trusted --------------------------------- */

typedef struct sync_req {
    store_t *s;
    store_done_cb cb;
    void *user;
    char id[STORE_SID_MAX + 1];
} sync_req_t;

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void sync_done(void *user, int rc, const char *data, size_t len, const char *msg)
{
    sync_req_t *q = user;
    store_t *s = q->s;
    char why[500] = "";
    uint64_t version = 0;
    sess_t *x = lookup(s, q->id);
    uint8_t mine[STORE_IDENT_LEN];
    if (rc) {
        s->st.redis_errors++;
        rc = rcd_fail(RCD_EUNAVAILABLE, why, sizeof(why), "shared tier unavailable: %s", msg);
    } else if (len == 1 + STORE_IDENT_LEN && data[0] == 'V') {
        const uint8_t *theirs = (const uint8_t *)data + 1;
        if (x) store__ident(x, mine);
        if (x && x->pending) {
            rc =
                rcd_fail(RCD_EBUSY, why, sizeof(why), "session '%s' has a commit in flight", q->id);
        } else if (x && !memcmp(mine, theirs, sizeof(mine))) {
            s->st.redis_checks_current++;
            version = x->rec.version; /* the local copy is the latest: use it */
        } else {
            /* Stale (or forked by a refused commit): never used; the latest comes from Redis. */
            if (x) {
                s->st.redis_checks_stale++;
                if (s->warn_cb) {
                    snprintf(why, sizeof(why),
                             "local copy at version %" PRIu64 " is not the shared tier's %" PRIu64
                             ": dropped, fetching the latest",
                             x->rec.version, get_u64(theirs));
                    s->warn_cb(s->warn_user, q->id, why);
                    why[0] = 0;
                }
                store__drop_local(s, x);
            }
            rc = store_fetch(s, q->id, q->cb, q->user);
            if (rc == 0) {
                free(q);
                return; /* fetch_done answers */
            }
            rc = rcd_fail(RCD_EUNAVAILABLE, why, sizeof(why), "shared tier unavailable");
        }
    } else if (len == 1 && data[0] == 'D') {
        if (x && x->pending)
            rc =
                rcd_fail(RCD_EBUSY, why, sizeof(why), "session '%s' has a commit in flight", q->id);
        else {
            if (x) store__drop_local(s, x);
            rc = rcd_fail(RCD_ENOTFOUND, why, sizeof(why), "session '%s' was deleted", q->id);
        }
    } else if (len == 1 && data[0] == 'N') {
        /* Redis has never seen it: a local copy predates the shared tier (its next commit
         * writes it there); no local copy: it does not exist. */
        if (x)
            version = x->rec.version;
        else
            rc = rcd_fail(RCD_ENOTFOUND, why, sizeof(why), "not in the shared tier");
    } else {
        s->st.redis_errors++;
        rc = rcd_fail(RCD_EUNAVAILABLE, why, sizeof(why), "shared tier: unexpected check reply");
    }
    q->cb(q->user, rc, version, why);
    free(q);
}

int store_sync(store_t *s, const char *id, store_done_cb cb, void *user)
{
    if (!store_authority(s)) return RCD_ENOTFOUND;
    int rc = store_check_sid(id);
    if (rc) return rc;
    if (!rds_ready(s->rds)) return RCD_EUNAVAILABLE;
    sync_req_t *q = calloc(1, sizeof(*q));
    if (!q) return RCD_ENOMEM;
    q->s = s;
    q->cb = cb;
    q->user = user;
    snprintf(q->id, sizeof(q->id), "%s", id);
    char key[STORE_RDS_KEY_MAX], tomb[STORE_RDS_KEY_MAX];
    store__rds_key(s, key, id);
    store__rds_tomb(s, tomb, id);
    s->st.redis_checks++;
    rc = rds_eval(s->rds, store__lua_check, key, tomb, 0, NULL, sync_done, q);
    if (rc) free(q);
    return rc;
}

void store_get_stats(const store_t *s, store_stats_t *out)
{
    *out = s->st;
    out->sessions = s->n;
    out->cache_entries = s->lru.n;
}

void store_session_clear(store_session_t *ss)
{
    if (ss) {
        free(ss->meta);
        ss->meta = NULL;
        ss->n_meta = 0;
    }
}
