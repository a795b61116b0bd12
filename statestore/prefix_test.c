/* statestore: prefix snapshot cache — longest-prefix lookup at the granularity, LRU under the
 * byte budget, hash collisions never served (ids verified), streaming vs one-shot keys. */
#include "statestore/prefix.h"
#include "tests/support/rcd_test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SB 100
#define G 4
#define FP 0x1234567890abcdefull

static void fill(void *st, int v)
{
    memset(st, v, SB);
}

static void test_lookup(void)
{
    store_prefix_t *p;
    CHECK(store_prefix_create(0, SB, 0, FP, G, &p) == RCD_EINVAL);
    CHECK(store_prefix_create(1 << 20, SB, 0, FP, G, &p) == 0);
    CHECK(store_prefix_granularity(p) == G);
    int32_t toks[32];
    for (int i = 0; i < 32; i++)
        toks[i] = i * 7 + 1;
    unsigned char st[SB], out[SB];
    memset(out, 0, SB);
    CHECK(store_prefix_lookup(p, toks, 31, out) == 0); /* empty */
    fill(st, 4);
    CHECK(store_prefix_insert(p, toks, 4, st) == 0);
    fill(st, 12);
    CHECK(store_prefix_insert(p, toks, 12, st) == 0);
    CHECK(store_prefix_insert(p, toks, 12, st) == 0);         /* again: no second entry */
    CHECK(store_prefix_insert(p, toks, 5, st) == RCD_EINVAL); /* not at a boundary */
    CHECK(store_prefix_insert(p, toks, 0, st) == RCD_EINVAL);
    store_prefix_stats_t s;
    store_prefix_get_stats(p, &s);
    CHECK(s.entries == 2 && s.inserts == 2);
    /* longest <= max_len */
    CHECK(store_prefix_lookup(p, toks, 31, out) == 12 && out[0] == 12 && out[SB - 1] == 12);
    CHECK(store_prefix_lookup(p, toks, 12, out) == 12);
    CHECK(store_prefix_lookup(p, toks, 11, out) == 4 && out[0] == 4);
    CHECK(store_prefix_lookup(p, toks, 3, out) == 0);
    CHECK(store_prefix_has(p, toks, 12) && store_prefix_has(p, toks, 4));
    CHECK(!store_prefix_has(p, toks, 8));
    /* a prompt that differs inside the 12-token prefix falls back to the 4-token one */
    int32_t other[32];
    memcpy(other, toks, sizeof(toks));
    other[9] = 999;
    CHECK(store_prefix_lookup(p, other, 31, out) == 4);
    other[0] = 999;
    CHECK(store_prefix_lookup(p, other, 31, out) == 0);
    store_prefix_get_stats(p, &s);
    CHECK(s.hits == 4 && s.misses == 3 && s.hit_tokens == 12 + 12 + 4 + 4);
    /* another fingerprint: another key space */
    store_prefix_t *q;
    CHECK(store_prefix_create(1 << 20, SB, 0, FP + 1, G, &q) == 0);
    fill(st, 1);
    CHECK(store_prefix_insert(q, toks, 4, st) == 0);
    CHECK(store_prefix_lookup(q, toks, 31, out) == 4 && out[0] == 1);
    store_prefix_destroy(q);
    store_prefix_destroy(p);
    store_prefix_destroy(NULL);
}

static void test_lru_budget(void)
{
    /* room for three 4-token entries, not four */
    size_t one = SB + 4 * sizeof(int32_t);
    store_prefix_t *p;
    CHECK(store_prefix_create(4 * one + 3 * 64, SB, 0, FP, G, &p) == 0);
    int32_t a[4][4];
    unsigned char st[SB], out[SB];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            a[i][j] = 100 * i + j;
    for (int i = 0; i < 3; i++) {
        fill(st, i + 1);
        CHECK(store_prefix_insert(p, a[i], 4, st) == 0);
    }
    store_prefix_stats_t s;
    store_prefix_get_stats(p, &s);
    CHECK(s.entries == 3 && s.bytes <= s.budget);
    CHECK(store_prefix_lookup(p, a[0], 4, out) == 4 && out[0] == 1); /* a[0] most recent */
    fill(st, 4);
    CHECK(store_prefix_insert(p, a[3], 4, st) == 0); /* evicts a[1], the least recent */
    store_prefix_get_stats(p, &s);
    CHECK(s.entries == 3 && s.evictions == 1 && s.bytes <= s.budget);
    CHECK(store_prefix_has(p, a[0], 4) && !store_prefix_has(p, a[1], 4));
    CHECK(store_prefix_has(p, a[2], 4) && store_prefix_has(p, a[3], 4));
    /* an entry over the whole budget is refused and evicts nothing */
    int32_t big[4096] = {0};
    CHECK(store_prefix_insert(p, big, 4096, st) == RCD_ETOOBIG);
    store_prefix_get_stats(p, &s);
    CHECK(s.entries == 3);
    store_prefix_destroy(p);
}

static void const_hash(uint64_t fp, const int32_t *toks, int32_t n, uint64_t out[2])
{
    (void)fp, (void)toks, (void)n;
    out[0] = 42;
    out[1] = 42;
}

static void test_collision(void)
{
    store_prefix_t *p;
    CHECK(store_prefix_create(1 << 20, SB, 0, FP, G, &p) == 0);
    store_prefix_set_hash(p, const_hash); /* every prefix has the same key */
    int32_t a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b[8] = {1, 2, 3, 9, 5, 6, 7, 8};
    unsigned char st[SB], out[SB];
    fill(st, 0xa);
    CHECK(store_prefix_insert(p, a, 4, st) == 0);
    memset(out, 0, SB);
    CHECK(store_prefix_lookup(p, b, 8, out) == 0 && out[0] == 0); /* same key, other ids */
    CHECK(store_prefix_lookup(p, a, 8, out) == 4 && out[0] == 0xa);
    /* same key, same length, other ids: both kept, each served only for its own ids */
    fill(st, 0xc);
    CHECK(store_prefix_insert(p, b, 4, st) == 0);
    CHECK(store_prefix_lookup(p, a, 4, out) == 4 && out[0] == 0xa);
    CHECK(store_prefix_lookup(p, b, 4, out) == 4 && out[0] == 0xc);
    fill(st, 0xb);
    /* same key, another length: both live, each found by its own ids */
    CHECK(store_prefix_insert(p, a, 8, st) == 0);
    CHECK(store_prefix_lookup(p, a, 8, out) == 8 && out[0] == 0xb);
    CHECK(store_prefix_lookup(p, a, 7, out) == 4 && out[0] == 0xa);
    store_prefix_stats_t s;
    store_prefix_get_stats(p, &s);
    CHECK(s.collisions >= 2);
    store_prefix_destroy(p);
}

/* Variable-size states (a KV cache): the entry after n tokens is SB + n * KVB bytes, counted
 * whole against the budget; lookups hand back exactly that many bytes. */
static void test_variable_size(void)
{
    enum { KVB = 40 };
    store_prefix_t *p;
    size_t e4 = SB + 4 * KVB + 4 * sizeof(int32_t), e8 = SB + 8 * KVB + 8 * sizeof(int32_t);
    size_t e12 = SB + 12 * KVB + 12 * sizeof(int32_t), e16 = SB + 16 * KVB + 16 * sizeof(int32_t);
    CHECK(store_prefix_create(1 << 20, SB, KVB, FP, G, &p) == 0);
    size_t rec = store_prefix_entry_bytes(p, 4) - e4; /* the bookkeeping of one entry */
    CHECK(store_prefix_entry_bytes(p, 16) == e16 + rec);
    store_prefix_destroy(p);
    /* room for the 4-, 8- and 12-token entries together, and for 12 beside 16, not 8 too */
    size_t budget = e12 + e16 + 2 * rec + 8;
    CHECK(e4 + e8 + e12 + 3 * rec <= budget && e8 + e12 + e16 + 3 * rec > budget);
    CHECK(store_prefix_create(budget, SB, KVB, FP, G, &p) == 0);
    CHECK(store_prefix_state_len(p, 0) == SB && store_prefix_state_len(p, 12) == SB + 12 * KVB);
    CHECK(store_prefix_state_len(p, -1) == SIZE_MAX && store_prefix_state_len(p, INT32_MAX) > SB);
    CHECK(store_prefix_entry_bytes(p, 12) == e12 + rec);
    CHECK(store_prefix_fits(p, 12) && store_prefix_fits(p, 16) && !store_prefix_fits(p, 0));
    int32_t toks[64];
    for (int i = 0; i < 64; i++)
        toks[i] = 3 * i + 5;
    unsigned char st[SB + 16 * KVB], out[SB + 32 * KVB]; /* out: state_len(max_len) */
    for (int n = 4; n <= 12; n += 4) {
        memset(st, n, SB + (size_t)n * KVB);
        CHECK(store_prefix_insert(p, toks, n, st) == 0);
    }
    store_prefix_stats_t s;
    store_prefix_get_stats(p, &s);
    CHECK(s.entries == 3 && s.bytes == e4 + e8 + e12 + 3 * rec && s.bytes <= s.budget);
    /* a hit copies exactly its own length: the bytes past it are untouched */
    memset(out, 0xee, sizeof(out));
    CHECK(store_prefix_lookup(p, toks, 11, out) == 8);
    CHECK(out[0] == 8 && out[SB + 8 * KVB - 1] == 8 && out[SB + 8 * KVB] == 0xee);
    void *dup = NULL;
    size_t len = 0;
    CHECK(store_prefix_lookup_dup(p, toks, 31, &dup, &len) == 12);
    CHECK(dup && len == SB + 12 * KVB);
    CHECK(((unsigned char *)dup)[0] == 12 && ((unsigned char *)dup)[len - 1] == 12);
    free(dup);
    CHECK(store_prefix_lookup_dup(p, toks, 3, &dup, &len) == 0 && !dup && len == 0);
    /* LRU order now: 12, 8, 4. A 16-token entry needs the room of more than one: the least
     * recent go first (4, then 8), the most recent (12) stays. Inserted by ownership. */
    unsigned char *own = malloc(SB + 16 * KVB);
    memset(own, 16, SB + 16 * KVB);
    CHECK(store_prefix_insert_own(p, toks, 16, own) == 0);
    store_prefix_get_stats(p, &s);
    CHECK(s.bytes == e12 + e16 + 2 * rec && s.evictions == 2 && s.entries == 2);
    CHECK(store_prefix_has(p, toks, 16) && store_prefix_has(p, toks, 12));
    CHECK(!store_prefix_has(p, toks, 8) && !store_prefix_has(p, toks, 4));
    CHECK(store_prefix_lookup(p, toks, 31, out) == 16 && out[SB + 16 * KVB - 1] == 16);
    /* insert_own frees what it does not keep: already cached, refused, bad length */
    own = malloc(SB + 16 * KVB);
    CHECK(store_prefix_insert_own(p, toks, 16, own) == 0);
    own = malloc(SB + 5 * KVB);
    CHECK(store_prefix_insert_own(p, toks, 5, own) == RCD_EINVAL);
    /* an entry over the whole budget is refused and evicts nothing */
    CHECK(!store_prefix_fits(p, 64));
    own = malloc(SB + 64 * KVB);
    CHECK(store_prefix_insert_own(p, toks, 64, own) == RCD_ETOOBIG);
    store_prefix_get_stats(p, &s);
    CHECK(s.entries == 2 && s.evictions == 2);
    /* the budget is met by every entry's own bytes: refill with small ones */
    int32_t other[8][4];
    for (int i = 0; i < 8; i++) {
        for (int j = 0; j < 4; j++)
            other[i][j] = 1000 + 10 * i + j;
        memset(st, i, SB + 4 * KVB);
        CHECK(store_prefix_insert(p, other[i], 4, st) == 0);
        store_prefix_get_stats(p, &s);
        CHECK(s.bytes <= s.budget);
    }
    CHECK(store_prefix_has(p, other[7], 4));
    store_prefix_destroy(p);
}

/* Namespaces (the daemon's tenants): an entry serves only its own namespace, "" included,
 * even when the hash is forced to collide. */
static void test_namespaces(void)
{
    for (int forced = 0; forced < 2; forced++) {
        store_prefix_t *p;
        CHECK(store_prefix_create(1 << 20, SB, 0, FP, G, &p) == 0);
        if (forced) store_prefix_set_hash(p, const_hash);
        int32_t toks[16];
        for (int i = 0; i < 16; i++)
            toks[i] = i + 3;
        void *st = malloc(SB), *out = NULL;
        size_t len = 0;
        fill(st, 7);
        CHECK(store_prefix_insert_own_ns(p, "alice", toks, 8, st) == 0);
        CHECK(store_prefix_has_ns(p, "alice", toks, 8));
        CHECK(!store_prefix_has_ns(p, "bob", toks, 8));
        CHECK(!store_prefix_has(p, toks, 8)); /* "" is a namespace of its own */
        CHECK(store_prefix_lookup_dup_ns(p, "bob", toks, 15, &out, &len) == 0 && !out);
        CHECK(store_prefix_lookup_dup(p, toks, 15, &out, &len) == 0 && !out);
        CHECK(store_prefix_lookup_dup_ns(p, "alice", toks, 15, &out, &len) == 8);
        CHECK(out && len == SB && ((unsigned char *)out)[0] == 7);
        free(out);
        /* bob's own entry for the same ids, and a shared one */
        st = malloc(SB);
        fill(st, 9);
        CHECK(store_prefix_insert_own_ns(p, "bob", toks, 8, st) == 0);
        st = malloc(SB);
        fill(st, 11);
        CHECK(store_prefix_insert_own(p, toks, 8, st) == 0);
        CHECK(store_prefix_lookup_dup_ns(p, "bob", toks, 15, &out, &len) == 8);
        CHECK(((unsigned char *)out)[0] == 9);
        free(out);
        CHECK(store_prefix_lookup_dup(p, toks, 15, &out, &len) == 8);
        CHECK(((unsigned char *)out)[0] == 11);
        free(out);
        store_prefix_stats_t s;
        store_prefix_get_stats(p, &s);
        CHECK(s.entries == 3);
        /* a namespace over the limit: refused, the state freed */
        char big[STORE_PREFIX_NS_MAX + 2];
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = 0;
        CHECK(store_prefix_insert_own_ns(p, big, toks, 8, malloc(SB)) == RCD_EINVAL);
        CHECK(!store_prefix_has_ns(p, big, toks, 8));
        store_prefix_destroy(p);
    }
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_lookup);
    RUN(test_lru_budget);
    RUN(test_collision);
    RUN(test_variable_size);
    RUN(test_namespaces);
    return rcd_test_summary();
}
