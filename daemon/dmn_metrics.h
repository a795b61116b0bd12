/* daemon: Prometheus metrics — the registry the daemon's parts update, and the exposition
 * (`GET /metrics` on the HTTP listener). Updates are relaxed atomic adds (common/rcd_metrics.h):
 * no lock, no allocation; per token, one counter add and one histogram observe. */
#ifndef DMN_METRICS_H
#define DMN_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dmn_server;
struct dmn_call;

/* Renders every metric: the Prometheus text format 0.0.4, or OpenMetrics 1.0.0 (ending with
 * "# EOF") when openmetrics. 0 and *out (malloc'd, *len bytes), or RCD_ENOMEM. Loop thread. */
int dmn_metrics_render(struct dmn_server *s, bool openmetrics, char **out, size_t *len);

/* A Generate turn's metrics record (kept in the turn; zeroed with it). */
typedef struct dmn_mturn {
    uint64_t t_submit, t_last, t_commit; /* uv_hrtime() */
    uint64_t n_tokens;                   /* sampled so far */
    int tenant;                          /* index in the tenant table (API keys), else 0 */
    bool begun;
} dmn_mturn_t;

/* The turn arrived (before its checks): its tenant is looked up (API keys: the call's). */
void dmn_metrics_turn_begin(const struct dmn_call *c, dmn_mturn_t *m);
/* A token was sampled: generation tokens, and time to first token / inter-token latency. */
void dmn_metrics_token(dmn_mturn_t *m);
/* The turn's checkpoint commit was handed to the store / acknowledged. */
void dmn_metrics_commit_start(dmn_mturn_t *m);
void dmn_metrics_commit_done(dmn_mturn_t *m);
/* A session's committed state is in memory for the turn: from the host cache, else (from_disk)
 * read from disk, or fetched from the shared tier (c->fetched_shared). */
void dmn_metrics_resume(const struct dmn_call *c, bool from_disk);
/* The turn ended (freed): finished with rc (0: finish_reason 1 length, 2 stop, 3 eos,
 * 4 context), or not finished (the client went away). prompt_tokens: those the engine started
 * on (0 if it never started); t_*: uv_hrtime() of start, first token, end (0: none). */
void dmn_metrics_turn_end(dmn_mturn_t *m, int rc, bool finished, int finish_reason,
                          int32_t prompt_tokens, uint64_t t_start, uint64_t t_first,
                          uint64_t t_end);
/* A call got its final status (any method; status_rc an RCD_E* code, 0 OK). */
void dmn_metrics_rpc(int method, int status_rc);

#endif
