/* workers/cpu: the paged KV cache (see kv_cache.h). */
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/kv_cache.h"

int wrk_kv_create(int n_slots, int n_layers, int width, int block_tokens, int n_blocks,
                  wrk_kv_t **out)
{
    *out = NULL;
    if (n_slots < 1 || n_layers < 1 || width < 1 || block_tokens < 1 || n_blocks < 1)
        return RCD_EINVAL;
    wrk_kv_t *kv = calloc(1, sizeof *kv);
    if (!kv) return RCD_ENOMEM;
    kv->n_slots = n_slots;
    kv->n_layers = n_layers;
    kv->width = width;
    kv->block_tokens = block_tokens;
    kv->n_blocks = n_blocks;
    kv->block_floats = (size_t)n_layers * 2 * block_tokens * width;
    const size_t pool_bytes = (size_t)n_blocks * kv->block_floats * sizeof(float);
    kv->pool = aligned_alloc(64, (pool_bytes + 63) / 64 * 64);
    kv->free_list = malloc((size_t)n_blocks * sizeof *kv->free_list);
    kv->tables = malloc((size_t)n_slots * n_blocks * sizeof *kv->tables);
    kv->n_held = calloc((size_t)n_slots, sizeof *kv->n_held);
    kv->n_tokens = calloc((size_t)n_slots, sizeof *kv->n_tokens);
    if (!kv->pool || !kv->free_list || !kv->tables || !kv->n_held || !kv->n_tokens) {
        wrk_kv_destroy(kv);
        return RCD_ENOMEM;
    }
    /* Popped from the top: block 0 first. */
    for (int i = 0; i < n_blocks; i++)
        kv->free_list[i] = n_blocks - 1 - i;
    kv->n_free = n_blocks;
    *out = kv;
    return 0;
}

void wrk_kv_destroy(wrk_kv_t *kv)
{
    if (!kv) return;
    free(kv->pool);
    free(kv->free_list);
    free(kv->tables);
    free(kv->n_held);
    free(kv->n_tokens);
    free(kv);
}

static int32_t blocks_for(const wrk_kv_t *kv, long tokens)
{
    return (int32_t)((tokens + kv->block_tokens - 1) / kv->block_tokens);
}

int wrk_kv_reserve(wrk_kv_t *kv, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen)
{
    long need = 0;
    for (int i = 0; i < n_seqs; i++) {
        const int slot = seqs[i].slot;
        const long len = (long)kv->n_tokens[slot] + seqs[i].n_tokens;
        if (len > wrk_kv_capacity(kv))
            return rcd_fail(RCD_ETOOBIG, err, errlen,
                            "step: slot %d would hold %ld positions, more than the KV cache's "
                            "%d (n_kv_blocks %d x %d tokens)",
                            slot, len, wrk_kv_capacity(kv), kv->n_blocks, kv->block_tokens);
        need += blocks_for(kv, len) - kv->n_held[slot];
    }
    if (need > kv->n_free)
        return rcd_fail(RCD_ETOOBIG, err, errlen,
                        "step: the batch needs %ld more KV blocks of %d tokens but only %d of %d "
                        "are free",
                        need, kv->block_tokens, kv->n_free, kv->n_blocks);
    for (int i = 0; i < n_seqs; i++) {
        const int slot = seqs[i].slot;
        const int32_t want = blocks_for(kv, (long)kv->n_tokens[slot] + seqs[i].n_tokens);
        int32_t *tab = kv->tables + (size_t)slot * kv->n_blocks;
        while (kv->n_held[slot] < want)
            tab[kv->n_held[slot]++] = kv->free_list[--kv->n_free];
    }
    return 0;
}

void wrk_kv_advance(wrk_kv_t *kv, const wrk_seq_t *seqs, int n_seqs)
{
    for (int i = 0; i < n_seqs; i++)
        kv->n_tokens[seqs[i].slot] += seqs[i].n_tokens;
}

void wrk_kv_reset(wrk_kv_t *kv, int slot)
{
    const int32_t *tab = kv->tables + (size_t)slot * kv->n_blocks;
    /* Back in reverse so that a reset-and-refill reuses the same blocks in the same order. */
    for (int32_t i = kv->n_held[slot]; i-- > 0;)
        kv->free_list[kv->n_free++] = tab[i];
    kv->n_held[slot] = 0;
    kv->n_tokens[slot] = 0;
}

void wrk_kv_truncate(wrk_kv_t *kv, int slot, int32_t n)
{
    if (n < 0 || n >= kv->n_tokens[slot]) return;
    const int32_t keep = blocks_for(kv, n);
    const int32_t *tab = kv->tables + (size_t)slot * kv->n_blocks;
    for (int32_t i = kv->n_held[slot]; i-- > keep;)
        kv->free_list[kv->n_free++] = tab[i];
    kv->n_held[slot] = keep;
    kv->n_tokens[slot] = n;
}

int wrk_kv_copy(wrk_kv_t *kv, int dst, int src)
{
    if (dst == src) return 0;
    const int32_t n = kv->n_held[src];
    if (n > kv->n_free + kv->n_held[dst]) return RCD_ETOOBIG;
    wrk_kv_reset(kv, dst);
    int32_t *td = kv->tables + (size_t)dst * kv->n_blocks;
    const int32_t *ts = kv->tables + (size_t)src * kv->n_blocks;
    for (int32_t i = 0; i < n; i++) {
        td[i] = kv->free_list[--kv->n_free];
        memcpy(kv->pool + (size_t)td[i] * kv->block_floats,
               kv->pool + (size_t)ts[i] * kv->block_floats, kv->block_floats * sizeof(float));
    }
    kv->n_held[dst] = n;
    kv->n_tokens[dst] = kv->n_tokens[src];
    return 0;
}

size_t wrk_kv_export_bytes(const wrk_kv_t *kv, int slot)
{
    return (size_t)kv->n_tokens[slot] * kv->n_layers * 2 * kv->width * sizeof(float);
}

void wrk_kv_export(const wrk_kv_t *kv, int slot, float *dst)
{
    const int32_t n = kv->n_tokens[slot];
    for (int l = 0; l < kv->n_layers; l++)
        for (int v = 0; v < 2; v++)
            for (int32_t p = 0; p < n; p++, dst += kv->width)
                memcpy(dst, wrk_kv_at((wrk_kv_t *)kv, slot, l, v, p),
                       (size_t)kv->width * sizeof(float));
}

int wrk_kv_import(wrk_kv_t *kv, int slot, const float *src, int32_t n)
{
    if (n < 0 || n > wrk_kv_capacity(kv) || blocks_for(kv, n) > kv->n_free + kv->n_held[slot])
        return RCD_ETOOBIG;
    wrk_kv_reset(kv, slot);
    wrk_seq_t s = {.slot = slot, .n_tokens = n};
    if (n > 0 && wrk_kv_reserve(kv, &s, 1, NULL, 0)) return RCD_EINTERNAL; /* checked above */
    kv->n_tokens[slot] = n;
    for (int l = 0; l < kv->n_layers; l++)
        for (int v = 0; v < 2; v++)
            for (int32_t p = 0; p < n; p++, src += kv->width)
                memcpy(wrk_kv_at(kv, slot, l, v, p), src, (size_t)kv->width * sizeof(float));
    return 0;
}
