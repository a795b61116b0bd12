/* statestore: the store's job queue — checkpoint I/O on the libuv pool, one batch in flight at
 * a time, jobs in submission order, so a delete, re-create and commit of one id land on disk
 * in order; group commit; applying finished jobs to the index; the shared tier's
 * write-through. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/rcd_metrics.h"
#include "statestore/store_int.h"

void store__job_free(job_t *j)
{
    ckpt_hdr_free(&j->h);
    ckpt_hdr_free(&j->fb);
    free(j->mem ? j->mem : j->state);
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
    if (!rc) store__kv_tensors(s, j); /* the blob's own layout, now that it is here */
    return rc;
}

static bool durable_write(const job_t *j)
{
    return (j->kind == J_CREATE || j->kind == J_COMMIT) && !j->cache_copy;
}

/* authority mode, a version fetched from Redis: the local file is a cache of it (verified
 * against Redis's identity before use, its payload hash on every load), so it is written behind
 * the fetch's answer (the caller already has the state from the host cache) to a temp file and
 * renamed into place without waiting for the disk. A process crash leaves a .tmp (removed at the
 * next scan) or the complete file; a power loss may also tear a renamed one, which its payload
 * hash refuses on load; either way the next resume fetches it again. Later jobs of the id
 * (commit, load, delete) are queued behind this one, so they reach the disk after it. */
void (*store__behind_hook)(const char *id, int step);

static int cache_copy_write(store_t *s, job_t *j)
{
    ckpt_staged_t st;
    int rc = ckpt_stage(s->dir, &j->h, j->state, false, &st, j->msg, sizeof(j->msg));
    if (!rc && store__behind_hook) store__behind_hook(j->h.id, 0);
    if (!rc) rc = ckpt_publish(&st, j->msg, sizeof(j->msg));
    if (!rc && store__behind_hook) store__behind_hook(j->h.id, 1);
    if (!rc) ckpt_prune(s->dir, j->h.id, s->keep);
    return rc;
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
        if (j->cache_copy)
            j->rc = cache_copy_write(s, j);
        else
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
    if (n) rcd_hist_observe(&rcd_metrics.group_commit_size, (uint64_t)n);
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
    if (writes == 1) rcd_hist_observe(&rcd_metrics.group_commit_size, 1);
    for (job_t *j = s->batch; j; j = j->next)
        job_run(s, j);
}

static void batch_start(store_t *s);

/* Authority mode's scripts (README.md, "Redis as the authority"). KEYS[1] is the checkpoint key,
 * KEYS[2] the tombstone key; a version's identity is the checkpoint's bytes 24..71. Each answers
 * one bulk string: "K" done; "V" + the current identity (another version is there); "D" the
 * session was deleted (tombstone); "E" + identity (create: the id exists); "N" (check: never
 * seen). */
const char store__lua_check[] = "local v = redis.call('GETRANGE', KEYS[1], 24, 71)\n"
                                "if v ~= '' then return 'V' .. v end\n"
                                "if redis.call('EXISTS', KEYS[2]) == 1 then return 'D' end\n"
                                "return 'N'\n";
/* ARGV[1]: 'c' create (the key must not exist; a tombstone goes) or 'u' commit; ARGV[2]: the
 * identity the commit replaces; ARGV[3]: the checkpoint. A commit over a missing key is accepted
 * only without a tombstone (a session that predates the shared tier). */
const char store__lua_commit[] = "local v = redis.call('GETRANGE', KEYS[1], 24, 71)\n"
                                 "if ARGV[1] == 'c' then\n"
                                 "  if v ~= '' then return 'E' .. v end\n"
                                 "  redis.call('DEL', KEYS[2])\n"
                                 "elseif v == '' then\n"
                                 "  if redis.call('EXISTS', KEYS[2]) == 1 then return 'D' end\n"
                                 "elseif v ~= ARGV[2] then return 'V' .. v end\n"
                                 "redis.call('SET', KEYS[1], ARGV[3])\n"
                                 "return 'K'\n";
/* ARGV[1]: '' unconditional, else the identity that must still be there (expiry). */
const char store__lua_delete[] =
    "local v = redis.call('GETRANGE', KEYS[1], 24, 71)\n"
    "if ARGV[1] ~= '' and v ~= '' and v ~= ARGV[1] then return 'V' .. v end\n"
    "redis.call('SET', KEYS[2], '1')\n"
    "redis.call('DEL', KEYS[1])\n"
    "return 'K'\n";

/* What a script's refusal means: RCD_ECONFLICT (another version), RCD_ENOTFOUND (deleted),
 * RCD_EEXISTS (create of an existing id); 0 for "K". */
static int script_verdict(const store_t *s, const job_t *j, const char *data, size_t len, char *msg,
                          size_t msglen)
{
    (void)s;
    if (len == 1 && data[0] == 'K') return 0;
    if (len == 1 && data[0] == 'D')
        return rcd_fail(RCD_ENOTFOUND, msg, msglen,
                        "session '%s' was deleted (on another replica): version %" PRIu64
                        " refused",
                        j->h.id, j->h.version);
    if (len == 1 + STORE_IDENT_LEN && (data[0] == 'V' || data[0] == 'E')) {
        uint64_t v = 0;
        for (int i = 8; i >= 1; i--)
            v = v << 8 | (uint8_t)data[i];
        if (data[0] == 'E')
            return rcd_fail(RCD_EEXISTS, msg, msglen,
                            "session '%s' already exists in the shared tier (version %" PRIu64 ")",
                            j->h.id, v);
        return rcd_fail(RCD_ECONFLICT, msg, msglen,
                        "session '%s': version %" PRIu64 " refused, the shared tier holds version "
                        "%" PRIu64 " committed by another replica (this replica's copy was stale)",
                        j->h.id, j->h.version, v);
    }
    return rcd_fail(RCD_EUNAVAILABLE, msg, msglen, "shared tier: unexpected script reply");
}

static void wt_done(void *user, int rc, const char *data, size_t len, const char *msg)
{
    job_t *j = user;
    store_t *s = j->s;
    sess_t *x = *store__find(s, j->h.id);
    if (x && x->gen != j->gen) x = NULL;
    if (x) x->pending = false;
    char m[600];
    if (s->authority) {
        /* The acknowledgement: only once the conditional commit was accepted. Anything else
         * leaves the local copy unacknowledged (and maybe forked): it is dropped, the next call
         * fetches the authoritative version. */
        if (rc) {
            s->st.redis_errors++;
            rc = rcd_fail(RCD_EUNAVAILABLE, m, sizeof(m),
                          "shared tier: commit of version %" PRIu64 " not confirmed: %s",
                          j->h.version, msg);
        } else if ((rc = script_verdict(s, j, data, len, m, sizeof(m))) != 0) {
            s->st.redis_refused++;
        } else {
            s->st.redis_writes++;
        }
        if (rc) {
            if (s->warn_cb) s->warn_cb(s->warn_user, j->h.id, m);
            if (x) store__drop_local(s, x);
        }
        if (j->cb) j->cb(j->user, rc, rc ? 0 : j->h.version, rc ? m : "");
        store__job_free(j);
        return;
    }
    if (rc) {
        s->st.redis_errors++;
        snprintf(m, sizeof(m), "shared tier: write of version %" PRIu64 " failed: %s", j->h.version,
                 msg);
        if (s->warn_cb) s->warn_cb(s->warn_user, j->h.id, m);
    } else {
        s->st.redis_writes++;
    }
    /* The disk copy is the durable one: a shared-tier failure does not fail the commit. */
    if (j->cb) j->cb(j->user, 0, j->h.version, "");
    store__job_free(j);
}

/* Writes a durable checkpoint through to the shared tier; true if wt_done will finish j. */
static bool write_through(store_t *s, job_t *j)
{
    if (!s->rds || j->no_wt) return false;
    uint8_t *hb;
    size_t hl;
    char key[STORE_RDS_KEY_MAX], tomb[STORE_RDS_KEY_MAX];
    if (ckpt_encode(&j->h, &hb, &hl)) {
        if (s->authority) j->rc = rcd_fail(RCD_ENOMEM, j->msg, sizeof(j->msg), "out of memory");
        return false;
    }
    store__rds_key(s, key, j->h.id);
    int rc;
    if (s->authority) {
        store__rds_tomb(s, tomb, j->h.id);
        rds_val_t args[3] = {{j->kind == J_CREATE ? "c" : "u", NULL, 1, 0},
                             {j->expect, NULL, j->has_expect ? STORE_IDENT_LEN : 0, 0},
                             {hb, j->state, hl, (size_t)j->h.payload_bytes}};
        rc = rds_eval(s->rds, store__lua_commit, key, tomb, 3, args, wt_done, j);
    } else {
        rc = rds_set(s->rds, key, hb, hl, j->state, (size_t)j->h.payload_bytes, wt_done, j);
    }
    free(hb);
    if (rc) {
        s->st.redis_errors++;
        if (s->authority) { /* cannot be fenced: not acknowledged */
            j->rc = RCD_EUNAVAILABLE;
            snprintf(j->msg, sizeof(j->msg), "shared tier unavailable: commit not confirmed");
        }
        return false;
    }
    return true;
}

static void del_done(void *user, int rc, const char *data, size_t len, const char *msg)
{
    job_t *j = user;
    store_t *s = j->s;
    char m[600] = "";
    if (rc) {
        s->st.redis_errors++;
        rc = rcd_fail(RCD_EUNAVAILABLE, m, sizeof(m), "shared tier: delete not confirmed: %s", msg);
    } else if (len == 1 + STORE_IDENT_LEN && data[0] == 'V') {
        /* expiry of a copy another replica moved on: only the local copy went */
        rc = 0;
    } else if ((rc = script_verdict(s, j, data, len, m, sizeof(m))) == RCD_ENOTFOUND) {
        rc = 0; /* deleted already */
        m[0] = 0;
    }
    if (j->cb) j->cb(j->user, rc, 0, rc ? m : "");
    store__job_free(j);
}

/* Authority mode: the delete script (a tombstone) for a removed session; true if del_done will
 * finish j. */
static bool delete_through(store_t *s, job_t *j)
{
    if (!s->authority || j->no_wt || j->rc) return false;
    char key[STORE_RDS_KEY_MAX], tomb[STORE_RDS_KEY_MAX];
    store__rds_key(s, key, j->h.id);
    store__rds_tomb(s, tomb, j->h.id);
    rds_val_t arg = {j->expect, NULL, j->has_expect ? STORE_IDENT_LEN : 0, 0};
    if (rds_eval(s->rds, store__lua_delete, key, tomb, 1, &arg, del_done, j) == 0) return true;
    s->st.redis_errors++;
    j->rc = RCD_EUNAVAILABLE;
    snprintf(j->msg, sizeof(j->msg), "shared tier unavailable: delete not confirmed");
    return false;
}

/* A write-behind copy is on disk (or failed): its buffer goes to the session's cache entry if
 * that still holds it (else the job frees it). A failed write drops the local copy again, unless
 * a commit is in flight (queued behind it, it writes a complete checkpoint of its own): the
 * index must not point at a file that is not there; the next call fetches again. The caller was
 * answered when the fetch was. */
static void behind_finish(store_t *s, job_t *j, sess_t *x)
{
    if (x && x->lent && j->state && x->state == j->state) {
        x->lent = false;
        x->state_mem = j->mem;
        j->state = j->mem = NULL;
    }
    if (!j->rc) return;
    s->st.redis_behind_failed++;
    if (s->warn_cb) {
        char m[1000];
        snprintf(m, sizeof(m),
                 "local copy of the shared tier's version %" PRIu64 " not written: %s",
                 j->h.version, j->msg);
        s->warn_cb(s->warn_user, j->h.id, m);
    }
    if (x && !x->pending) store__drop_local(s, x);
}

/* On the loop: applies each finished job to the index, then tells its caller. Returns false
 * when the job lives on (its write-through to the shared tier finishes it). */
static bool job_finish(store_t *s, job_t *j)
{
    sess_t *x = *store__find(s, j->h.id);
    if (x && x->gen != j->gen) x = NULL; /* deleted (and maybe re-created) meanwhile */
    if (j->cache_copy) {
        behind_finish(s, j, x);
        return true;
    }
    uint64_t version = x ? x->rec.version : 0;
    /* Durable on disk; with a shared tier the caller hears back once Redis has it too. */
    bool deferred = false;
    if (x && !j->rc && (j->kind == J_CREATE || j->kind == J_COMMIT)) {
        x->phash = j->h.payload_hash; /* the identity of the version being made */
        deferred = write_through(s, j);
        if (!deferred && j->rc) {
            /* authority: written here, not fenced by Redis: never acknowledged, never resumed */
            x->pending = false;
            store__drop_local(s, x);
            x = NULL;
        }
    }
    if (j->kind == J_DELETE && delete_through(s, j)) return false;
    switch (j->kind) {
    case J_CREATE:
        if (!x) break;
        x->pending = false;
        if (j->rc) {
            store__unindex(s, x);
            x = NULL;
        } else if (j->state) {
            /* a fetch's state may lie in its taken reply (j->mem) */
            store__cache_put_mem(s, x, j->state, j->mem, (size_t)j->h.payload_bytes);
            j->state = j->mem = NULL;
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
        x->rec.ext_len = j->h.ext_bytes;
        store__cache_put(s, x, j->state, (size_t)j->h.payload_bytes);
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
            store__cache_drop(s, x);
            x->rec.version = version = j->fb.version;
            x->phash = j->fb.payload_hash;
            x->rec.n_tokens = j->fb.n_tokens;
            x->rec.updated_ms = j->fb.updated_ms;
            x->rec.has_state = j->fb.payload_bytes > 0;
            x->rec.state_len = j->fb.payload_bytes;
            x->rec.ext_len = j->fb.ext_bytes;
        } else if (j->lost) {
            store__unindex(s, x);
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
        if (job_finish(s, j)) store__job_free(j);
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
            if (job_finish(s, b)) store__job_free(b);
            b = next;
        }
    }
}

void store__enqueue(store_t *s, job_t *j)
{
    j->next = NULL;
    if (s->q_tail)
        s->q_tail->next = j;
    else
        s->q_head = j;
    s->q_tail = j;
    batch_start(s);
}

job_t *store__job_new(store_t *s, job_kind_t kind, sess_t *x, store_done_cb cb, void *user)
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

int store__job_header(store_t *s, job_t *j, const sess_t *x)
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
        size_t n = (size_t)s->n_tensors + (s->kv_bpt ? 2 * (size_t)s->n_kv_layers : 0) + 1 +
                   CKPT_EXT_MAX;
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

/* Appends the layout of j's blob past the model's fixed tensors: a variable-size blob's KV
 * tail (per attention layer i, kv.k.<i> then kv.v.<i>, [P][kv_width] f32, workers/README.md),
 * then its extension sections (ckpt_ext.h): CKPT_EXT_RECORD for the region, each section by
 * name. Needs j->state (a fork from disk calls it after the read). */
void store__kv_tensors(store_t *s, job_t *j)
{
    size_t sl = (size_t)j->h.payload_bytes;
    ckpt_ext_t ext = {0};
    if (!j->state || ckpt_ext_split(j->state, sl, s->state_bytes, s->kv_bpt, &sl, &ext, NULL, 0))
        return;
    j->h.ext_bytes = ext.region_bytes; /* the record's ext_len */
    if (!s->n_tensors) return;
    j->h.n_tensors = s->n_tensors;
    if (s->kv_bpt && s->n_kv_layers && sl >= s->state_bytes) {
        uint64_t p = (sl - s->state_bytes) / s->kv_bpt;
        uint64_t per = p * (uint64_t)s->kv_width * sizeof(float), off = s->state_bytes;
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
    if (!ext.n) return;
    store_tensor_t *t = &j->h.tensors[j->h.n_tensors++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", CKPT_EXT_RECORD);
    t->offset = sl;
    t->bytes = ext.region_bytes;
    t->ndim = 1;
    t->shape[0] = (int64_t)ext.region_bytes;
    for (int i = 0; i < ext.n; i++) {
        t = &j->h.tensors[j->h.n_tensors++];
        memset(t, 0, sizeof(*t));
        snprintf(t->name, sizeof(t->name), "%s", ext.sec[i].name);
        t->offset = (uint64_t)((const uint8_t *)ext.sec[i].data - (const uint8_t *)j->state);
        t->bytes = ext.sec[i].bytes;
        t->ndim = 1;
        t->shape[0] = (int64_t)(ext.sec[i].bytes / ext.sec[i].elem);
    }
}

void store__rds_key(const store_t *s, char key[STORE_RDS_KEY_MAX], const char *id)
{
    /* ids and the prefix are checked: it fits */
    snprintf(key, STORE_RDS_KEY_MAX, "%sckpt:%s", s->rds_prefix, id);
}

void store__rds_tomb(const store_t *s, char key[STORE_RDS_KEY_MAX], const char *id)
{
    snprintf(key, STORE_RDS_KEY_MAX, "%sdeleted:%s", s->rds_prefix, id);
}
