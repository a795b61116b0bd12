/* Unit test of the batching runner on the bundled model: sequences run together (chunked
 * prefill + batched decode, more sequences than slots) give the same greedy tokens as each
 * run alone, and _finish with a state returns the state after the last token. */
#include "daemon/dmn_runner.h"
#include "tests/rcd_test.h"

#include <stdlib.h>
#include <string.h>

#define N_SEQ 5
#define N_GEN 6

typedef struct t_seq {
    dmn_seq_t seq;
    dmn_runner_t *r;
    int32_t prompt[40];
    int32_t out[N_GEN];
    int n_out, vocab;
    bool done, failed, want_state;
    void *state;
} t_seq_t;

static void on_ev(dmn_seq_t *s, dmn_seq_ev_t ev)
{
    t_seq_t *t = s->user;
    if (ev == DMN_SEQ_DONE) {
        t->done = true;
        return;
    }
    if (ev == DMN_SEQ_FAILED) {
        t->failed = t->done = true;
        return;
    }
    if (ev != DMN_SEQ_LOGITS) return;
    int best = 0;
    for (int i = 1; i < t->vocab; i++)
        if (s->logits[i] > s->logits[best]) best = i;
    t->out[t->n_out++] = best;
    if (t->n_out < N_GEN)
        dmn_runner_feed(t->r, s, best);
    else if (!dmn_runner_finish(t->r, s, best, t->want_state ? t->state : NULL))
        t->done = true;
}

static void setup(t_seq_t *t, dmn_runner_t *r, int k, int vocab, size_t state_bytes)
{
    memset(t, 0, sizeof(*t));
    t->r = r;
    t->vocab = vocab;
    int n = 3 + 7 * k; /* different lengths: several prefill chunks for the longer ones */
    for (int i = 0; i < n; i++)
        t->prompt[i] = (int32_t)((k * 131 + i * 17) % vocab);
    t->seq.prompt = t->prompt;
    t->seq.n_prompt = n;
    t->seq.logits = malloc(sizeof(float) * (size_t)vocab);
    t->seq.cb = on_ev;
    t->seq.user = t;
    t->state = calloc(1, state_bytes);
}

static void run(uv_loop_t *loop, dmn_runner_t *r, t_seq_t *ts, int n)
{
    for (int i = 0; i < n; i++)
        CHECK(dmn_runner_submit(r, &ts[i].seq) == 0);
    uv_run(loop, UV_RUN_DEFAULT);
    for (int i = 0; i < n; i++)
        CHECK(ts[i].done && !ts[i].failed);
    CHECK(dmn_runner_held(r) == 0);
}

static void test_batched_equals_alone(void)
{
    char err[256];
    wrk_model_t *m = NULL;
    wrk_backend_t *be = NULL;
    if (wrk_model_load(RCD_DEFAULT_MODEL, &m, err, sizeof(err))) {
        fprintf(stderr, "model: %s\n", err);
        CHECK(0);
        return;
    }
    const wrk_model_info_t *mi = wrk_model_info(m);
    wrk_backend_opts_t bo = {.n_threads = 1, .n_slots = 3, .max_step_tokens = 16};
    CHECK(wrk_cpu_backend_create(m, &bo, &be, err, sizeof(err)) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    dmn_runner_t *r = NULL;
    CHECK(dmn_runner_create(&loop, be, 16, &r) == 0);
    t_seq_t alone[N_SEQ], together[N_SEQ];
    for (int k = 0; k < N_SEQ; k++) {
        setup(&alone[k], r, k, mi->vocab_size, mi->state_bytes);
        alone[k].want_state = true;
        run(&loop, r, &alone[k], 1);
    }
    for (int k = 0; k < N_SEQ; k++)
        setup(&together[k], r, k, mi->vocab_size, mi->state_bytes);
    together[2].want_state = true;
    run(&loop, r, together, N_SEQ);
    for (int k = 0; k < N_SEQ; k++)
        CHECK_MSG(memcmp(alone[k].out, together[k].out, sizeof(alone[k].out)) == 0, "seq %d", k);
    /* The state that _finish returned continues the text: a run over prompt + outputs from
     * zero and a run from that state agree on what comes next. */
    t_seq_t again;
    setup(&again, r, 2, mi->vocab_size, mi->state_bytes);
    int n = again.seq.n_prompt;
    for (int i = 0; i < N_GEN; i++)
        again.prompt[n + i] = alone[2].out[i];
    again.seq.n_prompt = n + N_GEN;
    again.seq.init_state = NULL;
    CHECK(dmn_runner_submit(r, &again.seq) == 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    t_seq_t cont;
    setup(&cont, r, 0, mi->vocab_size, mi->state_bytes);
    cont.prompt[0] = again.out[0];
    cont.seq.n_prompt = 1;
    cont.seq.init_state = alone[2].state;
    CHECK(dmn_runner_submit(r, &cont.seq) == 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(cont.done && memcmp(cont.out, again.out + 1, sizeof(int32_t) * (N_GEN - 1)) == 0);
    for (int k = 0; k < N_SEQ; k++) {
        free(alone[k].seq.logits);
        free(alone[k].state);
        free(together[k].seq.logits);
        free(together[k].state);
    }
    free(again.seq.logits);
    free(again.state);
    free(cont.seq.logits);
    free(cont.state);
    dmn_runner_destroy(r);
    uv_loop_close(&loop);
    wrk_backend_destroy(be);
    wrk_model_free(m);
}

int main(void)
{
    RUN(test_batched_equals_alone);
    return rcd_test_summary();
}
