/* Unit test of the runner (scheduler + device thread) on the bundled model: sequences run
 * together (chunked prefill, batched decode, more sequences than slots, pipelined planning)
 * give the same greedy tokens as each run alone; a committed state continues the text; a
 * high-priority arrival preempts a running sequence, which resumes from host memory with the
 * same tokens and the same final state bit for bit; refusals come back with their codes. */
#include "engine/eng_runner_test_util.h"

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

/* A commit buffer for a variable-size state of n positions (no sections). */
static void kv_commit_buf(t_seq_t *t, eng_runner_t *r, uint64_t n)
{
    kv_commit_buf_ext(t, r, n, false);
}

/* One slot: a long low-priority sequence is running when a high-priority one arrives. The low
 * one is swapped out to host memory, the high one runs to the end, the low one resumes: both
 * produce exactly what they produce alone, and the low one's committed state is identical. */

/* spec: 0 off, 1 n-gram drafts, 2 the model as its own draft (its state swaps with the
 * target's: every draft is still accepted after the swap-in), 3 a Granite fixture (paged KV)
 * with another as its draft: the draft's state, KV included, moves with the slot (written
 * back at the swap-in, not rebuilt) and drafts exactly what it drafts without the swap. */
static void preempt_case(bool pipelined, int spec)
{
    fixture_t f;
    if (!fx_open_model(&f, spec == 3 ? KV_TARGET : RCD_DEFAULT_MODEL, 1, 16)) return;
    wrk_model_t *dm = NULL;
    wrk_backend_t *dbe =
        spec >= 2 ? draft_open(spec == 3 ? KV_DRAFT : RCD_DEFAULT_MODEL, 1, &dm) : NULL;
    int V = f.mi->vocab_size;
    size_t SB = f.mi->state_bytes;
    eng_runner_config_t c;
    eng_runner_config_default(&c, f.be, 8);
    c.min_run_steps = 2;
    c.max_inflight = pipelined ? 2 : 1;
    if (spec) { /* speculating: the swap-out follows a verify's rollback */
        c.spec_mode = spec >= 2 ? ENG_SPEC_DRAFT : ENG_SPEC_NGRAM;
        c.spec_tokens = 4;
        c.spec_max_batch = 0;
        c.draft_be = dbe;
    }
    eng_runner_t *r = NULL;
    char err[160];
    CHECK(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0);
    t_seq_t low_alone, high_alone, low, high, low_spec;
    setup(&low_alone, r, 3, 40, V, SB, true);
    kv_commit_buf(&low_alone, r, 24 + 40);
    low_alone.seq.no_speculate = true;
    run(&f.loop, r, &low_alone, 1);
    setup(&high_alone, r, 1, 8, V, SB, true);
    kv_commit_buf(&high_alone, r, 10 + 8);
    high_alone.seq.no_speculate = true;
    high_alone.seq.priority = 3;
    run(&f.loop, r, &high_alone, 1);
    if (spec == 3) { /* its drafts without the swap */
        setup(&low_spec, r, 3, 40, V, SB, true);
        kv_commit_buf(&low_spec, r, 24 + 40);
        low_spec.seq.draft_sampling = (eng_draft_sampling_t){.temperature = 1.0f, .seed = 3};
        run(&f.loop, r, &low_spec, 1);
    }

    setup(&low, r, 3, 40, V, SB, true);
    kv_commit_buf(&low, r, 24 + 40);
    if (spec == 3) /* drafts drawn at temperature 1: the test compares the draft's rows */
        low.seq.draft_sampling = (eng_draft_sampling_t){.temperature = 1.0f, .seed = 3};
    setup(&high, r, 1, 8, V, SB, true);
    kv_commit_buf(&high, r, 10 + 8);
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
    CHECK(low.seq.state_len == low_alone.seq.state_len);
    CHECK(memcmp(low.state, low_alone.state, low.seq.state_len) == 0);
    CHECK(high.seq.state_len == high_alone.seq.state_len);
    CHECK(memcmp(high.state, high_alone.state, high.seq.state_len) == 0);
    eng_runner_stats_t st;
    eng_runner_stats(r, &st);
    CHECK(st.swap_outs == 1 && st.swap_ins == 1 && st.sched.preemptions == 1);
    if (spec) CHECK_MSG(st.spec_verifies > 0, "no verify ran");
    if (spec == 2)
        CHECK_MSG(st.sched.spec_accepted == st.sched.spec_drafted, "%llu of %llu accepted",
                  (unsigned long long)st.sched.spec_accepted,
                  (unsigned long long)st.sched.spec_drafted);
    if (spec >= 2) CHECK(st.draft_swap_ins == 1);
    if (spec == 3) {
        CHECK(f.mi->n_kv_layers > 0 && wrk_model_info(dm)->n_kv_layers > 0);
        CHECK_MSG(low.seq.spec_drafted == low_spec.seq.spec_drafted &&
                      low.seq.spec_accepted == low_spec.seq.spec_accepted &&
                      low.seq.spec_drafted > 0,
                  "drafted %u / %u, accepted %u / %u", low.seq.spec_drafted,
                  low_spec.seq.spec_drafted, low.seq.spec_accepted, low_spec.seq.spec_accepted);
        CHECK(memcmp(low.drafts, low_spec.drafts, sizeof(int32_t) * 40) == 0);
        CHECK(memcmp(low.qhash, low_spec.qhash, sizeof(uint64_t) * 40) == 0);
        CHECK(memcmp(low_spec.out, low_alone.out, sizeof(int32_t) * 40) == 0);
        teardown(&low_spec);
    }
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
    preempt_case(true, 3);
    preempt_case(false, 3);
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
    return rcd_test_summary();
}
