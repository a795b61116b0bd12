/* daemon: the metrics the daemon counts itself (turns, tokens, latencies, calls, per tenant when
 * API keys are configured) and the /metrics exposition of everything: those, the process-wide
 * instruments (common/rcd_metrics.h), and what the scheduler, store and prefix cache count in
 * their own stats, read at scrape time. README.md "Metrics" lists every family. */
#include "daemon/dmn_metrics.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/rcd_error.h"
#include "common/rcd_metrics.h"
#include "daemon/dmn.h"
#include "engine/eng_runner.h"
#include "statestore/prefix.h"

#ifndef RCD_VERSION
#define RCD_VERSION "unknown"
#endif

/* ---- the daemon's instruments (updated on the loop thread; atomics keep scrapes and any
 * other thread safe) ----------------------------------------------------------------------- */

/* Tenants get their own series only with API keys: the first DMN_MT_TENANTS seen, the rest
 * are counted under "other" (cardinality stays bounded whatever the clients send). */
#define DMN_MT_TENANTS 32
#define DMN_MT_OTHER DMN_MT_TENANTS

enum { OUT_STOP, OUT_LENGTH, OUT_EOS, OUT_CONTEXT, OUT_CANCELLED, OUT_ERROR, OUT__COUNT };
static const char *const out_name[OUT__COUNT] = {"stop",    "length",    "eos",
                                                 "context", "cancelled", "error"};

#define MS 1000000ull
/* request latencies: 1 ms .. 160 s */
static const uint64_t b_req[] = {MS,         5 * MS / 2, 5 * MS,     10 * MS,    25 * MS,
                                 50 * MS,    100 * MS,   250 * MS,   500 * MS,   1000 * MS,
                                 2500 * MS,  5000 * MS,  10000 * MS, 20000 * MS, 40000 * MS,
                                 80000 * MS, 160000 * MS};
/* inter-token latency: 1 ms .. 2.5 s */
static const uint64_t b_itl[] = {MS,       5 * MS / 2, 5 * MS,   15 * MS / 2, 10 * MS,  15 * MS,
                                 20 * MS,  25 * MS,    30 * MS,  40 * MS,     50 * MS,  75 * MS,
                                 100 * MS, 150 * MS,   200 * MS, 300 * MS,    400 * MS, 500 * MS,
                                 750 * MS, 1000 * MS,  2500 * MS};
/* tokens per turn: 1, 2, 5 .. 100000 */
static const uint64_t b_len[] = {1,   2,    5,    10,   20,    50,    100,   200,
                                 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000};

static struct {
    char tenants[DMN_MT_TENANTS][STORE_TENANT_MAX + 1];
    int n_tenants;
    bool other_used;
    rcd_counter_t finished[DMN_MT_TENANTS + 1][OUT__COUNT];
    rcd_counter_t prompt_tokens[DMN_MT_TENANTS + 1], gen_tokens[DMN_MT_TENANTS + 1];
    rcd_hist_t ttft, itl, e2e, queue, prefill, decode, prompt_len, gen_len;
    rcd_counter_t rpc[DMN_M__COUNT + 1][17];
} g_m = {
    .ttft = RCD_HIST_INIT(b_req, RCD_NS_PER_S),
    .itl = RCD_HIST_INIT(b_itl, RCD_NS_PER_S),
    .e2e = RCD_HIST_INIT(b_req, RCD_NS_PER_S),
    .queue = RCD_HIST_INIT(b_req, RCD_NS_PER_S),
    .prefill = RCD_HIST_INIT(b_req, RCD_NS_PER_S),
    .decode = RCD_HIST_INIT(b_req, RCD_NS_PER_S),
    .prompt_len = RCD_HIST_INIT(b_len, 1),
    .gen_len = RCD_HIST_INIT(b_len, 1),
};

static const char *const method_name[DMN_M__COUNT + 1] = {
    [DMN_M_LIST_MODELS] = "ListModels",
    [DMN_M_CREATE_SESSION] = "CreateSession",
    [DMN_M_GET_SESSION] = "GetSession",
    [DMN_M_FORK_SESSION] = "ForkSession",
    [DMN_M_DELETE_SESSION] = "DeleteSession",
    [DMN_M_TOKENIZE] = "Tokenize",
    [DMN_M_DETOKENIZE] = "Detokenize",
    [DMN_M_GENERATE] = "Generate",
    [DMN_M_HEALTH_CHECK] = "HealthCheck",
    [DMN_M_HEALTH_WATCH] = "HealthWatch",
    [DMN_M_UNKNOWN] = "unknown",
};

static const char *const grpc_code_name[17] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

static int tenant_index(const dmn_call_t *c)
{
    if (!c->srv->keys) return 0;
    for (int i = 0; i < g_m.n_tenants; i++)
        if (!strcmp(g_m.tenants[i], c->tenant)) return i;
    if (g_m.n_tenants == DMN_MT_TENANTS) {
        g_m.other_used = true;
        return DMN_MT_OTHER;
    }
    snprintf(g_m.tenants[g_m.n_tenants], sizeof(g_m.tenants[0]), "%s", c->tenant);
    return g_m.n_tenants++;
}

void dmn_metrics_turn_begin(const dmn_call_t *c, dmn_mturn_t *m)
{
    m->t_submit = uv_hrtime();
    m->t_last = m->t_commit = m->n_tokens = 0;
    m->tenant = tenant_index(c);
    m->begun = true;
}

void dmn_metrics_token(dmn_mturn_t *m)
{
    uint64_t now = uv_hrtime();
    rcd_counter_add(&g_m.gen_tokens[m->tenant], 1);
    m->n_tokens++;
    if (m->t_last)
        rcd_hist_observe(&g_m.itl, now - m->t_last);
    else
        rcd_hist_observe(&g_m.ttft, now - m->t_submit);
    m->t_last = now;
}

void dmn_metrics_commit_start(dmn_mturn_t *m)
{
    m->t_commit = uv_hrtime();
}

void dmn_metrics_commit_done(dmn_mturn_t *m)
{
    if (m->t_commit) rcd_hist_observe(&rcd_metrics.commit_ns, uv_hrtime() - m->t_commit);
    m->t_commit = 0;
}

void dmn_metrics_resume(const dmn_call_t *c, bool from_disk)
{
    rcd_resume_src_t src = c->fetched_shared ? RCD_RESUME_REDIS
                           : from_disk       ? RCD_RESUME_DISK
                                             : RCD_RESUME_HOST_CACHE;
    uint64_t now = uv_hrtime();
    rcd_metrics_resume(src, now > c->start_ns ? now - c->start_ns : 0);
}

void dmn_metrics_turn_end(dmn_mturn_t *m, int rc, bool finished, int finish_reason,
                          int32_t prompt_tokens, uint64_t t_start, uint64_t t_first, uint64_t t_end)
{
    if (!m->begun) return;
    m->begun = false;
    int o = !finished            ? OUT_CANCELLED
            : rc                 ? OUT_ERROR
            : finish_reason == 1 ? OUT_LENGTH
            : finish_reason == 3 ? OUT_EOS
            : finish_reason == 4 ? OUT_CONTEXT
                                 : OUT_STOP;
    rcd_counter_add(&g_m.finished[m->tenant][o], 1);
    if (prompt_tokens > 0) rcd_counter_add(&g_m.prompt_tokens[m->tenant], (uint64_t)prompt_tokens);
    if (!finished || rc || !t_end) return;
    /* latencies of the turns that succeeded */
    uint64_t t0 = m->t_submit, ts = t_start ? t_start : t0, tf = t_first ? t_first : ts;
    rcd_hist_observe(&g_m.e2e, t_end - t0);
    rcd_hist_observe(&g_m.queue, ts - t0);
    rcd_hist_observe(&g_m.prefill, tf - ts);
    rcd_hist_observe(&g_m.decode, t_end - tf);
    rcd_hist_observe(&g_m.prompt_len, (uint64_t)(prompt_tokens > 0 ? prompt_tokens : 0));
    rcd_hist_observe(&g_m.gen_len, m->n_tokens);
}

void dmn_metrics_rpc(int method, int status_rc)
{
    int mi = method >= 0 && method < DMN_M__COUNT ? method : DMN_M_UNKNOWN;
    int code = status_rc ? rcd_grpc_status(status_rc) : 0;
    if (code < 0 || code > 16) code = 2; /* UNKNOWN */
    rcd_counter_add(&g_m.rpc[mi][code], 1);
}

/* ---- process ------------------------------------------------------------------------------ */

typedef struct proc_stats {
    double rss, vsize, cpu_s, start_s;
    long fds, max_fds;
    bool ok;
} proc_stats_t;

static void proc_read(proc_stats_t *p)
{
    memset(p, 0, sizeof(*p));
    long page = sysconf(_SC_PAGESIZE), hz = sysconf(_SC_CLK_TCK);
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* fields after the command name (which may hold spaces): state is field 3 */
    char *q = strrchr(buf, ')');
    unsigned long utime = 0, stime = 0, vsize = 0;
    unsigned long long start = 0;
    long rss = 0;
    if (!q || sscanf(q + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d "
                     "%*d %llu %lu %ld",
                     &utime, &stime, &start, &vsize, &rss) != 5)
        return;
    unsigned long long btime = 0;
    if ((f = fopen("/proc/stat", "re"))) {
        while (fgets(buf, sizeof(buf), f))
            if (sscanf(buf, "btime %llu", &btime) == 1) break;
        fclose(f);
    }
    p->rss = (double)rss * (double)page;
    p->vsize = (double)vsize;
    p->cpu_s = (double)(utime + stime) / (double)hz;
    p->start_s = (double)btime + (double)start / (double)hz;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') p->fds++;
        closedir(d);
        p->fds--; /* the directory stream's own */
    }
    struct rlimit rl;
    p->max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (long)rl.rlim_cur : -1;
    p->ok = true;
}

/* ---- exposition --------------------------------------------------------------------------- */

static void family_u(rcd_mw_t *w, const char *name, rcd_mtype_t t, const char *unit,
                     const char *help, uint64_t v)
{
    rcd_mw_family(w, name, t, unit, help);
    rcd_mw_uint(w, NULL, 0, v);
}

static void family_h(rcd_mw_t *w, const char *name, const char *unit, const char *help,
                     const rcd_hist_t *h)
{
    rcd_mw_family(w, name, RCD_MT_HISTOGRAM, unit, help);
    rcd_mw_hist(w, NULL, 0, h);
}

/* A per-tenant counter family: one series (no tenant label) without API keys. */
static void family_tenants(rcd_mw_t *w, bool keys, const char *name, const char *help,
                           const rcd_counter_t *v)
{
    rcd_mw_family(w, name, RCD_MT_COUNTER, NULL, help);
    if (!keys) {
        rcd_mw_uint(w, NULL, 0, rcd_counter_get(&v[0]));
        return;
    }
    for (int i = 0; i <= DMN_MT_TENANTS; i++) {
        if (i == DMN_MT_OTHER ? !g_m.other_used : i >= g_m.n_tenants) continue;
        rcd_label_t l = {"tenant", i == DMN_MT_OTHER ? "other" : g_m.tenants[i]};
        rcd_mw_uint(w, &l, 1, rcd_counter_get(&v[i]));
    }
}

static void render_requests(rcd_mw_t *w, dmn_server_t *s)
{
    bool keys = s && s->keys;
    rcd_mw_family(w, "recurd_requests_finished", RCD_MT_COUNTER, NULL,
                  "Generate turns ended, by outcome: the finish reason of a turn that succeeded "
                  "(stop, length, eos, context), error (failed or refused), cancelled (the client "
                  "went away first).");
    for (int i = 0; i <= DMN_MT_TENANTS; i++) {
        if (keys ? (i == DMN_MT_OTHER ? !g_m.other_used : i >= g_m.n_tenants) : i > 0) continue;
        for (int o = 0; o < OUT__COUNT; o++) {
            rcd_label_t l[2] = {{"outcome", out_name[o]},
                                {"tenant", i == DMN_MT_OTHER ? "other" : g_m.tenants[i]}};
            rcd_mw_uint(w, l, keys ? 2 : 1, rcd_counter_get(&g_m.finished[i][o]));
        }
    }
    family_tenants(w, keys, "recurd_prompt_tokens",
                   "Prompt tokens of the Generate turns the engine started (those from a prefix "
                   "snapshot included), counted when the turn ends.",
                   g_m.prompt_tokens);
    family_tenants(w, keys, "recurd_generation_tokens", "Tokens sampled by Generate turns.",
                   g_m.gen_tokens);
    family_h(w, "recurd_time_to_first_token_seconds", "seconds",
             "Generate turns: arrival to the first sampled token.", &g_m.ttft);
    family_h(w, "recurd_inter_token_latency_seconds", "seconds",
             "Generate turns: time between two consecutive sampled tokens.", &g_m.itl);
    family_h(w, "recurd_e2e_request_latency_seconds", "seconds",
             "Generate turns that succeeded: arrival to the end (the commit included).", &g_m.e2e);
    family_h(w, "recurd_request_queue_time_seconds", "seconds",
             "Generate turns that succeeded: arrival to the engine's first step.", &g_m.queue);
    family_h(w, "recurd_request_prefill_time_seconds", "seconds",
             "Generate turns that succeeded: first step to the first token.", &g_m.prefill);
    family_h(w, "recurd_request_decode_time_seconds", "seconds",
             "Generate turns that succeeded: first token to the end.", &g_m.decode);
    family_h(w, "recurd_request_prompt_tokens", NULL,
             "Generate turns that succeeded: prompt tokens per turn.", &g_m.prompt_len);
    family_h(w, "recurd_request_generation_tokens", NULL,
             "Generate turns that succeeded: tokens sampled per turn.", &g_m.gen_len);
    rcd_mw_family(w, "recurd_rpc_requests", RCD_MT_COUNTER, NULL,
                  "gRPC calls answered, by method and status code.");
    for (int m = 0; m <= DMN_M__COUNT; m++)
        for (int code = 0; code < 17; code++) {
            uint64_t v = rcd_counter_get(&g_m.rpc[m][code]);
            if (!v) continue;
            rcd_label_t l[2] = {{"method", method_name[m]}, {"code", grpc_code_name[code]}};
            rcd_mw_uint(w, l, 2, v);
        }
}

static void render_engine(rcd_mw_t *w, dmn_server_t *s)
{
    eng_runner_stats_t st;
    memset(&st, 0, sizeof(st));
    if (s && s->runner) eng_runner_stats(s->runner, &st);
    family_u(w, "recurd_requests_running", RCD_MT_GAUGE, NULL,
             "Sequences holding a worker slot (the scheduler's running set).",
             (uint64_t)st.sched.running);
    family_u(w, "recurd_requests_waiting", RCD_MT_GAUGE, NULL,
             "Sequences waiting for a slot (not yet started).", (uint64_t)st.sched.waiting);
    family_u(w, "recurd_requests_swapped", RCD_MT_GAUGE, NULL,
             "Sequences preempted: their state swapped out to host memory.",
             (uint64_t)st.sched.swapped);
    family_u(w, "recurd_preemptions", RCD_MT_COUNTER, NULL,
             "Sequences preempted (state swapped out to make room).", st.sched.preemptions);
    family_u(w, "recurd_engine_steps", RCD_MT_COUNTER, NULL, "Model steps run on the device.",
             st.steps_run);
    family_h(w, "recurd_step_batch_size", NULL, "Sequences per planned step.",
             &rcd_metrics.step_batch_size);
    family_h(w, "recurd_step_token_budget_ratio", NULL,
             "Tokens per planned step over the step's token budget (0..1).",
             &rcd_metrics.step_budget_use);
    int64_t total = st.kv_total_blocks > 0 ? st.kv_total_blocks : 0;
    int64_t free_b = st.kv_free_blocks > 0 && st.kv_free_blocks <= total ? st.kv_free_blocks : 0;
    family_u(w, "recurd_kv_blocks_used", RCD_MT_GAUGE, NULL,
             "KV-cache blocks in use (models with attention layers; 0 otherwise).",
             (uint64_t)(total - free_b));
    family_u(w, "recurd_kv_blocks_free", RCD_MT_GAUGE, NULL, "KV-cache blocks free.",
             (uint64_t)free_b);
    family_u(w, "recurd_cpu_threads_active", RCD_MT_GAUGE, NULL,
             "CPU pool threads running the steps (fewer than --threads while other processes "
             "hold the CPUs, with --adapt-threads).",
             (uint64_t)(st.threads_active > 0 ? st.threads_active : 0));
    family_u(w, "recurd_cpu_thread_changes", RCD_MT_COUNTER, NULL,
             "Times --adapt-threads changed the CPU pool threads running the steps.",
             st.thread_changes);
    family_u(w, "recurd_spec_decode_draft_tokens", RCD_MT_COUNTER, NULL,
             "Speculative decoding: draft tokens verified.",
             rcd_counter_get(&rcd_metrics.spec_draft_tokens));
    family_u(w, "recurd_spec_decode_accepted_tokens", RCD_MT_COUNTER, NULL,
             "Speculative decoding: draft tokens accepted (sampled without a step of their own).",
             rcd_counter_get(&rcd_metrics.spec_accepted_tokens));
    family_u(w, "recurd_spec_decode_pauses", RCD_MT_COUNTER, NULL,
             "Speculative decoding: pauses of the gain check (--spec-adaptive), each after "
             "speculating steps measured fewer tokens per second than plain ones.",
             st.spec_pauses);
    family_u(w, "recurd_spec_decode_paused_steps", RCD_MT_COUNTER, NULL,
             "Speculative decoding: steps run plainly while the gain check paused speculation.",
             st.spec_paused_steps);
}

static void render_store(rcd_mw_t *w, dmn_server_t *s)
{
    store_stats_t st;
    memset(&st, 0, sizeof(st));
    if (s && s->store) store_get_stats(s->store, &st);
    family_u(w, "recurd_store_sessions", RCD_MT_GAUGE, NULL, "Sessions in the store.",
             (uint64_t)st.sessions);
    family_u(w, "recurd_store_cache_bytes", RCD_MT_GAUGE, "bytes",
             "Bytes of session states in the store's host cache.", (uint64_t)st.cache_bytes);
    uint64_t n_total = 0, state_total = 0;
    if (s && s->store) store_total_usage(s->store, &n_total, &state_total);
    family_u(w, "recurd_store_state_bytes", RCD_MT_GAUGE, "bytes",
             "Bytes of committed session state the store holds (each session's latest "
             "checkpoint payload; on disk, or in memory with --ephemeral).",
             state_total);
    family_u(w, "recurd_store_commits", RCD_MT_COUNTER, NULL, "Session checkpoints committed.",
             st.commits);
    family_u(w, "recurd_session_expiries", RCD_MT_COUNTER, NULL, "Sessions removed by idle expiry.",
             st.expired);
    family_u(w, "recurd_redis_errors", RCD_MT_COUNTER, NULL,
             "Shared-tier (Redis) operations that failed.", st.redis_errors);
    rcd_mw_family(w, "recurd_session_resumes", RCD_MT_COUNTER, NULL,
                  "Session turns whose committed state was made ready, by where it came from.");
    for (int i = 0; i < RCD_RESUME__COUNT; i++) {
        rcd_label_t l = {"source", rcd_resume_src_name[i]};
        rcd_mw_uint(w, &l, 1, rcd_hist_count(&rcd_metrics.resume_ns[i]));
    }
    rcd_mw_family(w, "recurd_session_resume_seconds", RCD_MT_HISTOGRAM, "seconds",
                  "Session turns: the call's arrival to its committed state in memory, by "
                  "source.");
    for (int i = 0; i < RCD_RESUME__COUNT; i++) {
        rcd_label_t l = {"source", rcd_resume_src_name[i]};
        rcd_mw_hist(w, &l, 1, &rcd_metrics.resume_ns[i]);
    }
    family_h(w, "recurd_checkpoint_commit_seconds", "seconds",
             "A turn's checkpoint commit: handed to the store to durable.", &rcd_metrics.commit_ns);
    family_h(w, "recurd_group_commit_size", NULL,
             "Checkpoints made durable by one group flush (group commit; disk stores).",
             &rcd_metrics.group_commit_size);
    store_prefix_stats_t ps;
    memset(&ps, 0, sizeof(ps));
    if (s && s->prefix) store_prefix_get_stats(s->prefix, &ps);
    family_u(w, "recurd_prefix_cache_lookups", RCD_MT_COUNTER, NULL,
             "Prompt-prefix snapshot lookups.", ps.hits + ps.misses);
    family_u(w, "recurd_prefix_cache_hits", RCD_MT_COUNTER, NULL,
             "Prompt-prefix snapshot lookups that found a snapshot.", ps.hits);
    family_u(w, "recurd_prefix_cache_hit_tokens", RCD_MT_COUNTER, NULL,
             "Prompt tokens served from prefix snapshots (not prefilled).", ps.hit_tokens);
    family_u(w, "recurd_prefix_cache_bytes", RCD_MT_GAUGE, "bytes",
             "Bytes held by the prefix-snapshot cache.", (uint64_t)ps.bytes);
}

static void render_process(rcd_mw_t *w)
{
    proc_stats_t p;
    proc_read(&p);
    if (!p.ok) return;
    rcd_mw_family(w, "process_resident_memory_bytes", RCD_MT_GAUGE, "bytes",
                  "Resident memory size in bytes.");
    rcd_mw_double(w, NULL, 0, p.rss);
    rcd_mw_family(w, "process_virtual_memory_bytes", RCD_MT_GAUGE, "bytes",
                  "Virtual memory size in bytes.");
    rcd_mw_double(w, NULL, 0, p.vsize);
    rcd_mw_family(w, "process_cpu_seconds", RCD_MT_COUNTER, "seconds",
                  "Total user and system CPU time spent in seconds.");
    rcd_mw_double(w, NULL, 0, p.cpu_s);
    rcd_mw_family(w, "process_start_time_seconds", RCD_MT_GAUGE, "seconds",
                  "Start time of the process since unix epoch in seconds.");
    rcd_mw_double(w, NULL, 0, p.start_s);
    family_u(w, "process_open_fds", RCD_MT_GAUGE, NULL, "Number of open file descriptors.",
             (uint64_t)(p.fds > 0 ? p.fds : 0));
    rcd_mw_family(w, "process_max_fds", RCD_MT_GAUGE, NULL,
                  "Maximum number of open file descriptors.");
    rcd_mw_double(w, NULL, 0, (double)p.max_fds);
}

int dmn_metrics_render(struct dmn_server *s, bool openmetrics, char **out, size_t *len)
{
    rcd_mw_t w;
    rcd_mw_init(&w, openmetrics);
    const char *model = s ? s->model_id : "";
    rcd_label_t common = {"model", model};
    rcd_mw_family(&w, "recurd_build", RCD_MT_INFO, NULL,
                  "recurd's version and the model it serves (always 1).");
    rcd_label_t bi[3] = {{"version", RCD_VERSION},
                         {"model", model},
                         {"backend", s && s->backend ? wrk_backend_name(s->backend) : ""}};
    rcd_mw_uint(&w, bi, 3, 1);
    rcd_mw_common(&w, &common, 1);
    render_requests(&w, s);
    render_engine(&w, s);
    render_store(&w, s);
    rcd_mw_common(&w, NULL, 0);
    render_process(&w);
    return rcd_mw_finish(&w, out, len);
}
