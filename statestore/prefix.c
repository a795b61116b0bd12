/* statestore: the prefix snapshot cache (see prefix.h). A chained hash table over 128-bit
 * keys and a doubly linked LRU list; every entry owns a copy of its token ids and state. */
#include "statestore/prefix.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define NBUCKETS 4096 /* power of two */

typedef struct pentry {
    uint64_t key[2];
    int32_t n;
    int32_t *toks;
    void *state;
    size_t bytes;               /* accounted */
    struct pentry *prev, *next; /* LRU: head is the most recent */
    struct pentry *chain;       /* bucket */
} pentry_t;

struct store_prefix {
    size_t budget, state_bytes, bytes;
    uint64_t fingerprint;
    int32_t gran;
    pentry_t *buckets[NBUCKETS];
    pentry_t *head, *tail;
    size_t entries;
    store_prefix_hash_fn hash; /* NULL: XXH3-128 seeded with the fingerprint */
    store_prefix_stats_t st;
};

int store_prefix_create(size_t budget_bytes, size_t state_bytes, uint64_t fingerprint,
                        int32_t granularity, store_prefix_t **out)
{
    *out = NULL;
    if (budget_bytes == 0 || state_bytes == 0 || granularity < 0) return RCD_EINVAL;
    store_prefix_t *p = calloc(1, sizeof(*p));
    if (!p) return RCD_ENOMEM;
    p->budget = budget_bytes;
    p->state_bytes = state_bytes;
    p->fingerprint = fingerprint;
    p->gran = granularity ? granularity : STORE_PREFIX_GRAN;
    *out = p;
    return 0;
}

static void entry_free(pentry_t *e)
{
    free(e->toks);
    free(e->state);
    free(e);
}

void store_prefix_destroy(store_prefix_t *p)
{
    if (!p) return;
    for (pentry_t *e = p->head, *n; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    free(p);
}

int32_t store_prefix_granularity(const store_prefix_t *p)
{
    return p->gran;
}

void store_prefix_set_hash(store_prefix_t *p, store_prefix_hash_fn fn)
{
    p->hash = fn;
}

static void key_of(const store_prefix_t *p, const int32_t *toks, int32_t n, uint64_t k[2])
{
    if (p->hash) {
        p->hash(p->fingerprint, toks, n, k);
        return;
    }
    XXH128_hash_t h = XXH3_128bits_withSeed(toks, (size_t)n * sizeof(int32_t), p->fingerprint);
    k[0] = h.low64;
    k[1] = h.high64;
}

static pentry_t **bucket(store_prefix_t *p, const uint64_t k[2])
{
    return &p->buckets[k[0] & (NBUCKETS - 1)];
}

/* The entry for exactly toks[0..n): same key, same length, same ids. *collided is set when
 * an entry has the key but other ids. */
static pentry_t *find(store_prefix_t *p, const uint64_t k[2], const int32_t *toks, int32_t n,
                      bool *collided)
{
    for (pentry_t *e = *bucket(p, k); e; e = e->chain) {
        if (e->key[0] != k[0] || e->key[1] != k[1]) continue;
        if (e->n == n && !memcmp(e->toks, toks, (size_t)n * sizeof(int32_t))) return e;
        if (collided) *collided = true;
    }
    return NULL;
}

static void lru_unlink(store_prefix_t *p, pentry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        p->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        p->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(store_prefix_t *p, pentry_t *e)
{
    e->prev = NULL;
    e->next = p->head;
    if (p->head) p->head->prev = e;
    p->head = e;
    if (!p->tail) p->tail = e;
}

static void evict(store_prefix_t *p, pentry_t *e)
{
    lru_unlink(p, e);
    for (pentry_t **pp = bucket(p, e->key); *pp; pp = &(*pp)->chain)
        if (*pp == e) {
            *pp = e->chain;
            break;
        }
    p->bytes -= e->bytes;
    p->entries--;
    p->st.evictions++;
    entry_free(e);
}

int32_t store_prefix_lookup(store_prefix_t *p, const int32_t *toks, int32_t max_len, void *dst)
{
    int32_t nb = max_len > 0 ? max_len / p->gran : 0;
    if (nb == 0 || p->entries == 0) {
        p->st.misses++;
        return 0;
    }
    uint64_t(*keys)[2] = malloc(sizeof(*keys) * (size_t)nb);
    if (!keys) {
        p->st.misses++;
        return 0;
    }
    if (p->hash) {
        for (int32_t b = 0; b < nb; b++)
            key_of(p, toks, (b + 1) * p->gran, keys[b]);
    } else { /* one pass: the digest of a streaming state equals the one-shot hash */
        XXH3_state_t *hs = XXH3_createState();
        if (!hs) {
            free(keys);
            p->st.misses++;
            return 0;
        }
        XXH3_128bits_reset_withSeed(hs, p->fingerprint);
        for (int32_t b = 0; b < nb; b++) {
            XXH3_128bits_update(hs, toks + (size_t)b * p->gran, (size_t)p->gran * sizeof(int32_t));
            XXH128_hash_t h = XXH3_128bits_digest(hs);
            keys[b][0] = h.low64;
            keys[b][1] = h.high64;
        }
        XXH3_freeState(hs);
    }
    pentry_t *hit = NULL;
    for (int32_t b = nb - 1; b >= 0 && !hit; b--) {
        bool coll = false;
        hit = find(p, keys[b], toks, (b + 1) * p->gran, &coll);
        if (coll) p->st.collisions++;
    }
    free(keys);
    if (!hit) {
        p->st.misses++;
        return 0;
    }
    memcpy(dst, hit->state, p->state_bytes);
    lru_unlink(p, hit);
    lru_push(p, hit);
    p->st.hits++;
    p->st.hit_tokens += (uint64_t)hit->n;
    return hit->n;
}

bool store_prefix_has(store_prefix_t *p, const int32_t *toks, int32_t n)
{
    if (n <= 0) return false;
    uint64_t k[2];
    key_of(p, toks, n, k);
    return find(p, k, toks, n, NULL) != NULL;
}

int store_prefix_insert(store_prefix_t *p, const int32_t *toks, int32_t n, const void *state)
{
    if (n <= 0 || n % p->gran || !toks || !state) return RCD_EINVAL;
    size_t bytes = p->state_bytes + (size_t)n * sizeof(int32_t) + sizeof(pentry_t);
    if (bytes > p->budget) return RCD_ETOOBIG;
    uint64_t k[2];
    key_of(p, toks, n, k);
    bool coll = false;
    pentry_t *e = find(p, k, toks, n, &coll);
    if (e) {
        lru_unlink(p, e);
        lru_push(p, e);
        return 0;
    }
    if (coll) p->st.collisions++; /* both live in the chain: lookups compare the ids */
    e = calloc(1, sizeof(*e));
    if (!e) return RCD_ENOMEM;
    e->toks = malloc((size_t)n * sizeof(int32_t));
    e->state = malloc(p->state_bytes);
    if (!e->toks || !e->state) {
        entry_free(e);
        return RCD_ENOMEM;
    }
    memcpy(e->toks, toks, (size_t)n * sizeof(int32_t));
    memcpy(e->state, state, p->state_bytes);
    e->n = n;
    e->key[0] = k[0];
    e->key[1] = k[1];
    e->bytes = bytes;
    while (p->tail && p->bytes + bytes > p->budget)
        evict(p, p->tail);
    pentry_t **b = bucket(p, k);
    e->chain = *b;
    *b = e;
    lru_push(p, e);
    p->bytes += bytes;
    p->entries++;
    p->st.inserts++;
    return 0;
}

void store_prefix_get_stats(const store_prefix_t *p, store_prefix_stats_t *out)
{
    *out = p->st;
    out->entries = p->entries;
    out->bytes = p->bytes;
    out->budget = p->budget;
}
