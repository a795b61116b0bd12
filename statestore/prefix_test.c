/* statestore: prefix snapshot cache — longest-prefix lookup at the granularity, LRU under the
 * byte budget, hash collisions never served (ids verified), streaming vs one-shot keys. */
#include "statestore/prefix.h"
#include "tests/rcd_test.h"

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
    CHECK(store_prefix_create(0, SB, FP, G, &p) == RCD_EINVAL);
    CHECK(store_prefix_create(1 << 20, SB, FP, G, &p) == 0);
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
    CHECK(store_prefix_create(1 << 20, SB, FP + 1, G, &q) == 0);
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
    CHECK(store_prefix_create(4 * one + 3 * 64, SB, FP, G, &p) == 0);
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
    CHECK(store_prefix_create(1 << 20, SB, FP, G, &p) == 0);
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

int main(void)
{
    RUN(test_lookup);
    RUN(test_lru_budget);
    RUN(test_collision);
    return rcd_test_summary();
}
