/* statestore: the session store seam. A session is (id, version, token count, timestamps,
 * metadata, committed state blob). The daemon only talks to this header. Tiers behind it:
 * an in-memory index of every session, a host cache of states (LRU under a byte budget) and,
 * unless the store is memory-only, a durable disk tier of self-describing checkpoints
 * (ckpt.h). Disk I/O never runs on the calling (loop) thread: it runs on the libuv thread
 * pool, one batch of jobs at a time in submission order, and completes on the loop. */
#ifndef RCD_STORE_H
#define RCD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/rcd_error.h"

#define STORE_ID_MAX 128      /* bytes of a session id, [A-Za-z0-9._:-] */
/* Tenant-scoped ids (the daemon with API keys): "TENANT~ID", TENANT 1..STORE_TENANT_MAX bytes
 * of [A-Za-z0-9._-] and ID a session id as above. '~' is in neither set, so a scoped id never
 * equals an unscoped one nor another tenant's. Every id the store takes or returns (its
 * "store id") is one of the two forms, at most STORE_SID_MAX bytes. */
#define STORE_TENANT_MAX 64
#define STORE_SCOPE_SEP '~'
#define STORE_SID_MAX (STORE_TENANT_MAX + 1 + STORE_ID_MAX)
#define STORE_META_MAX 32     /* metadata entries per session */
#define STORE_META_BYTES 4096 /* bytes of keys + values (+ 2 NULs each) per session */
#define STORE_OWNER_MAX 128   /* bytes of an owner, none below 0x20 or 0x7f */
#define STORE_PENDING 1       /* "the callback follows" (see store_load) */

typedef struct store_meta {
    const char *key;   /* borrowed by calls that take metadata; owned by store_session_t */
    const char *value; /* when returned in one */
} store_meta_t;

/* A copy of a session's record, owned by the caller; release with store_session_clear. */
typedef struct store_session {
    char id[STORE_SID_MAX + 1];
    char parent_id[STORE_SID_MAX + 1]; /* "" unless forked */
    uint64_t version;                 /* 0 at creation, +1 per commit */
    uint64_t n_tokens;                /* tokens absorbed into the committed state */
    int64_t created_ms, updated_ms;   /* Unix milliseconds */
    bool has_state;                   /* false until the first commit: start from zeros */
    uint64_t state_len;               /* bytes of the committed state (0: none); always
                                       * state_bytes unless the model has a KV cache, plus
                                       * the payload's extension sections (ckpt_ext.h) */
    uint64_t ext_len;                 /* of state_len, the sections' bytes (0: none): the
                                       * model state itself is state_len - ext_len */
    /* Found on disk with another model's fingerprint (`fingerprint`): listed, never loaded. */
    bool foreign;
    uint64_t fingerprint; /* of the model that wrote the checkpoint */
    int n_meta;
    store_meta_t *meta;              /* owned; keys and values live in the same block */
    char owner[STORE_OWNER_MAX + 1]; /* "" : none */
    uint32_t ttl_s; /* the session's own idle TTL, seconds; 0: the store's default applies */
    /* In force: ttl_s, else the store's default (0: never expires); and when the session
     * expires if it stays idle, updated_ms + eff_ttl_s (Unix ms; 0: never). */
    uint32_t eff_ttl_s;
    int64_t expires_ms;
} store_session_t;

/* Owner and idle TTL of a new session (store_create, store_fork). NULL: none (create), the
 * source's (fork). */
typedef struct store_attrs {
    const char *owner; /* NULL or "": none (fork: the source's) */
    uint32_t ttl_s;    /* 0: the store's default (fork: the source's) */
} store_attrs_t;

/* One tensor of the state blob, written into every checkpoint's layout table. */
typedef struct store_tensor {
    char name[48];
    uint64_t offset, bytes;
    int ndim;
    int64_t shape[3];
} store_tensor_t;

/* The shared tier's security (README.md, "Shared tier"). Strings are borrowed during store_open
 * (the password is copied, and wiped when the store closes); NULL or "" means unset. */
typedef struct store_redis_opts {
    const char *user;     /* ACL user: AUTH user password (with no password: an empty one) */
    const char *password; /* AUTH password; with no user: AUTH password (the default user) */
    const char *prefix;   /* key prefix, STORE_REDIS_PREFIX_CHARS, 1-STORE_REDIS_PREFIX_MAX bytes;
                           * unset: STORE_REDIS_PREFIX_DEFAULT. Keys are <prefix>ckpt:<id>. */
    bool tls;             /* TLS (OpenSSL), the server's certificate always verified */
    const char *tls_ca;   /* CA bundle (PEM) the server's chain must end in; unset: the system's */
    const char *tls_cert, *tls_key; /* client certificate and key (PEM), both or neither */
    const char *tls_server_name;    /* name (or IP) the certificate must match; unset: the host */
} store_redis_opts_t;

#define STORE_REDIS_PREFIX_DEFAULT "recurd:"
#define STORE_REDIS_PREFIX_MAX 64
#define STORE_REDIS_PREFIX_CHARS                                                                   \
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_-.{}/"

typedef struct store_opts {
    size_t state_bytes; /* size of every state blob (wrk_model_info()->state_bytes); with
                         * kv_bytes_per_token, the fixed part of a variable-size blob */
    /* Models with a KV cache (Granite 4.0-H): a blob is state_bytes + P * kv_bytes_per_token,
     * P the positions it holds (per version; kept in the checkpoint's payload_bytes). The tail
     * is recorded in each checkpoint's layout as kv.k.<i> / kv.v.<i> [P][kv_width] f32 for
     * i < n_kv_layers. 0: every blob is exactly state_bytes. */
    size_t kv_bytes_per_token;
    int n_kv_layers, kv_width;
    uint64_t fingerprint; /* model fingerprint: a store never mixes models */
    size_t max_sessions;  /* 0: 1024; creating more fails with RCD_ETOOBIG */
    uv_loop_t *loop;      /* required: jobs are queued on its pool, callbacks run on it */
    const char *dir;      /* NULL or "": memory only (nothing survives a restart) */
    int keep_versions;    /* disk: checkpoints kept per session, newest first; 0: 2 */
    size_t cache_bytes;   /* disk: host cache budget for states; memory-only keeps all */
    /* disk: true = every checkpoint gets its own fsyncs (file, then its directory). Default
     * (false): group commit, the checkpoints of one I/O batch share two syncfs flushes. */
    bool no_group_commit;
    /* Shared tier: "host:port" of a Redis server, or NULL/"". Durable stores only. */
    const char *redis;
    /* Its AUTH, TLS and key prefix (all optional). */
    store_redis_opts_t redis_opts;
    /* Redis is the authority for each session's latest version (README.md, "Redis as the
     * authority"): commits, creates, forks and deletes are conditional scripts, acknowledged only
     * once Redis accepted them; while Redis is down they fail with RCD_EUNAVAILABLE; a refused
     * commit is RCD_ECONFLICT. false: write-through (a Redis failure never fails a commit). */
    bool redis_authority;
    int n_tensors; /* layout recorded in checkpoints (borrowed during store_open) */
    const store_tensor_t *tensors;
    /* Told about what the startup scan skipped or quarantined (and why), on the opening
     * thread, and about corrupt checkpoints found later, on the loop. May be NULL. */
    void (*warn_cb)(void *user, const char *session_id, const char *msg);
    void *warn_user;
    /* Idle TTL, seconds, of sessions that carry none of their own (0: they never expire).
     * Expiry happens only when the caller runs store_expire. */
    uint32_t default_ttl_s;
} store_opts_t;

typedef struct store_stats {
    size_t sessions, foreign, quarantined; /* foreign/quarantined: found by the startup scan */
    uint64_t foreign_fingerprint;          /* one of the foreign fingerprints, for the log */
    size_t cache_entries, cache_bytes;
    uint64_t cache_hits, cache_misses, commits, disk_loads, corrupt;
    uint64_t scan_ms; /* time the startup scan took */
    uint64_t redis_writes, redis_hits, redis_misses, redis_errors;
    /* authority mode: version checks (store_sync), of which the local copy was the latest /
     * stale; commits, creates and deletes Redis refused */
    uint64_t redis_checks, redis_checks_current, redis_checks_stale, redis_refused;
    /* authority mode: fetched versions answered from the host cache with their local copy
     * written behind, and those copies whose write failed (the local copy was dropped again) */
    uint64_t redis_behind, redis_behind_failed;
    uint64_t expired; /* sessions removed by store_expire */
} store_stats_t;

typedef struct store store_t; /* opaque; owned by the thread that opened it (the loop) */

/* Completion of an asynchronous call, on the loop thread, never from inside the call that
 * queued it. rc is 0 or an RCD_E* code; version is the session's version after the call;
 * msg is a human-readable reason on failure ("" otherwise), valid during the call only. */
typedef void (*store_done_cb)(void *user, int rc, uint64_t version, const char *msg);

/* Opens the store. With a dir: creates it if needed, takes an exclusive lock on dir/LOCK
 * (RCD_EBUSY if another process holds it), and scans it — one header per session, not the
 * payloads — into the index. Checkpoints that fail their header checks or are truncated are
 * renamed *.corrupt and the newest good older version is used; sessions written by another
 * model are indexed as foreign. Runs on the opening thread, before serving. */
int store_open(const store_opts_t *opts, store_t **out, char *err, size_t errlen);
/* Frees everything; call only when no callback is outstanding (the loop has run dry). */
void store_close(store_t *s); /* NULL-safe */

/* Checks an id's syntax: RCD_EINVAL with a message if it is empty, too long or has bytes
 * outside [A-Za-z0-9._:-]. */
int store_check_id(const char *id, char *err, size_t errlen);
/* Checks a tenant name: 1..STORE_TENANT_MAX bytes of [A-Za-z0-9._-]. */
int store_check_tenant(const char *tenant, size_t len);
/* Checks a store id: a session id, or "TENANT~ID" (both parts checked as above). */
int store_check_sid(const char *sid);
/* Writes the store id of client id `id` in `tenant`'s scope into out ("" tenant: id itself).
 * RCD_EINVAL when either part is invalid (out is then ""). */
int store_scope_id(char out[STORE_SID_MAX + 1], const char *tenant, const char *id);
/* The client part of a store id (after the tenant and '~'; the id itself when unscoped). */
const char *store_unscope_id(const char *sid);

/* The calls below that take a callback either fail at once (a negative code, and cb is never
 * called) or return 0 (STORE_PENDING for store_load) and call cb exactly once later. */

/* Creates a session at version 0 with no state; cb fires once its record is durable (then
 * it survives a restart). The id is taken at once: `out` (may be NULL) is its record.
 * `attrs` (may be NULL): owner and TTL, recorded in every checkpoint. RCD_EEXISTS, RCD_EINVAL
 * (bad id, metadata key empty or starting with "recurd.", bad owner), RCD_ETOOBIG (store
 * full; metadata over STORE_META_MAX entries or STORE_META_BYTES, where an owner and a TTL
 * count as one entry each). */
int store_create(store_t *s, const char *id, const store_meta_t *meta, int n_meta,
                 const store_attrs_t *attrs, int64_t now_ms, store_session_t *out, store_done_cb cb,
                 void *user);
/* New session `dst` with a copy of `src`'s committed state, version and token count;
 * metadata comes from `meta` (src's when n_meta is 0), owner and TTL from `attrs` (src's
 * where unset). RCD_EBUSY while src has a commit in flight, RCD_EMISMATCH if src is foreign. */
int store_fork(store_t *s, const char *src, const char *dst, const store_meta_t *meta, int n_meta,
               const store_attrs_t *attrs, int64_t now_ms, store_session_t *out, store_done_cb cb,
               void *user);
/* Copies a session's record; RCD_ENOTFOUND if absent. `out` may be NULL. */
int store_get(store_t *s, const char *id, store_session_t *out);
/* Reads the committed state (the record's state_len bytes, from store_get just before; dst
 * must hold that many) into dst and its version into *version. Returns 0
 * when it was served from the host cache (cb is not called), STORE_PENDING when it is read
 * from disk (cb follows; dst must stay valid and untouched until then: the pool thread reads
 * and verifies the file in place, so after a failed load dst holds garbage; a state read from
 * disk is not added to the host cache), or an error: RCD_ENOTFOUND,
 * RCD_EAGAIN (no state yet), RCD_EBUSY (a commit is in flight), RCD_EMISMATCH (foreign
 * session; err names both fingerprints). The callback reports RCD_ECORRUPT for a checkpoint
 * that fails its checksum: it is quarantined (renamed *.corrupt), the session rolls back to
 * its newest good older version (cb's version; the message says so), and the load may be
 * retried. */
int store_load(store_t *s, const char *id, void *dst, uint64_t *version, store_done_cb cb,
               void *user, char *err, size_t errlen);
/* Commits `state` as the session's next version if it is still at expected_version
 * (RCD_EMISMATCH otherwise; RCD_EBUSY if a commit is in flight). Takes ownership of `state`
 * (malloc'd, state_bytes) whatever it returns. cb fires once the checkpoint is durable (disk:
 * written, fsynced, renamed, directory fsynced — or, with group commit, written, flushed with
 * the other checkpoints of its batch, renamed, flushed again; then, with a shared tier, Redis
 * answered the write — a Redis failure is counted and reported through warn_cb, not to cb);
 * only then does the session's version move. */
int store_commit(store_t *s, const char *id, uint64_t expected_version, void *state,
                 uint64_t add_tokens, int64_t now_ms, store_done_cb cb, void *user);
/* store_commit of a blob of len bytes: state_bytes + P * kv_bytes_per_token (RCD_EINVAL for
 * another size; `state` is freed whatever it returns). */
int store_commit_n(store_t *s, const char *id, uint64_t expected_version, void *state, size_t len,
                   uint64_t add_tokens, int64_t now_ms, store_done_cb cb, void *user);
/* Looks a session this store does not know up in the shared tier (Redis). Returns
 * RCD_ENOTFOUND at once when there is no shared tier (or it is down), else 0 and cb follows:
 * 0 when the session is now in the index (its checkpoint was verified; write-through mode: and
 * written durably to the local disk first; authority mode: it is in the host cache and its
 * local copy is written behind, without fsync — loads, commits and deletes may follow at once
 * and reach the disk after it, in order), RCD_ENOTFOUND, RCD_EMISMATCH (another model's; the
 * message names both fingerprints), RCD_ECORRUPT, RCD_EUNAVAILABLE. */
int store_fetch(store_t *s, const char *id, store_done_cb cb, void *user);
bool store_shared(const store_t *s); /* a shared tier is configured */
bool store_authority(const store_t *s); /* ... and it is the authority (redis_authority) */
/* Authority mode: asks Redis for the session's latest version before the caller trusts its own
 * copy (host cache or disk). 0 and cb follows: cb 0 when the index now holds exactly the
 * version Redis holds (kept if it was already, else the local copy dropped and the
 * authoritative one fetched: store_fetch), or kept because Redis has never seen the session
 * (it predates the shared tier); RCD_ENOTFOUND when it is nowhere or was deleted elsewhere
 * (a local copy is dropped); RCD_EBUSY (a commit of it in flight here), RCD_EUNAVAILABLE,
 * RCD_EMISMATCH, RCD_ECORRUPT. At once: RCD_EUNAVAILABLE while Redis is unreachable,
 * RCD_EINVAL for a bad id, RCD_ENOTFOUND without authority mode. */
int store_sync(store_t *s, const char *id, store_done_cb cb, void *user);
/* Removes a session from the index at once (and from the shared tier); its files go in the
 * background and cb (may be NULL) fires when the removal is durable. RCD_EBUSY while a commit or
 * create is in flight. */
int store_delete(store_t *s, const char *id, store_done_cb cb, void *user);
/* Expiry of idle sessions. A session is idle for now_ms - updated_ms (its last committed turn,
 * else its creation); one idle for eff_ttl_s or longer is removed exactly like store_delete
 * (index at once, files in the background, the shared tier's copy too) — unless a commit or
 * create is in flight, it is foreign (its files belong to another model) or busy(user, id)
 * says a turn holds it (running, queued, loading). expired(user, rec, idle_ms) (may be NULL)
 * hears of each before it goes; neither callback may call into the store. Returns how many
 * expired; *next_ms (may be NULL) is the earliest time another session may expire (INT64_MAX:
 * none; now_ms when a due session was skipped as busy). The clock is the caller's. */
typedef bool (*store_busy_fn)(void *user, const char *id);
typedef void (*store_expired_fn)(void *user, const store_session_t *rec, int64_t idle_ms);
size_t store_expire(store_t *s, int64_t now_ms, store_busy_fn busy, store_expired_fn expired,
                    void *user, int64_t *next_ms);
size_t store_count(const store_t *s);
/* Sessions whose owner is `owner` ("": none) and the bytes of their committed states (each
 * session's newest version, state_len - ext_len: the model state, not its sections; none
 * yet: 0), for per-tenant quotas. Walks the whole
 * index: O(sessions). Sessions being created count at once. */
void store_owner_usage(const store_t *s, const char *owner, uint64_t *sessions, uint64_t *bytes);
/* The same for the sessions in tenant `tenant`'s scope (store ids "tenant~id", API keys). */
void store_scope_usage(const store_t *s, const char *tenant, uint64_t *sessions, uint64_t *bytes);
/* The same over every session in the store (an O(sessions) walk: for the metrics scrape). */
void store_total_usage(const store_t *s, uint64_t *sessions, uint64_t *bytes);
size_t store_state_bytes(const store_t *s);
bool store_durable(const store_t *s); /* false for a memory-only store */
void store_get_stats(const store_t *s, store_stats_t *out);

void store_session_clear(store_session_t *ss); /* frees ss->meta; NULL-safe */

#endif
