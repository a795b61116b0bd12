/* Unit test of speculative decoding in the runner (issue 18): n-gram drafts and a draft model
 * give plain decoding's tokens and committed states; the draft model's state rides in the
 * checkpoint; the session's token history feeds the n-gram drafts. Shared helpers:
 * eng_runner_test_util.h. */
#include "engine/eng_runner_test_util.h"

/* Speculative decoding in the runner (n-gram drafts, issue 18): on a copy-heavy prompt (a
 * passage, its own greedy continuation, the passage again) three sequences in ragged batches
 * beside a prefill give the tokens and the committed state (memcmp) of plain decoding, drafts
 * are accepted, and the scheduler's stats count them; a finish inside an accepted run (at
 * token 5 of max_new 24) commits the state of exactly those tokens; a turn with no_speculate
 * verifies nothing. Runs on the bundled model (Mamba) and the Granite fixture (paged KV). */

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
        CHECK_MSG(eng_runner_create_cfg(&f.loop, f.be, &c, &r, err, sizeof(err)) == 0, "%s", err);
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

/* A runner on f drafting from dbe (ENG_SPEC_DRAFT, k 4, queue 8) keeping spec_history tokens
 * of history, its logs to log (NULL: stderr). */
static eng_runner_t *draft_runner_cfg(fixture_t *f, wrk_backend_t *dbe, int32_t spec_history,
                                      eng_log_cb log, void *log_user)
{
    eng_runner_config_t c;
    eng_runner_config_default(&c, f->be, 8);
    c.spec_mode = ENG_SPEC_DRAFT;
    c.spec_tokens = 4;
    c.draft_be = dbe;
    c.spec_history = spec_history;
    c.log = log;
    c.log_user = log_user;
    eng_runner_t *r = NULL;
    char err[200];
    CHECK_MSG(eng_runner_create_cfg(&f->loop, f->be, &c, &r, err, sizeof(err)) == 0, "%s", err);
    return r;
}

static eng_runner_t *draft_runner(fixture_t *f, wrk_backend_t *dbe)
{
    return draft_runner_cfg(f, dbe, ENG_SPEC_HISTORY_DEFAULT, NULL, NULL);
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
    eng_runner_t *r = draft_runner(&f, dbe);
    char err[200];
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

#if !defined(__SANITIZE_THREAD__) /* TSan (10-30x slower): the fixtures' cases check the threads   \
                                   */
    spec_case(RCD_DEFAULT_MODEL, 3, RCD_DEFAULT_MODEL);
#endif
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
    size_t SB = f->mi->state_bytes, cap = eng_runner_state_bound(r, 0) + eng_runner_ext_bound(r, 0);
    CHECK(spec_history ? eng_runner_ext_bound(r, 0) == (size_t)spec_history * 4 + 72
                       : eng_runner_ext_bound(r, 0) == 0);
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
    size_t cap = SB + eng_runner_ext_bound(r, 0);
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
    eng_runner_t *r = draft_runner(&f, dbe);
    char err[200];
    size_t cap = SB + eng_runner_ext_bound(r, 0);
    CHECK(eng_runner_ext_bound(r, 0) > SB); /* room for the history and the draft's state */
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

/* A draft with a KV cache (a Granite fixture drafting for another): the commit's draft.state
 * section holds its state and the KV of every position it has seen (the fingerprint, the lag),
 * sized within eng_runner_ext_bound; the next turn loads it into the draft's slot (its blocks
 * from the draft's pool) and drafts exactly what one uninterrupted turn over the same tokens
 * drafts — with a history of 16 tokens, which a rebuilt draft sees alone, so a rebuilt one
 * drafts otherwise —; a section of the wrong size, another fingerprint, a truncated KV, a
 * draft pool too small for it, or a bound with no room for it: rebuilt (a load that fails is
 * logged). Plain decoding's tokens and committed state every time. */
typedef struct log_seen {
    int n;
    const char *want;
} log_seen_t;

static void log_count(void *user, eng_level_t lvl, const char *event, const char *msg)
{
    log_seen_t *l = user;
    if (strstr(msg, l->want)) l->n++;
}

/* blob's payload with its draft section cut to `bytes` (out: malloc'd, *len its bytes) */
static uint8_t *recut_draft(const t_seq_t *t, size_t sb, size_t kv, uint64_t bytes, size_t *len)
{
    ckpt_ext_t e;
    size_t sl = 0;
    CHECK(ckpt_ext_split(t->state, t->seq.state_len, sb, kv, &sl, &e, NULL, 0) == 0);
    ckpt_ext_sec_t secs[CKPT_EXT_MAX];
    for (int i = 0; i < e.n; i++) {
        secs[i] = e.sec[i];
        if (!strcmp(secs[i].name, ENG_DRAFT_SECTION)) secs[i].bytes = bytes;
    }
    size_t n = sl + ckpt_ext_size(secs, e.n);
    uint8_t *b = malloc(n);
    memcpy(b, t->state, sl);
    size_t w = 0;
    CHECK(ckpt_ext_write(b + sl, n - sl, secs, e.n, &w) == 0 && w == n - sl);
    *len = n;
    return b;
}

static void test_kv_draft_checkpoint(void)
{
    fixture_t f;
    if (!fx_open_model(&f, KV_TARGET, 1, 64)) return;
    wrk_model_t *dm = NULL;
    wrk_backend_t *dbe = draft_open(KV_DRAFT, 1, &dm);
    const wrk_model_info_t *di = wrk_model_info(dm);
    const int V = f.mi->vocab_size, n_gen = 16;
    const size_t SB = f.mi->state_bytes, KV = f.mi->kv_bytes_per_token;
    const size_t DSB = di->state_bytes, DKV = di->kv_bytes_per_token;
    CHECK(f.mi->n_kv_layers > 0 && di->n_kv_layers > 0 && DKV > 0);
    log_seen_t seen = {.want = "not loaded"};
    eng_runner_t *r = draft_runner_cfg(&f, dbe, 16, log_count, &seen);
    char err[200];
    /* the bound: the history, the draft's state and the KV of as many positions as the model's */
    CHECK(eng_runner_ext_bound(r, 10) - eng_runner_ext_bound(r, 0) == 10 * DKV);
    t_seq_t t1, small;
    setup(&t1, r, 2, 12, V, SB, true); /* 17 prompt tokens, 12 generated */
    kv_commit_buf_ext(&t1, r, 17 + 12, true);
    run(&f.loop, r, &t1, 1);
    ckpt_ext_t ext1, ext; /* turn 1's sections (ds views them), the others' */
    size_t sl = 0;
    CHECK(ckpt_ext_split(t1.state, t1.seq.state_len, SB, KV, &sl, &ext1, err, sizeof(err)) == 0);
    const ckpt_ext_sec_t *ds = ckpt_ext_find(&ext1, ENG_DRAFT_SECTION);
    CHECK(sl == SB + 29 * KV && ckpt_ext_find(&ext1, CKPT_EXT_HIST));
    uint64_t lag = 0, npos = 0;
    if (ds) {
        memcpy(&lag, (const uint8_t *)ds->data + 8, 8);
        npos = (ds->bytes - ENG_DRAFT_SECTION_HEAD - DSB) / DKV;
    }
    CHECK_MSG(ds && !memcmp(ds->data, &di->fingerprint, 8) && lag >= 1 && lag <= 16 &&
                  ds->bytes == ENG_DRAFT_SECTION_HEAD + DSB + npos * DKV && npos + lag == 29,
              "draft section: %llu bytes, lag %llu", ds ? (unsigned long long)ds->bytes : 0ull,
              (unsigned long long)lag);
    /* a commit buffer with room for the model's positions but not the draft's: history only */
    setup(&small, r, 2, 12, V, SB, true);
    kv_commit_buf_ext(&small, r, 17 + 12, false);
    free(small.state);
    small.seq.state_cap += eng_runner_ext_bound(r, 0);
    small.seq.state_out = small.state = calloc(1, small.seq.state_cap);
    run(&f.loop, r, &small, 1);
    CHECK(memcmp(small.out, t1.out, sizeof(int32_t) * 12) == 0);
    CHECK(ckpt_ext_split(small.state, small.seq.state_len, SB, KV, &sl, &ext, err, sizeof(err)) ==
          0);
    CHECK(ckpt_ext_find(&ext, CKPT_EXT_HIST) && !ckpt_ext_find(&ext, ENG_DRAFT_SECTION));

    /* turn 2 from each payload; the uninterrupted turn: turn 1's tokens and turn 2's prompt */
    enum { REF, ON, SIZE, FP, TRUNC, SMALLBUF, POOL, UNINT, N };
    size_t lens[N] = {0};
    const void *init[N] = {0};
    uint8_t *bad[N] = {0};
    for (int i = 0; i < N; i++)
        init[i] = t1.state, lens[i] = t1.seq.state_len;
    if (ds) {
        bad[SIZE] = recut_draft(&t1, SB, KV, ds->bytes - 1, &lens[SIZE]);
        bad[TRUNC] = recut_draft(&t1, SB, KV, ds->bytes - DKV, &lens[TRUNC]);
        bad[FP] = malloc(t1.seq.state_len);
        memcpy(bad[FP], t1.state, t1.seq.state_len);
        bad[FP][(const uint8_t *)ds->data - (const uint8_t *)t1.state] ^= 1;
        init[SIZE] = bad[SIZE], init[TRUNC] = bad[TRUNC], init[FP] = bad[FP];
    }
    init[SMALLBUF] = small.state, lens[SMALLBUF] = small.seq.state_len;
    wrk_model_t *dm2 = NULL; /* the same draft model, a pool of 16 positions: too few */
    wrk_backend_t *dbe2 = draft_open_pool(KV_DRAFT, 1, 4, &dm2);
    eng_runner_t *r2 = draft_runner_cfg(&f, dbe2, 16, log_count, &seen);
    t_seq_t ts[N];
    eng_runner_stats_t st, st2;
    for (int i = 0; i < N; i++) {
        eng_runner_t *ri = i == POOL ? r2 : r;
        setup(&ts[i], ri, 1, n_gen, V, SB, true); /* 10 prompt tokens */
        if (i == UNINT) {
            int n = 0;
            for (int j = 0; j < 17; j++)
                ts[i].prompt[n++] = t1.prompt[j];
            for (int j = 0; j < 12; j++)
                ts[i].prompt[n++] = t1.out[j];
            for (int j = 0; j < 10; j++)
                ts[i].prompt[n++] = (int32_t)((131 + j * 17) % V); /* setup's k = 1 prompt */
            ts[i].seq.n_prompt = n;
        } else {
            ts[i].seq.init_state = init[i];
            ts[i].seq.init_len = lens[i];
        }
        ts[i].seq.no_speculate = i == REF;
        /* drafts drawn at temperature 1: the test compares the draft's rows (seq.spec_q) */
        ts[i].seq.draft_sampling = (eng_draft_sampling_t){.temperature = 1.0f, .seed = 7};
        kv_commit_buf_ext(&ts[i], ri, 29 + 10 + n_gen, true);
        eng_runner_stats(r, &st);
        eng_runner_stats(r2, &st2);
        uint64_t before = st.draft_resumed + st2.draft_resumed;
        int logged = seen.n;
        run(&f.loop, ri, &ts[i], 1);
        eng_runner_stats(r, &st);
        eng_runner_stats(r2, &st2);
        CHECK_MSG(st.draft_resumed + st2.draft_resumed - before == (i == ON ? 1u : 0u),
                  "turn %d: %llu resumed", i,
                  (unsigned long long)(st.draft_resumed + st2.draft_resumed - before));
        CHECK_MSG(seen.n - logged == (i == TRUNC || i == POOL ? 1 : 0), "turn %d: %d logged", i,
                  seen.n - logged);
        CHECK_MSG(memcmp(ts[i].out, ts[REF].out, sizeof(int32_t) * (size_t)n_gen) == 0,
                  "turn %d: other tokens", i);
        if (i != REF) CHECK_MSG(ts[i].seq.spec_drafted > 0 || i == POOL, "turn %d: no drafts", i);
        /* the model's state is plain decoding's (the history differs for the uninterrupted) */
        CHECK(ckpt_ext_split(ts[i].state, ts[i].seq.state_len, SB, KV, &sl, &ext, err,
                             sizeof(err)) == 0);
        CHECK(sl == SB + (29 + 10 + (size_t)n_gen) * KV && !memcmp(ts[i].state, ts[REF].state, sl));
    }
    /* resumed: the uninterrupted turn's drafts, the draft's rows bit for bit, and acceptance;
     * rebuilt over the 16 tokens of history: other rows */
    const size_t nb = sizeof(uint64_t) * (size_t)n_gen;
    CHECK(memcmp(ts[ON].drafts, ts[UNINT].drafts, sizeof(int32_t) * (size_t)n_gen) == 0);
    CHECK(memcmp(ts[ON].qhash, ts[UNINT].qhash, nb) == 0 && ts[ON].qhash[1] != 0);
    CHECK(ts[ON].seq.spec_drafted == ts[UNINT].seq.spec_drafted &&
          ts[ON].seq.spec_accepted == ts[UNINT].seq.spec_accepted);
    for (int i = SIZE; i <= SMALLBUF; i++)
        CHECK_MSG(memcmp(ts[i].qhash, ts[UNINT].qhash, nb) != 0,
                  "turn %d: a draft rebuilt over 16 tokens drafts as the uninterrupted one", i);
    for (int i = 0; i < N; i++) {
        teardown(&ts[i]);
        free(bad[i]);
    }
    teardown(&t1);
    teardown(&small);
    eng_runner_destroy(r2);
    eng_runner_destroy(r);
    fx_close(&f);
    wrk_backend_destroy(dbe2);
    wrk_model_free(dm2);
    wrk_backend_destroy(dbe);
    wrk_model_free(dm);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    setenv("UV_THREADPOOL_SIZE", "2", 1); /* as eng_runner_test */
    RUN(test_speculate);
    RUN(test_draft_model);
    RUN(test_draft_checkpoint);
    RUN(test_kv_draft_checkpoint);
    RUN(test_history);
    return rcd_test_summary();
}
