/* common: metrics primitives (counters, histograms with fixed buckets), their exposition in the
 * Prometheus text format 0.0.4 and OpenMetrics 1.0.0, and the process-wide instruments the
 * modules below the daemon (engine, statestore) update. Updates are relaxed atomic adds: any
 * thread, no lock, no allocation; a histogram observe is a bucket search and two adds. */
#ifndef RCD_METRICS_H
#define RCD_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- instruments ------------------------------------------------------------------------ */

typedef struct rcd_counter {
    _Atomic uint64_t v;
} rcd_counter_t;

#define RCD_HIST_MAX 24 /* finite buckets, at most */

/* Observations are integers in the histogram's unit (nanoseconds, tokens, per mille); `per` of
 * them make one exposed unit (1000000000: nanoseconds exposed as seconds; a division, so that
 * round bounds print round). bounds: ascending upper bounds (static),
 * n_bounds <= RCD_HIST_MAX; +Inf is implicit. b[] holds per-bucket counts (not cumulative). */
typedef struct rcd_hist {
    const uint64_t *bounds;
    int n_bounds;
    uint64_t per;
    _Atomic uint64_t b[RCD_HIST_MAX + 1];
    _Atomic uint64_t sum;
} rcd_hist_t;

#define RCD_NS_PER_S 1000000000ull /* a histogram of nanoseconds exposed in seconds */
#define RCD_HIST_INIT(bounds_, per_)                                                               \
    {                                                                                              \
        .bounds = (bounds_), .n_bounds = (int)(sizeof(bounds_) / sizeof((bounds_)[0])),            \
        .per = (per_)                                                                              \
    }

static inline void rcd_counter_add(rcd_counter_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

static inline uint64_t rcd_counter_get(const rcd_counter_t *c)
{
    return atomic_load_explicit(&((rcd_counter_t *)c)->v, memory_order_relaxed);
}

static inline void rcd_hist_observe(rcd_hist_t *h, uint64_t v)
{
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->b[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
}

/* The number of observations (the +Inf bucket). */
uint64_t rcd_hist_count(const rcd_hist_t *h);

/* ---- exposition --------------------------------------------------------------------------- */

typedef enum rcd_mtype {
    RCD_MT_COUNTER,   /* samples NAME_total */
    RCD_MT_GAUGE,     /* samples NAME */
    RCD_MT_HISTOGRAM, /* NAME_bucket{le}, NAME_sum, NAME_count */
    RCD_MT_INFO,      /* samples NAME_info ... 1 (a gauge named NAME_info in the text format) */
} rcd_mtype_t;

typedef struct rcd_label {
    const char *name, *value;
} rcd_label_t;

/* A growing text buffer; errors (out of memory) stick and come out of rcd_mw_finish. */
typedef struct rcd_mw {
    char *p;
    size_t len, cap;
    int err;
    bool om;            /* OpenMetrics 1.0.0, else text 0.0.4 */
    const char *family; /* the family being written */
    rcd_mtype_t type;
    const rcd_label_t *common; /* labels put first on every sample (e.g. model); may be NULL */
    int n_common;
} rcd_mw_t;

void rcd_mw_init(rcd_mw_t *w, bool openmetrics);
/* Starts a family: `name` without the _total / _info suffix; `unit` ("" or NULL: none) must
 * be the name's last component (OpenMetrics # UNIT); help is escaped as each format wants. */
void rcd_mw_family(rcd_mw_t *w, const char *name, rcd_mtype_t type, const char *unit,
                   const char *help);
/* Labels put first on every following sample (NULL, 0: none); borrowed until changed. */
void rcd_mw_common(rcd_mw_t *w, const rcd_label_t *labels, int n);
/* One sample of the current counter / gauge / info family, with extra labels (escaped). */
void rcd_mw_uint(rcd_mw_t *w, const rcd_label_t *labels, int n, uint64_t v);
void rcd_mw_double(rcd_mw_t *w, const rcd_label_t *labels, int n, double v);
/* One histogram series of the current histogram family: buckets made cumulative, _count is
 * the +Inf bucket, _sum in the exposed unit. */
void rcd_mw_hist(rcd_mw_t *w, const rcd_label_t *labels, int n, const rcd_hist_t *h);
/* Ends the exposition (OpenMetrics: "# EOF"); 0 and *out (malloc'd, NUL-terminated, *len
 * bytes) or RCD_ENOMEM (nothing returned). The writer is reset. */
int rcd_mw_finish(rcd_mw_t *w, char **out, size_t *len);
void rcd_mw_free(rcd_mw_t *w); /* drops an unfinished exposition */

/* Formats v as Prometheus clients do (Go's shortest float, integers with ".0", "+Inf"). */
void rcd_metrics_fmt_double(char *buf, size_t len, double v);

/* ---- the process-wide instruments ------------------------------------------------------ */

/* Where a resumed session's state came from (recurd_session_resumes_total{source}). */
typedef enum rcd_resume_src {
    RCD_RESUME_SLOT,       /* still in a worker slot */
    RCD_RESUME_HOST_CACHE, /* the store's host cache */
    RCD_RESUME_DISK,       /* a checkpoint on the local disk */
    RCD_RESUME_REDIS,      /* the shared tier */
    RCD_RESUME__COUNT,
} rcd_resume_src_t;

extern const char *const rcd_resume_src_name[RCD_RESUME__COUNT];

typedef struct rcd_metrics {
    rcd_hist_t step_batch_size;   /* engine: entries (sequences) per planned step */
    rcd_hist_t step_budget_use;   /* engine: tokens / step budget, per mille */
    rcd_hist_t group_commit_size; /* statestore: checkpoints per group flush */
    rcd_hist_t commit_ns;         /* daemon: a turn's checkpoint commit (store call -> ack) */
    rcd_hist_t resume_ns[RCD_RESUME__COUNT];               /* a session's state ready, by source */
    rcd_counter_t spec_draft_tokens, spec_accepted_tokens; /* speculative decoding (the runner) */
} rcd_metrics_t;

extern rcd_metrics_t rcd_metrics;

/* The engine planned a step of n_entries sequences and n_tokens of a step_tokens budget. */
static inline void rcd_metrics_step(int32_t n_entries, int32_t n_tokens, int32_t step_tokens)
{
    rcd_hist_observe(&rcd_metrics.step_batch_size, (uint64_t)(n_entries > 0 ? n_entries : 0));
    if (step_tokens > 0 && n_tokens >= 0)
        rcd_hist_observe(&rcd_metrics.step_budget_use,
                         (uint64_t)n_tokens * 1000u / (uint64_t)step_tokens);
}

/* A session's state is ready `ns` after the turn asked for it, from `src`. */
static inline void rcd_metrics_resume(rcd_resume_src_t src, uint64_t ns)
{
    if ((unsigned)src < RCD_RESUME__COUNT) rcd_hist_observe(&rcd_metrics.resume_ns[src], ns);
}

#endif
