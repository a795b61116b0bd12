/* workers/cpu: the Mamba (v1) mixer's CPU forward, shared by the families that use the mixer
 * (Mamba, and Jamba's Mamba layers). */
#ifndef RCD_WRK_MAMBA_CPU_H
#define RCD_WRK_MAMBA_CPU_H

#include "workers/cpu/cpu_int.h"
#include "workers/families/mamba.h"

/* CPU activations of the mixer for up to T tokens. */
typedef struct wrk_mamba_bufs {
    float *xz;  /* [T x 2I]: x (pre-conv), z */
    float *xc;  /* [T x I] after conv + silu */
    float *dbc; /* [T x R+2N]: dt (low rank), B, C */
    float *dt;  /* [T x I] */
    float *y;   /* [T x I] scan output */
} wrk_mamba_bufs_t;
int wrk_mamba_bufs_alloc(const wrk_mamba_config_t *cfg, size_t T, wrk_mamba_bufs_t *b);
void wrk_mamba_bufs_free(wrk_mamba_bufs_t *b);

/* One mixer over a validated ragged batch of T stacked tokens, called by every pool thread
 * (ith of nth) with the normed input u [T x H] ready; each sequence's conv window [K-1][I] and
 * SSM state [N][I] sit at `state_off` floats into its slot. With L->dt_norm (Jamba), dt, B and
 * C are RMS-normed after x_proj. out [T x H] = (acc ? out : 0) + out_proj(...); under TP the
 * partial sums are all-reduced. A verify entry (speculative decoding) records its conv input,
 * dt and B, C at `rec_off` floats into the slot's record (wrk_cpu_spec_rec; the Mamba and Jamba
 * families' rollback replays them with wrk_mamba_cpu_replay). Returns after a barrier, out
 * complete. */
void wrk_mamba_cpu_mixer(struct wrk_cpu *c, int ith, int nth, const wrk_mamba_config_t *cfg,
                         const wrk_mamba_layer_t *L, const wrk_seq_t *seqs, int n_seqs, int T,
                         size_t state_off, size_t rec_off, const float *u,
                         const wrk_mamba_bufs_t *b, float *out, bool acc);

/* Speculative rollback of one mixer layer: the verify pass keeps, per layer, the conv input x
 * [MAXT][I], dt_proj's output [MAXT][I] and B, C [MAXT][2N] (after Jamba's norms) for
 * MAXT = WRK_SPEC_MAX_TOKENS positions; the replay reruns the conv and the selective scan over
 * the first n of them on the (restored) state at state_off, using tmp
 * (wrk_mamba_spec_tmp_floats). Every pool thread calls it (its own channels; no barrier). */
static inline size_t wrk_mamba_spec_layer_floats(const wrk_mamba_config_t *cfg)
{
    return (size_t)WRK_SPEC_MAX_TOKENS * (2 * (size_t)cfg->inner + 2 * (size_t)cfg->d_state);
}
static inline size_t wrk_mamba_spec_tmp_floats(const wrk_mamba_config_t *cfg)
{
    return (size_t)WRK_SPEC_MAX_TOKENS * 2 * (size_t)cfg->inner; /* conv output, scan output */
}
void wrk_mamba_cpu_replay(struct wrk_cpu *c, int ith, int nth, const wrk_mamba_config_t *cfg,
                          const wrk_mamba_layer_t *L, int slot, int n, size_t state_off,
                          const float *rec, float *tmp);

#endif
