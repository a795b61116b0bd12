/* Shared by the runner's unit tests (eng_runner_test.c, eng_spec_test.c): test sequences
 * with their event callback, a runner on a model fixture, running the loop until they finish,
 * and a draft model's backend. */
#ifndef RCD_ENG_RUNNER_TEST_UTIL_H
#define RCD_ENG_RUNNER_TEST_UTIL_H

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
    int32_t drafts[MAX_GEN]; /* the draft each row checked (seq.spec_draft; -1: none) */
    uint64_t qhash[MAX_GEN]; /* FNV-1a of the distribution it was drawn from (seq.spec_q; 0) */
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

static inline void on_ev(eng_seq_t *s, eng_seq_ev_t ev)
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
    if (t->n_out < MAX_GEN) {
        t->out[t->n_out] = best;
        t->drafts[t->n_out] = s->spec_draft;
        uint64_t h = 0;
        if (s->spec_q) { /* the draft's row, bit for bit */
            const uint8_t *b = (const uint8_t *)s->spec_q;
            h = 0xcbf29ce484222325ull;
            for (size_t i = 0; i < sizeof(float) * (size_t)t->vocab; i++)
                h = (h ^ b[i]) * 0x100000001b3ull;
        }
        t->qhash[t->n_out] = h;
    }
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

static inline void setup(t_seq_t *t, eng_runner_t *r, int k, int n_gen, int vocab,
                         size_t state_bytes, bool commit)
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

static inline void teardown(t_seq_t *t)
{
    free(t->seq.logits);
    free(t->state);
}

static inline void run(uv_loop_t *loop, eng_runner_t *r, t_seq_t *ts, int n)
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

static inline bool fx_open_model(fixture_t *f, const char *model, int n_slots, int max_step_tokens)
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

static inline bool fx_open(fixture_t *f, int n_slots, int max_step_tokens)
{
    return fx_open_model(f, RCD_DEFAULT_MODEL, n_slots, max_step_tokens);
}

static inline void fx_close(fixture_t *f)
{
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the runner's wake-up handle is freed when it closes */
    CHECK(uv_loop_close(&f->loop) == 0);
    wrk_backend_destroy(f->be);
    wrk_model_free(f->m);
}

static inline bool state_close(const void *a, const void *b, size_t bytes)
{
    const float *x = a, *y = b;
    for (size_t i = 0; i < bytes / sizeof(float); i++)
        if (!(fabsf(x[i] - y[i]) <= 1e-4f * (1.0f + fabsf(y[i])))) {
            fprintf(stderr, "state differs at float %zu: %g vs %g\n", i, x[i], y[i]);
            return false;
        }
    return true;
}

/* A draft model's backend beside a target of `slots` slots (eng_runner_config_t.draft_be);
 * a draft with a KV cache gets a pool of kv_blocks blocks of 4 positions. */
static inline wrk_backend_t *draft_open_pool(const char *dir, int slots, int kv_blocks,
                                             wrk_model_t **dm)
{
    char err[256];
    wrk_backend_t *be = NULL;
    CHECK_MSG(wrk_model_load(dir, dm, err, sizeof(err)) == 0, "%s", err);
    if (!*dm) return NULL;
    wrk_backend_opts_t bo = {.n_threads = 1,
                             .n_slots = 2 * slots,
                             .max_step_tokens = 64,
                             .kv_block_tokens = 4,
                             .n_kv_blocks = kv_blocks};
    CHECK_MSG(wrk_cpu_backend_create(*dm, &bo, &be, err, sizeof(err)) == 0, "%s", err);
    return be;
}

static inline wrk_backend_t *draft_open(const char *dir, int slots, wrk_model_t **dm)
{
    return draft_open_pool(dir, slots, 128, dm);
}

/* A Granite fixture (paged KV) and another as its draft (a KV draft, issue 18). */
#define KV_TARGET "tests/golden/granite/mha_moe8"
#define KV_DRAFT "tests/golden/granite/dense_rope_untied"

/* A commit buffer for a variable-size state of n positions, and with ext, room for the
 * session's sections (the history, a draft model's state of up to n positions). */
static inline void kv_commit_buf_ext(t_seq_t *t, eng_runner_t *r, uint64_t n, bool ext)
{
    free(t->state);
    t->seq.state_cap = eng_runner_state_bound(r, n) + (ext ? eng_runner_ext_bound(r, n) : 0);
    t->state = calloc(1, t->seq.state_cap);
    t->seq.state_out = t->state;
}

#endif
