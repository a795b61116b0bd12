/* Hash maps of the tokenizer: token string <-> id (one string pool, open addressing) and
 * BPE merge pair -> (rank, merged id). Both are built once at load and read-only after. */
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0x100000001b3ull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x87c37b91114253d5ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    return tok__mix(h ^ w);
}

static size_t pow2_for(size_t expect)
{
    size_t cap = 64;
    while (cap < expect * 2 + 16)
        cap *= 2;
    return cap;
}

int tok__strmap_init(tok__strmap_t *m, size_t expect)
{
    memset(m, 0, sizeof(*m));
    size_t cap = pow2_for(expect);
    m->slots = calloc(cap, sizeof(*m->slots));
    if (!m->slots) return RCD_ENOMEM;
    m->mask = cap - 1;
    return 0;
}

void tok__strmap_free(tok__strmap_t *m)
{
    free(m->pool);
    free(m->off);
    free(m->len);
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

static int grow_ids(tok__strmap_t *m, size_t need)
{
    if (need <= m->ids_cap) return 0;
    size_t cap = m->ids_cap ? m->ids_cap : 256;
    while (cap < need)
        cap *= 2;
    uint32_t *off = realloc(m->off, cap * sizeof(*off));
    if (!off) return RCD_ENOMEM;
    m->off = off;
    uint32_t *len = realloc(m->len, cap * sizeof(*len));
    if (!len) return RCD_ENOMEM;
    m->len = len;
    for (size_t i = m->ids_cap; i < cap; i++)
        len[i] = UINT32_MAX;
    m->ids_cap = cap;
    return 0;
}

static int rehash(tok__strmap_t *m)
{
    size_t cap = (m->mask + 1) * 2;
    uint32_t *slots = calloc(cap, sizeof(*slots));
    if (!slots) return RCD_ENOMEM;
    for (size_t i = 0; i <= m->mask; i++) {
        uint32_t v = m->slots[i];
        if (!v) continue;
        uint32_t id = v - 1;
        size_t j = hash_bytes(m->pool + m->off[id], m->len[id]) & (cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = v;
    }
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return 0;
}

int tok__strmap_add(tok__strmap_t *m, const char *s, size_t n, int32_t id)
{
    if (id < 0 || n >= UINT32_MAX) return RCD_ERANGE;
    if (tok__strmap_get(m, s, n) >= 0) return 1;
    if ((size_t)id < m->ids_cap && m->len[id] != UINT32_MAX) return RCD_EEXISTS;
    if (grow_ids(m, (size_t)id + 1)) return RCD_ENOMEM;
    if (m->pool_cap - m->pool_n < n + 1) {
        size_t cap = m->pool_cap ? m->pool_cap : 4096;
        while (cap - m->pool_n < n + 1)
            cap *= 2;
        if (cap > UINT32_MAX) return RCD_ETOOBIG;
        char *p = realloc(m->pool, cap);
        if (!p) return RCD_ENOMEM;
        m->pool = p;
        m->pool_cap = cap;
    }
    memcpy(m->pool + m->pool_n, s, n);
    m->pool[m->pool_n + n] = 0;
    m->off[id] = (uint32_t)m->pool_n;
    m->len[id] = (uint32_t)n;
    m->pool_n += n + 1;
    if ((size_t)id >= m->n_ids) m->n_ids = (size_t)id + 1;
    if ((m->count + 1) * 2 > m->mask + 1 && rehash(m)) return RCD_ENOMEM;
    size_t j = hash_bytes(s, n) & m->mask;
    while (m->slots[j])
        j = (j + 1) & m->mask;
    m->slots[j] = (uint32_t)id + 1;
    m->count++;
    return 0;
}

int32_t tok__strmap_get(const tok__strmap_t *m, const char *s, size_t n)
{
    if (!m->slots) return -1;
    size_t j = hash_bytes(s, n) & m->mask;
    for (;;) {
        uint32_t v = m->slots[j];
        if (!v) return -1;
        uint32_t id = v - 1;
        if (m->len[id] == n && memcmp(m->pool + m->off[id], s, n) == 0) return (int32_t)id;
        j = (j + 1) & m->mask;
    }
}

const char *tok__strmap_str(const tok__strmap_t *m, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= m->n_ids || m->len[id] == UINT32_MAX) return NULL;
    if (len) *len = m->len[id];
    return m->pool + m->off[id];
}

/* ---- merges ---------------------------------------------------------------------------- */

int tok__mergemap_init(tok__mergemap_t *m, size_t expect)
{
    size_t cap = pow2_for(expect);
    m->slots = malloc(cap * sizeof(*m->slots));
    if (!m->slots) return RCD_ENOMEM;
    for (size_t i = 0; i < cap; i++)
        m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->count = 0;
    return 0;
}

void tok__mergemap_free(tok__mergemap_t *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

void tok__mergemap_put(tok__mergemap_t *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    /* sized by the caller for all merges (count <= expect), so never full */
    uint64_t k = tok__pair_key(a, b);
    size_t j = tok__mix(k) & m->mask;
    while (m->slots[j].key != UINT64_MAX && m->slots[j].key != k)
        j = (j + 1) & m->mask;
    if (m->slots[j].key == UINT64_MAX) m->count++;
    m->slots[j] = (tok__merge_t){k, rank, new_id};
}
