/* statestore: what the store's files share (store.c: index, host cache and the public calls;
 * store_job.c: the I/O job queue and the shared tier's write-through; store_scan.c: open,
 * the startup scan, close). Not for callers: they include store.h. */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/rcd_lru.h"
#include "statestore/ckpt.h"
#include "statestore/store.h"
#include "statestore/store_redis.h"

typedef struct sess {
    struct sess *next;   /* hash chain */
    rcd_lru_node_t lru;  /* on the store's cache list while state != NULL */
    store_session_t rec; /* rec.meta owned here */
    uint64_t gen;        /* incarnation: jobs of a deleted session are ignored */
    void *state;         /* cached blob of rec.version, or NULL */
    void *state_mem;     /* the allocation state lies in (a taken Redis reply), or NULL: state */
    size_t cached_len;   /* its bytes */
    bool lent;           /* state belongs to a write-behind job (job_t.mem): not freed here */
    bool pending;        /* a create or commit job is in flight (not a write-behind copy) */
    uint64_t phash;      /* the payload hash of rec.version's checkpoint (its identity) */
} sess_t;

/* A version's identity in the shared tier: the checkpoint header's bytes 24..71 (version,
 * tokens, created_ms, updated_ms, payload_bytes, payload hash), what the scripts compare. */
#define STORE_IDENT_OFF 24
#define STORE_IDENT_LEN 48

typedef enum { J_CREATE, J_COMMIT, J_LOAD, J_DELETE } job_kind_t;

typedef struct job {
    struct job *next;
    struct store *s;
    job_kind_t kind;
    bool no_wt; /* came from the shared tier, or a local-only removal: not written back */
    /* authority: a copy of Redis's version, written behind without fsync after the fetch was
     * answered from the host cache (README.md); its state is lent to the session's cache entry */
    bool cache_copy;
    bool has_expect; /* authority: the version the commit/delete replaces */
    uint8_t expect[STORE_IDENT_LEN];
    uint64_t gen;
    ckpt_hdr_t h;                /* create/commit: the checkpoint to write; load: what was read */
    void *state;                 /* owned: the payload to write, or the buffer a load fills */
    void *mem;                   /* owned instead when set: the allocation state lies in */
    char src[STORE_SID_MAX + 1]; /* fork from disk: read src_version of src first */
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
    rcd_lru_t lru;          /* sessions with a cached state; lru.n is st.cache_entries */
    job_t *q_head, *q_tail; /* waiting */
    job_t *batch;           /* running on the pool */
    uv_work_t work;
    rds_t *rds;     /* shared tier, or NULL */
    bool authority; /* opts.redis_authority */
    char rds_prefix[STORE_REDIS_PREFIX_MAX + 1];
    store_stats_t st;
};

/* Longest shared-tier key: the prefix, "ckpt:" and a (tenant-scoped) session id. */
#define STORE_RDS_KEY_MAX (STORE_REDIS_PREFIX_MAX + STORE_SID_MAX + 32)

/* ---- store.c: the index (loop thread) and the host cache ---- */
/* The chain slot that holds id, or the empty slot at its end. */
sess_t **store__find(store_t *s, const char *id);
/* Indexes a new session from a checkpoint header; RCD_EEXISTS, RCD_ENOMEM. */
int store__insert(store_t *s, const ckpt_hdr_t *h, sess_t **out);
/* Takes x out of the index and frees it. */
void store__unindex(store_t *s, sess_t *x);
void store__sess_free(store_t *s, sess_t *x);
/* Takes ownership of blob as x's cached state, evicting beyond the budget. */
void store__cache_put(store_t *s, sess_t *x, void *blob, size_t len);
/* The same for a blob that lies inside the allocation mem (a fetch's taken reply; NULL: blob). */
void store__cache_put_mem(store_t *s, sess_t *x, void *blob, void *mem, size_t len);
/* The same for a write-behind copy: blob lies in job j's allocation, which j frees unless it
 * hands it over to the cache when it finishes (store_job.c, behind_finish). */
void store__cache_lend(store_t *s, sess_t *x, void *blob, size_t len);
void store__cache_drop(store_t *s, sess_t *x);

/* ---- store_job.c: checkpoint I/O on the libuv pool, in submission order ---- */
/* A job for session x (NULL: the caller fills j->h.id); NULL when out of memory. */
job_t *store__job_new(store_t *s, job_kind_t kind, sess_t *x, store_done_cb cb, void *user);
void store__job_free(job_t *j);
/* The checkpoint header for x's current record (version, tokens, metadata, layout). */
int store__job_header(store_t *s, job_t *j, const sess_t *x);
/* Appends the layout of j's blob (j->state, payload_bytes set; already checked) past the
 * model's fixed tensors: a variable-size blob's KV tail, then its extension sections (the
 * region as CKPT_EXT_RECORD and each section by name). */
void store__kv_tensors(store_t *s, job_t *j);
/* Queues j; it runs in the next batch, after every job queued before it. */
void store__enqueue(store_t *s, job_t *j);
/* The shared-tier key of session id. */
void store__rds_key(const store_t *s, char key[STORE_RDS_KEY_MAX], const char *id);
/* Its tombstone's key (authority mode: a deleted session; a late commit is refused). */
void store__rds_tomb(const store_t *s, char key[STORE_RDS_KEY_MAX], const char *id);
/* The identity bytes of x's current version. */
void store__ident(const sess_t *x, uint8_t out[STORE_IDENT_LEN]);
/* Authority mode: forgets x and removes its local files (not the shared tier's copy). */
void store__drop_local(store_t *s, sess_t *x);
/* Test hook (store_test): called on the pool thread while a write-behind copy is written, step 0
 * with its temp file written (not renamed), step 1 once renamed into place. NULL: none. */
extern void (*store__behind_hook)(const char *id, int step);
/* The scripts (store_job.c). */
extern const char store__lua_commit[], store__lua_check[], store__lua_delete[];
/* The checks a shared-tier value (GET's reply for session id) must pass before it is used, the
 * same as a file's: header hash, sizes, id, fingerprint, payload hash. 0 with h parsed (free it
 * with ckpt_hdr_free) and *hl its header length; RCD_ECORRUPT or RCD_EMISMATCH with why. The
 * fuzz target drives it (tests/fuzz/fuzz_redis_reply.c). */
int store__shared_check(const char *id, uint64_t fingerprint, size_t state_bytes, size_t kv_bpt,
                        const char *data, size_t len, ckpt_hdr_t *h, int64_t *hl, char *why,
                        size_t whylen);

#endif
