/* Unit test of the runner (scheduler + device thread) on the bundled model: sequences run
 * together (chunked prefill, batched decode, more sequences than slots, pipelined planning)
 * give the same greedy tokens as each run alone; a committed state continues the text; a
 * high-priority arrival preempts a running sequence, which resumes from host memory with the
 * same tokens and the same final state bit for bit; refusals come back with their codes. */
#include "engine/eng_draft_model.h"
#include "engine/eng_runner.h"
#include "statestore/ckpt_ext.h"
#include "tests/support/rcd_test.h"
#include "workers/backend_int.h" /* the vtable, to inject step failures */

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define N_SEQ 5
#define N_GEN 6
#define MAX_GEN 64

typedef struct t_seq t_seq_t;
struct t_seq {
    eng_seq_t seq;
    eng_runner_t *r;
    int32_t prompt[64];
    int32_t out[MAX_GEN];
    int n_out, n_gen, vocab, done_order, fail_rc;
    bool done, failed, forever, stop;
    void *state;
    /* fires once when n_out reaches at_out (submits `then` from inside the callback) */
    int at_out;
    /* cancels in the callback that samples token cancel_at (cancel_row: it checked a draft) */
    int cancel_at;
    bool cancel_row;
    t_seq_t *then;
};

static int g_order;

static void on_ev(eng_seq_t *s, eng_seq_ev_t ev)
{
    t_seq_t *t = s->user;
    if (ev == ENG_SEQ_DONE || ev == ENG_SEQ_FAILED) {
        t->done = true;
        t->failed = ev == ENG_SEQ_FAILED;
        t->fail_rc = s->rc;
        t->done_order = ++g_order;
        return;
    }
    if (ev != ENG_SEQ_LOGITS) return;
    int best = 0;
    for (int i = 1; i < t->vocab; i++)
        if (s->logits[i] > s->logits[best]) best = i;
    if (t->n_out < MAX_GEN) t->out[t->n_out] = best;
    t->n_out++;
    if (t->then && t->n_out == t->at_out) {
        char err[160];
        CHECK(eng_runner_submit(t->r, &t->then->seq, err, sizeof(err)) == 0);
    }
    if (t->cancel_at && t->n_out == t->cancel_at) {
        t->cancel_row = s->spec_draft >= 0;
        CHECK(eng_runner_cancel(t->r, s) == 0); /* sampling: the device does not hold it */
        t->done = true;
        t->done_order = ++g_order;
    } else if (t->stop) {
        CHECK(eng_runner_cancel(t->r, s) == 0); /* between steps nothing holds it */
        t->done = true;
        t->done_order = ++g_order;
    } else if (t->forever || t->n_out < t->n_gen) {
        eng_runner_feed(t->r, s, best);
    } else if (!eng_runner_finish(t->r, s, best)) {
        t->done = true;
        t->done_order = ++g_order;
    }
}

static void setup(t_seq_t *t, eng_runner_t *r, int k, int n_gen, int vocab, size_t state_bytes,
                  bool commit)
{
    memset(t, 0, sizeof(*t));
    t->r = r;
    t->vocab = vocab;
    t->n_gen = n_gen;
    int n = 3 + 7 * k; /* different lengths: several prefill chunks for the longer ones */
    for (int i = 0; i < n; i++)
        t->prompt[i] = (int32_t)((k * 131 + i * 17) % vocab);
    t->seq.prompt = t->prompt;
    t->seq.n_prompt = n;
    t->seq.max_new = n_gen;
    t->seq.logits = malloc(sizeof(float) * (size_t)vocab);
    t->seq.cb = on_ev;
    t->seq.user = t;
    t->state = calloc(1, state_bytes);
    if (commit) t->seq.state_out = t->state;
}

static void teardown(t_seq_t *t)
{
    free(t->seq.logits);
    free(t->state);
}

static void run(uv_loop_t *loop, eng_runner_t *r, t_seq_t *ts, int n)
{
    char err[160];
    for (int i = 0; i < n; i++)
        CHECK(eng_runner_submit(r, &ts[i].seq, err, sizeof(err)) == 0);
    uv_run(loop, UV_RUN_DEFAULT);
    for (int i = 0; i < n; i++)
        CHECK_MSG(ts[i].done && !ts[i].failed, "seq %d: done %d rc %d %s", i, ts[i].done,
                  ts[i].fail_rc, ts[i].seq.msg);
    CHECK(eng_runner_held(r) == 0);
}

typedef struct fixture {
    wrk_model_t *m;
    wrk_backend_t *be;
    const wrk_model_info_t *mi;
    uv_loop_t loop;
} fixture_t;

static bool fx_open_model(fixture_t *f, const char *model, int n_slots, int max_step_tokens)
{
    char err[256];
    memset(f, 0, sizeof(*f));
    if (wrk_model_load(model, &f->m, err, sizeof(err))) {
        fprintf(stderr, "model: %s\n", err);
        CHECK(0);
        return false;
    }
    f->mi = wrk_model_info(f->m);
    wrk_backend_opts_t bo = {.n_threads = 1,
                             .n_slots = n_slots,
                             .max_step_tokens = max_step_tokens,
                             .kv_block_tokens = 4,
                             .n_kv_blocks = 64};
    CHECK(wrk_cpu_backend_create(f->m, &bo, &f->be, err, sizeof(err)) == 0);
    uv_loop_init(&f->loop);
    return f->be != NULL;
}

static bool fx_open(fixture_t *f, int n_slots, int max_step_tokens)
{
    return fx_open_model(f, RCD_DEFAULT_MODEL, n_slots, max_step_tokens);
}

static void fx_close(fixture_t *f)
{
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the runner's wake-up handle is freed when it closes */
    CHECK(uv_loop_close(&f->loop) == 0);
    wrk_backend_destroy(f->be);
    wrk_model_free(f->m);
}

static bool state_close(const void *a, const void *b, size_t bytes)
{
    const float *x = a, *y = b;
    for (size_t i = 0; i < bytes / sizeof(float); i++)
        if (!(fabsf(x[i] - y[i]) <= 1e-4f * (1.0f + fabsf(y[i])))) {
            fprintf(stderr, "state differs at float %zu: %g vs %g\n", i, x[i], y[i]);
            return false;
        }
    return true;
}

static void test_batched_equals_alone(void)
{
    fixture_t f;
    if (!fx_open(&f, 3, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create(&f.loop, f.be, 16, &r) == 0);
    t_seq_t alone[N_SEQ], together[N_SEQ];
    for (int k = 0; k < N_SEQ; k++) {
        setup(&alone[k], r, k, N_GEN, V, SB, true);
        run(&f.loop, r, &alone[k], 1);
    }
    for (int k = 0; k < N_SEQ; k++)
        setup(&together[k], r, k, N_GEN, V, SB, k == 2);
    run(&f.loop, r, together, N_SEQ);
    for (int k = 0; k < N_SEQ; k++)
        CHECK_MSG(memcmp(alone[k].out, together[k].out, sizeof(int32_t) * N_GEN) == 0, "seq %d", k);
    /* The committed state continues the text: a run over prompt + outputs from zero and a run
     * from that state agree on what comes next. */
    t_seq_t again, cont;
    setup(&again, r, 2, N_GEN, V, SB, false);
    int n = again.seq.n_prompt;
    for (int i = 0; i < N_GEN; i++)
        again.prompt[n + i] = alone[2].out[i];
    again.seq.n_prompt = n + N_GEN;
    run(&f.loop, r, &again, 1);
    setup(&cont, r, 0, N_GEN, V, SB, false);
    cont.prompt[0] = again.out[0];
    cont.seq.n_prompt = 1;
    cont.seq.init_state = alone[2].state;
    run(&f.loop, r, &cont, 1);
    CHECK(memcmp(cont.out, again.out + 1, sizeof(int32_t) * (N_GEN - 1)) == 0);
    /* The state committed in a batch is the one committed alone (to rounding: batched
     * prefill chunks differ from the ones run alone). */
    CHECK(state_close(together[2].state, alone[2].state, SB));
    eng_runner_stats_t st;
    eng_runner_stats(r, &st);
    CHECK(st.planned_ahead > 0); /* plans were made while the device ran */
    CHECK(st.sched.completed == 2 * N_SEQ + 2);
    CHECK(st.sched.loads == 1 && st.loads == 1);
    CHECK(st.sched.preemptions == 0);
    for (int k = 0; k < N_SEQ; k++) {
        teardown(&alone[k]);
        teardown(&together[k]);
    }
    teardown(&again);
    teardown(&cont);
    eng_runner_destroy(r);
    fx_close(&f);
}

/* One slot: a long low-priority sequence is running when a high-priority one arrives. The low
 * one is swapped out to host memory, the high one runs to the end, the low one resumes: both
 * produce exactly what they produce alone, and the low one's committed state is identical. */
static wrk_backend_t *draft_open(const char *dir, int slots, wrk_model_t **dm);

/* spec: 0 off, 1 n-gram drafts, 2 the model as its own draft (its state swaps with the
 * target's: every draft is still accepted after the swap-in) */
static void preempt_case(bool pipelined, int spec)
{
    fixture_t f;
    if (!fx_open(&f, 1, 16)) return;
    wrk_model_t *dm = NULL;
    wrk_backend_t *dbe = spec == 2 ? draft_open(RCD_DEFAULT_MODEL, 1, &dm) : NULL;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_config_t c;
    eng_runner_config_default(&c, f.be, 8);
    c.min_run_steps = 2;
    c.max_inflight = pipelined ? 2 : 1;
    if (spec) { /* speculating: the swap-out follows a verify's rollback */
        c.spec_mode = spec == 2 ? ENG_SPEC_DRAFT : ENG_SPEC_NGRAM;
        c.spec_tokens = 4;
        c.spec_max_batch = 0;
        c.draft_be = dbe;
    }
    eng_runner_t *r = NULL;
    char err[160];
    CHECK(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0);
    t_seq_t low_alone, high_alone, low, high;
    setup(&low_alone, r, 3, 40, V, SB, true);
    low_alone.seq.no_speculate = true;
    run(&f.loop, r, &low_alone, 1);
    setup(&high_alone, r, 1, 8, V, SB, true);
    high_alone.seq.no_speculate = true;
    high_alone.seq.priority = 3;
    run(&f.loop, r, &high_alone, 1);

    setup(&low, r, 3, 40, V, SB, true);
    setup(&high, r, 1, 8, V, SB, true);
    high.seq.priority = 3;
    low.at_out = 5;
    low.then = &high;
    g_order = 0;
    run(&f.loop, r, &low, 1);
    CHECK(high.done && !high.failed);
    CHECK(low.seq.n_preemptions == 1);
    CHECK(high.seq.n_preemptions == 0);
    CHECK_MSG(high.done_order < low.done_order, "high %d, low %d", high.done_order, low.done_order);
    CHECK(memcmp(low.out, low_alone.out, sizeof(int32_t) * 40) == 0);
    CHECK(memcmp(high.out, high_alone.out, sizeof(int32_t) * 8) == 0);
    CHECK(memcmp(low.state, low_alone.state, SB) == 0);
    CHECK(memcmp(high.state, high_alone.state, SB) == 0);
    eng_runner_stats_t st;
    eng_runner_stats(r, &st);
    CHECK(st.swap_outs == 1 && st.swap_ins == 1 && st.sched.preemptions == 1);
    if (spec) CHECK_MSG(st.spec_verifies > 0, "no verify ran");
    if (spec == 2)
        CHECK_MSG(st.sched.spec_accepted == st.sched.spec_drafted, "%llu of %llu accepted",
                  (unsigned long long)st.sched.spec_accepted,
                  (unsigned long long)st.sched.spec_drafted);
    teardown(&low_alone);
    teardown(&high_alone);
    teardown(&low);
    teardown(&high);
    eng_runner_destroy(r);
    fx_close(&f);
    wrk_backend_destroy(dbe);
    wrk_model_free(dm);
}

static void test_preempt_resumes_exactly(void)
{
    preempt_case(true, 0);
    preempt_case(false, 0);
    preempt_case(true, 1);
    preempt_case(false, 1);
    preempt_case(true, 2);
    preempt_case(false, 2);
}

/* A commit buffer for a variable-size state of n positions. */
static void kv_commit_buf(t_seq_t *t, eng_runner_t *r, uint64_t n)
{
    free(t->state);
    t->seq.state_cap = eng_runner_state_bound(r, n);
    t->state = calloc(1, t->seq.state_cap);
    t->seq.state_out = t->state;
}

/* Granite 4.0-H (a KV cache: variable-size state). A committed state is state_bytes plus the
 * KV of every position; a preempted sequence's KV state goes to a host buffer sized for it and
 * back, with the same tokens and the same committed state bit for bit; the host buffer is
 * freed at swap-in; a committed state continues the text; a commit buffer too small for the
 * state fails the sequence cleanly. */
static void test_kv_model(void)
{
    fixture_t f;
    if (!fx_open_model(&f, "tests/golden/granite/mha_moe8", 1, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes, KV = f.mi->kv_bytes_per_token;
    CHECK(f.mi->n_kv_layers > 0 && KV > 0);
    eng_runner_config_t c;
    eng_runner_config_default(&c, f.be, 8);
    c.min_run_steps = 2;
    c.kv_blocks = 64; /* the fixture's pool */
    c.kv_block_tokens = 4;
    eng_runner_t *r = NULL;
    char err[160];
    CHECK(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0);
    eng_runner_stats_t st;
    eng_runner_stats(r, &st);
    CHECK(st.host_bytes == 0); /* KV models: host buffers are sized at swap-out */
    CHECK(eng_runner_state_bound(r, 10) == SB + 10 * KV);
    t_seq_t low_alone, high_alone, low, high;
    setup(&low_alone, r, 3, 40, V, SB, true);
    kv_commit_buf(&low_alone, r, 24 + 40);
    run(&f.loop, r, &low_alone, 1);
    const uint64_t n_low = (uint64_t)low_alone.seq.n_prompt + 40; /* the last token is fed */
    CHECK_MSG(low_alone.seq.state_len == SB + n_low * KV, "state_len %zu", low_alone.seq.state_len);
    setup(&high_alone, r, 1, 8, V, SB, true);
    kv_commit_buf(&high_alone, r, 10 + 8);
    high_alone.seq.priority = 3;
    run(&f.loop, r, &high_alone, 1);

    setup(&low, r, 3, 40, V, SB, true);
    kv_commit_buf(&low, r, 24 + 40);
    setup(&high, r, 1, 8, V, SB, true);
    kv_commit_buf(&high, r, 10 + 8);
    high.seq.priority = 3;
    low.at_out = 5;
    low.then = &high;
    run(&f.loop, r, &low, 1);
    CHECK(high.done && !high.failed);
    CHECK(low.seq.n_preemptions == 1);
    CHECK(memcmp(low.out, low_alone.out, sizeof(int32_t) * 40) == 0);
    CHECK(memcmp(high.out, high_alone.out, sizeof(int32_t) * 8) == 0);
    CHECK(low.seq.state_len == low_alone.seq.state_len);
    CHECK(memcmp(low.state, low_alone.state, low.seq.state_len) == 0);
    CHECK(high.seq.state_len == high_alone.seq.state_len);
    CHECK(memcmp(high.state, high_alone.state, high.seq.state_len) == 0);
    eng_runner_stats(r, &st);
    CHECK(st.swap_outs == 1 && st.swap_ins == 1);
    CHECK(st.host_bytes == 0); /* freed at swap-in */

    /* resume from the variable-size state: it continues the text */
    t_seq_t again, cont;
    setup(&again, r, 3, 6, V, SB, false);
    int n = again.seq.n_prompt;
    for (int i = 0; i < 40; i++)
        again.prompt[n + i] = low_alone.out[i];
    again.seq.n_prompt = n + 40;
    run(&f.loop, r, &again, 1);
    setup(&cont, r, 0, 5, V, SB, true);
    kv_commit_buf(&cont, r, n_low + 1 + 5);
    cont.prompt[0] = again.out[0];
    cont.seq.n_prompt = 1;
    cont.seq.init_state = low_alone.state;
    cont.seq.init_len = low_alone.seq.state_len;
    run(&f.loop, r, &cont, 1);
    CHECK(memcmp(cont.out, again.out + 1, sizeof(int32_t) * 5) == 0);
    CHECK(cont.seq.state_len == SB + (n_low + 1 + 5) * KV);

    /* admission by KV blocks: over the pool, or over what held turns left, is refused */
    t_seq_t big, b2;
    setup(&big, r, 1, 4, V, SB, false);
    big.seq.kv_positions = 257;
    CHECK(eng_runner_submit(r, &big.seq, err, sizeof(err)) == RCD_ETOOBIG);
    CHECK(eng_runner_check_positions(r, 257, err, sizeof(err)) == RCD_ETOOBIG &&
          strstr(err, "--kv-blocks"));
    big.seq.kv_positions = 200; /* 50 blocks */
    setup(&b2, r, 2, 4, V, SB, false);
    b2.seq.kv_positions = 60; /* 15 more: 65 > 64 */
    CHECK(eng_runner_submit(r, &big.seq, err, sizeof(err)) == 0);
    CHECK(eng_runner_submit(r, &b2.seq, err, sizeof(err)) == RCD_ETOOBIG && strstr(err, "busy"));
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK(big.done && !big.failed);
    run(&f.loop, r, &b2, 1); /* the blocks came back */
    teardown(&big);
    teardown(&b2);

    /* a commit buffer of state_bytes cannot hold a KV state: the sequence fails, nothing more */
    t_seq_t small;
    setup(&small, r, 1, 4, V, SB, true);
    CHECK(eng_runner_submit(r, &small.seq, err, sizeof(err)) == 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK(small.done && small.failed && small.fail_rc != 0);
    CHECK(eng_runner_held(r) == 0);
    teardown(&low_alone);
    teardown(&high_alone);
    teardown(&low);
    teardown(&high);
    teardown(&again);
    teardown(&cont);
    teardown(&small);
    eng_runner_destroy(r);
    fx_close(&f);
}

/* Refusals at submit (queue full, deadline already passed, bad priority), a deadline that
 * passes while queued (ENG_SEQ_FAILED with RCD_EDEADLINE), cancelling a queued sequence. */
static void test_refusals(void)
{
    fixture_t f;
    if (!fx_open(&f, 1, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create(&f.loop, f.be, 2, &r) == 0); /* 1 running + 1 waiting */
    char err[160] = "";
    t_seq_t a, b, c, d, e;
    setup(&a, r, 1, 1 << 20, V, SB, false);
    a.forever = true;
    setup(&b, r, 2, 4, V, SB, false);
    setup(&c, r, 3, 4, V, SB, false);
    setup(&d, r, 0, 4, V, SB, false);
    setup(&e, r, 0, 4, V, SB, false);
    CHECK(eng_runner_submit(r, &a.seq, err, sizeof(err)) == 0);
    CHECK(eng_runner_submit(r, &b.seq, err, sizeof(err)) == 0);
    CHECK(eng_runner_submit(r, &c.seq, err, sizeof(err)) == RCD_ETOOBIG);
    CHECK_MSG(strstr(err, "queue is full") != NULL, "%s", err);
    CHECK(eng_runner_cancel(r, &b.seq) == 0); /* queued: forgotten at once */
    d.seq.deadline_ns = uv_hrtime() - 1;
    CHECK(eng_runner_submit(r, &d.seq, err, sizeof(err)) == RCD_EDEADLINE);
    CHECK_MSG(strstr(err, "deadline") != NULL, "%s", err);
    d.seq.deadline_ns = 0;
    d.seq.priority = ENG_RUNNER_PRIORITIES;
    CHECK(eng_runner_submit(r, &d.seq, err, sizeof(err)) == RCD_EINVAL);
    CHECK(eng_runner_held(r) == 1);
    while (a.n_out < 1) /* a holds the slot */
        uv_run(&f.loop, UV_RUN_ONCE);
    /* e waits behind a (same priority, aging 5 s) until its deadline passes */
    e.seq.deadline_ns = uv_hrtime() + 50 * 1000000ull;
    CHECK(eng_runner_submit(r, &e.seq, err, sizeof(err)) == 0);
    while (!e.done)
        uv_run(&f.loop, UV_RUN_ONCE);
    CHECK(e.failed && e.fail_rc == RCD_EDEADLINE && e.n_out == 0);
    CHECK_MSG(strstr(e.seq.msg, "deadline") != NULL, "%s", e.seq.msg);
    CHECK(!a.done && a.n_out > 0);
    a.stop = true;
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK(a.done && !b.done && !c.done);
    CHECK(eng_runner_held(r) == 0);
    eng_runner_stats_t st;
    eng_runner_stats(r, &st);
    CHECK(st.sched.expired == 1 && st.sched.cancelled == 2 && st.sched.rejected == 3);
    teardown(&a);
    teardown(&b);
    teardown(&c);
    teardown(&d);
    teardown(&e);
    eng_runner_destroy(r);
    fx_close(&f);
}

/* A stop before max_new (STOP, pipelined: the entry planned past it is dropped and the commit
 * feed re-planned) commits the same state as reaching max_new at that token (TOKEN). */
static void test_stop_commits_like_length(void)
{
    fixture_t f;
    if (!fx_open(&f, 2, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create(&f.loop, f.be, 8, &r) == 0);
    t_seq_t by_len, by_stop, other;
    setup(&by_len, r, 2, 6, V, SB, true);
    run(&f.loop, r, &by_len, 1);
    setup(&by_stop, r, 2, 6, V, SB, true);
    by_stop.seq.max_new = 30; /* the callback stops at 6 */
    setup(&other, r, 4, 12, V, SB, false);
    t_seq_t both[2];
    both[0] = other; /* run() submits an array: copy, then fix the self-pointers */
    both[1] = by_stop;
    for (int i = 0; i < 2; i++)
        both[i].seq.user = &both[i];
    run(&f.loop, r, both, 2);
    CHECK(memcmp(both[1].out, by_len.out, sizeof(int32_t) * 6) == 0);
    CHECK(both[1].n_out == 6);
    CHECK(state_close(both[1].state, by_len.state, SB));
    eng_runner_stats_t st;
    eng_runner_stats(r, &st);
    CHECK(st.dropped > 0); /* the decode planned past the stop never ran */
    teardown(&by_len);
    teardown(&both[0]);
    teardown(&both[1]);
    eng_runner_destroy(r);
    fx_close(&f);
}

/* Cancelling a sequence whose step the device is running: 1, then ENG_SEQ_FAILED(CANCELLED)
 * after the step; the slot serves the next sequence. */
static void test_cancel_in_step(void)
{
    fixture_t f;
    if (!fx_open(&f, 1, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create(&f.loop, f.be, 8, &r) == 0);
    char err[160];
    t_seq_t x, y;
    setup(&x, r, 3, 6, V, SB, true);
    setup(&y, r, 1, 4, V, SB, false);
    CHECK(eng_runner_submit(r, &x.seq, err, sizeof(err)) == 0); /* idle device: runs at once */
    CHECK(eng_runner_cancel(r, &x.seq) == 1);
    CHECK(eng_runner_submit(r, &y.seq, err, sizeof(err)) == 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK(x.done && x.failed && x.fail_rc == RCD_ECANCELLED && x.n_out == 0);
    CHECK(y.done && !y.failed && y.n_out == 4);
    CHECK(eng_runner_held(r) == 0);
    teardown(&x);
    teardown(&y);
    eng_runner_destroy(r);
    fx_close(&f);
}

/* Prefix snapshots: the states the runner captures inside and at the end of prefill chunks
 * (in a batch with another sequence) are the states after those prompt prefixes: continuing
 * from each with the rest of the prompt gives the uninterrupted run's tokens. */
static void test_prefix_snapshots(void)
{
    fixture_t f;
    if (!fx_open(&f, 2, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create(&f.loop, f.be, 16, &r) == 0);
    t_seq_t a[2];
    setup(&a[0], r, 5, N_GEN, V, SB, false); /* 38 prompt tokens: several 16-token chunks */
    setup(&a[1], r, 3, N_GEN, V, SB, false);
    const int32_t at[] = {7, 16, 20, 37};
    const int ns = 4;
    void *snap[4];
    for (int j = 0; j < ns; j++) {
        snap[j] = calloc(1, SB);
        a[0].seq.snap_at[j] = at[j];
        a[0].seq.snap_out[j] = snap[j];
    }
    a[0].seq.n_snaps = ns;
    run(&f.loop, r, a, 2);
    CHECK(a[0].seq.n_snapped == ns);
    for (int j = 0; j < ns; j++) {
        t_seq_t c;
        setup(&c, r, 0, N_GEN, V, SB, false);
        int n = a[0].seq.n_prompt - at[j];
        memcpy(c.prompt, a[0].prompt + at[j], sizeof(int32_t) * (size_t)n);
        c.seq.n_prompt = n;
        c.seq.init_state = snap[j];
        run(&f.loop, r, &c, 1);
        CHECK_MSG(memcmp(c.out, a[0].out, sizeof(int32_t) * N_GEN) == 0, "snapshot at %d", at[j]);
        teardown(&c);
    }
    /* Malformed requests are ignored from the first bad one: out of order, past the prompt. */
    t_seq_t b;
    setup(&b, r, 5, 2, V, SB, false);
    b.seq.n_snaps = 3;
    b.seq.snap_at[0] = 10, b.seq.snap_out[0] = snap[0];
    b.seq.snap_at[1] = 9, b.seq.snap_out[1] = snap[1];
    b.seq.snap_at[2] = 38, b.seq.snap_out[2] = snap[2];
    run(&f.loop, r, &b, 1);
    CHECK(b.seq.n_snapped == 1);
    teardown(&b);
    for (int j = 0; j < ns; j++)
        free(snap[j]);
    teardown(&a[0]);
    teardown(&a[1]);
    eng_runner_destroy(r);
    fx_close(&f);
}

/* Prefix snapshots of a model with a KV cache: each holds the fixed part and exactly the
 * positions up to its boundary (chunks of 16 split at 7, 20 and 37; 16 is a chunk's end); a
 * sequence started from one (its KV restored into the slot's blocks) continues like the full
 * prefill. A buffer too small for a snapshot ends the snapshots there, not the sequence.
 * Afterwards, idle, every KV block is back in the pool. */
static void test_kv_prefix_snapshots(void)
{
    fixture_t f;
    if (!fx_open_model(&f, "tests/golden/granite/mha_moe8", 2, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes, KV = f.mi->kv_bytes_per_token;
    eng_runner_config_t cfg;
    eng_runner_config_default(&cfg, f.be, 16);
    cfg.kv_blocks = 64; /* the fixture's pool */
    cfg.kv_block_tokens = 4;
    eng_runner_t *r = NULL;
    char err[160];
    CHECK(eng_runner_create_cfg(&f.loop, f.be, &cfg, &r, err, sizeof(err)) == 0);
    t_seq_t a[2];
    setup(&a[0], r, 5, N_GEN, V, SB, false); /* 38 prompt tokens */
    setup(&a[1], r, 3, N_GEN, V, SB, false);
    const int32_t at[] = {7, 16, 20, 37};
    const int ns = 4;
    void *snap[4];
    for (int j = 0; j < ns; j++) {
        a[0].seq.snap_cap[j] = SB + (size_t)at[j] * KV;
        snap[j] = calloc(1, a[0].seq.snap_cap[j]);
        a[0].seq.snap_at[j] = at[j];
        a[0].seq.snap_out[j] = snap[j];
    }
    a[0].seq.n_snaps = ns;
    run(&f.loop, r, a, 2);
    CHECK(a[0].seq.n_snapped == ns);
    for (int j = 0; j < ns; j++) {
        CHECK_MSG(a[0].seq.snap_len[j] == SB + (size_t)at[j] * KV, "snapshot %d: %zu bytes", j,
                  a[0].seq.snap_len[j]);
        uint64_t pos;
        memcpy(&pos, (char *)snap[j] + SB - sizeof(pos), sizeof(pos)); /* kv.n_tokens, last */
        CHECK(pos == (uint64_t)at[j]);
    }
    eng_runner_stats_t st;
    eng_runner_stats(r, &st);
    CHECK(st.kv_total_blocks == 64 && st.kv_free_blocks == 64);
    for (int j = 0; j < ns; j++) {
        t_seq_t c;
        setup(&c, r, 0, N_GEN, V, SB, false);
        int n = a[0].seq.n_prompt - at[j];
        memcpy(c.prompt, a[0].prompt + at[j], sizeof(int32_t) * (size_t)n);
        c.seq.n_prompt = n;
        c.seq.init_state = snap[j];
        c.seq.init_len = a[0].seq.snap_len[j];
        c.seq.kv_positions = (uint64_t)a[0].seq.n_prompt + N_GEN;
        run(&f.loop, r, &c, 1);
        CHECK_MSG(memcmp(c.out, a[0].out, sizeof(int32_t) * N_GEN) == 0, "snapshot at %d", at[j]);
        eng_runner_stats(r, &st);
        CHECK_MSG(st.kv_free_blocks == 64, "free blocks %lld", (long long)st.kv_free_blocks);
        teardown(&c);
    }
    /* the second snapshot's buffer holds the fixed part only: one snapshot taken, the
     * sequence runs on to the same tokens */
    t_seq_t b;
    setup(&b, r, 5, N_GEN, V, SB, false);
    b.seq.n_snaps = 3;
    for (int j = 0; j < 3; j++) {
        b.seq.snap_at[j] = at[j];
        b.seq.snap_out[j] = snap[j];
        b.seq.snap_cap[j] = SB + (size_t)at[j] * KV;
    }
    b.seq.snap_cap[1] = SB;
    run(&f.loop, r, &b, 1);
    CHECK(b.seq.n_snapped == 1 && b.seq.snap_len[0] == SB + (size_t)at[0] * KV);
    CHECK(memcmp(b.out, a[0].out, sizeof(int32_t) * N_GEN) == 0);
    /* cancelled after a start from a snapshot: its blocks come back too */
    t_seq_t c;
    setup(&c, r, 0, N_GEN, V, SB, false);
    memcpy(c.prompt, a[0].prompt + at[3], sizeof(int32_t));
    c.seq.n_prompt = 1;
    c.seq.init_state = snap[3];
    c.seq.init_len = a[0].seq.snap_len[3];
    c.stop = true;
    run(&f.loop, r, &c, 1);
    CHECK(c.out[0] == a[0].out[0]);
    eng_runner_stats(r, &st);
    CHECK_MSG(st.kv_free_blocks == 64, "free blocks %lld", (long long)st.kv_free_blocks);
    teardown(&b);
    teardown(&c);
    for (int j = 0; j < ns; j++)
        free(snap[j]);
    teardown(&a[0]);
    teardown(&a[1]);
    eng_runner_destroy(r);
    fx_close(&f);
}

/* A failing worker step (out of memory, a device error) fails the sequences it held, and
 * only them: later sequences, alone or together, run as if it never happened. The failure
 * is injected by swapping the backend's step for one that fails on its n-th call. */
static const wrk_backend_i *g_real_vt;
static _Atomic int g_fail_in; /* > 0: the step call that fails, counting down */

static int failing_step(wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err,
                        size_t errlen)
{
    if (atomic_load(&g_fail_in) > 0 && atomic_fetch_sub(&g_fail_in, 1) == 1) {
        snprintf(err, errlen, "injected step failure");
        return RCD_ENOMEM;
    }
    return g_real_vt->step(b, seqs, n_seqs, err, errlen);
}

static void step_failure_case(bool pipelined)
{
    fixture_t f;
    if (!fx_open(&f, 2, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_config_t c;
    eng_runner_config_default(&c, f.be, 16);
    if (!pipelined) c.max_inflight = 1;
    char err[160];
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0);
    t_seq_t ref[3];
    for (int k = 0; k < 3; k++) {
        setup(&ref[k], r, k, N_GEN, V, SB, false);
        run(&f.loop, r, &ref[k], 1);
    }
    static wrk_backend_i faulty;
    g_real_vt = f.be->vt;
    faulty = *g_real_vt;
    faulty.step = failing_step;
    f.be->vt = &faulty;
    t_seq_t hit[3];
    atomic_store(&g_fail_in, 3); /* mid-stream: prefills done, decodes running */
    for (int k = 0; k < 3; k++) {
        setup(&hit[k], r, k, N_GEN, V, SB, false);
        CHECK(eng_runner_submit(r, &hit[k].seq, err, sizeof(err)) == 0);
    }
    uv_run(&f.loop, UV_RUN_DEFAULT);
    int n_failed = 0;
    for (int k = 0; k < 3; k++) {
        CHECK_MSG(hit[k].done, "seq %d never ended", k);
        n_failed += hit[k].failed;
        if (!hit[k].failed)
            CHECK_MSG(memcmp(hit[k].out, ref[k].out, sizeof(int32_t) * N_GEN) == 0, "seq %d", k);
    }
    CHECK(n_failed >= 1);
    CHECK(eng_runner_held(r) == 0);
    /* after it: alone and together, exactly as before */
    t_seq_t after[3];
    setup(&after[0], r, 0, N_GEN, V, SB, false);
    run(&f.loop, r, &after[0], 1);
    for (int k = 1; k < 3; k++)
        setup(&after[k], r, k, N_GEN, V, SB, false);
    run(&f.loop, r, &after[1], 2);
    for (int k = 0; k < 3; k++)
        CHECK_MSG(after[k].done && !after[k].failed &&
                      memcmp(after[k].out, ref[k].out, sizeof(int32_t) * N_GEN) == 0,
                  "pipelined %d: seq %d after the failure: rc %d %s", pipelined, k,
                  after[k].fail_rc, after[k].seq.msg);
    f.be->vt = g_real_vt;
    for (int k = 0; k < 3; k++) {
        teardown(&ref[k]);
        teardown(&hit[k]);
        teardown(&after[k]);
    }
    eng_runner_destroy(r);
    fx_close(&f);
}

static void test_step_failure_is_contained(void)
{
    step_failure_case(false);
    step_failure_case(true);
}

/* Steps run on the runner's own device thread, not on libuv's shared pool: with every pool
 * thread blocked (as by large Tokenize calls or checkpoint I/O), sequences still run to the end
 * with their solo tokens. (Steps on the pool would wait for the gate: the timer fails it.) */
#define POOL_THREADS 2
static uv_sem_t g_gate;
static bool g_gate_open;

static void pool_block(uv_work_t *w)
{
    (void)w;
    uv_sem_wait(&g_gate);
}

static void pool_after(uv_work_t *w, int status)
{
    (void)w;
    (void)status;
}

static void open_gate(void)
{
    if (g_gate_open) return;
    g_gate_open = true;
    for (int i = 0; i < POOL_THREADS; i++)
        uv_sem_post(&g_gate);
}

static void on_gate_timeout(uv_timer_t *t)
{
    CHECK_MSG(0, "the runner did not finish while the pool was blocked");
    open_gate();
}

static void test_steps_beside_a_blocked_pool(void)
{
    fixture_t f;
    if (!fx_open(&f, 2, 16)) return;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create(&f.loop, f.be, 8, &r) == 0);
    t_seq_t ref[2], blocked[2];
    for (int k = 0; k < 2; k++) {
        setup(&ref[k], r, k + 1, N_GEN, V, SB, false);
        run(&f.loop, r, &ref[k], 1);
    }
    CHECK(uv_sem_init(&g_gate, 0) == 0);
    g_gate_open = false;
    uv_work_t jobs[POOL_THREADS];
    for (int i = 0; i < POOL_THREADS; i++)
        CHECK(uv_queue_work(&f.loop, &jobs[i], pool_block, pool_after) == 0);
    uv_timer_t timer;
    uv_timer_init(&f.loop, &timer);
    uv_timer_start(&timer, on_gate_timeout, 60000, 0);
    char err[160];
    for (int k = 0; k < 2; k++) {
        setup(&blocked[k], r, k + 1, N_GEN, V, SB, false);
        CHECK(eng_runner_submit(r, &blocked[k].seq, err, sizeof(err)) == 0);
    }
    while (!(blocked[0].done && blocked[1].done) && !g_gate_open)
        uv_run(&f.loop, UV_RUN_ONCE);
    CHECK(!g_gate_open); /* finished with the pool still blocked */
    open_gate();
    uv_close((uv_handle_t *)&timer, NULL);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    for (int k = 0; k < 2; k++)
        CHECK_MSG(blocked[k].done && !blocked[k].failed &&
                      memcmp(blocked[k].out, ref[k].out, sizeof(int32_t) * N_GEN) == 0,
                  "seq %d", k);
    CHECK(eng_runner_held(r) == 0);
    for (int k = 0; k < 2; k++) {
        teardown(&ref[k]);
        teardown(&blocked[k]);
    }
    uv_sem_destroy(&g_gate);
    eng_runner_destroy(r);
    fx_close(&f);
}

/* Speculative decoding in the runner (n-gram drafts, issue 18): on a copy-heavy prompt (a
 * passage, its own greedy continuation, the passage again) three sequences in ragged batches
 * beside a prefill give the tokens and the committed state (memcmp) of plain decoding, drafts
 * are accepted, and the scheduler's stats count them; a finish inside an accepted run (at
 * token 5 of max_new 24) commits the state of exactly those tokens; a turn with no_speculate
 * verifies nothing. Runs on the bundled model (Mamba) and the Granite fixture (paged KV). */
/* A draft model's backend beside a target of `slots` slots (eng_runner_config_t.draft_be). */
static wrk_backend_t *draft_open(const char *dir, int slots, wrk_model_t **dm)
{
    char err[256];
    wrk_backend_t *be = NULL;
    CHECK_MSG(wrk_model_load(dir, dm, err, sizeof(err)) == 0, "%s", err);
    if (!*dm) return NULL;
    wrk_backend_opts_t bo = {.n_threads = 1,
                             .n_slots = 2 * slots,
                             .max_step_tokens = 64,
                             .kv_block_tokens = 4,
                             .n_kv_blocks = 128};
    CHECK_MSG(wrk_cpu_backend_create(*dm, &bo, &be, err, sizeof(err)) == 0, "%s", err);
    return be;
}

/* draft: NULL for n-gram drafts, else a draft model's directory (ENG_SPEC_DRAFT). */
static void spec_case(const char *model, int slots, const char *draft)
{
    fixture_t f;
    if (!fx_open_model(&f, model, slots, 64)) return;
    wrk_model_t *dm = NULL;
    wrk_backend_t *dbe = draft ? draft_open(draft, slots, &dm) : NULL;
    if (draft && !dbe) return;
    const int V = f.mi->vocab_size;
    const int n_gen = 24;
    eng_runner_config_t c;
    char err[200];
    t_seq_t ref[4], on[4], gated[4];
    eng_runner_t *r = NULL;
    int32_t passage[10];
    for (int i = 0; i < 10; i++)
        passage[i] = (int32_t)((i * 37 + 5) % V);
    /* pass 0 plain, 1 speculating, 2 speculating with the gain check (its plain probe steps
     * inside speculating turns: the same tokens and committed states) */
    for (int pass = 0; pass < 3; pass++) {
        eng_runner_config_default(&c, f.be, 16);
        c.kv_blocks = 64;
        c.kv_block_tokens = 4;
        c.spec_mode = pass ? (draft ? ENG_SPEC_DRAFT : ENG_SPEC_NGRAM) : ENG_SPEC_OFF;
        c.spec_tokens = 4;
        c.spec_max_batch = 0;
        c.spec_adaptive = pass == 2;
        c.draft_be = dbe;
        CHECK_MSG(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0, "%s",
                  err);
        eng_runner_stats_t st;
        eng_runner_stats(r, &st);
        CHECK(st.spec_on == (pass >= 1));
        size_t SB = eng_runner_state_bound(r, 64);
        t_seq_t *ts = pass == 2 ? gated : pass ? on : ref;
        t_seq_t cont; /* the passage's greedy continuation (plain decoding) */
        setup(&cont, r, 0, 12, V, SB, false);
        memcpy(cont.prompt, passage, sizeof(passage));
        cont.seq.n_prompt = 10;
        cont.seq.max_new = 12;
        cont.seq.no_speculate = true;
        run(&f.loop, r, &cont, 1);
        CHECK(cont.seq.spec_drafted == 0);
        for (int k = 0; k < 4; k++) {
            setup(&ts[k], r, k, k == 3 ? 5 : n_gen, V, SB, k != 1);
            int n = 0;
            for (int i = 0; i < 10; i++)
                ts[k].prompt[n++] = passage[i];
            for (int i = 0; i < 12; i++)
                ts[k].prompt[n++] = cont.out[i];
            for (int i = 0; i < 10 - k; i++)
                ts[k].prompt[n++] = passage[i];
            ts[k].seq.n_prompt = n;
            ts[k].seq.max_new = n_gen; /* seq 3 finishes at 5, inside an accepted run */
            ts[k].seq.kv_positions = (uint64_t)(n + n_gen);
            ts[k].seq.state_cap = SB;
        }
        run(&f.loop, r, ts, 4);
        eng_runner_stats(r, &st);
        if (pass == 2) {
            CHECK(st.spec_verifies > 0);
        } else if (pass) {
            /* a random fixture drafting for another is (almost) never right */
            bool self = !draft || strcmp(draft, model) == 0;
            CHECK_MSG((!self || st.sched.spec_accepted > 0) && st.spec_verifies > 0,
                      "verifies %llu accepted %llu", (unsigned long long)st.spec_verifies,
                      (unsigned long long)st.sched.spec_accepted);
            CHECK(st.sched.spec_accepted <= st.sched.spec_drafted);
            uint32_t acc = 0;
            for (int k = 0; k < 4; k++)
                acc += ts[k].seq.spec_accepted;
            CHECK(acc == st.sched.spec_accepted);
            /* its own draft: right but where a near tie of two logits falls the other way
             * (a verify row comes from a (k + 1)-token matmul, a draft from a 1-token one) */
            if (draft && self)
                CHECK_MSG(st.sched.spec_accepted * 10 >= st.sched.spec_drafted * 9,
                          "self-draft: %llu of %llu accepted",
                          (unsigned long long)st.sched.spec_accepted,
                          (unsigned long long)st.sched.spec_drafted);
        } else {
            CHECK(st.sched.spec_drafted == 0 && st.spec_verifies == 0);
        }
        teardown(&cont);
        eng_runner_destroy(r);
        uv_run(&f.loop, UV_RUN_NOWAIT);
    }
    for (int k = 0; k < 4; k++) {
        int n = k == 3 ? 5 : n_gen;
        CHECK_MSG(on[k].n_out == n && ref[k].n_out == n && gated[k].n_out == n,
                  "seq %d: %d / %d / %d tokens", k, on[k].n_out, ref[k].n_out, gated[k].n_out);
        CHECK_MSG(memcmp(on[k].out, ref[k].out, sizeof(int32_t) * (size_t)n) == 0, "seq %d", k);
        CHECK_MSG(memcmp(gated[k].out, ref[k].out, sizeof(int32_t) * (size_t)n) == 0,
                  "seq %d (gain check on)", k);
        if (k != 1) {
            CHECK(on[k].seq.state_len == ref[k].seq.state_len);
            CHECK_MSG(memcmp(on[k].state, ref[k].state, ref[k].seq.state_len) == 0,
                      "seq %d: committed state differs", k);
            CHECK(gated[k].seq.state_len == ref[k].seq.state_len);
            CHECK_MSG(memcmp(gated[k].state, ref[k].state, ref[k].seq.state_len) == 0,
                      "seq %d: committed state differs (gain check on)", k);
        }
        teardown(&on[k]);
        teardown(&ref[k]);
        teardown(&gated[k]);
    }
    fx_close(&f);
    wrk_backend_destroy(dbe);
    wrk_model_free(dm);
}

static void test_speculate(void)
{
    spec_case(RCD_DEFAULT_MODEL, 3, NULL);
    spec_case("tests/golden/granite/mha_moe8", 3, NULL);
}

/* --speculate draft: the bundled model as its own draft (every draft accepted), a Mamba2
 * fixture drafting for a Mamba fixture, and a Granite fixture with paged KV drafting for
 * another (the draft's scratch slots hold KV too): plain decoding's tokens and states. */
static void test_draft_model(void)
{
    /* a cancel inside an accepted run of drafts (the bundled model drafting for itself): the
     * turn ends there, and the next turn in the slot gets its solo tokens */
    fixture_t f;
    if (!fx_open(&f, 1, 64)) return;
    wrk_model_t *dm = NULL;
    wrk_backend_t *dbe = draft_open(RCD_DEFAULT_MODEL, 1, &dm);
    eng_runner_config_t c;
    eng_runner_config_default(&c, f.be, 8);
    c.spec_mode = ENG_SPEC_DRAFT;
    c.spec_tokens = 4;
    c.draft_be = dbe;
    eng_runner_t *r = NULL;
    char err[200];
    CHECK_MSG(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0, "%s", err);
    t_seq_t solo, cut, next;
    setup(&solo, r, 2, 12, f.mi->vocab_size, f.mi->state_bytes, false);
    solo.seq.no_speculate = true;
    run(&f.loop, r, &solo, 1);
    setup(&cut, r, 1, 12, f.mi->vocab_size, f.mi->state_bytes, false);
    cut.cancel_at = 3; /* token 1 from the prefill; 2, 3 from rows of one verify */
    CHECK(eng_runner_submit(r, &cut.seq, err, sizeof(err)) == 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK(cut.done && cut.n_out == 3 && cut.cancel_row);
    CHECK(eng_runner_held(r) == 0);
    setup(&next, r, 2, 12, f.mi->vocab_size, f.mi->state_bytes, false);
    run(&f.loop, r, &next, 1);
    CHECK(memcmp(next.out, solo.out, sizeof(int32_t) * 12) == 0);
    CHECK(next.seq.spec_accepted > 0);
    teardown(&solo);
    teardown(&cut);
    teardown(&next);
    eng_runner_destroy(r);
    fx_close(&f);
    wrk_backend_destroy(dbe);
    wrk_model_free(dm);

    spec_case(RCD_DEFAULT_MODEL, 3, RCD_DEFAULT_MODEL);
    spec_case("tests/golden/mamba/tiny_bias_tied", 3, "tests/golden/mamba2/tiny_g2_untied");
    spec_case("tests/golden/granite/mha_moe8", 3, "tests/golden/granite/dense_rope_untied");
}

/* The history section of a committed payload (n tokens into out), or -1 without one. */
static int hist_of(const void *blob, size_t len, size_t sb, size_t kv, int32_t *out, int cap)
{
    size_t sl;
    ckpt_ext_t e;
    if (ckpt_ext_split(blob, len, sb, kv, &sl, &e, NULL, 0)) return -2;
    const ckpt_ext_sec_t *h = ckpt_ext_find(&e, CKPT_EXT_HIST);
    if (!h) return -1;
    int n = (int)(h->bytes / 4);
    if (n > cap) return -3;
    memcpy(out, h->data, h->bytes);
    return n;
}

/* The session's token history (--spec-history): turn 1 (a passage) commits its prompt and
 * answer as the history section after the state; turn 2 (the passage again, whose answer
 * repeats turn 1's answer, which is not in turn 2's prompt) gets n-gram drafts from it:
 * accepted drafts with the history, fewer without, the same tokens and states either way, and
 * with speculation off the very same payload bytes. A bounded history keeps the newest
 * tokens (pre-fed prefix tokens included); a corrupt history is refused at submit. */
typedef struct hist_run {
    int32_t out1[24], out2[24];
    uint32_t acc2;
    void *blob2;
    size_t len2;
} hist_run_t;

static void hist_turns(fixture_t *f, int32_t spec_history, bool spec, const int32_t *p, int np,
                       hist_run_t *o)
{
    const int V = f->mi->vocab_size;
    eng_runner_config_t c;
    char err[200];
    eng_runner_config_default(&c, f->be, 8);
    c.spec_mode = spec ? ENG_SPEC_NGRAM : ENG_SPEC_OFF;
    c.spec_tokens = 4;
    c.spec_max_batch = 0;
    c.spec_history = spec_history;
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create_cfg(&f->loop, f->be, &c, &r, err, sizeof(err)) == 0);
    size_t SB = f->mi->state_bytes, cap = eng_runner_state_bound(r, 0) + eng_runner_ext_bound(r);
    CHECK(spec_history ? eng_runner_ext_bound(r) == (size_t)spec_history * 4 + 72
                       : eng_runner_ext_bound(r) == 0);
    t_seq_t t1, t2;
    setup(&t1, r, 0, 24, V, cap, true);
    memcpy(t1.prompt, p, sizeof(int32_t) * (size_t)np);
    t1.seq.n_prompt = np;
    t1.seq.state_cap = cap;
    run(&f->loop, r, &t1, 1);
    memcpy(o->out1, t1.out, sizeof(o->out1));
    int32_t h[128];
    if (spec_history) {
        CHECK(t1.seq.state_len > SB);
        CHECK(hist_of(t1.state, t1.seq.state_len, SB, 0, h, 128) == np + 24);
        CHECK(!memcmp(h, p, sizeof(int32_t) * (size_t)np) && !memcmp(h + np, t1.out, 24 * 4));
    } else {
        CHECK(t1.seq.state_len == SB); /* the format without sections */
    }
    setup(&t2, r, 0, 24, V, cap, true);
    memcpy(t2.prompt, p, sizeof(int32_t) * (size_t)np);
    t2.seq.n_prompt = np;
    t2.seq.state_cap = cap;
    t2.seq.init_state = t1.state;
    t2.seq.init_len = t1.seq.state_len;
    run(&f->loop, r, &t2, 1);
    memcpy(o->out2, t2.out, sizeof(o->out2));
    o->acc2 = t2.seq.spec_accepted;
    o->len2 = t2.seq.state_len;
    o->blob2 = malloc(o->len2);
    memcpy(o->blob2, t2.state, o->len2);
    if (spec_history) {
        int n = hist_of(t2.state, t2.seq.state_len, SB, 0, h, 128), want = 2 * (np + 24);
        CHECK(n == want);
        CHECK(n == want && !memcmp(h + np + 24, p, sizeof(int32_t) * (size_t)np) &&
              !memcmp(h + 2 * np + 24, t2.out, 24 * 4) && !memcmp(h + np, t1.out, 24 * 4));
    }
    teardown(&t1);
    teardown(&t2);
    eng_runner_destroy(r);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static void test_history(void)
{
    fixture_t f;
    if (!fx_open_model(&f, "tests/golden/mamba/tiny_nobias_untied", 2, 64)) return;
    const int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    int32_t p[12];
    for (int i = 0; i < 12; i++)
        p[i] = (int32_t)((i * 37 + 5) % V);
    hist_run_t with, without, off;
    hist_turns(&f, ENG_SPEC_HISTORY_DEFAULT, true, p, 12, &with);
    hist_turns(&f, 0, true, p, 12, &without);
    hist_turns(&f, ENG_SPEC_HISTORY_DEFAULT, false, p, 12, &off);
    CHECK(!memcmp(with.out1, without.out1, sizeof(with.out1)) &&
          !memcmp(with.out2, without.out2, sizeof(with.out2)));
    CHECK(!memcmp(with.out2, off.out2, sizeof(with.out2)));
    CHECK_MSG(with.acc2 > without.acc2, "accepted with history %u, without %u", with.acc2,
              without.acc2);
    CHECK(off.acc2 == 0);
    /* the state parts agree; with speculation off the whole payload is the same bytes */
    CHECK(without.len2 == SB && with.len2 > SB && !memcmp(with.blob2, without.blob2, SB));
    CHECK(off.len2 == with.len2 && !memcmp(off.blob2, with.blob2, with.len2));
    free(with.blob2);
    free(without.blob2);
    free(off.blob2);

    /* bounded: 10 tokens kept, the newest; the pre-fed tokens come before the prompt */
    eng_runner_config_t c;
    char err[200];
    eng_runner_config_default(&c, f.be, 8);
    c.spec_history = 10;
    eng_runner_t *r = NULL;
    CHECK(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0);
    size_t cap = SB + eng_runner_ext_bound(r);
    t_seq_t t;
    int32_t pre[3] = {1, 2, 3}, h[16];
    setup(&t, r, 0, 4, V, cap, true);
    t.seq.n_prompt = 2;
    t.seq.state_cap = cap;
    t.seq.pre_fed = pre;
    t.seq.n_pre_fed = 3;
    run(&f.loop, r, &t, 1);
    CHECK(hist_of(t.state, t.seq.state_len, SB, 0, h, 16) == 9);
    CHECK(!memcmp(h, pre, 12) && !memcmp(h + 3, t.prompt, 8) && !memcmp(h + 5, t.out, 16));
    t_seq_t u;
    setup(&u, r, 0, 4, V, cap, true);
    u.seq.n_prompt = 2;
    u.seq.state_cap = cap;
    u.seq.init_state = t.state;
    u.seq.init_len = t.seq.state_len;
    run(&f.loop, r, &u, 1);
    CHECK(hist_of(u.state, u.seq.state_len, SB, 0, h, 16) == 10);
    CHECK(!memcmp(h, t.out, 16) && !memcmp(h + 4, u.prompt, 8) && !memcmp(h + 6, u.out, 16));
    /* a corrupt or malformed payload is refused at submit, never loaded */
    uint8_t *bad = malloc(u.seq.state_len);
    memcpy(bad, u.state, u.seq.state_len);
    int32_t big = V + 5;
    memcpy(bad + SB, &big, 4); /* the first history token */
    t_seq_t v;
    setup(&v, r, 0, 4, V, cap, true);
    v.seq.init_state = bad;
    v.seq.init_len = u.seq.state_len;
    CHECK(eng_runner_submit(r, &v.seq, err, sizeof(err)) == RCD_ECORRUPT);
    CHECK(strstr(err, "vocabulary") != NULL);
    memcpy(bad, u.state, u.seq.state_len);
    for (size_t k = SB + 1; k < u.seq.state_len; k++) {
        v.seq.init_len = k;
        CHECK_MSG(eng_runner_submit(r, &v.seq, err, sizeof(err)) == RCD_ECORRUPT, "len %zu", k);
    }
    CHECK(eng_runner_held(r) == 0);
    free(bad);
    teardown(&t);
    teardown(&u);
    teardown(&v);
    /* out of range */
    eng_runner_destroy(r);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    c.spec_history = ENG_SPEC_HISTORY_MAX + 1;
    CHECK(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == RCD_EINVAL);
    fx_close(&f);
}

/* The draft model's state rides in the commit (ENG_DRAFT_SECTION, with the draft's
 * fingerprint) and the next turn resumes it; a section of another draft model is never an
 * error (the draft is rebuilt over the history). Output equals plain decoding's either way. */
static void test_draft_checkpoint(void)
{
    fixture_t f;
    if (!fx_open(&f, 1, 64)) return;
    wrk_model_t *dm = NULL;
    wrk_backend_t *dbe = draft_open(RCD_DEFAULT_MODEL, 1, &dm);
    const int V = f.mi->vocab_size;
    const size_t SB = f.mi->state_bytes;
    eng_runner_config_t c;
    eng_runner_config_default(&c, f.be, 8);
    c.spec_mode = ENG_SPEC_DRAFT;
    c.spec_tokens = 4;
    c.draft_be = dbe;
    eng_runner_t *r = NULL;
    char err[200];
    CHECK_MSG(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0, "%s", err);
    size_t cap = SB + eng_runner_ext_bound(r);
    CHECK(eng_runner_ext_bound(r) > SB); /* room for the history and the draft's state */
    t_seq_t t1, ref, on, bad;
    setup(&t1, r, 2, 8, V, cap, true);
    t1.seq.state_cap = cap;
    run(&f.loop, r, &t1, 1);
    ckpt_ext_t ext;
    size_t sl = 0;
    CHECK(ckpt_ext_split(t1.state, t1.seq.state_len, SB, 0, &sl, &ext, err, sizeof(err)) == 0);
    const ckpt_ext_sec_t *ds = ckpt_ext_find(&ext, ENG_DRAFT_SECTION);
    CHECK(sl == SB && ds && ds->bytes == ENG_DRAFT_SECTION_HEAD + SB &&
          !memcmp(ds->data, &f.mi->fingerprint, 8));
    uint8_t *other = malloc(t1.seq.state_len);
    memcpy(other, t1.state, t1.seq.state_len);
    other[(const uint8_t *)ds->data - (const uint8_t *)t1.state] ^= 1; /* another draft */
    eng_runner_stats_t st;
    t_seq_t *ts[3] = {&ref, &on, &bad};
    for (int i = 0; i < 3; i++) {
        setup(ts[i], r, 4, 12, V, cap, true);
        ts[i]->seq.state_cap = cap;
        ts[i]->seq.init_state = i == 2 ? (const void *)other : t1.state;
        ts[i]->seq.init_len = t1.seq.state_len;
        ts[i]->seq.no_speculate = i == 0;
        run(&f.loop, r, ts[i], 1);
        eng_runner_stats(r, &st);
        CHECK_MSG(st.draft_resumed == (i == 0 ? 0u : 1u), "turn %d: %llu resumed", i,
                  (unsigned long long)st.draft_resumed);
        CHECK(memcmp(ts[i]->out, ref.out, sizeof(int32_t) * 12) == 0);
    }
    CHECK(on.seq.spec_accepted * 10 >= on.seq.spec_drafted * 9 && on.seq.spec_accepted > 0);
    CHECK(bad.seq.spec_accepted * 10 >= bad.seq.spec_drafted * 9 && bad.seq.spec_accepted > 0);
    CHECK(!memcmp(on.state, ref.state, SB) && !memcmp(bad.state, ref.state, SB));
    free(other);
    teardown(&t1);
    for (int i = 0; i < 3; i++)
        teardown(ts[i]);
    eng_runner_destroy(r);
    fx_close(&f);
    wrk_backend_destroy(dbe);
    wrk_model_free(dm);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    /* before the pool's first use: test_steps_beside_a_blocked_pool blocks all of it */
    setenv("UV_THREADPOOL_SIZE", "2", 1);
    RUN(test_batched_equals_alone);
    RUN(test_preempt_resumes_exactly);
    RUN(test_kv_model);
    RUN(test_refusals);
    RUN(test_stop_commits_like_length);
    RUN(test_cancel_in_step);
    RUN(test_prefix_snapshots);
    RUN(test_kv_prefix_snapshots);
    RUN(test_step_failure_is_contained);
    RUN(test_steps_beside_a_blocked_pool);
    RUN(test_speculate);
    RUN(test_draft_model);
    RUN(test_draft_checkpoint);
    RUN(test_history);
    return rcd_test_summary();
}
