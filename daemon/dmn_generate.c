/* daemon: the Generate turn — validation, the session read, one runner sequence, sampling
 * and stop conditions, the token/text stream (one SEND_MESSAGE in flight, deltas coalesced
 * while one is), and the commit of the session on success only. */
#include "daemon/dmn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_metrics.h"
#include "daemon/dmn_quota.h"
#include "daemon/dmn_sample.h"
#include "engine/eng_runner.h"
#include "recurd/v1/inference.pb-c.h"
#include "statestore/prefix.h"


typedef struct dmn_gen {
    dmn_call_t *call;
    eng_seq_t seq;
    dmn_sampler_t smp;
    tok_stream_t *ts;
    int32_t *prompt;
    int32_t n_prompt;
    void *init_state, *state_out;
    size_t init_len, state_cap; /* bytes (variable for models with a KV cache) */
    size_t ext_cap;             /* of state_cap: the sections' (history, draft state) */
    float *logits;
    char sid[STORE_SID_MAX + 1]; /* the store id (tenant-scoped with API keys) */
    bool has_session, in_runner, finished, freed;
    bool loading, committing; /* a store callback is outstanding: g must stay */
    uint64_t base_version, new_version, sess_tokens;
    bool from_store; /* init_state is the session's committed state (else a prefix's or none) */
    /* prefix snapshots: `cached` prompt tokens came from the cache (init_state, init_len bytes);
     * the state after snap_abs[j] prompt tokens is captured into snaps[j] (snap_cap[j] bytes:
     * a KV model's holds snap_abs[j] positions) and cached at the first logits */
    int32_t cached, n_snaps;
    int32_t snap_abs[ENG_SEQ_SNAPS];
    void *snaps[ENG_SEQ_SNAPS];
    size_t snap_cap[ENG_SEQ_SNAPS];
    /* limits and stops */
    uint32_t max_tokens, ctx_left;
    char **stops;
    size_t n_stops, max_stop;
    int32_t *stop_ids;
    size_t n_stop_ids;
    bool ignore_eos;
    int n_lp;
    /* output */
    int32_t *gen;
    float *lp, *top_lp;
    int32_t *top_ids;
    uint32_t n_gen, sent_tok;
    char *text;
    size_t text_len, text_cap, emitted;
    int finish_reason, final_rc;
    char final_msg[256];
    uint64_t t_submit, t_start, t_first, t_end;
    dmn_quota_hold_t quota; /* the turn's hold on its tenant's quotas, until it ends */
    dmn_mturn_t mt;         /* its metrics (dmn_metrics.h) */
} dmn_gen_t;

static void gen_pump(dmn_gen_t *g);

/* The quotas' clock: monotonic milliseconds. */
static int64_t mono_ms(void)
{
    return (int64_t)(uv_hrtime() / 1000000);
}

const char *dmn_tenant_of(const dmn_call_t *c, const char *requested, const char *owner)
{
    if (c->srv->keys) return c->tenant; /* API keys: the key's tenant (an admin's x-recurd-tenant) */
    if (requested && requested[0]) return requested;
    return owner ? owner : "";
}

void dmn_tenant_usage(const dmn_call_t *c, const char *owner, uint64_t *sessions, uint64_t *bytes)
{
    if (c->srv->keys)
        store_scope_usage(c->srv->store, c->tenant, sessions, bytes);
    else
        store_owner_usage(c->srv->store, owner ? owner : "", sessions, bytes);
}

int dmn_quota_refuse(dmn_call_t *c, const char *tenant, const dmn_quota_refusal_t *why, char *err,
                     size_t errlen)
{
    dmn_call_retry_after(c, why->retry_after_ms);
    char who[96];
    if (tenant[0])
        snprintf(who, sizeof(who), "tenant '%.64s%s'", tenant, strlen(tenant) > 64 ? "..." : "");
    else
        snprintf(who, sizeof(who), "the anonymous tenant");
    dmn_log(DMN_INFO, "quota_refused", c->rid, NULL, "%s: %s %ld, retry after %lld ms", who,
            why->quota, why->limit, (long long)why->retry_after_ms);
    return rcd_fail(RCD_ETOOBIG, err, errlen,
                    "quota exceeded: %s is at its limit %s %ld; retry after %lld ms", who,
                    why->quota, why->limit, (long long)why->retry_after_ms);
}

bool dmn_session_busy(dmn_server_t *s, const char *sid)
{
    for (dmn_call_t *c = s->calls; c; c = c->next) {
        dmn_gen_t *g = c->method == DMN_M_GENERATE ? c->ext : NULL;
        /* A cancelled turn can no longer commit: it does not hold the session. Nor does one
         * that has finished (committed, or failed) and is out of the runner: its final
         * message may already be with the client, who may send the next turn before the
         * send completes and the turn is freed. */
        if (!g || !g->has_session || g->freed || c->cancelled || strcmp(g->sid, sid)) continue;
        if (g->finished && !g->committing && !g->loading && !g->in_runner) continue;
        return true;
    }
    return false;
}

void dmn_generate_cancel_all(dmn_server_t *s, int rc)
{
    for (dmn_call_t *c = s->calls; c; c = c->next)
        if (c->method == DMN_M_GENERATE && c->ext && c->sink)
            c->sink->cancel(c, rc, "server shutting down");
        else if (c->method == DMN_M_GENERATE && c->ext)
            grpc_call_cancel_with_status(c->call, (grpc_status_code)rcd_grpc_status(rc),
                                         "server shutting down", NULL);
}

static void gen_free(dmn_gen_t *g)
{
    dmn_call_t *c = g->call;
    dmn_server_t *s = c->srv;
    g->freed = true;
    dmn_metrics_turn_end(&g->mt, g->final_rc, g->finished, g->finish_reason,
                         g->t_start ? g->n_prompt : 0, g->t_start, g->t_first, g->t_end);
    dmn_quota_turn_end(s->quota, &g->quota, mono_ms());
    dmn_sampler_free(&g->smp);
    tok_stream_free(g->ts);
    free(g->prompt);
    free(g->init_state);
    free(g->state_out);
    free(g->logits);
    for (int32_t j = 0; j < g->n_snaps; j++)
        free(g->snaps[j]);
    for (size_t i = 0; i < g->n_stops; i++)
        free(g->stops[i]);
    free(g->stops);
    free(g->stop_ids);
    free(g->gen);
    free(g->lp);
    free(g->top_lp);
    free(g->top_ids);
    free(g->text);
    free(g);
    c->ext = NULL;
    c->on_close = NULL;
    c->on_send_done = NULL;
    s->n_turns--;
    dmn_call_release(c);
    dmn_server_turn_done(s);
}

static void gen_maybe_free(dmn_gen_t *g)
{
    dmn_call_t *c = g->call;
    if (g->in_runner || g->loading || g->committing || c->send_busy) return;
    if (c->status_sent || (c->closed && c->cancelled)) gen_free(g);
}

/* Ends generation: the final message and status go out as soon as the stream is free. */
static void gen_complete(dmn_gen_t *g, int rc, const char *msg)
{
    if (g->finished) return;
    g->finished = true;
    g->final_rc = rc;
    /* The turn no longer counts once its outcome is known: the client may send the next one
     * as soon as it reads the final message. */
    dmn_quota_turn_end(g->call->srv->quota, &g->quota, mono_ms());
    snprintf(g->final_msg, sizeof(g->final_msg), "%s", msg ? msg : "");
    g->t_end = uv_hrtime();
    /* Counted before the final message goes out, so a scrape after it sees the turn (gen_free
     * counts the turns that end without it: a second call does nothing). */
    dmn_metrics_turn_end(&g->mt, g->final_rc, g->finished, g->finish_reason,
                         g->t_start ? g->n_prompt : 0, g->t_start, g->t_first, g->t_end);
    const char *fr[] = {"unspecified", "length", "stop", "eos", "context"};
    if (rc)
        dmn_log(DMN_INFO, "turn_failed", g->call->rid, g->sid, "%s: %s", rcd_errname(rc),
                g->final_msg);
    else
        dmn_log(DMN_INFO, "turn_done", g->call->rid, g->sid,
                "prompt %d tokens, %u generated, finish %s, version %llu, %.1f ms, "
                "priority %d, preemptions %d",
                g->n_prompt, g->n_gen, fr[g->finish_reason % 5], (unsigned long long)g->new_version,
                (double)(g->t_end - g->t_submit) / 1e6, g->seq.priority, g->seq.n_preemptions);
    gen_pump(g);
}

static int text_append(dmn_gen_t *g, const char *p, size_t n)
{
    if (g->text_len + n + 1 > g->text_cap) {
        size_t cap = (g->text_len + n + 1) * 2;
        char *t = realloc(g->text, cap);
        if (!t) return RCD_ENOMEM;
        g->text = t;
        g->text_cap = cap;
    }
    memcpy(g->text + g->text_len, p, n);
    g->text_len += n;
    g->text[g->text_len] = 0;
    return 0;
}

/* Truncates at the earliest stop string found in the text from `from`; true if found. */
static bool find_stop(dmn_gen_t *g, size_t from)
{
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < g->n_stops; i++) {
        const char *hit =
            memmem(g->text + from, g->text_len - from, g->stops[i], strlen(g->stops[i]));
        if (hit && (size_t)(hit - g->text) < best) best = (size_t)(hit - g->text);
    }
    if (best == SIZE_MAX) return false;
    g->text_len = best;
    g->text[best] = 0;
    if (g->emitted > best) g->emitted = best;
    return true;
}

/* Bytes that may be streamed now: text that could still begin a stop string is held back. */
static size_t sendable(const dmn_gen_t *g)
{
    if (g->finished || g->max_stop <= 1) return g->text_len;
    size_t hold = g->max_stop - 1;
    size_t n = g->text_len > hold ? g->text_len - hold : 0;
    while (n > g->emitted && n < g->text_len && ((unsigned char)g->text[n] & 0xC0) == 0x80)
        n--;
    return n < g->emitted ? g->emitted : n;
}

static void gen_pump(dmn_gen_t *g)
{
    dmn_call_t *c = g->call;
    if (c->send_busy || c->status_sent || (c->closed && c->cancelled)) return;
    size_t upto = sendable(g);
    bool have = upto > g->emitted || g->n_gen > g->sent_tok;
    if (!have && !g->finished) return;
    if (g->finished && g->final_rc && !have) {
        dmn_call_send(c, NULL, true, g->final_rc, g->final_msg);
        return;
    }
    Recurd__V1__GenerateResponse r = RECURD__V1__GENERATE_RESPONSE__INIT;
    Recurd__V1__Usage u = RECURD__V1__USAGE__INIT;
    uint32_t nt = g->n_gen - g->sent_tok;
    Recurd__V1__TokenLogprob *tl = NULL, **tlp = NULL;
    Recurd__V1__TopLogprob *tops = NULL, **topp = NULL;
    char *chunk = malloc(upto - g->emitted + 1);
    if (!chunk) goto oom;
    if (upto > g->emitted) /* g->text is NULL until the first text */
        memcpy(chunk, g->text + g->emitted, upto - g->emitted);
    chunk[upto - g->emitted] = 0;
    r.text = chunk;
    r.n_token_ids = nt;
    r.token_ids = g->gen + g->sent_tok;
    if (g->n_lp >= 0 && nt) {
        size_t nl = (size_t)(g->n_lp > 0 ? g->n_lp : 0);
        tl = calloc(nt, sizeof(*tl));
        tlp = calloc(nt, sizeof(*tlp));
        tops = calloc(nt * nl + 1, sizeof(*tops));
        topp = calloc(nt * nl + 1, sizeof(*topp));
        if (!tl || !tlp || !tops || !topp) goto oom;
        for (uint32_t i = 0; i < nt; i++) {
            uint32_t k = g->sent_tok + i;
            recurd__v1__token_logprob__init(&tl[i]);
            tl[i].token_id = g->gen[k];
            tl[i].logprob = g->lp[k];
            tl[i].n_top = nl;
            tl[i].top = topp + i * nl;
            for (size_t j = 0; j < nl; j++) {
                Recurd__V1__TopLogprob *t = &tops[i * nl + j];
                recurd__v1__top_logprob__init(t);
                t->token_id = g->top_ids[k * nl + j];
                t->logprob = g->top_lp[k * nl + j];
                topp[i * nl + j] = t;
            }
            tlp[i] = &tl[i];
        }
        r.n_logprobs = nt;
        r.logprobs = tlp;
    }
    bool final = g->finished;
    if (final && !g->final_rc) {
        r.finish_reason = (Recurd__V1__FinishReason)g->finish_reason;
        u.prompt_tokens = (uint32_t)g->n_prompt;
        u.completion_tokens = g->n_gen;
        uint64_t t0 = g->t_submit, ts = g->t_start ? g->t_start : t0,
                 tf = g->t_first ? g->t_first : ts;
        u.queue_ms = (double)(ts - t0) / 1e6;
        u.prefill_ms = (double)(tf - ts) / 1e6;
        u.decode_ms = (double)(g->t_end - tf) / 1e6;
        u.total_ms = (double)(g->t_end - t0) / 1e6;
        u.preemptions = (uint32_t)g->seq.n_preemptions;
        u.cached_prompt_tokens = (uint32_t)g->cached;
        u.draft_tokens = g->seq.spec_drafted;
        u.accepted_tokens = g->seq.spec_accepted;
        r.usage = &u;
        r.session_version = g->new_version;
        r.session_id = g->has_session ? (char *)store_unscope_id(g->sid) : "";
        r.request_id = c->rid;
    }
    c->reply_text_len = upto - g->emitted; /* the chunk may hold NUL bytes */
    c->has_reply_text = true;
    /* A failed turn sends the text it had, then the error status. */
    if (dmn_call_send(c, &r.base, final, g->final_rc, g->final_msg) == 0) {
        g->emitted = upto;
        g->sent_tok = g->n_gen;
    }
    free(chunk);
    free(tl);
    free(tlp);
    free(tops);
    free(topp);
    return;
oom:
    free(chunk);
    free(tl);
    free(tlp);
    free(tops);
    free(topp);
    if (!g->finished) {
        g->finished = true;
        g->final_rc = RCD_ENOMEM;
    }
    dmn_call_send(c, NULL, true, RCD_ENOMEM, "out of memory");
}

/* ---- runner events ---------------------------------------------------------------------- */

static void gen_end(dmn_gen_t *g, int reason, int32_t last)
{
    g->finish_reason = reason;
    const char *d;
    size_t dl;
    if (g->ts && tok_stream_flush(g->ts, &d, &dl, NULL, 0) == 0 && dl) {
        size_t from = g->text_len;
        text_append(g, d, dl);
        if (g->n_stops) find_stop(g, from > g->max_stop ? from - g->max_stop : 0);
    }
    dmn_server_t *s = g->call->srv;
    if (eng_runner_finish(s->runner, &g->seq, last)) return; /* ENG_SEQ_DONE commits */
    g->in_runner = false;
    gen_complete(g, 0, NULL);
}

/* The prefix snapshots the runner took (all before the first logits) go into the cache. */
static void gen_prefix_keep(dmn_gen_t *g)
{
    dmn_server_t *s = g->call->srv;
    for (int32_t j = 0; j < g->n_snaps; j++) {
        /* A state of another length than the cache expects (a bug) is never cached. */
        if (j < g->seq.n_snapped && s->prefix &&
            g->seq.snap_len[j] == store_prefix_state_len(s->prefix, g->snap_abs[j])) {
            store_prefix_insert_own_ns(s->prefix, dmn_prefix_ns(g->call), g->prompt,
                                       g->snap_abs[j], g->snaps[j]);
        } else {
            if (j < g->seq.n_snapped)
                dmn_log(DMN_WARN, "prefix_cache", g->call->rid, g->sid,
                        "snapshot at %d tokens is %zu bytes, expected %zu: not cached",
                        g->snap_abs[j], g->seq.snap_len[j],
                        s->prefix ? store_prefix_state_len(s->prefix, g->snap_abs[j]) : 0);
            free(g->snaps[j]);
        }
        g->snaps[j] = NULL;
    }
    g->n_snaps = 0;
    g->seq.n_snaps = 0;
}

static void on_logits(dmn_gen_t *g)
{
    dmn_call_t *c = g->call;
    dmn_server_t *s = c->srv;
    if (!g->t_first) {
        g->t_first = uv_hrtime();
        gen_prefix_keep(g);
    }
    if (c->deadline_ns && uv_hrtime() > c->deadline_ns) {
        if (eng_runner_cancel(s->runner, &g->seq) == 0) g->in_runner = false;
        gen_complete(g, RCD_EDEADLINE, "deadline exceeded during generation");
        return;
    }
    /* a verify row checking a draft model's token: the speculative rule (engine/README.md) */
    int32_t t = g->seq.spec_q && g->seq.spec_draft >= 0
                    ? dmn_sample_spec(&g->smp, g->logits, g->seq.spec_draft, g->seq.spec_q)
                    : dmn_sample(&g->smp, g->logits);
    dmn_sampler_accept(&g->smp, t);
    dmn_quota_turn_tokens(s->quota, &g->quota, mono_ms(), 1);
    dmn_metrics_token(&g->mt);
    uint32_t k = g->n_gen++;
    g->gen[k] = t;
    if (g->n_lp >= 0)
        g->lp[k] = dmn_logprobs(&g->smp, g->logits, t, g->n_lp, g->top_ids + (size_t)k * g->n_lp,
                                g->top_lp + (size_t)k * g->n_lp);
    const char *d;
    size_t dl;
    bool stop_text = false;
    if (g->ts && tok_stream_push(g->ts, t, &d, &dl, NULL, 0) == 0 && dl) {
        size_t from = g->text_len;
        if (text_append(g, d, dl) == 0 && g->n_stops)
            stop_text = find_stop(g, from > g->max_stop ? from - g->max_stop : 0);
    }
    bool stop_id = false;
    for (size_t i = 0; i < g->n_stop_ids; i++)
        stop_id |= g->stop_ids[i] == t;
    if (stop_text || stop_id)
        gen_end(g, RECURD__V1__FINISH_REASON__FINISH_REASON_STOP, t);
    else if (!g->ignore_eos && t == s->eos_id)
        gen_end(g, RECURD__V1__FINISH_REASON__FINISH_REASON_EOS, t);
    else if (g->n_gen >= g->ctx_left && g->ctx_left < g->max_tokens)
        gen_end(g, RECURD__V1__FINISH_REASON__FINISH_REASON_CONTEXT, t);
    else if (g->n_gen >= g->max_tokens)
        gen_end(g, RECURD__V1__FINISH_REASON__FINISH_REASON_LENGTH, t);
    else
        eng_runner_feed(s->runner, &g->seq, t);
    gen_pump(g);
}

static void on_committed(void *user, int rc, uint64_t version, const char *msg)
{
    dmn_gen_t *g = user;
    char why[600];
    g->committing = false;
    dmn_metrics_commit_done(&g->mt);
    g->new_version = version;
    if (rc == RCD_ENOTFOUND)
        gen_complete(g, rc, "session was deleted during the turn");
    else if (rc == RCD_EMISMATCH || rc == RCD_EBUSY)
        gen_complete(g, rc, "session changed during the turn");
    else if (rc) {
        snprintf(why, sizeof(why), "session commit failed: %s", msg[0] ? msg : rcd_strerror(rc));
        gen_complete(g, rc, why);
    } else
        gen_complete(g, 0, NULL);
    gen_maybe_free(g); /* the client may have gone while the checkpoint was written */
}

static void on_seq(eng_seq_t *seq, eng_seq_ev_t ev)
{
    dmn_gen_t *g = seq->user;
    dmn_server_t *s = g->call->srv;
    switch (ev) {
    case ENG_SEQ_STARTED:
        g->t_start = uv_hrtime();
        dmn_quota_turn_started(s->quota, &g->quota);
        break;
    case ENG_SEQ_LOGITS:
        on_logits(g);
        break;
    case ENG_SEQ_DONE: {
        /* The turn is acknowledged (final message) only once its checkpoint is durable. */
        g->in_runner = false;
        uint64_t add = (uint64_t)g->n_prompt + g->n_gen;
        void *state = g->state_out;
        g->state_out = NULL; /* the store owns it now */
        int rc = store_commit_n(s->store, g->sid, g->base_version, state, seq->state_len, add,
                                dmn_now_ms(), on_committed, g);
        dmn_metrics_commit_start(&g->mt);
        if (rc)
            on_committed(g, rc, 0, "");
        else
            g->committing = true;
        break;
    }
    case ENG_SEQ_FAILED:
        g->in_runner = false;
        if (seq->rc == RCD_ECANCELLED)
            gen_maybe_free(g);
        else /* refused (deadline passed while queued or preempted) or a failed step */
            gen_complete(g, seq->rc, seq->msg[0] ? seq->msg : "model step failed");
        break;
    }
}

/* ---- call events ------------------------------------------------------------------------ */

static void on_close(dmn_call_t *c)
{
    dmn_gen_t *g = c->ext;
    if (c->cancelled && g->in_runner && eng_runner_cancel(c->srv->runner, &g->seq) == 0)
        g->in_runner = false;
    if (c->cancelled) dmn_quota_turn_end(c->srv->quota, &g->quota, mono_ms());
    if (c->cancelled && !g->finished)
        dmn_log(DMN_INFO, "turn_cancelled", c->rid, g->sid,
                "client cancelled or deadline passed "
                "after %u tokens",
                g->n_gen);
    gen_maybe_free(g);
}

static void on_send_done(dmn_call_t *c, bool ok)
{
    dmn_gen_t *g = c->ext;
    if (!ok && g->in_runner && eng_runner_cancel(c->srv->runner, &g->seq) == 0)
        g->in_runner = false;
    if (ok) gen_pump(g);
    gen_maybe_free(g);
}

/* ---- request validation ----------------------------------------------------------------- */

/* The turn's sampling from params dmn_validate_sampling accepted. */
static int check_sampling(dmn_server_t *s, const Recurd__V1__SamplingParams *p, dmn_gen_t *g,
                          dmn_sampling_t *out, char *err, size_t errlen)
{
    dmn_sampling_t d = {.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    g->max_tokens = (uint32_t)s->opts->default_max_tokens;
    g->n_lp = -1;
    if (!p) {
        d.seed = (uint64_t)uv_hrtime() ^ (uint64_t)(uintptr_t)g;
        *out = d;
        return 0;
    }
    if (p->_temperature_case == RECURD__V1__SAMPLING_PARAMS___TEMPERATURE_TEMPERATURE)
        d.temperature = p->temperature;
    d.top_k = p->top_k;
    d.top_p = p->top_p > 0.0f ? p->top_p : 1.0f;
    d.min_p = p->min_p;
    d.repetition_penalty = p->repetition_penalty > 0.0f ? p->repetition_penalty : 1.0f;
    d.presence_penalty = p->presence_penalty;
    d.frequency_penalty = p->frequency_penalty;
    d.seed = p->_seed_case == RECURD__V1__SAMPLING_PARAMS___SEED_SEED
                 ? p->seed
                 : (uint64_t)uv_hrtime() ^ (uint64_t)(uintptr_t)g;
    if (p->max_tokens) g->max_tokens = p->max_tokens;
    if (p->speculate != RECURD__V1__SPECULATE__SPECULATE_SERVER &&
        p->speculate != RECURD__V1__SPECULATE__SPECULATE_OFF)
        return rcd_fail(RCD_EINVAL, err, errlen, "sampling.speculate %d is not a Speculate value",
                        (int)p->speculate);
    g->n_lp = p->logprobs ? (int)p->logprobs : -1;
    g->stops = calloc(p->n_stop + 1, sizeof(char *));
    if (!g->stops) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    for (size_t i = 0; i < p->n_stop; i++) {
        size_t n = strlen(p->stop[i]);
        if (!(g->stops[g->n_stops++] = strdup(p->stop[i])))
            return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        if (n > g->max_stop) g->max_stop = n;
    }
    if (p->n_stop_token_ids) {
        g->stop_ids = malloc(p->n_stop_token_ids * sizeof(int32_t));
        if (!g->stop_ids) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        memcpy(g->stop_ids, p->stop_token_ids, p->n_stop_token_ids * sizeof(int32_t));
        g->n_stop_ids = p->n_stop_token_ids;
    }
    g->ignore_eos = p->ignore_eos;
    *out = d;
    return 0;
}

/* FNV-1a: the scheduler only needs tenants told apart. */
static uint64_t tenant_hash(const char *t)
{
    uint64_t h = 1469598103934665603ull;
    for (; t && *t; t++)
        h = (h ^ (unsigned char)*t) * 1099511628211ull;
    return h;
}

static void gen_loaded(void *user, int rc, uint64_t version, const char *msg);

/* Prefix snapshots of a prompt: the longest cached prefix (a multiple of the granularity G,
 * at most n_prompt - 1 tokens: the last token is fed for its logits) becomes the initial state
 * (for a KV model, with its positions' KV: the turn's KV reservation covers all n_prompt);
 * the boundaries past it taken are G * 2^i and the last multiple of G before the end, at most
 * ENG_SEQ_SNAPS of them (the longest), skipping those already cached and, longest first,
 * those the cache could not keep beside the longer ones (KV states grow with k). */
static int gen_prefix_plan(dmn_gen_t *g)
{
    dmn_server_t *s = g->call->srv;
    int32_t gran = store_prefix_granularity(s->prefix), last = g->n_prompt - 1;
    if (last < gran) return 0;
    void *st = NULL;
    size_t len = 0;
    const char *ns = dmn_prefix_ns(g->call); /* snapshots are per tenant unless shared */
    int32_t h = store_prefix_lookup_dup_ns(s->prefix, ns, g->prompt, last, &st, &len);
    if (h > 0) {
        g->init_state = st;
        g->init_len = len;
        g->cached = h;
    } else {
        h = 0; /* a miss, or no memory for the copy: a full prefill */
    }
    int32_t cand[64], nc = 0;
    for (int64_t k = gran; k <= last && nc < 62; k *= 2)
        cand[nc++] = (int32_t)k;
    int32_t top = last / gran * gran;
    if (cand[nc - 1] != top) cand[nc++] = top;
    int32_t keep[64], nk = 0;
    for (int32_t i = 0; i < nc; i++)
        if (cand[i] > h && !store_prefix_has_ns(s->prefix, ns, g->prompt, cand[i]))
            keep[nk++] = cand[i];
    store_prefix_stats_t ps;
    store_prefix_get_stats(s->prefix, &ps);
    size_t total = 0;
    int32_t from = nk;
    while (from > 0 && nk - from < ENG_SEQ_SNAPS) {
        size_t eb = store_prefix_entry_bytes(s->prefix, keep[from - 1]);
        if (eb > ps.budget || total + eb > ps.budget) break;
        total += eb;
        from--;
    }
    for (int32_t i = from; i < nk; i++) { /* ascending, as the runner takes them */
        size_t n = store_prefix_state_len(s->prefix, keep[i]);
        if (!(g->snaps[g->n_snaps] = malloc(n))) return RCD_ENOMEM;
        g->snap_cap[g->n_snaps] = n;
        g->snap_abs[g->n_snaps++] = keep[i];
    }
    return 0;
}

/* The turn's quotas (dmn_quota.h): counted from here until it ends. A session turn may grow
 * its owner's stored state from cur_len to the state after the turn (state_cap: its bound
 * for a KV model, else state_bytes). */
static int gen_quota_admit(dmn_gen_t *g, const char *tenant, const char *owner, uint64_t cur_len,
                           char *err, size_t errlen)
{
    dmn_server_t *s = g->call->srv;
    if (!dmn_quota_enabled(s->quota)) return 0;
    uint64_t n_sess = 0, stored = 0, grow = 0;
    if (g->has_session && dmn_quota_limits(s->quota)->max_state_bytes) {
        /* the model state after the turn: its bound, without the sections (the history) */
        uint64_t next = g->state_cap ? g->state_cap - g->ext_cap : store_state_bytes(s->store);
        grow = next > cur_len ? next - cur_len : 0;
        dmn_tenant_usage(g->call, owner, &n_sess, &stored);
    }
    dmn_quota_refusal_t why;
    int rc = dmn_quota_turn_admit(s->quota, tenant, mono_ms(), g->n_prompt, stored, grow, &g->quota,
                                  &why);
    if (rc == RCD_ETOOBIG) return dmn_quota_refuse(g->call, tenant, &why, err, errlen);
    if (rc) return rcd_fail(rc, err, errlen, "out of memory");
    return 0;
}

static int gen_prepare(dmn_gen_t *g, const Recurd__V1__GenerateRequest *req, char *err,
                       size_t errlen)
{
    dmn_server_t *s = g->call->srv;
    int rc;
    dmn_sampling_t sp;
    char owner[STORE_OWNER_MAX + 1] = "";
    uint64_t cur_len = 0; /* the session's committed state bytes */
    dmn_limits_t lim;
    dmn_limits_get(s, &lim);
    if ((rc = dmn_validate_generate(req, g->call->text_len, &lim, err, errlen))) return rc;
    if ((rc = check_sampling(s, req->sampling, g, &sp, err, errlen))) return rc;
    g->seq.priority = (int32_t)req->priority;
    g->seq.no_speculate =
        req->sampling && req->sampling->speculate == RECURD__V1__SPECULATE__SPECULATE_OFF;
    if (s->keys && req->tenant[0] && strcmp(req->tenant, g->call->auth_tenant))
        /* with API keys the turn's tenant is the authenticated one (dmn_tenant_of) */
        return rcd_fail(RCD_EFORBIDDEN, err, errlen, "tenant '%s' is not the API key's tenant",
                        req->tenant);
    /* prompt */
    if (req->prompt_case == RECURD__V1__GENERATE_REQUEST__PROMPT_TEXT) {
        size_t tlen = g->call->text_len; /* not strlen: the text may hold NUL bytes */
        tok_ids_t ids = {0};
        rc = tok_encode(s->tok, req->text, tlen, req->add_special_tokens ? TOK_ADD_SPECIAL : 0,
                        &ids, err, errlen);
        if (rc) {
            tok_ids_free(&ids);
            return rc == RCD_EUTF8 || rc == RCD_EINVAL ? RCD_EINVAL : rc;
        }
        g->prompt = ids.v;
        g->n_prompt = (int32_t)ids.n;
        if (ids.n > (size_t)s->opts->max_prompt)
            return rcd_fail(RCD_ETOOBIG, err, errlen, "prompt is %zu tokens, over the limit %ld",
                            ids.n, s->opts->max_prompt);
    } else { /* tokens (dmn_validate_generate refused a missing prompt) */
        size_t n = req->tokens->n_ids;
        if (!(g->prompt = malloc(n * sizeof(int32_t))))
            return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        memcpy(g->prompt, req->tokens->ids, n * sizeof(int32_t));
        g->n_prompt = (int32_t)n;
    }
    if (g->n_prompt == 0) return rcd_fail(RCD_EINVAL, err, errlen, "prompt encodes to no tokens");
    /* session */
    size_t sb = store_state_bytes(s->store);
    if (req->session_id[0]) {
        if ((rc = dmn_scope(g->call, req->session_id, g->sid))) return rc;
        store_session_t ss = {0};
        if ((rc = store_get(s->store, g->sid, &ss)))
            return rcd_fail(rc, err, errlen, "session '%s' not found", req->session_id);
        store_session_clear(&ss);
        snprintf(owner, sizeof(owner), "%s", ss.owner);
        cur_len = ss.has_state ? (ss.state_len ? ss.state_len - ss.ext_len : sb) : 0;
        if (req->_expected_version_case ==
                RECURD__V1__GENERATE_REQUEST___EXPECTED_VERSION_EXPECTED_VERSION &&
            req->expected_version != ss.version)
            return rcd_fail(
                RCD_EMISMATCH, err, errlen, "session '%s' is at version %llu, expected %llu",
                req->session_id, (unsigned long long)ss.version,
                (unsigned long long)req->expected_version);
        if (dmn_session_busy(s, g->sid))
            return rcd_fail(RCD_EBUSY, err, errlen, "session '%s' already has a turn in progress",
                            req->session_id);
        g->base_version = ss.version;
        g->sess_tokens = ss.n_tokens;
        g->has_session = true;
        if (ss.has_state) { /* the committed state's size (variable with a KV cache) */
            g->init_len = ss.state_len ? (size_t)ss.state_len : sb;
            if (!(g->init_state = malloc(g->init_len)))
                return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
            g->from_store = true;
        }
    }
    uint64_t used = g->sess_tokens + (uint64_t)g->n_prompt;
    if (used >= (uint64_t)s->opts->max_context)
        return rcd_fail(RCD_ETOOBIG, err, errlen,
                        "session (%llu tokens) plus prompt (%d) reach the context limit %ld",
                        (unsigned long long)g->sess_tokens, g->n_prompt, s->opts->max_context);
    g->ctx_left = (uint32_t)((uint64_t)s->opts->max_context - used);
    /* the session's owner is its turns' tenant unless the request names one */
    const char *tenant = dmn_tenant_of(g->call, req->tenant, owner);
    g->seq.tenant = tenant_hash(tenant);
    /* A turn from the zero state (stateless, or a session's first) may start from a cached
     * prefix and captures the prefixes not cached yet. */
    if (s->prefix && !g->from_store && g->sess_tokens == 0 && (rc = gen_prefix_plan(g)))
        return rcd_fail(rc, err, errlen, "out of memory");
    if (g->has_session) {
        /* The state after the turn: every position of the session, prompt and generation
         * (state_bytes for fixed-size models). A KV model's prompt must also fit its pool. */
        uint64_t mn = g->max_tokens < g->ctx_left ? g->max_tokens : g->ctx_left;
        g->state_cap = eng_runner_state_bound(s->runner, used + mn + 1);
        g->ext_cap = eng_runner_ext_bound(s->runner, used + mn + 1);
        /* and the sections after it (the token history, a draft model's state) */
        if (g->state_cap != SIZE_MAX && g->ext_cap < SIZE_MAX - g->state_cap)
            g->state_cap += g->ext_cap;
        else
            g->state_cap = SIZE_MAX;
        if (g->state_cap == SIZE_MAX || !(g->state_out = malloc(g->state_cap ? g->state_cap : sb)))
            return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory for the session state");
    }
    {
        /* a KV model's turn must fit its pool whole (a step that runs out would fail others) */
        uint64_t mn = g->max_tokens < g->ctx_left ? g->max_tokens : g->ctx_left;
        if ((rc = eng_runner_check_positions(s->runner, used + mn, err, errlen))) return rc;
    }
    if ((rc = gen_quota_admit(g, tenant, owner, cur_len, err, errlen))) return rc;
    /* buffers */
    size_t mt = g->max_tokens, nl = g->n_lp > 0 ? (size_t)g->n_lp : 0;
    g->gen = malloc(mt * sizeof(int32_t));
    g->lp = malloc(mt * sizeof(float));
    g->top_ids = malloc(mt * nl * sizeof(int32_t) + 1);
    g->top_lp = malloc(mt * nl * sizeof(float) + 1);
    g->logits = malloc((size_t)s->vocab * sizeof(float));
    if (!g->gen || !g->lp || !g->top_ids || !g->top_lp || !g->logits)
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    if ((rc = dmn_sampler_init(&g->smp, &sp, s->vocab)))
        return rcd_fail(rc, err, errlen, "out of memory");
    /* --speculate draft: the draft model draws with the same processing, without penalties */
    g->seq.draft_sampling = (eng_draft_sampling_t){.temperature = sp.temperature,
                                                   .top_k = sp.top_k,
                                                   .top_p = sp.top_p,
                                                   .min_p = sp.min_p,
                                                   .seed = sp.seed};
    for (int32_t i = 0; i < g->n_prompt; i++)
        dmn_sampler_seen(&g->smp, g->prompt[i]);
    if (s->tok && (rc = tok_stream_new(s->tok, TOK_SKIP_SPECIAL, &g->ts, err, errlen)))
        return rc; /* no tokenizer: token ids only, no text deltas */
    /* Last, so that nothing fails with a load in flight: the state comes from the host cache
     * at once, or from disk on the pool (gen_loaded submits the turn then). */
    if (g->from_store) {
        rc = store_load(s->store, g->sid, g->init_state, NULL, gen_loaded, g, err, errlen);
        if (rc < 0) return rc;
        g->loading = rc == STORE_PENDING;
        if (!g->loading) dmn_metrics_resume(g->call, false);
    }
    return 0;
}

/* Hands the prepared turn to the runner. */
static int gen_submit(dmn_gen_t *g, char *err, size_t errlen)
{
    dmn_call_t *c = g->call;
    dmn_server_t *s = c->srv;
    int rc;
    g->seq.prompt = g->prompt + g->cached; /* a cached prefix is not fed again */
    g->seq.n_prompt = g->n_prompt - g->cached;
    g->seq.pre_fed = g->prompt; /* but it joins the session's history */
    g->seq.n_pre_fed = g->cached;
    g->seq.n_snaps = g->n_snaps;
    for (int32_t j = 0; j < g->n_snaps; j++) {
        g->seq.snap_at[j] = g->snap_abs[j] - g->cached;
        g->seq.snap_out[j] = g->snaps[j];
        g->seq.snap_cap[j] = g->snap_cap[j];
    }
    g->seq.max_new = (int32_t)(g->max_tokens < g->ctx_left ? g->max_tokens : g->ctx_left);
    g->seq.init_state = g->init_state;
    g->seq.init_len = g->init_len;
    g->seq.state_out = g->has_session ? g->state_out : NULL;
    g->seq.state_cap = g->state_cap;
    g->seq.kv_positions = g->sess_tokens + (uint64_t)g->n_prompt + (uint64_t)g->seq.max_new;
    g->seq.logits = g->logits;
    g->seq.deadline_ns = c->deadline_ns;
    g->seq.cb = on_seq;
    g->seq.user = g;
    rc = eng_runner_submit(s->runner, &g->seq, err, errlen);
    return rc;
}

/* The session's state arrived from disk (or did not): the turn starts or fails. */
static void gen_loaded(void *user, int rc, uint64_t version, const char *msg)
{
    dmn_gen_t *g = user;
    dmn_call_t *c = g->call;
    char err[700];
    g->loading = false;
    if (c->cancelled) {
        gen_maybe_free(g);
        return;
    }
    err[0] = 0;
    if (rc)
        snprintf(err, sizeof(err), "session '%s': %s", store_unscope_id(g->sid),
                 msg[0] ? msg : rcd_strerror(rc));
    else if (version != g->base_version)
        rc = rcd_fail(RCD_EMISMATCH, err, sizeof(err), "session changed while its state was read");
    else {
        dmn_metrics_resume(c, true);
        rc = gen_submit(g, err, sizeof(err));
    }
    if (rc) {
        gen_complete(g, rc, err[0] ? err : rcd_strerror(rc));
        return;
    }
    g->in_runner = true;
    dmn_log(DMN_DEBUG, "turn_start", c->rid, g->sid, "prompt %d tokens, state read from disk",
            g->n_prompt);
}

static void gen_begin(dmn_call_t *c, Recurd__V1__GenerateRequest *req);

/* The session was looked up in the shared tier (dmn_session_fetch): start the turn now. */
static void gen_fetched(dmn_call_t *c, ProtobufCMessage *req, int rc, const char *msg)
{
    if (rc && rc != RCD_ENOTFOUND) {
        dmn_call_fail(c, rc, "%s", msg);
        protobuf_c_message_free_unpacked(req, NULL);
        return;
    }
    gen_begin(c, (Recurd__V1__GenerateRequest *)req);
}

void dmn_generate_start(dmn_call_t *c, grpc_byte_buffer *payload)
{
    Recurd__V1__GenerateRequest *req = (Recurd__V1__GenerateRequest *)dmn_call_unpack(
        c, payload, &recurd__v1__generate_request__descriptor);
    if (!req) return;
    /* A session unknown here may be in the shared tier: fetch it first. */
    char sid[STORE_SID_MAX + 1];
    if (dmn_scope(c, req->session_id, sid)) sid[0] = 0; /* gen_prepare says what is wrong */
    if (dmn_session_fetch(c, sid, &req->base, gen_fetched)) return;
    gen_begin(c, req);
}

/* Takes ownership of req. */
static void gen_begin(dmn_call_t *c, Recurd__V1__GenerateRequest *req)
{
    dmn_server_t *s = c->srv;
    char err[300] = "";
    dmn_gen_t *g = calloc(1, sizeof(*g));
    if (!g) {
        dmn_call_fail(c, RCD_ENOMEM, "out of memory");
        goto cleanup;
    }
    g->call = c;
    g->t_submit = uv_hrtime();
    dmn_metrics_turn_begin(c, &g->mt);
    c->ext = g;
    s->n_turns++;
    int rc = gen_prepare(g, req, err, sizeof(err));
    if (!rc && g->loading) { /* the state comes from disk: gen_loaded submits the turn */
        c->on_close = on_close;
        c->on_send_done = on_send_done;
        dmn_call_watch_close(c);
        goto cleanup;
    }
    if (!rc) rc = gen_submit(g, err, sizeof(err));
    if (rc) {
        /* Keep the hold for dmn_call_fail (it releases the call), then drop the turn. */
        dmn_call_hold(c);
        dmn_call_fail(c, rc, "%s", err[0] ? err : rcd_strerror(rc));
        g->finished = true;
        g->final_rc = rc;
        gen_free(g);
        goto cleanup;
    }
    g->in_runner = true;
    c->on_close = on_close;
    c->on_send_done = on_send_done;
    dmn_call_watch_close(c);
    dmn_log(DMN_DEBUG, "turn_start", c->rid, g->sid,
            "prompt %d tokens (%d from a prefix snapshot, %d snapshots to take), max_tokens %u, "
            "priority %d",
            g->n_prompt, g->cached, g->n_snaps, g->max_tokens, g->seq.priority);
cleanup:
    protobuf_c_message_free_unpacked(&req->base, NULL);
}
