/* statestore: the session store seam. A session is (id, version, token count, timestamps,
 * metadata, committed state blob). The daemon only talks to this header; today's backing is
 * in memory (store_mem.c), a durable one will implement the same vtable. */
#ifndef RCD_STORE_H
#define RCD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rcd_error.h"

#define STORE_ID_MAX 128      /* bytes of a session id, [A-Za-z0-9._:-] */
#define STORE_META_MAX 32     /* metadata entries per session */
#define STORE_META_BYTES 4096 /* bytes of keys + values per session */

typedef struct store_meta {
    const char *key;   /* borrowed by calls that take metadata; owned by store_session_t */
    const char *value; /* when returned in one */
} store_meta_t;

/* A copy of a session's metadata, owned by the caller; release with store_session_clear. */
typedef struct store_session {
    char id[STORE_ID_MAX + 1];
    char parent_id[STORE_ID_MAX + 1]; /* "" unless forked */
    uint64_t version;                 /* 0 at creation, +1 per commit */
    uint64_t n_tokens;                /* tokens absorbed into the committed state */
    int64_t created_ms, updated_ms;   /* Unix milliseconds */
    bool has_state;                   /* false until the first commit: start from zeros */
    int n_meta;
    store_meta_t *meta; /* owned; keys and values live in the same block */
} store_session_t;

typedef struct store_opts {
    size_t state_bytes;   /* size of every state blob (wrk_model_info()->state_bytes) */
    uint64_t fingerprint; /* model fingerprint: a store never mixes models */
    size_t max_sessions;  /* 0: 1024; creating more fails with RCD_ETOOBIG */
} store_opts_t;

typedef struct store store_t;

/* The backing's vtable; every function runs on the one thread that owns the store. */
typedef struct store_i {
    const char *name;
    void (*close)(store_t *s);
    int (*create)(store_t *s, const char *id, const char *parent, const store_meta_t *meta,
                  int n_meta, int64_t now_ms, store_session_t *out);
    int (*get)(store_t *s, const char *id, store_session_t *out);
    int (*read_state)(store_t *s, const char *id, uint64_t *version, void *dst);
    int (*commit)(store_t *s, const char *id, uint64_t expected_version, const void *state,
                  uint64_t add_tokens, int64_t now_ms, uint64_t *new_version);
    int (*remove)(store_t *s, const char *id);
    size_t (*count)(const store_t *s);
} store_i;

struct store {
    const store_i *vt;
    size_t state_bytes; /* read-only for callers */
};

/* In-memory backing. */
int store_mem_open(const store_opts_t *opts, store_t **out, char *err, size_t errlen);

/* Checks an id's syntax: RCD_EINVAL with a message if it is empty, too long or has bytes
 * outside [A-Za-z0-9._:-]. */
int store_check_id(const char *id, char *err, size_t errlen);

/* Creates a session at version 0 with no state. RCD_EEXISTS if the id is taken, RCD_EINVAL
 * for a bad id or metadata, RCD_ETOOBIG when the store is full. `out` may be NULL. */
int store_create(store_t *s, const char *id, const store_meta_t *meta, int n_meta, int64_t now_ms,
                 store_session_t *out);
/* New session `dst` with a copy of `src`'s committed state, version and token count;
 * metadata comes from `meta` (src's when n_meta is 0). */
int store_fork(store_t *s, const char *src, const char *dst, const store_meta_t *meta, int n_meta,
               int64_t now_ms, store_session_t *out);
/* Copies a session's record; RCD_ENOTFOUND if absent. */
int store_get(store_t *s, const char *id, store_session_t *out);
/* Copies the committed state (state_bytes) into dst and its version into *version.
 * RCD_ENOTFOUND if the session is absent, RCD_EAGAIN if it has no state yet (version 0). */
int store_read_state(store_t *s, const char *id, uint64_t *version, void *dst);
/* Replaces the committed state if the session is still at expected_version
 * (RCD_EMISMATCH otherwise), adds add_tokens to its count, bumps the version. */
int store_commit(store_t *s, const char *id, uint64_t expected_version, const void *state,
                 uint64_t add_tokens, int64_t now_ms, uint64_t *new_version);
int store_delete(store_t *s, const char *id);
size_t store_count(const store_t *s);
void store_close(store_t *s); /* NULL-safe */

void store_session_clear(store_session_t *ss); /* frees ss->meta; NULL-safe */

#endif
