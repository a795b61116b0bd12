/* statestore: the store behind store.h — the session index (a chained hash table owned by the
 * loop thread), the host cache (an LRU list of cached state blobs under a byte budget), and
 * the job queue that runs checkpoint I/O on the libuv pool: one batch in flight at a time, jobs
 * in submission order, so a delete, re-create and commit of one id land on disk in order. */
#include "statestore/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "statestore/ckpt.h"
#include "statestore/store_redis.h"

typedef struct sess {
    struct sess *next;                /* hash chain */
    struct sess *lru_prev, *lru_next; /* cache list, while state != NULL */
    store_session_t rec;              /* rec.meta owned here */
    uint64_t gen;                     /* incarnation: jobs of a deleted session are ignored */
    void *state;                      /* cached blob of rec.version, or NULL */
    size_t cached_len;                /* its bytes */
    bool pending;                     /* a create or commit job is in flight */
} sess_t;

typedef enum { J_CREATE, J_COMMIT, J_LOAD, J_DELETE } job_kind_t;

typedef struct job {
    struct job *next;
    struct store *s;
    job_kind_t kind;
    bool no_wt; /* came from the shared tier: not written back */
    uint64_t gen;
    ckpt_hdr_t h;               /* create/commit: the checkpoint to write; load: what was read */
    void *state;                /* owned: the payload to write, or the buffer a load fills */
    char src[STORE_ID_MAX + 1]; /* fork from disk: read src_version of src first */
    uint64_t src_version;
    bool from_disk;
    bool staged; /* group commit: written to stg, awaiting the batch's flush */
    ckpt_staged_t stg;
    void *dst; /* load: caller's buffer */
    store_done_cb cb;
    void *user;
    int rc;
    char msg[900];
    /* load that found corruption: where the session stands now */
    bool rolled_back, lost;
    ckpt_hdr_t fb;
} job_t;

struct store {
    uv_loop_t *loop;
    size_t state_bytes, max_sessions, n, n_buckets;
    size_t kv_bpt; /* > 0: variable-size blobs (ckpt_payload_ok) */
    int n_kv_layers, kv_width;
    uint64_t fingerprint, next_gen;
    char *dir; /* NULL: memory only */
    int keep, lock_fd;
    bool group_commit; /* a batch's checkpoints share their flushes (batch_group) */
    size_t cache_budget;
    uint32_t default_ttl_s;
    int n_tensors;
    store_tensor_t *tensors;
    void (*warn_cb)(void *user, const char *id, const char *msg);
    void *warn_user;
    sess_t **buckets;
    sess_t *lru_head, *lru_tail; /* head: most recently used */
    job_t *q_head, *q_tail;      /* waiting */
    job_t *batch;                /* running on the pool */
    uv_work_t work;
    rds_t *rds; /* shared tier, or NULL */
    store_stats_t st;
};

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

/* ---- index ------------------------------------------------------------------------------ */

static sess_t **find(store_t *s, const char *id)
{
    uint64_t h = XXH3_64bits(id, strlen(id));
    sess_t **pp = &s->buckets[h % s->n_buckets];
    while (*pp && strcmp((*pp)->rec.id, id) != 0)
        pp = &(*pp)->next;
    return pp;
}

static sess_t *lookup(store_t *s, const char *id)
{
    return id && store_check_id(id, NULL, 0) == 0 ? *find(s, id) : NULL;
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

static void lru_unlink(store_t *s, sess_t *x)
{
    if (x->lru_prev)
        x->lru_prev->lru_next = x->lru_next;
    else
        s->lru_head = x->lru_next;
    if (x->lru_next)
        x->lru_next->lru_prev = x->lru_prev;
    else
        s->lru_tail = x->lru_prev;
    x->lru_prev = x->lru_next = NULL;
}

static void lru_push(store_t *s, sess_t *x)
{
    x->lru_prev = NULL;
    x->lru_next = s->lru_head;
    if (s->lru_head) s->lru_head->lru_prev = x;
    s->lru_head = x;
    if (!s->lru_tail) s->lru_tail = x;
}

static void cache_drop(store_t *s, sess_t *x)
{
    if (!x->state) return;
    lru_unlink(s, x);
    free(x->state);
    x->state = NULL;
    s->st.cache_entries--;
    s->st.cache_bytes -= x->cached_len;
    x->cached_len = 0;
}

/* Takes ownership of blob as x's cached state; evicts the least recently used states beyond
 * the budget (memory-only stores keep everything: the cache is their only copy). */
static void cache_put(store_t *s, sess_t *x, void *blob, size_t len)
{
    if (x->state) {
        free(x->state);
        lru_unlink(s, x);
        s->st.cache_bytes -= x->cached_len;
    } else {
        s->st.cache_entries++;
    }
    s->st.cache_bytes += len;
    x->cached_len = len;
    x->state = blob;
    lru_push(s, x);
    while (s->dir && s->st.cache_bytes > s->cache_budget && s->lru_tail)
        cache_drop(s, s->lru_tail);
}

static void sess_free(store_t *s, sess_t *x)
{
    cache_drop(s, x);
    free(x->rec.meta);
    free(x);
}

static int insert(store_t *s, const ckpt_hdr_t *h, sess_t **out)
{
    sess_t **pp = find(s, h->id);
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
    x->rec.fingerprint = h->fingerprint;
    x->rec.foreign = h->fingerprint != s->fingerprint;
    x->gen = ++s->next_gen;
    *pp = x;
    s->n++;
    *out = x;
    return 0;
}

static void unindex(store_t *s, sess_t *x)
{
    sess_t **pp = find(s, x->rec.id);
    if (*pp == x) {
        *pp = x->next;
        s->n--;
    }
    sess_free(s, x);
}

/* ---- jobs ------------------------------------------------------------------------------- */

static void job_free(job_t *j)
{
    ckpt_hdr_free(&j->h);
    ckpt_hdr_free(&j->fb);
    free(j->state);
    free(j);
}

/* Fork from a state that is only on disk: reads the source's checkpoint into j->state. */
static int fork_read(store_t *s, job_t *j)
{
    ckpt_hdr_t src;
    int rc = ckpt_read_v(s->dir, j->src, j->src_version, s->fingerprint, s->state_bytes, s->kv_bpt,
                         &src, j->state, j->h.payload_bytes, j->msg, sizeof(j->msg));
    if (!rc && src.payload_bytes != j->h.payload_bytes)
        rc = rcd_fail(RCD_ECORRUPT, j->msg, sizeof(j->msg), "fork source '%s' changed size on disk",
                      j->src);
    ckpt_hdr_free(&src);
    if (!rc) j->h.payload_hash = XXH3_64bits(j->state, j->h.payload_bytes);
    return rc;
}

static bool durable_write(const job_t *j)
{
    return j->kind == J_CREATE || j->kind == J_COMMIT;
}

/* Runs on a pool thread: touches only the job and the store's immutable fields. */
static void job_run(store_t *s, job_t *j)
{
    if (!s->dir) return; /* memory only: nothing to write */
    switch (j->kind) {
    case J_CREATE:
        if (j->from_disk && (j->rc = fork_read(s, j))) return;
        /* fall through */
    case J_COMMIT:
        j->rc = ckpt_write(s->dir, &j->h, j->state, s->keep, j->msg, sizeof(j->msg));
        break;
    case J_LOAD: {
        ckpt_hdr_t h;
        /* Straight into the caller's buffer, verified there: no staging copy (the caller
         * owns dst until the callback and takes nothing from it on an error). */
        j->rc = ckpt_read_v(s->dir, j->h.id, j->h.version, s->fingerprint, s->state_bytes,
                            s->kv_bpt, &h, j->dst, j->h.payload_bytes, j->msg, sizeof(j->msg));
        if (!j->rc && h.payload_bytes != j->h.payload_bytes)
            j->rc = rcd_fail(RCD_ECORRUPT, j->msg, sizeof(j->msg),
                             "checkpoint payload is %" PRIu64 " bytes, the index says %" PRIu64,
                             h.payload_bytes, j->h.payload_bytes);
        ckpt_hdr_free(&h);
        if (j->rc != RCD_ECORRUPT) break;
        /* Keep the evidence, fall back to the newest good older version. */
        ckpt_quarantine(s->dir, j->h.id, j->h.version);
        int r = ckpt_latest_v(s->dir, j->h.id, j->h.version, s->fingerprint, s->state_bytes,
                              s->kv_bpt, &j->fb, NULL, NULL, NULL);
        size_t l = strlen(j->msg);
        if (r == 0) {
            j->rolled_back = true;
            snprintf(j->msg + l, sizeof(j->msg) - l,
                     "; quarantined as *.corrupt, session rolled back to version %" PRIu64,
                     j->fb.version);
        } else {
            j->lost = true;
            if (r == RCD_EMISMATCH) ckpt_hdr_free(&j->fb);
            snprintf(j->msg + l, sizeof(j->msg) - l,
                     "; quarantined as *.corrupt, no older good version: session removed");
        }
        break;
    }
    case J_DELETE:
        j->rc = ckpt_remove_session(s->dir, j->h.id, j->msg, sizeof(j->msg));
        break;
    }
}

/* One flush (syncfs) for every staged checkpoint of the batch; on failure each of them fails
 * (its temp or renamed file removed: the session keeps its previous version). */
static bool group_flush(store_t *s, int fd, const char *what, int n)
{
    if (ckpt__syncfs(fd) == 0) return true;
    int e = errno;
    for (job_t *j = s->batch; j; j = j->next) {
        if (!j->staged) continue;
        ckpt_unstage(&j->stg);
        j->staged = false;
        j->rc = rcd_fail(rcd_errno_code(e), j->msg, sizeof(j->msg),
                         "group commit: syncfs of %s (%s of %d checkpoints) failed: %s", s->dir,
                         what, n, strerror(e));
    }
    return false;
}

/* Group commit (a batch with several durable writes): every checkpoint is written to its temp
 * file without fsync; one syncfs of the state dir's filesystem makes all of them durable;
 * each is renamed into place; one more syncfs makes the names (and new session directories)
 * durable. Only then does batch_done complete the callbacks: 2 flushes per batch instead of
 * 2 per checkpoint. Other jobs run in their place in the order, as in batch_work. */
static void batch_group(store_t *s)
{
    /* Opened before the writes: syncfs reports writeback errors that happen after open. */
    int fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), n = 0, e = errno;
    for (job_t *j = s->batch; j; j = j->next) {
        if (!durable_write(j)) {
            job_run(s, j);
            continue;
        }
        if (fd < 0) {
            j->rc = rcd_fail(RCD_EIO, j->msg, sizeof(j->msg), "open %s: %s", s->dir, strerror(e));
            continue;
        }
        if (j->kind == J_CREATE && j->from_disk && (j->rc = fork_read(s, j))) continue;
        j->rc = ckpt_stage(s->dir, &j->h, j->state, false, &j->stg, j->msg, sizeof(j->msg));
        j->staged = j->rc == 0;
        n += j->staged;
    }
    if (n && group_flush(s, fd, "data", n)) {
        for (job_t *j = s->batch; j; j = j->next)
            if (j->staged && (j->rc = ckpt_publish(&j->stg, j->msg, sizeof(j->msg))))
                j->staged = false;
        if (group_flush(s, fd, "names", n))
            for (job_t *j = s->batch; j; j = j->next)
                if (j->staged) {
                    ckpt_prune(s->dir, j->h.id, s->keep);
                    j->staged = false;
                }
    }
    if (fd >= 0) close(fd);
}

static void batch_work(uv_work_t *w)
{
    store_t *s = w->data;
    int writes = 0;
    if (s->dir && s->group_commit)
        for (job_t *j = s->batch; j && writes < 2; j = j->next)
            writes += durable_write(j);
    if (writes >= 2) {
        batch_group(s);
        return;
    }
    for (job_t *j = s->batch; j; j = j->next)
        job_run(s, j);
}

static void batch_start(store_t *s);

static void wt_done(void *user, int rc, const char *data, size_t len, const char *msg)
{
    job_t *j = user;
    store_t *s = j->s;
    (void)data;
    (void)len;
    sess_t *x = *find(s, j->h.id);
    if (x && x->gen == j->gen) x->pending = false;
    if (rc) {
        char m[300];
        s->st.redis_errors++;
        snprintf(m, sizeof(m), "shared tier: write of version %" PRIu64 " failed: %s", j->h.version,
                 msg);
        if (s->warn_cb) s->warn_cb(s->warn_user, j->h.id, m);
    } else {
        s->st.redis_writes++;
    }
    /* The disk copy is the durable one: a shared-tier failure does not fail the commit. */
    if (j->cb) j->cb(j->user, 0, j->h.version, "");
    job_free(j);
}

/* Writes a durable checkpoint through to the shared tier; true if wt_done will finish j. */
static bool write_through(store_t *s, job_t *j)
{
    if (!s->rds || j->no_wt) return false;
    uint8_t *hb;
    size_t hl;
    char key[STORE_ID_MAX + 32];
    if (ckpt_encode(&j->h, &hb, &hl)) return false;
    snprintf(key, sizeof(key), "recurd:ckpt:%s", j->h.id);
    int rc = rds_set(s->rds, key, hb, hl, j->state, (size_t)j->h.payload_bytes, wt_done, j);
    free(hb);
    if (rc) {
        s->st.redis_errors++;
        return false;
    }
    return true;
}

/* On the loop: applies each finished job to the index, then tells its caller. Returns false
 * when the job lives on (its write-through to the shared tier finishes it). */
static bool job_finish(store_t *s, job_t *j)
{
    sess_t *x = *find(s, j->h.id);
    if (x && x->gen != j->gen) x = NULL; /* deleted (and maybe re-created) meanwhile */
    uint64_t version = x ? x->rec.version : 0;
    /* Durable on disk; with a shared tier the caller hears back once Redis has it too. */
    bool deferred =
        x && !j->rc && (j->kind == J_CREATE || j->kind == J_COMMIT) && write_through(s, j);
    switch (j->kind) {
    case J_CREATE:
        if (!x) break;
        x->pending = false;
        if (j->rc) {
            unindex(s, x);
            x = NULL;
        } else if (j->state) {
            cache_put(s, x, j->state, (size_t)j->h.payload_bytes);
            j->state = NULL;
        }
        break;
    case J_COMMIT:
        if (!x) break;
        x->pending = false;
        if (j->rc) break;
        x->rec.version = version = j->h.version;
        x->rec.n_tokens = j->h.n_tokens;
        x->rec.updated_ms = j->h.updated_ms;
        x->rec.has_state = true;
        x->rec.state_len = j->h.payload_bytes;
        cache_put(s, x, j->state, (size_t)j->h.payload_bytes);
        j->state = NULL;
        s->st.commits++;
        break;
    case J_LOAD:
        if (j->rc == 0) {
            /* Not cached: the turn that loads a state commits its successor, which is. */
            version = j->h.version;
            break;
        }
        if (j->rc == RCD_ECORRUPT) {
            s->st.corrupt++;
            if (s->warn_cb) s->warn_cb(s->warn_user, j->h.id, j->msg);
        }
        if (!x || x->pending || x->rec.version != j->h.version) break;
        if (j->rolled_back) {
            cache_drop(s, x);
            x->rec.version = version = j->fb.version;
            x->rec.n_tokens = j->fb.n_tokens;
            x->rec.updated_ms = j->fb.updated_ms;
            x->rec.has_state = j->fb.payload_bytes > 0;
            x->rec.state_len = j->fb.payload_bytes;
        } else if (j->lost) {
            unindex(s, x);
            version = 0;
        }
        break;
    case J_DELETE:
        break;
    }
    if (deferred) {
        x->pending = true; /* until wt_done: no commit may overtake this one */
        return false;
    }
    if (j->cb) j->cb(j->user, j->rc, version, j->rc ? j->msg : "");
    return true;
}

static void batch_done(uv_work_t *w, int status)
{
    store_t *s = w->data;
    job_t *j = s->batch;
    s->batch = NULL;
    while (j) {
        job_t *next = j->next;
        if (status && !j->rc) { /* the pool refused it (uv_cancel is never called) */
            j->rc = RCD_EINTERNAL;
            snprintf(j->msg, sizeof(j->msg), "store job cancelled");
        }
        if (job_finish(s, j)) job_free(j);
        j = next;
    }
    batch_start(s);
}

/* Every waiting job forms the next batch: a group of commits shares one trip to the pool. */
static void batch_start(store_t *s)
{
    if (s->batch || !s->q_head) return;
    s->batch = s->q_head;
    s->q_head = s->q_tail = NULL;
    s->work.data = s;
    if (uv_queue_work(s->loop, &s->work, batch_work, batch_done) != 0) {
        /* Cannot happen with a valid loop; fail the jobs rather than lose them silently. */
        for (job_t *j = s->batch; j; j = j->next)
            if (!j->rc) {
                j->rc = RCD_EINTERNAL;
                snprintf(j->msg, sizeof(j->msg), "cannot queue store I/O");
            }
        job_t *b = s->batch;
        s->batch = NULL;
        while (b) {
            job_t *next = b->next;
            if (job_finish(s, b)) job_free(b);
            b = next;
        }
    }
}

static void enqueue(store_t *s, job_t *j)
{
    j->next = NULL;
    if (s->q_tail)
        s->q_tail->next = j;
    else
        s->q_head = j;
    s->q_tail = j;
    batch_start(s);
}

static job_t *job_new(store_t *s, job_kind_t kind, sess_t *x, store_done_cb cb, void *user)
{
    job_t *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
    j->s = s;
    j->kind = kind;
    j->cb = cb;
    j->user = user;
    j->gen = x ? x->gen : 0;
    if (x) snprintf(j->h.id, sizeof(j->h.id), "%s", x->rec.id);
    return j;
}

/* The checkpoint header for x's current record (version, tokens, metadata, layout). */
static int job_header(store_t *s, job_t *j, const sess_t *x)
{
    j->h.fingerprint = s->fingerprint;
    j->h.version = x->rec.version;
    j->h.n_tokens = x->rec.n_tokens;
    j->h.created_ms = x->rec.created_ms;
    j->h.updated_ms = x->rec.updated_ms;
    j->h.dtype = CKPT_DTYPE_F32;
    snprintf(j->h.parent, sizeof(j->h.parent), "%s", x->rec.parent_id);
    snprintf(j->h.owner, sizeof(j->h.owner), "%s", x->rec.owner);
    j->h.ttl_s = x->rec.ttl_s;
    if (s->n_tensors) {
        /* room for the KV tail's records (kv_tensors) */
        size_t n = (size_t)s->n_tensors + (s->kv_bpt ? 2 * (size_t)s->n_kv_layers : 0);
        j->h.tensors = malloc(sizeof(*j->h.tensors) * n);
        if (!j->h.tensors) return RCD_ENOMEM;
        memcpy(j->h.tensors, s->tensors, sizeof(*j->h.tensors) * (size_t)s->n_tensors);
        j->h.n_tensors = s->n_tensors;
    }
    int rc = ckpt_meta_pack(x->rec.meta, x->rec.n_meta, &j->h.meta);
    if (rc) return rc;
    j->h.n_meta = x->rec.n_meta;
    return 0;
}

/* Appends the layout of a variable-size blob's KV tail (payload_bytes set) to j's table:
 * per attention layer i, kv.k.<i> then kv.v.<i>, [P][kv_width] f32 (workers/README.md). */
static void kv_tensors(store_t *s, job_t *j)
{
    if (!s->kv_bpt || !s->n_tensors || !s->n_kv_layers || j->h.payload_bytes < s->state_bytes)
        return;
    uint64_t p = (j->h.payload_bytes - s->state_bytes) / s->kv_bpt;
    uint64_t per = p * (uint64_t)s->kv_width * sizeof(float), off = s->state_bytes;
    j->h.n_tensors = s->n_tensors;
    for (int l = 0; l < s->n_kv_layers; l++)
        for (int v = 0; v < 2; v++, off += per) {
            store_tensor_t *t = &j->h.tensors[j->h.n_tensors++];
            memset(t, 0, sizeof(*t));
            snprintf(t->name, sizeof(t->name), "kv.%c.%d", v ? 'v' : 'k', l);
            t->offset = off;
            t->bytes = per;
            t->ndim = 2;
            t->shape[0] = (int64_t)p;
            t->shape[1] = s->kv_width;
        }
}

/* ---- public calls ----------------------------------------------------------------------- */

static int create_common(store_t *s, const char *id, const char *src_id, const store_meta_t *meta,
                         int n_meta, const store_attrs_t *attrs, int64_t now_ms,
                         store_session_t *out, store_done_cb cb, void *user)
{
    int rc = store_check_id(id, NULL, 0);
    if (rc) return rc;
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
    if (*find(s, id)) return RCD_EEXISTS;
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
    }
    if ((rc = ckpt_meta_pack(meta, n_meta, &h.meta))) return rc;
    h.n_meta = n_meta;
    job_t *j = NULL;
    rc = insert(s, &h, &x);
    ckpt_hdr_free(&h);
    if (rc) return rc;
    if (!(j = job_new(s, J_CREATE, x, cb, user)) || (rc = job_header(s, j, x))) goto fail;
    x->rec.has_state = src && src->rec.has_state;
    if (x->rec.has_state) {
        j->h.payload_bytes = src->rec.state_len; /* a variable-size blob is copied whole */
        kv_tensors(s, j);
        if (!(j->state = malloc((size_t)src->rec.state_len))) goto fail;
        if (src->state) {
            memcpy(j->state, src->state, (size_t)src->rec.state_len);
            j->h.payload_hash = XXH3_64bits(j->state, (size_t)src->rec.state_len);
        } else {
            j->from_disk = true;
            snprintf(j->src, sizeof(j->src), "%s", src_id);
            j->src_version = src->rec.version;
        }
    }
    if ((rc = rec_copy(s, &x->rec, out))) goto fail;
    x->pending = true;
    enqueue(s, j);
    return 0;
fail:
    if (j) job_free(j);
    unindex(s, x);
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
        lru_unlink(s, x);
        lru_push(s, x);
        s->st.cache_hits++;
        return 0;
    }
    s->st.cache_misses++;
    s->st.disk_loads++;
    job_t *j = job_new(s, J_LOAD, x, cb, user);
    if (!j) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    j->h.version = x->rec.version;
    j->h.payload_bytes = x->rec.state_len; /* what the read must find */
    j->dst = dst;
    enqueue(s, j);
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
    if (len == 0 || !ckpt_payload_ok(len, s->state_bytes, s->kv_bpt))
        rc = RCD_EINVAL;
    else if (!x)
        rc = RCD_ENOTFOUND;
    else if (x->rec.foreign)
        rc = RCD_EMISMATCH;
    else if (x->pending)
        rc = RCD_EBUSY;
    else if (x->rec.version != expected_version)
        rc = RCD_EMISMATCH;
    else if (!(j = job_new(s, J_COMMIT, x, cb, user)) || (rc = job_header(s, j, x)))
        rc = rc ? rc : RCD_ENOMEM;
    if (rc) {
        if (j) job_free(j);
        free(state);
        return rc;
    }
    j->h.version = x->rec.version + 1;
    j->h.n_tokens = x->rec.n_tokens + add_tokens;
    j->h.updated_ms = now_ms;
    j->h.payload_bytes = len;
    j->h.payload_hash = s->dir ? XXH3_64bits(state, len) : 0;
    kv_tensors(s, j);
    j->state = state;
    x->pending = true;
    enqueue(s, j);
    return 0;
}

/* Forgets x at once; its files (and shared-tier copy) go in the background. */
static int delete_sess(store_t *s, sess_t *x, store_done_cb cb, void *user)
{
    job_t *j = job_new(s, J_DELETE, x, cb, user);
    if (!j) return RCD_ENOMEM;
    if (s->rds) { /* ordered before any later write of the same id on the one connection */
        char key[STORE_ID_MAX + 32];
        snprintf(key, sizeof(key), "recurd:ckpt:%s", x->rec.id);
        rds_del(s->rds, key);
    }
    unindex(s, x);
    enqueue(s, j);
    return 0;
}

int store_delete(store_t *s, const char *id, store_done_cb cb, void *user)
{
    sess_t *x = lookup(s, id);
    if (!x) return RCD_ENOTFOUND;
    if (x->pending) return RCD_EBUSY;
    return delete_sess(s, x, cb, user);
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
            if (delete_sess(s, x, expire_done, s) != 0) {
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

/* ---- shared tier: lookup on a miss ------------------------------------------------------ */

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
    /* Outside bytes: the same checks as a file. */
    hl = ckpt_header_len((const uint8_t *)data, len, NULL, 0);
    if (hl < 0 || ckpt_parse((const uint8_t *)data, len, &h, NULL, 0))
        rc = rcd_fail(RCD_ECORRUPT, why, sizeof(why), "shared-tier checkpoint is corrupt");
    else if (strcmp(h.id, j->h.id) != 0 || (uint64_t)len != (uint64_t)hl + h.payload_bytes)
        rc = rcd_fail(RCD_ECORRUPT, why, sizeof(why), "shared-tier checkpoint is malformed");
    else if (h.fingerprint != s->fingerprint)
        rc = rcd_fail(RCD_EMISMATCH, why, sizeof(why),
                      "session '%s' was checkpointed by model fingerprint %016" PRIx64
                      "; the loaded model's fingerprint is %016" PRIx64,
                      h.id, h.fingerprint, s->fingerprint);
    else if (h.payload_bytes && (!ckpt_payload_ok(h.payload_bytes, s->state_bytes, s->kv_bpt) ||
                                 h.dtype != CKPT_DTYPE_F32 ||
                                 XXH3_64bits(data + hl, (size_t)h.payload_bytes) != h.payload_hash))
        rc = rcd_fail(RCD_ECORRUPT, why, sizeof(why), "shared-tier checkpoint fails its checks");
    if (rc) goto done;
    s->st.redis_hits++;
    if ((x = *find(s, h.id))) { /* created here meanwhile */
        version = x->rec.version;
        goto done;
    }
    if (s->n >= s->max_sessions) {
        rc = rcd_fail(RCD_ETOOBIG, why, sizeof(why), "session store full");
        goto done;
    }
    if (h.payload_bytes && !(j->state = malloc((size_t)h.payload_bytes))) rc = RCD_ENOMEM;
    if (!rc) rc = insert(s, &h, &x);
    if (rc) {
        snprintf(why, sizeof(why), "%s", rcd_strerror(rc));
        goto done;
    }
    if (j->state) memcpy(j->state, data + hl, (size_t)h.payload_bytes);
    ckpt_hdr_free(&j->h);
    j->h = h; /* written to the local disk as it is, then indexed (J_CREATE) */
    j->gen = x->gen;
    x->pending = true;
    enqueue(s, j);
    return;
done:
    ckpt_hdr_free(&h);
    if (j->cb) j->cb(j->user, rc, version, why);
    job_free(j);
}

int store_fetch(store_t *s, const char *id, store_done_cb cb, void *user)
{
    if (!s->rds) return RCD_ENOTFOUND;
    int rc = store_check_id(id, NULL, 0);
    if (rc) return rc;
    job_t *j = job_new(s, J_CREATE, NULL, cb, user);
    if (!j) return RCD_ENOMEM;
    j->no_wt = true;
    snprintf(j->h.id, sizeof(j->h.id), "%s", id);
    char key[STORE_ID_MAX + 32];
    snprintf(key, sizeof(key), "recurd:ckpt:%s", id);
    if (rds_get(s->rds, key, fetch_done, j) != 0) {
        job_free(j);
        return RCD_ENOTFOUND; /* shared tier down: a miss */
    }
    return 0;
}

void store_get_stats(const store_t *s, store_stats_t *out)
{
    *out = s->st;
    out->sessions = s->n;
}

void store_session_clear(store_session_t *ss)
{
    if (ss) {
        free(ss->meta);
        ss->meta = NULL;
        ss->n_meta = 0;
    }
}

/* ---- open / scan / close ---------------------------------------------------------------- */

static int mkdirs(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static void remove_tree1(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
    rmdir(path);
}

static void warn(store_t *s, const char *id, const char *msg)
{
    if (s->warn_cb) s->warn_cb(s->warn_user, id, msg);
}

static int scan(store_t *s, char *err, size_t errlen)
{
    DIR *d = opendir(s->dir);
    if (!d) return rcd_fail(RCD_EIO, err, errlen, "open %s: %s", s->dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        const char *name = e->d_name;
        char path[4600];
        if (!strncmp(name, ".trash-", 7)) { /* a delete that was cut short */
            snprintf(path, sizeof(path), "%s/%s", s->dir, name);
            remove_tree1(path);
            continue;
        }
        if (strncmp(name, "s_", 2) != 0) continue;
        const char *id = name + 2;
        if (store_check_id(id, NULL, 0)) {
            warn(s, NULL, "state dir entry with an invalid session id skipped");
            continue;
        }
        ckpt_hdr_t h;
        int r = ckpt_latest_v(s->dir, id, UINT64_MAX, s->fingerprint, s->state_bytes, s->kv_bpt, &h,
                              &s->st.quarantined, s->warn_cb, s->warn_user);
        if (r == RCD_ENOTFOUND) {
            warn(s, id, "session directory holds no valid checkpoint: skipped");
            continue;
        }
        if (r && r != RCD_EMISMATCH) {
            warn(s, id, "cannot read session checkpoints: skipped");
            continue;
        }
        sess_t *x;
        r = insert(s, &h, &x);
        ckpt_hdr_free(&h);
        if (r == RCD_ENOMEM) {
            rc = rcd_fail(r, err, errlen, "out of memory scanning %s", s->dir);
            break;
        }
        if (r == 0 && x->rec.foreign) {
            s->st.foreign++;
            s->st.foreign_fingerprint = x->rec.fingerprint;
        }
    }
    closedir(d);
    return rc;
}

int store_open(const store_opts_t *opts, store_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!opts || opts->state_bytes == 0 || !opts->loop)
        return rcd_fail(RCD_EINVAL, err, errlen, "store: state_bytes and loop are required");
    if (opts->n_tensors < 0 || opts->n_tensors > CKPT_MAX_TENSORS ||
        (opts->n_tensors && !opts->tensors))
        return rcd_fail(RCD_EINVAL, err, errlen, "store: bad tensor table");
    store_t *s = calloc(1, sizeof(*s));
    int rc = 0;
    if (!s) return rcd_fail(RCD_ENOMEM, err, errlen, "store: out of memory");
    s->loop = opts->loop;
    s->lock_fd = -1;
    s->state_bytes = opts->state_bytes;
    s->kv_bpt = opts->kv_bytes_per_token;
    s->n_kv_layers = opts->n_kv_layers > 0 ? opts->n_kv_layers : 0;
    s->kv_width = opts->kv_width > 0 ? opts->kv_width : 0;
    if (s->kv_bpt && (size_t)s->n_kv_layers * 2 * (size_t)s->kv_width * sizeof(float) != s->kv_bpt)
        s->n_kv_layers = 0; /* no consistent description of the tail: sizes still checked */
    s->fingerprint = opts->fingerprint;
    s->max_sessions = opts->max_sessions ? opts->max_sessions : 1024;
    s->keep = opts->keep_versions > 0 ? opts->keep_versions : 2;
    s->group_commit = !opts->no_group_commit;
    s->cache_budget = opts->cache_bytes;
    s->warn_cb = opts->warn_cb;
    s->warn_user = opts->warn_user;
    s->default_ttl_s = opts->default_ttl_s;
    s->n_buckets = 1024;
    s->buckets = calloc(s->n_buckets, sizeof(*s->buckets));
    if (opts->n_tensors) {
        s->tensors = malloc(sizeof(*s->tensors) * (size_t)opts->n_tensors);
        if (s->tensors)
            memcpy(s->tensors, opts->tensors, sizeof(*s->tensors) * (size_t)opts->n_tensors);
        s->n_tensors = opts->n_tensors;
    }
    if (!s->buckets || (opts->n_tensors && !s->tensors)) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "store: out of memory");
        goto fail;
    }
    if (opts->dir && opts->dir[0]) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (strlen(opts->dir) > 3000 || !(s->dir = strdup(opts->dir))) {
            rc = rcd_fail(RCD_EINVAL, err, errlen, "store: state dir path too long");
            goto fail;
        }
        if (mkdirs(s->dir) != 0) {
            rc = rcd_fail(RCD_EIO, err, errlen, "state dir %s: %s", s->dir, strerror(errno));
            goto fail;
        }
        char lock[3100];
        snprintf(lock, sizeof(lock), "%s/LOCK", s->dir);
        s->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (s->lock_fd < 0) {
            rc = rcd_fail(RCD_EIO, err, errlen, "state dir %s: %s", lock, strerror(errno));
            goto fail;
        }
        if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            rc = rcd_fail(RCD_EBUSY, err, errlen,
                          "state dir %s is locked by another process (a second recurd?)", s->dir);
            goto fail;
        }
        if ((rc = scan(s, err, errlen))) goto fail;
        if (opts->redis && opts->redis[0] &&
            (rc = rds_open(s->loop, opts->redis, &s->rds, err, errlen)))
            goto fail;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        s->st.scan_ms =
            (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    }
    *out = s;
    return 0;
fail:
    store_close(s);
    return rc;
}

void store_close(store_t *s)
{
    if (!s) return;
    rds_close(s->rds); /* before the index: outstanding replies still find it */
    s->rds = NULL;
    /* Jobs still queued here mean the loop stopped early; their callers are gone. */
    for (job_t *j = s->q_head; j;) {
        job_t *next = j->next;
        job_free(j);
        j = next;
    }
    for (size_t b = 0; s->buckets && b < s->n_buckets; b++) {
        sess_t *x = s->buckets[b];
        while (x) {
            sess_t *next = x->next;
            sess_free(s, x);
            x = next;
        }
    }
    if (s->lock_fd >= 0) close(s->lock_fd); /* releases the flock */
    free(s->buckets);
    free(s->tensors);
    free(s->dir);
    free(s);
}
