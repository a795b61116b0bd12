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

#endif
