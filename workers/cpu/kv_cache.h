/* workers/cpu: the paged KV cache of the hybrids' global-attention layers — the only
 * per-sequence memory that grows. A fixed pool of blocks (each holds the K and V of
 * block_tokens consecutive positions for every attention layer), a block table per slot, and
 * a free list. Blocks are taken before a step runs, so a step that cannot get them fails
 * with RCD_ETOOBIG having touched nothing, and go back to the pool on reset. */
#ifndef RCD_WRK_KV_CACHE_H
#define RCD_WRK_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "workers/wrk.h"

typedef struct wrk_kv {
    int n_slots;
    int n_layers; /* attention layers */
    int width;    /* floats of K (and of V) per token per layer: kv_heads * head_dim */
    int block_tokens;
    int n_blocks;
    size_t block_floats; /* n_layers * 2 * block_tokens * width; layout [layer][K|V][tok][w] */
    float *pool;         /* n_blocks x block_floats */
    int32_t *free_list;  /* stack of free block ids */
    int n_free;
    int32_t *tables;   /* n_slots x n_blocks: the blocks of a slot, in position order */
    int32_t *n_held;   /* blocks held per slot */
    int32_t *n_tokens; /* positions stored per slot */
} wrk_kv_t;

int wrk_kv_create(int n_slots, int n_layers, int width, int block_tokens, int n_blocks,
                  wrk_kv_t **out);
void wrk_kv_destroy(wrk_kv_t *kv); /* NULL-safe */

/* Most positions one slot can hold: the whole pool. */
static inline int32_t wrk_kv_capacity(const wrk_kv_t *kv)
{
    return kv->n_blocks * kv->block_tokens;
}

/* K (v = 0) or V (v = 1) of attention layer `layer` at position `pos` of `slot`; the block
 * holding pos must have been reserved. */
static inline float *wrk_kv_at(wrk_kv_t *kv, int slot, int layer, int v, int32_t pos)
{
    const int32_t blk = kv->tables[(size_t)slot * kv->n_blocks + pos / kv->block_tokens];
    return kv->pool + (size_t)blk * kv->block_floats +
           (((size_t)layer * 2 + v) * kv->block_tokens + pos % kv->block_tokens) * kv->width;
}

/* Takes the blocks every sequence of the batch needs to append its n_tokens, or takes none
 * and returns RCD_ETOOBIG with a message. */
int wrk_kv_reserve(wrk_kv_t *kv, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen);
/* After the step wrote them: every sequence's length grows by its n_tokens. */
void wrk_kv_advance(wrk_kv_t *kv, const wrk_seq_t *seqs, int n_seqs);
/* Keeps the slot's first n positions (n <= its length), giving back the blocks past them. */
void wrk_kv_truncate(wrk_kv_t *kv, int slot, int32_t n);
/* Gives the slot's blocks back; length 0. */
void wrk_kv_reset(wrk_kv_t *kv, int slot);
/* dst becomes a copy of src (its own blocks), or RCD_ETOOBIG and dst is untouched. */
int wrk_kv_copy(wrk_kv_t *kv, int dst, int src);
/* The slot's KV as one contiguous array: per layer K [n][width] then V [n][width]. */
size_t wrk_kv_export_bytes(const wrk_kv_t *kv, int slot);
void wrk_kv_export(const wrk_kv_t *kv, int slot, float *dst);
/* Replaces the slot's KV with n positions in the export layout, or RCD_ETOOBIG and the slot
 * is untouched. */
int wrk_kv_import(wrk_kv_t *kv, int slot, const float *src, int32_t n);

#endif
