/* The BPE model: one pre-token -> ids. Characters become initial symbols (with byte fallback
 * or a fused unk), then merges are applied lowest rank first (leftmost on ties) through a
 * binary heap with lazy invalidation, O(n log n) per word, as HF's Word::merge_all. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/tokenizer/tok_int.h"

struct tok__heap_ent {
    uint64_t key; /* rank << 32 | position: the minimum is the next merge to try */
    int32_t new_id;
};

void tok__bpe_scratch_free(tok__bpe_scratch_t *s)
{
    free(s->id);
    free(s->prev);
    free(s->next);
    free(s->dead);
    free(s->heap);
    tok__buf_free(&s->key);
    memset(s, 0, sizeof(*s));
}

void tok__bpe_free(tok__bpe_t *m)
{
    tok__strmap_free(&m->vocab);
    tok__mergemap_free(&m->merges);
    free(m->unk_name);
    free(m->prefix);
    free(m->suffix);
    free(m->cp_ids);
    memset(m, 0, sizeof(*m));
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int tok__bpe_finish_load(tok__bpe_t *m, char *err, size_t errlen)
{
    m->cp_ids = malloc(TOK__CP_DIRECT * sizeof(*m->cp_ids));
    if (!m->cp_ids) return RCD_ENOMEM;
    for (size_t i = 0; i < TOK__CP_DIRECT; i++)
        m->cp_ids[i] = -1;
    for (int b = 0; b < 256; b++)
        m->byte_ids[b] = -1;
    for (size_t id = 0; id < m->vocab.n_ids; id++) {
        size_t len;
        const char *s = tok__strmap_str(&m->vocab, (int32_t)id, &len);
        if (!s) continue;
        size_t k = tok__utf8_seq((const unsigned char *)s, len);
        if (k && k == len) {
            uint32_t cp;
            tok__utf8_next((const unsigned char *)s, &cp);
            if (cp < TOK__CP_DIRECT) m->cp_ids[cp] = (int32_t)id;
        }
        /* HF looks up format!("<{:#04X}>", b): "<0x0A>" exactly */
        if (len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval(s[3]) >= 0 &&
            hexval(s[4]) >= 0 && !(s[3] >= 'a' && s[3] <= 'f') && !(s[4] >= 'a' && s[4] <= 'f'))
            m->byte_ids[hexval(s[3]) * 16 + hexval(s[4])] = (int32_t)id;
    }
    (void)err;
    (void)errlen;
    return 0;
}

static int sym_reserve(tok__bpe_scratch_t *s, size_t need)
{
    if (need <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < need)
        cap *= 2;
    uint32_t *id = realloc(s->id, cap * sizeof(*id));
    if (!id) return RCD_ENOMEM;
    s->id = id;
    int32_t *prev = realloc(s->prev, cap * sizeof(*prev));
    if (!prev) return RCD_ENOMEM;
    s->prev = prev;
    int32_t *next = realloc(s->next, cap * sizeof(*next));
    if (!next) return RCD_ENOMEM;
    s->next = next;
    uint8_t *dead = realloc(s->dead, cap);
    if (!dead) return RCD_ENOMEM;
    s->dead = dead;
    s->cap = cap;
    return 0;
}

static inline int sym_add(tok__bpe_scratch_t *s, int32_t id)
{
    if (s->n == s->cap && sym_reserve(s, s->n + 1)) return RCD_ENOMEM;
    s->id[s->n++] = (uint32_t)id;
    return 0;
}

static int heap_push(tok__bpe_scratch_t *s, uint64_t key, int32_t new_id)
{
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        struct tok__heap_ent *h = realloc(s->heap, cap * sizeof(*h));
        if (!h) return RCD_ENOMEM;
        s->heap = h;
        s->heap_cap = cap;
    }
    struct tok__heap_ent *h = s->heap;
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].key <= key) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = (struct tok__heap_ent){key, new_id};
    return 0;
}

static struct tok__heap_ent heap_pop(tok__bpe_scratch_t *s)
{
    struct tok__heap_ent *h = s->heap, top = h[0], last = h[--s->heap_n];
    size_t n = s->heap_n, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1].key < h[c].key) c++;
        if (last.key <= h[c].key) break;
        h[i] = h[c];
        i = c;
    }
    if (n) h[i] = last;
    return top;
}

static int push_pair(const tok__bpe_t *m, tok__bpe_scratch_t *s, size_t pos)
{
    int32_t nx = s->next[pos];
    const tok__merge_t *mg = tok__mergemap_get(&m->merges, (int32_t)s->id[pos], (int32_t)s->id[nx]);
    if (!mg) return 0;
    return heap_push(s, ((uint64_t)mg->rank << 32) | pos, mg->new_id);
}

static int merge_all(const tok__bpe_t *m, tok__bpe_scratch_t *s)
{
    size_t n = s->n;
    int rc;
    for (size_t i = 0; i < n; i++) {
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        s->dead[i] = 0;
    }
    s->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if ((rc = push_pair(m, s, i))) return rc;
    while (s->heap_n) {
        struct tok__heap_ent top = heap_pop(s);
        size_t pos = (size_t)(top.key & 0xFFFFFFFFu);
        if (s->dead[pos] || s->next[pos] < 0) continue;
        int32_t nx = s->next[pos];
        /* skip entries made stale by an earlier merge of either symbol */
        const tok__merge_t *mg =
            tok__mergemap_get(&m->merges, (int32_t)s->id[pos], (int32_t)s->id[nx]);
        if (!mg || mg->new_id != top.new_id) continue;
        s->id[pos] = (uint32_t)top.new_id;
        s->dead[nx] = 1;
        s->next[pos] = s->next[nx];
        if (s->next[nx] >= 0) s->prev[s->next[nx]] = (int32_t)pos;
        if (s->prev[pos] >= 0 && (rc = push_pair(m, s, (size_t)s->prev[pos]))) return rc;
        if (s->next[pos] >= 0 && (rc = push_pair(m, s, pos))) return rc;
    }
    return 0;
}

int tok__bpe_word(const tok__bpe_t *m, const char *w, size_t n, tok__bpe_scratch_t *s,
                  tok_ids_t *out, char *err, size_t errlen)
{
    const unsigned char *u = (const unsigned char *)w;
    int simple = !m->prefix && !m->suffix, have_unk = 0, rc;
    if (!n) return 0;
    if (n > INT32_MAX)
        return rcd_fail(RCD_ETOOBIG, err, errlen, "pre-token of %zu bytes is too long", n);
    if (m->ignore_merges) {
        int32_t id = tok__strmap_get(&m->vocab, w, n);
        if (id >= 0) return tok__ids_push(out, id);
    }
    s->n = 0;
    if (sym_reserve(s, n)) return RCD_ENOMEM;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t cl = tok__utf8_next(u + i, &cp);
        const char *key = w + i;
        size_t klen = cl;
        int32_t id;
        if (simple) {
            id = cp < TOK__CP_DIRECT ? m->cp_ids[cp] : tok__strmap_get(&m->vocab, key, klen);
        } else {
            s->key.n = 0;
            if ((i > 0 && m->prefix && tok__buf_put(&s->key, m->prefix, m->prefix_len)) ||
                tok__buf_put(&s->key, key, cl) ||
                (i + cl == n && m->suffix && tok__buf_put(&s->key, m->suffix, m->suffix_len)))
                return RCD_ENOMEM;
            key = s->key.p;
            klen = s->key.n;
            id = tok__strmap_get(&m->vocab, key, klen);
        }
        i += cl;
        if (id >= 0) {
            if (have_unk && (rc = sym_add(s, m->unk_id))) return rc;
            have_unk = 0;
            if ((rc = sym_add(s, id))) return rc;
            continue;
        }
        if (m->byte_fallback) {
            size_t k = 0;
            while (k < klen && m->byte_ids[(unsigned char)key[k]] >= 0)
                k++;
            if (k == klen) {
                /* as HF: a pending unk is not flushed before the bytes */
                for (k = 0; k < klen; k++)
                    if ((rc = sym_add(s, m->byte_ids[(unsigned char)key[k]]))) return rc;
                continue;
            }
        }
        if (m->unk_name) {
            if (m->unk_id < 0)
                return rcd_fail(RCD_EFORMAT, err, errlen,
                                "model.unk_token \"%s\" is not in the vocabulary", m->unk_name);
            if (have_unk && !m->fuse_unk && (rc = sym_add(s, m->unk_id))) return rc;
            have_unk = 1;
        }
        /* no unk_token: the character is dropped, as HF does */
    }
    if (have_unk && (rc = sym_add(s, m->unk_id))) return rc;
    if (s->n > 1 && (rc = merge_all(m, s))) return rc;
    for (int32_t i = s->n ? 0 : -1; i >= 0; i = s->n > 1 ? s->next[i] : -1)
        if ((rc = tok__ids_push(out, (int32_t)s->id[i]))) return rc;
    return 0;
}
