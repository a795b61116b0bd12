/* engine: draft sources for speculative decoding and the per-sequence speculation policy.
 * A draft source proposes up to k tokens that continue a sequence's history; the engine
 * verifies them as one (k + 1)-token verify entry (workers/wrk.h, wrk_seq_t.verify) and rolls
 * the slot back with wrk_spec_accept. Pure code: no threads, no allocation after create.
 * The runner uses them for --speculate ngram (engine/README.md, "Speculative decoding"). */
#ifndef ENG_DRAFT_H
#define ENG_DRAFT_H

#include <stdbool.h>
#include <stdint.h>

#include "workers/wrk.h"

/* Most drafts one verify carries: the worker's verify entry holds them and the last token. */
#define ENG_DRAFT_MAX (WRK_SPEC_MAX_TOKENS - 1)

typedef struct eng_draft eng_draft_t;

/* How a draft model draws its tokens: the request's temperature, top-k, top-p and min-p (its
 * penalties apply to the target only), and a seed for the draft's own generator. */
typedef struct eng_draft_sampling {
    float temperature; /* 0: greedy (the draft proposes its argmax) */
    int top_k;         /* 0: off */
    float top_p;       /* 1 (or 0): off */
    float min_p;       /* 0: off */
    uint64_t seed;
} eng_draft_sampling_t;

/* One sequence of a draft model's batched proposal (engine/eng_draft_model.c). The draft keeps
 * one state per target slot; `*fed` counts the tokens of toks it holds. */
typedef struct eng_draft_job {
    int32_t slot;                   /* the target's slot (the draft's state lives in the same) */
    const int32_t *toks;            /* the stream: prompt, then every sampled token */
    int32_t n_toks;                 /* its length; *fed < n_toks */
    int32_t *fed;                   /* in/out: tokens of toks the draft's slot has consumed */
    int k;                          /* drafts wanted, 1..ENG_DRAFT_MAX */
    int32_t *out;                   /* k drafts */
    float *q;                       /* temperature > 0: k x vocab, the distribution each draft
                                     * was drawn from (zeros outside the kept ids); else unused */
    const eng_draft_sampling_t *smp;
    uint64_t *rng;                  /* the sequence's draft generator state */
} eng_draft_job_t;

typedef struct eng_draft_i {
    const char *name; /* "ngram", "oracle", "model" */
    /* Up to k (1..ENG_DRAFT_MAX) tokens that may follow hist[0, n_hist) into out; returns how
     * many (0: nothing to propose). hist is borrowed for the call. NULL for a draft model. */
    int (*propose)(eng_draft_t *d, const int32_t *hist, int32_t n_hist, int k, int32_t *out);
    void (*destroy)(eng_draft_t *d);
    /* Draft models only (NULL otherwise), called on the device thread: propose exactly k drafts
     * for every job in one batch of k draft steps; the per-slot state follows the target's
     * slot moves (reset; save to / load from a host buffer it grows). */
    int (*propose_batch)(eng_draft_t *d, eng_draft_job_t *jobs, int n, char *err, size_t errlen);
    int (*slot_reset)(eng_draft_t *d, int32_t slot);
    int (*slot_save)(eng_draft_t *d, int32_t slot, void **buf, size_t *cap, size_t *len);
    int (*slot_load)(eng_draft_t *d, int32_t slot, const void *buf, size_t len);
} eng_draft_i;

struct eng_draft {
    const eng_draft_i *vt;
};

static inline int eng_draft_propose(eng_draft_t *d, const int32_t *hist, int32_t n_hist, int k,
                                    int32_t *out)
{
    return d->vt->propose(d, hist, n_hist, k, out);
}
void eng_draft_destroy(eng_draft_t *d); /* NULL-safe */

/* Prompt lookup (n-gram): the longest suffix of the history, from max_ngram tokens down to
 * min_ngram, that also occurs earlier within the last `window` tokens; of its earlier
 * occurrences, the most recent one followed by at least k tokens (else the one followed by the
 * most) proposes the tokens that followed it (at most k, only tokens already in the history). Defaults for 0: max_ngram 4, min_ngram 1, window 8192. RCD_EINVAL when
 * min_ngram > max_ngram or a value is negative or max_ngram > 64. */
typedef struct eng_ngram_opts {
    int max_ngram, min_ngram;
    int32_t window;
} eng_ngram_opts_t;
int eng_draft_ngram_create(const eng_ngram_opts_t *opts, eng_draft_t **out);

/* Test-only: drafts judged against a known continuation `truth` (truth[i] is what follows
 * the first i tokens of the history; borrowed, must outlive the source): ENG_ORACLE_RIGHT
 * proposes it, ENG_ORACLE_WRONG a different token at every position, ENG_ORACLE_RANDOM each
 * position right with probability 1/2 (a seeded generator: reproducible). Nothing past the
 * end of truth is proposed. */
typedef enum eng_oracle_mode {
    ENG_ORACLE_RIGHT,
    ENG_ORACLE_WRONG,
    ENG_ORACLE_RANDOM,
} eng_oracle_mode_t;
int eng_draft_oracle_create(const int32_t *truth, int32_t n_truth, int32_t vocab,
                            eng_oracle_mode_t mode, uint64_t seed, eng_draft_t **out);

/* Greedy acceptance: drafts d[0, k) were verified with the target's logit rows; sampled[j] is
 * the token the sampler took from row j (argmax for greedy). Returns the tokens the sequence
 * keeps, 1..k+1: sampled[0..m) where m - 1 drafts matched (d[j] == sampled[j] for j < m - 1);
 * sampled[m - 1] is the target's own token after the last match. The engine samples rows in
 * order and may stop at the first mismatch; this is the rule it applies. */
int eng_spec_greedy_keep(const int32_t *draft, int k, const int32_t *sampled);

/* Per-sequence policy: how many drafts to ask for next.
 * - k starts at k_max; after a verify with j of k drafts accepted: all accepted → k + 1 (up
 *   to k_max); else k = max(1, j + 1) (what would have been enough, and one more).
 * - After `miss_limit` verifies in a row accepting nothing, speculation pauses for
 *   `pause_steps` decodes, then resumes at k = 1.
 * - When more than max_batch sequences share the step (a compute-bound step, where a verify
 *   costs as much as its tokens), no drafts (k = 0) that step; max_batch 0: never back off.
 * k_max 0 turns speculation off. */
typedef struct eng_spec_policy {
    int k_max, miss_limit, pause_steps, max_batch;
    /* state */
    int k, misses, paused;
    /* counters */
    uint64_t verifies, drafted, accepted;
} eng_spec_policy_t;
/* k_max clamped to [0, ENG_DRAFT_MAX]; miss_limit 4, pause_steps 16, max_batch as given. */
void eng_spec_policy_init(eng_spec_policy_t *p, int k_max, int max_batch);
/* Drafts to ask for in the next step with `batch` sequences in it (0: decode plainly; a paused
 * policy counts this step towards its pause). */
int eng_spec_policy_next(eng_spec_policy_t *p, int batch);
/* A verify of k drafts kept `accepted` of them (0..k). */
void eng_spec_policy_update(eng_spec_policy_t *p, int k, int accepted);

/* Runner-wide gain check (engine/README.md, "Speculation that pays"): the runner times every
 * pure decode step on its device thread (the draft model's proposal and the target's step) and
 * counts the tokens it emitted, separately for steps with verify entries ("spec") and steps
 * without ("plain"), as EWMAs (weight 1/8) per batch-size bucket. While speculating, a step
 * runs plainly to keep the baseline fresh when no plain sample came in the last probe_every - 1
 * steps (4 - 1 until the baseline has min_samples): a step that could have speculated but ran
 * plainly (no drafts found) is such a sample. Once both kinds have min_samples
 * samples (spec ones counted since the last decision), a spec sample whose EWMA rate (tokens
 * per microsecond) is below margin x the plain rate pauses speculation for `backoff` steps
 * (plain steps, which also refresh the baseline); the next back-off doubles, up to
 * backoff_max. After a pause speculation resumes as a probe: min_samples fresh spec samples,
 * then the same check; a probe that pays resets the back-off to backoff_min. Pure: no clock,
 * the caller passes the measured times. */
typedef struct eng_spec_gate {
    int probe_every, min_samples, backoff_min, backoff_max;
    double margin;
    /* state */
    double spec_us, spec_tok, plain_us, plain_tok; /* EWMAs per step */
    int n_spec, n_plain, since_probe, paused, backoff;
    bool probing; /* resumed after a pause and not yet judged */
    /* counters */
    uint64_t pauses, paused_steps;
} eng_spec_gate_t;
/* probe_every 16, min_samples 8, back-off 16..1024, margin 1.0 */
void eng_spec_gate_init(eng_spec_gate_t *g);
/* Whether the next step may speculate (false: a plain step; a paused gate counts it). */
bool eng_spec_gate_next(eng_spec_gate_t *g);
/* A pure decode step ran for `us` microseconds (> 0) and emitted `tokens`; spec: it had
 * verify entries. Returns true when this sample paused speculation. */
bool eng_spec_gate_observe(eng_spec_gate_t *g, bool spec, double us, double tokens);
/* The bucket of a step of `batch` sequences: 0 for 1, 1 for 2, 2 for 3-4, ... up to
 * ENG_SPEC_GATE_BUCKETS - 1. */
#define ENG_SPEC_GATE_BUCKETS 6
int eng_spec_gate_bucket(int batch);

#endif
