/* statestore: the prefix snapshot cache. The state after the first k tokens of a prompt
 * (k a multiple of the granularity), started from the zero state, kept in host memory under
 * the key XXH3-128(model fingerprint, token ids[0..k)), LRU under a byte budget. A hit is
 * trusted only after the stored token ids are compared with the request's (a hash collision
 * is a miss, never a wrong state). Models with a KV cache have variable-size states: the
 * state after k tokens is state_bytes + k * kv_bytes_per_token bytes (the checkpoint blob
 * layout, workers/README.md), and each entry counts its own bytes against the budget.
 * Loop thread only: no locking. */
#ifndef RCD_PREFIX_H
#define RCD_PREFIX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rcd_error.h"

#define STORE_PREFIX_GRAN 64 /* snapshot boundaries: multiples of this many tokens */

typedef struct store_prefix store_prefix_t;

typedef struct store_prefix_stats {
    size_t entries, bytes, budget;
    uint64_t hits, misses, inserts, evictions, collisions, hit_tokens;
} store_prefix_stats_t;

/* budget_bytes: states + token ids + bookkeeping; 0 is refused (the daemon keeps no cache).
 * kv_bytes_per_token: 0 for a fixed-size state (every entry state_bytes), else the bytes each
 * position adds (the entry after n tokens is store_prefix_state_len(p, n) bytes).
 * granularity: 0 for STORE_PREFIX_GRAN. */
int store_prefix_create(size_t budget_bytes, size_t state_bytes, size_t kv_bytes_per_token,
                        uint64_t fingerprint, int32_t granularity, store_prefix_t **out);
void store_prefix_destroy(store_prefix_t *p); /* NULL-safe */
int32_t store_prefix_granularity(const store_prefix_t *p);
/* Bytes of the state after n tokens: state_bytes + n * kv_bytes_per_token (SIZE_MAX when that
 * overflows or n < 0). */
size_t store_prefix_state_len(const store_prefix_t *p, int32_t n);
/* What an entry for n tokens counts against the budget: its state, its ids, its bookkeeping
 * (SIZE_MAX when that overflows). */
size_t store_prefix_entry_bytes(const store_prefix_t *p, int32_t n);
/* Whether an entry for n tokens fits the budget at all (insert would not refuse it as too
 * big): a caller need not capture a state the cache cannot keep. */
bool store_prefix_fits(const store_prefix_t *p, int32_t n);

/* The longest cached prefix of toks whose length k is a multiple of the granularity and
 * <= max_len: copies its state into dst (which must hold store_prefix_state_len(p, max_len)
 * bytes; state_bytes for a fixed-size state) and returns k, or 0 on a miss (dst is
 * untouched). Counts a hit or a miss. */
int32_t store_prefix_lookup(store_prefix_t *p, const int32_t *toks, int32_t max_len, void *dst);
/* The same, but the state is copied into a new buffer: *out (malloc'd, the caller frees it)
 * of *len = store_prefix_state_len(p, k) bytes. Returns k, 0 on a miss (*out NULL), or
 * RCD_ENOMEM (counted as a miss; the entry stays cached). */
int32_t store_prefix_lookup_dup(store_prefix_t *p, const int32_t *toks, int32_t max_len,
                                void **out, size_t *len);
/* Whether the prefix toks[0..n) is cached (no copy, no counters, no LRU move). */
bool store_prefix_has(store_prefix_t *p, const int32_t *toks, int32_t n);
/* Caches a copy of `state` (store_prefix_state_len(p, n) bytes) as the state after toks[0..n)
 * (n a positive multiple of the granularity), evicting least recently used entries to stay
 * under the budget. Returns 0 (also when already cached: it becomes the most recent),
 * RCD_EINVAL, RCD_ETOOBIG (one entry is over the budget) or RCD_ENOMEM. Another prefix with
 * the same hash is counted as a collision; both are kept, each found only by its own ids. */
int store_prefix_insert(store_prefix_t *p, const int32_t *toks, int32_t n, const void *state);
/* store_prefix_insert that takes ownership of `state` (a malloc'd buffer of
 * store_prefix_state_len(p, n) bytes) instead of copying it: kept by the entry, or freed
 * when the call fails or the prefix was cached already. Spares a copy of a large KV state. */
int store_prefix_insert_own(store_prefix_t *p, const int32_t *toks, int32_t n, void *state);

/* Namespaces (the daemon's tenants): the same calls within namespace `ns` (1..
 * STORE_PREFIX_NS_MAX bytes; "" is the shared namespace the calls above use). An entry is
 * found only in the namespace it was inserted in: the key's seed mixes in the namespace and
 * a lookup compares it as it compares the ids. A namespace that is too long: a miss, false,
 * RCD_EINVAL (the state freed). */
#define STORE_PREFIX_NS_MAX 64
int32_t store_prefix_lookup_dup_ns(store_prefix_t *p, const char *ns, const int32_t *toks,
                                   int32_t max_len, void **out, size_t *len);
bool store_prefix_has_ns(store_prefix_t *p, const char *ns, const int32_t *toks, int32_t n);
int store_prefix_insert_own_ns(store_prefix_t *p, const char *ns, const int32_t *toks, int32_t n,
                               void *state);
void store_prefix_get_stats(const store_prefix_t *p, store_prefix_stats_t *out);

/* Tests only: replaces the key hash (e.g. by a constant, to force collisions). */
typedef void (*store_prefix_hash_fn)(uint64_t fingerprint, const int32_t *toks, int32_t n,
                                     uint64_t out[2]);
void store_prefix_set_hash(store_prefix_t *p, store_prefix_hash_fn fn);

#endif
