/* statestore: the prefix snapshot cache (see prefix.h). A chained hash table over 128-bit
 * keys and the common LRU list (common/rcd_lru.h); every entry owns a copy of its token ids
 * and state. */
#include "statestore/prefix.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/rcd_lru.h"

#define NBUCKETS 4096 /* power of two */

typedef struct pentry {
    uint64_t key[2];
    char *ns; /* the namespace (tenant) it belongs to, owned; NULL: "" (shared) */
    int32_t n;
    int32_t *toks;
    void *state;  /* store_prefix_state_len(n) bytes */
    size_t bytes; /* accounted: state, ids, this record */
    rcd_lru_node_t lru;
    struct pentry *chain; /* bucket */
} pentry_t;

struct store_prefix {
    size_t budget, state_bytes, kv_bpt, bytes; /* kv_bpt > 0: variable-size states */
    uint64_t fingerprint;
    int32_t gran;
    pentry_t *buckets[NBUCKETS];
    rcd_lru_t lru;             /* every entry; lru.n counts them */
    store_prefix_hash_fn hash; /* NULL: XXH3-128 seeded with the fingerprint */
    store_prefix_stats_t st;
};

int store_prefix_create(size_t budget_bytes, size_t state_bytes, size_t kv_bytes_per_token,
                        uint64_t fingerprint, int32_t granularity, store_prefix_t **out)
{
    *out = NULL;
    if (budget_bytes == 0 || state_bytes == 0 || granularity < 0) return RCD_EINVAL;
    store_prefix_t *p = calloc(1, sizeof(*p));
    if (!p) return RCD_ENOMEM;
    p->budget = budget_bytes;
    p->state_bytes = state_bytes;
    p->kv_bpt = kv_bytes_per_token;
    p->fingerprint = fingerprint;
    p->gran = granularity ? granularity : STORE_PREFIX_GRAN;
    *out = p;
    return 0;
}

static void entry_free(pentry_t *e)
{
    free(e->ns);
    free(e->toks);
    free(e->state);
    free(e);
}

void store_prefix_destroy(store_prefix_t *p)
{
    if (!p) return;
    for (rcd_lru_node_t *x = p->lru.head, *n; x; x = n) {
        n = x->next;
        entry_free(RCD_CONTAINER_OF(x, pentry_t, lru));
    }
    free(p);
}

int32_t store_prefix_granularity(const store_prefix_t *p)
{
    return p->gran;
}

size_t store_prefix_state_len(const store_prefix_t *p, int32_t n)
{
    if (n < 0) return SIZE_MAX;
    if (p->kv_bpt && (size_t)n > (SIZE_MAX - p->state_bytes) / p->kv_bpt) return SIZE_MAX;
    return p->state_bytes + (size_t)n * p->kv_bpt;
}

size_t store_prefix_entry_bytes(const store_prefix_t *p, int32_t n)
{
    if (n < 0) return SIZE_MAX;
    size_t st = store_prefix_state_len(p, n);
    size_t extra = (size_t)n * sizeof(int32_t) + sizeof(pentry_t);
    return st > SIZE_MAX - extra ? SIZE_MAX : st + extra;
}

bool store_prefix_fits(const store_prefix_t *p, int32_t n)
{
    return n > 0 && store_prefix_entry_bytes(p, n) <= p->budget;
}

void store_prefix_set_hash(store_prefix_t *p, store_prefix_hash_fn fn)
{
    p->hash = fn;
}

/* The hash seed of a namespace: the fingerprint, mixed with the namespace's hash. */
static uint64_t seed_of(const store_prefix_t *p, const char *ns)
{
    return ns && ns[0] ? p->fingerprint ^ XXH3_64bits(ns, strlen(ns)) : p->fingerprint;
}

static void key_of(const store_prefix_t *p, const char *ns, const int32_t *toks, int32_t n,
                   uint64_t k[2])
{
    if (p->hash) {
        p->hash(seed_of(p, ns), toks, n, k);
        return;
    }
    XXH128_hash_t h = XXH3_128bits_withSeed(toks, (size_t)n * sizeof(int32_t), seed_of(p, ns));
    k[0] = h.low64;
    k[1] = h.high64;
}

static pentry_t **bucket(store_prefix_t *p, const uint64_t k[2])
{
    return &p->buckets[k[0] & (NBUCKETS - 1)];
}

/* The entry for exactly toks[0..n) in namespace ns: same key, same namespace, same length,
 * same ids. *collided is set when an entry has the key but other ids or namespace. */
static pentry_t *find(store_prefix_t *p, const char *ns, const uint64_t k[2], const int32_t *toks,
                      int32_t n, bool *collided)
{
    for (pentry_t *e = *bucket(p, k); e; e = e->chain) {
        if (e->key[0] != k[0] || e->key[1] != k[1]) continue;
        if (e->n == n && !strcmp(e->ns ? e->ns : "", ns) &&
            !memcmp(e->toks, toks, (size_t)n * sizeof(int32_t)))
            return e;
        if (collided) *collided = true;
    }
    return NULL;
}

static void evict(store_prefix_t *p, pentry_t *e)
{
    rcd_lru_unlink(&p->lru, &e->lru);
    for (pentry_t **pp = bucket(p, e->key); *pp; pp = &(*pp)->chain)
        if (*pp == e) {
            *pp = e->chain;
            break;
        }
    p->bytes -= e->bytes;
    p->st.evictions++;
    entry_free(e);
}

/* The longest cached prefix of toks of at most max_len tokens (ids verified), counting a hit
 * (and moving it to the front) or a miss. */
static pentry_t *lookup_longest(store_prefix_t *p, const char *ns, const int32_t *toks,
                                int32_t max_len)
{
    int32_t nb = max_len > 0 ? max_len / p->gran : 0;
    if (nb == 0 || p->lru.n == 0) {
        p->st.misses++;
        return NULL;
    }
    uint64_t(*keys)[2] = malloc(sizeof(*keys) * (size_t)nb);
    if (!keys) {
        p->st.misses++;
        return NULL;
    }
    if (p->hash) {
        for (int32_t b = 0; b < nb; b++)
            key_of(p, ns, toks, (b + 1) * p->gran, keys[b]);
    } else { /* one pass: the digest of a streaming state equals the one-shot hash */
        XXH3_state_t *hs = XXH3_createState();
        if (!hs) {
            free(keys);
            p->st.misses++;
            return NULL;
        }
        XXH3_128bits_reset_withSeed(hs, seed_of(p, ns));
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
        hit = find(p, ns, keys[b], toks, (b + 1) * p->gran, &coll);
        if (coll) p->st.collisions++;
    }
    free(keys);
    if (!hit) {
        p->st.misses++;
        return NULL;
    }
    rcd_lru_touch(&p->lru, &hit->lru);
    p->st.hits++;
    p->st.hit_tokens += (uint64_t)hit->n;
    return hit;
}

int32_t store_prefix_lookup(store_prefix_t *p, const int32_t *toks, int32_t max_len, void *dst)
{
    pentry_t *hit = lookup_longest(p, "", toks, max_len);
    if (!hit) return 0;
    memcpy(dst, hit->state, store_prefix_state_len(p, hit->n));
    return hit->n;
}

int32_t store_prefix_lookup_dup(store_prefix_t *p, const int32_t *toks, int32_t max_len,
                                void **out, size_t *len)
{
    return store_prefix_lookup_dup_ns(p, "", toks, max_len, out, len);
}

int32_t store_prefix_lookup_dup_ns(store_prefix_t *p, const char *ns, const int32_t *toks,
                                   int32_t max_len, void **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!ns || strlen(ns) > STORE_PREFIX_NS_MAX) return 0;
    pentry_t *hit = lookup_longest(p, ns, toks, max_len);
    if (!hit) return 0;
    size_t n = store_prefix_state_len(p, hit->n);
    void *st = malloc(n);
    if (!st) { /* the caller prefills instead: a miss */
        p->st.hits--;
        p->st.hit_tokens -= (uint64_t)hit->n;
        p->st.misses++;
        return RCD_ENOMEM;
    }
    memcpy(st, hit->state, n);
    *out = st;
    *len = n;
    return hit->n;
}

bool store_prefix_has(store_prefix_t *p, const int32_t *toks, int32_t n)
{
    return store_prefix_has_ns(p, "", toks, n);
}

bool store_prefix_has_ns(store_prefix_t *p, const char *ns, const int32_t *toks, int32_t n)
{
    if (n <= 0 || !ns || strlen(ns) > STORE_PREFIX_NS_MAX) return false;
    uint64_t k[2];
    key_of(p, ns, toks, n, k);
    return find(p, ns, k, toks, n, NULL) != NULL;
}

/* Inserts toks[0..n) with `state`, owned (kept or freed) when own, else copied. */
static int insert(store_prefix_t *p, const char *ns, const int32_t *toks, int32_t n, void *state,
                  bool own)
{
    int rc = 0;
    pentry_t *e = NULL;
    if (n <= 0 || n % p->gran || !toks || !state || !ns || strlen(ns) > STORE_PREFIX_NS_MAX) {
        rc = RCD_EINVAL;
        goto out;
    }
    size_t bytes = store_prefix_entry_bytes(p, n), len = store_prefix_state_len(p, n);
    if (bytes > p->budget) {
        rc = RCD_ETOOBIG;
        goto out;
    }
    uint64_t k[2];
    key_of(p, ns, toks, n, k);
    bool coll = false;
    if ((e = find(p, ns, k, toks, n, &coll))) {
        rcd_lru_touch(&p->lru, &e->lru);
        e = NULL;
        goto out;
    }
    if (coll) p->st.collisions++; /* both live in the chain: lookups compare the ids */
    if (!(e = calloc(1, sizeof(*e))) || !(e->toks = malloc((size_t)n * sizeof(int32_t)))) {
        rc = RCD_ENOMEM;
        goto out;
    }
    if (own) {
        e->state = state;
        own = false; /* the entry has it now */
    } else if ((e->state = malloc(len))) {
        memcpy(e->state, state, len);
    } else {
        rc = RCD_ENOMEM;
        goto out;
    }
    memcpy(e->toks, toks, (size_t)n * sizeof(int32_t));
    e->n = n;
    if (ns[0] && !(e->ns = strdup(ns))) {
        rc = RCD_ENOMEM;
        goto out;
    }
    e->key[0] = k[0];
    e->key[1] = k[1];
    e->bytes = bytes;
    while (rcd_lru_oldest(&p->lru) && p->bytes + bytes > p->budget)
        evict(p, RCD_CONTAINER_OF(rcd_lru_oldest(&p->lru), pentry_t, lru));
    pentry_t **b = bucket(p, k);
    e->chain = *b;
    *b = e;
    rcd_lru_push(&p->lru, &e->lru);
    p->bytes += bytes;
    p->st.inserts++;
    e = NULL;
out:
    if (e) entry_free(e);
    if (own) free(state);
    return rc;
}

int store_prefix_insert(store_prefix_t *p, const int32_t *toks, int32_t n, const void *state)
{
    return insert(p, "", toks, n, (void *)state, false);
}

int store_prefix_insert_own(store_prefix_t *p, const int32_t *toks, int32_t n, void *state)
{
    return insert(p, "", toks, n, state, true);
}

int store_prefix_insert_own_ns(store_prefix_t *p, const char *ns, const int32_t *toks, int32_t n,
                               void *state)
{
    return insert(p, ns, toks, n, state, true);
}

void store_prefix_get_stats(const store_prefix_t *p, store_prefix_stats_t *out)
{
    *out = p->st;
    out->entries = p->lru.n;
    out->bytes = p->bytes;
    out->budget = p->budget;
}
