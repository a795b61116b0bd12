/* workers/cpu: the Mamba2 mixer's CPU forward, shared by the families that use the mixer
 * (Mamba2, and Granite 4.0-H's Mamba layers). */
#ifndef RCD_WRK_MAMBA2_CPU_H
#define RCD_WRK_MAMBA2_CPU_H

#include "workers/cpu/cpu_int.h"
#include "workers/families/mamba2.h"

/* CPU activations of the mixer for up to T tokens. */
typedef struct wrk_mamba2_bufs {
    float *zx;  /* [T x proj_dim]: z, xBC (pre-conv), dt */
    float *xbc; /* [T x C] after conv + silu: x, B, C */
    float *y;   /* [T x I] scan output, then gated-normed in place */
    float *ss;  /* [T x tp_norm_groups] when tp_norm_reduce, else NULL */
} wrk_mamba2_bufs_t;
int wrk_mamba2_bufs_alloc(const wrk_mamba2_config_t *cfg, size_t T, wrk_mamba2_bufs_t *b);
void wrk_mamba2_bufs_free(wrk_mamba2_bufs_t *b);

/* One mixer over a validated ragged batch of T stacked tokens, called by every pool thread
 * (ith of nth) with the normed input u [T x H] ready; each sequence's conv window and SSM
 * state sit at `state_off` floats into its slot (the layout of wrk_mamba2_layer_state_floats).
 * out [T x H] = (acc ? out : 0) + out_proj(...); returns after a barrier, out complete. */
void wrk_mamba2_cpu_mixer(struct wrk_cpu *c, int ith, int nth, const wrk_mamba2_config_t *cfg,
                          const wrk_mamba2_layer_t *L, const wrk_seq_t *seqs, int n_seqs, int T,
                          size_t state_off, const float *u, const wrk_mamba2_bufs_t *b,
                          float *out, bool acc);
/* The same, for a family with speculative rollback: a verify entry's conv inputs and raw dt
 * also go to its slot's rollback record at rec_off floats (wrk_mamba2_spec_layer_floats per
 * mixer layer). A family that calls the plain mixer has no spec hooks, so its verify entries
 * are refused before the forward runs. */
void wrk_mamba2_cpu_mixer_rec(struct wrk_cpu *c, int ith, int nth,
                              const wrk_mamba2_config_t *cfg, const wrk_mamba2_layer_t *L,
                              const wrk_seq_t *seqs, int n_seqs, int T, size_t state_off,
                              size_t rec_off, const float *u, const wrk_mamba2_bufs_t *b,
                              float *out, bool acc);

/* Speculative rollback of one mixer layer: per layer, the verify pass keeps the conv input
 * [MAXT][conv_dim] and the raw dt [MAXT][n_heads]; the replay reruns the conv and the scan over
 * the first n positions on the (restored) state at state_off, using tmp
 * (wrk_mamba2_spec_tmp_floats). Every pool thread calls it; it ends after a barrier. */
static inline size_t wrk_mamba2_spec_layer_floats(const wrk_mamba2_config_t *cfg)
{
    return (size_t)WRK_SPEC_MAX_TOKENS * ((size_t)cfg->conv_dim + (size_t)cfg->n_heads);
}
static inline size_t wrk_mamba2_spec_tmp_floats(const wrk_mamba2_config_t *cfg)
{
    return (size_t)WRK_SPEC_MAX_TOKENS * ((size_t)cfg->conv_dim + (size_t)cfg->inner);
}
void wrk_mamba2_cpu_replay(struct wrk_cpu *c, int ith, int nth, const wrk_mamba2_config_t *cfg,
                           const wrk_mamba2_layer_t *L, int slot, int n, size_t state_off,
                           const float *rec, float *tmp);

#endif
