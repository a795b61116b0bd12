/* statestore: the prefix snapshot cache. The state after the first k tokens of a prompt
 * (k a multiple of the granularity), started from the zero state, kept in host memory under
 * the key XXH3-128(model fingerprint, token ids[0..k)), LRU under a byte budget. A hit is
 * trusted only after the stored token ids are compared with the request's (a hash collision
 * is a miss, never a wrong state). Loop thread only: no locking. */
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
 * granularity: 0 for STORE_PREFIX_GRAN. */
int store_prefix_create(size_t budget_bytes, size_t state_bytes, uint64_t fingerprint,
                        int32_t granularity, store_prefix_t **out);
void store_prefix_destroy(store_prefix_t *p); /* NULL-safe */
int32_t store_prefix_granularity(const store_prefix_t *p);

/* The longest cached prefix of toks whose length k is a multiple of the granularity and
 * <= max_len: copies its state into dst (state_bytes) and returns k, or 0 on a miss (dst is
 * untouched). Counts a hit or a miss. */
int32_t store_prefix_lookup(store_prefix_t *p, const int32_t *toks, int32_t max_len, void *dst);
/* Whether the prefix toks[0..n) is cached (no copy, no counters, no LRU move). */
bool store_prefix_has(store_prefix_t *p, const int32_t *toks, int32_t n);
/* Caches a copy of `state` as the state after toks[0..n) (n a positive multiple of the
 * granularity), evicting least recently used entries to stay under the budget. Returns 0
 * (also when already cached: it becomes the most recent), RCD_EINVAL, RCD_ETOOBIG (one
 * entry is over the budget) or RCD_ENOMEM. Another prefix with the same hash is counted as a
 * collision; both are kept, each found only by its own ids. */
int store_prefix_insert(store_prefix_t *p, const int32_t *toks, int32_t n, const void *state);
void store_prefix_get_stats(const store_prefix_t *p, store_prefix_stats_t *out);

/* Tests only: replaces the key hash (e.g. by a constant, to force collisions). */
typedef void (*store_prefix_hash_fn)(uint64_t fingerprint, const int32_t *toks, int32_t n,
                                     uint64_t out[2]);
void store_prefix_set_hash(store_prefix_t *p, store_prefix_hash_fn fn);

#endif
