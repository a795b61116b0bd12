/* bench: rcd_loadgen, an open-loop gRPC load generator for recurd (issue #6, "Benchmark").
 *
 * Requests arrive as a Poisson process at each offered rate (requests/s), bounded by a count
 * and a time per rate; at most --max-inflight are on the wire, later arrivals wait on the
 * client and their TTFT counts from the scheduled arrival (open loop: the wait is latency).
 * Rate 0 means "all at once": a closed loop of --max-inflight concurrent streams. Prompts are
 * random token ids (exact lengths); generation is greedy with ignore_eos, so every request
 * produces exactly its drawn output length. A one-request-at-a-time baseline of the same
 * workload runs first, in the same process, against the same daemon; --idle-short N also
 * measures short requests (prompt 16-128, 16 tokens out) one at a time: their idle TTFT.
 *
 * Workloads: chat   prompts uniform 16-128, outputs uniform 128-256
 *            mixed  prompts log-uniform 16-2048 (~43% <= 128, ~14% >= 1024), outputs 16-256
 * A "short" request is one whose prompt is <= 128 tokens; its TTFT is reported apart.
 * --short-rate R adds, at each rate > 0, a second Poisson stream of short requests (prompt
 * 16-128, 16 tokens out) at R/s: their TTFT while the workload's long prompts keep arriving.
 *
 * Output: one line per phase (baseline, idle-short, each rate) and each rate's throughput as a
 * multiple of the baseline's. Times in ms. */
#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rcd_client.h"
#include "recurd/v1/inference.pb-c.h"

#define SHORT_MAX 128

typedef struct opts {
    const char *addr, *workload, *rates;
    int max_inflight, max_requests, baseline, idle_short, vocab;
    double duration_s, out_scale, short_rate;
    uint64_t seed;
} opts_t;

typedef struct req req_t;
typedef struct tag {
    req_t *r;
    int kind; /* 0 start, 1 message, 2 status */
} tag_t;

struct req {
    rcd_call_t c;
    tag_t tags[3];
    int pending; /* batches outstanding */
    int32_t *prompt;
    int n_prompt, max_out, n_out;
    double t_arrive, t_first, t_last; /* seconds, monotonic */
    bool done;
};

typedef struct sample {
    double ttft, tpot; /* ms; tpot < 0 if < 2 tokens */
    int n_prompt, n_out;
    bool ok;
} sample_t;

static grpc_channel *g_ch;
static grpc_completion_queue *g_cq;
static uint64_t g_rng;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rnd(void) /* splitmix64 */
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rnd01(void)
{
    return (double)(rnd() >> 11) * (1.0 / 9007199254740992.0);
}
static int rnd_int(int lo, int hi)
{
    return lo + (int)(rnd() % (uint64_t)(hi - lo + 1));
}

static void draw(const char *workload, int *n_prompt, int *n_out)
{
    if (!strcmp(workload, "chat")) {
        *n_prompt = rnd_int(16, 128);
        *n_out = rnd_int(128, 256);
    } else if (!strcmp(workload, "short")) {
        *n_prompt = rnd_int(16, SHORT_MAX);
        *n_out = 16;
    } else { /* mixed: log-uniform prompt lengths */
        *n_prompt = (int)floor(16.0 * pow(2048.0 / 16.0, rnd01()) + 0.5);
        if (*n_prompt > 2048) *n_prompt = 2048;
        *n_out = rnd_int(16, 256);
    }
}

static double g_out_scale = 1.0; /* --out-scale: shrinks outputs on slow machines */

static req_t *req_new(const opts_t *o, const char *workload, double t_arrive)
{
    req_t *r = calloc(1, sizeof(*r));
    if (!r) abort();
    draw(workload, &r->n_prompt, &r->max_out);
    r->max_out = (int)(r->max_out * g_out_scale + 0.5);
    if (r->max_out < 2) r->max_out = 2;
    r->prompt = malloc(sizeof(int32_t) * (size_t)r->n_prompt);
    if (!r->prompt) abort();
    for (int i = 0; i < r->n_prompt; i++)
        r->prompt[i] = (int32_t)(rnd() % (uint64_t)o->vocab);
    r->t_arrive = t_arrive;
    for (int k = 0; k < 3; k++)
        r->tags[k] = (tag_t){r, k};
    return r;
}

static void req_free(req_t *r)
{
    rcd_call_release(&r->c);
    free(r->prompt);
    free(r);
}

static void recv_next(req_t *r)
{
    if (rcd_call_recv(&r->c, &r->tags[1])) r->pending++;
}

static void req_send(req_t *r)
{
    Recurd__V1__GenerateRequest req = RECURD__V1__GENERATE_REQUEST__INIT;
    Recurd__V1__SamplingParams sp = RECURD__V1__SAMPLING_PARAMS__INIT;
    Recurd__V1__TokenIds tk = RECURD__V1__TOKEN_IDS__INIT;
    tk.n_ids = (size_t)r->n_prompt;
    tk.ids = r->prompt;
    req.prompt_case = RECURD__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    req.tokens = &tk;
    req.sampling = &sp;
    sp._temperature_case = RECURD__V1__SAMPLING_PARAMS___TEMPERATURE_TEMPERATURE;
    sp.temperature = 0;
    sp.max_tokens = (uint32_t)r->max_out;
    sp.ignore_eos = 1;
    r->pending += rcd_call_start(&r->c, g_ch, g_cq, "/recurd.v1.Inference/Generate", &req.base,
                                 rcd_client_deadline_ms(600 * 1000), &r->tags[0], &r->tags[2]);
    recv_next(r);
}

/* Handles one completion; returns the request when it is complete (all batches back). */
static req_t *on_event(grpc_event ev)
{
    tag_t *t = ev.tag;
    req_t *r = t->r;
    r->pending--;
    if (t->kind == 1 && ev.success && r->c.recv) {
        double now = now_s();
        Recurd__V1__GenerateResponse *m = (Recurd__V1__GenerateResponse *)rcd_call_take(
            &r->c, &recurd__v1__generate_response__descriptor);
        if (m) {
            if (m->n_token_ids) {
                if (!r->n_out) r->t_first = now;
                r->n_out += (int)m->n_token_ids;
                r->t_last = now;
            }
            recurd__v1__generate_response__free_unpacked(m, NULL);
        }
        recv_next(r);
    }
    return r->pending == 0 ? r : NULL;
}

static sample_t req_sample(const req_t *r)
{
    sample_t s = {.n_prompt = r->n_prompt, .n_out = r->n_out, .ttft = -1, .tpot = -1};
    s.ok = r->c.status == GRPC_STATUS_OK && r->n_out == r->max_out;
    if (r->n_out > 0) s.ttft = (r->t_first - r->t_arrive) * 1e3;
    if (r->n_out > 1) s.tpot = (r->t_last - r->t_first) * 1e3 / (r->n_out - 1);
    if (r->c.status != GRPC_STATUS_OK) {
        char *d = grpc_slice_to_c_string(r->c.details);
        fprintf(stderr, "rcd_loadgen: request failed: status %d: %s\n", (int)r->c.status, d);
        gpr_free(d);
    }
    return s;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* p-th percentile (nearest rank) of the v[i] >= 0; -1 if none. */
static double pct(const double *v, int n, double p)
{
    double *w = malloc(sizeof(double) * (size_t)(n + 1));
    if (!w) abort();
    int m = 0;
    for (int i = 0; i < n; i++)
        if (v[i] >= 0) w[m++] = v[i];
    double r = -1;
    if (m) {
        qsort(w, (size_t)m, sizeof(double), cmp_d);
        int k = (int)ceil(p / 100.0 * m) - 1;
        r = w[k < 0 ? 0 : k >= m ? m - 1 : k];
    }
    free(w);
    return r;
}

typedef struct phase {
    char name[32];
    double rate, wall_s, tok_s, ttft50, ttft99, tpot50, tpot99, sttft50, sttft99;
    int n, ok, max_inflight, n_short;
} phase_t;

static void summarize(phase_t *ph, sample_t *s, int n, double wall)
{
    double *a = malloc(sizeof(double) * (size_t)(n + 1)),
           *b = malloc(sizeof(double) * (size_t)(n + 1)),
           *c = malloc(sizeof(double) * (size_t)(n + 1));
    if (!a || !b || !c) abort();
    long tok = 0;
    int ns = 0;
    ph->n = n;
    ph->ok = 0;
    for (int i = 0; i < n; i++) {
        ph->ok += s[i].ok;
        tok += s[i].n_out;
        a[i] = s[i].ttft;
        b[i] = s[i].tpot;
        if (s[i].n_prompt <= SHORT_MAX) c[ns++] = s[i].ttft;
    }
    ph->n_short = ns;
    ph->wall_s = wall;
    ph->tok_s = wall > 0 ? (double)tok / wall : 0;
    ph->ttft50 = pct(a, n, 50);
    ph->ttft99 = pct(a, n, 99);
    ph->tpot50 = pct(b, n, 50);
    ph->tpot99 = pct(b, n, 99);
    ph->sttft50 = pct(c, ns, 50);
    ph->sttft99 = pct(c, ns, 99);
    free(a);
    free(b);
    free(c);
}

static void print_phase(const phase_t *p, double base_tok_s)
{
    printf("%-10s %7.2f %5d %5d %6d %9.1f %6.2fx %9.1f %9.1f %8.2f %8.2f %6d %9.1f %9.1f\n",
           p->name, p->rate, p->n, p->ok, p->max_inflight, p->tok_s,
           base_tok_s > 0 ? p->tok_s / base_tok_s : 0, p->ttft50, p->ttft99, p->tpot50, p->tpot99,
           p->n_short, p->sttft50, p->sttft99);
    fflush(stdout);
}

/* One phase: rate > 0 Poisson arrivals, rate == 0 all at once, rate < 0 one at a time. */
static void run_phase(const opts_t *o, const char *workload, double rate, int max_n, double dur,
                      int max_inflight, phase_t *ph)
{
    sample_t *smp = calloc(2 * (size_t)max_n + 1, sizeof(sample_t));
    req_t **waiting = calloc(2 * (size_t)max_n + 1, sizeof(req_t *));
    if (!smp || !waiting) abort();
    int n_arrived = 0, n_main = 0, n_short = 0, n_done = 0, inflight = 0, w_head = 0, w_tail = 0;
    double t0 = now_s(), next = t0, t_end = t0 + dur, t_last_done = t0;
    /* --short-rate: a second Poisson stream of short requests next to the workload's */
    double srate = rate > 0 ? o->short_rate : 0;
    double snext = srate > 0 ? t0 - log(1.0 - rnd01()) / srate : 0;
    ph->max_inflight = 0;
    if (rate < 0) max_inflight = 1;
    for (;;) {
        double now = now_s();
        /* arrivals due */
        while (n_main < max_n && now < t_end && next <= now && (rate >= 0 || n_arrived == n_done)) {
            waiting[w_tail++] = req_new(o, workload, rate < 0 ? now : next);
            n_arrived++;
            n_main++;
            if (rate > 0) next += -log(1.0 - rnd01()) / rate;
        }
        while (srate > 0 && n_short < max_n && now < t_end && snext <= now) {
            waiting[w_tail++] = req_new(o, "short", snext);
            n_arrived++;
            n_short++;
            snext += -log(1.0 - rnd01()) / srate;
        }
        while (w_head < w_tail && inflight < max_inflight) {
            if (rate <= 0) waiting[w_head]->t_arrive = now_s(); /* closed loop: from the send */
            req_send(waiting[w_head++]);
            inflight++;
            if (inflight > ph->max_inflight) ph->max_inflight = inflight;
        }
        bool more_main = n_main < max_n && now < t_end;
        bool more_short = srate > 0 && n_short < max_n && now < t_end;
        bool more_arrivals = more_main || more_short;
        if (!more_arrivals && n_done == n_arrived) break;
        double wait = 1.0;
        if (more_main && rate > 0) wait = next - now;
        if (more_short && snext - now < wait) wait = snext - now;
        if (more_arrivals && rate <= 0 && inflight == 0) wait = 0;
        if (wait < 0) wait = 0;
        grpc_event ev = grpc_completion_queue_next(
            g_cq,
            gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                         gpr_time_from_micros((int64_t)(wait * 1e6), GPR_TIMESPAN)),
            NULL);
        if (ev.type != GRPC_OP_COMPLETE) continue;
        req_t *r = on_event(ev);
        if (r) {
            smp[n_done++] = req_sample(r);
            t_last_done = now_s();
            inflight--;
            req_free(r);
        }
    }
    summarize(ph, smp, n_done, t_last_done - t0);
    ph->rate = rate;
    free(smp);
    free(waiting);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: rcd_loadgen [--addr HOST:PORT] [--workload chat|mixed] [--rates R1,R2,...]\n"
            "                   [--duration S] [--max-requests N] [--max-inflight N]\n"
            "                   [--baseline N] [--idle-short N] [--vocab V] [--seed N]\n"
            "                   [--out-scale F]  (output lengths x F, at least 2)\n"
            "                   [--short-rate R] (with each rate > 0, also short requests at R/s)\n"
            "rates in requests/s; 0 = all at once (max-inflight concurrent streams)\n");
}

int main(int argc, char **argv)
{
    opts_t o = {.addr = "127.0.0.1:50051",
                .workload = "chat",
                .rates = "0.5,1,2,0",
                .max_inflight = 32,
                .max_requests = 64,
                .baseline = 3,
                .idle_short = 0,
                .vocab = 50000,
                .duration_s = 30,
                .out_scale = 1,
                .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--addr") && more)
            o.addr = argv[++i];
        else if (!strcmp(a, "--workload") && more)
            o.workload = argv[++i];
        else if (!strcmp(a, "--rates") && more)
            o.rates = argv[++i];
        else if (!strcmp(a, "--duration") && more)
            o.duration_s = atof(argv[++i]);
        else if (!strcmp(a, "--max-requests") && more)
            o.max_requests = atoi(argv[++i]);
        else if (!strcmp(a, "--max-inflight") && more)
            o.max_inflight = atoi(argv[++i]);
        else if (!strcmp(a, "--baseline") && more)
            o.baseline = atoi(argv[++i]);
        else if (!strcmp(a, "--idle-short") && more)
            o.idle_short = atoi(argv[++i]);
        else if (!strcmp(a, "--vocab") && more)
            o.vocab = atoi(argv[++i]);
        else if (!strcmp(a, "--seed") && more)
            o.seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--out-scale") && more)
            o.out_scale = atof(argv[++i]);
        else if (!strcmp(a, "--short-rate") && more)
            o.short_rate = atof(argv[++i]);
        else {
            usage();
            return 2;
        }
    }
    if (strcmp(o.workload, "chat") && strcmp(o.workload, "mixed")) {
        usage();
        return 2;
    }
    if (o.max_inflight < 1 || o.max_requests < 1 || o.vocab < 1 || o.duration_s <= 0 ||
        o.out_scale <= 0 || o.short_rate < 0) {
        usage();
        return 2;
    }
    g_rng = o.seed;
    g_out_scale = o.out_scale;
    grpc_init();
    g_ch = rcd_client_channel(o.addr);
    g_cq = grpc_completion_queue_create_for_next(NULL);

    printf("# workload %s, outputs x %.2f, max in flight %d, per rate <= %d requests / %.0f s; "
           "times in ms; short = prompt <= %d tokens\n",
           o.workload, o.out_scale, o.max_inflight, o.max_requests, o.duration_s, SHORT_MAX);
    printf("%-10s %7s %5s %5s %6s %9s %7s %9s %9s %8s %8s %6s %9s %9s\n", "phase", "rate", "n",
           "ok", "maxinf", "out_tok/s", "x_base", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99",
           "nshort", "sttft_p50", "sttft_p99");
    int bad = 0;
    phase_t base = {0};
    snprintf(base.name, sizeof(base.name), "baseline");
    if (o.baseline > 0) {
        run_phase(&o, o.workload, -1, o.baseline, 1e9, 1, &base);
        print_phase(&base, base.tok_s);
        bad |= base.ok != base.n;
    }
    if (o.idle_short > 0) {
        phase_t p = {0};
        snprintf(p.name, sizeof(p.name), "idle-short");
        run_phase(&o, "short", -1, o.idle_short, 1e9, 1, &p);
        print_phase(&p, 0);
        bad |= p.ok != p.n;
    }
    char *rates = strdup(o.rates), *save = NULL;
    for (char *t = strtok_r(rates, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        phase_t p = {0};
        double rate = atof(t);
        snprintf(p.name, sizeof(p.name), rate > 0 ? "poisson" : "saturate");
        run_phase(&o, o.workload, rate, o.max_requests, o.duration_s, o.max_inflight, &p);
        print_phase(&p, base.tok_s);
        bad |= p.ok != p.n;
    }
    free(rates);
    rcd_client_close(g_ch, g_cq, false);
    grpc_shutdown();
    return bad ? 1 : 0;
}
