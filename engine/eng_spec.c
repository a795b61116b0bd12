/* engine: speculative decoding on the loop side — the runner's speculation set up at create
 * (n-gram or a draft model, the size of the draft state a commit carries), a turn's policy and
 * the draft state its checkpoint carried at submit, the draft model's bookkeeping after each
 * device run, sampling a verify entry's rows in order and the scheduler's reservation
 * (engine/README.md, "Speculative decoding"); the runner (eng_runner.c) calls it from create,
 * submit and eng__plan_done, and from submit_plan for a verify entry's k and the gain check's
 * samples. */
#include "common/rcd_metrics.h"
#include "engine/eng_int.h"

#include <stdlib.h>
#include <string.h>

/* eng_runner_create_cfg: checks the speculation options and creates the draft source (none
 * with spec_mode off, or on a backend without verify entries: logged); with a draft model, the
 * device's proposal jobs and the size of the draft state a commit carries (spec_history > 0). */
int eng__spec_create(eng_runner_t *r, char *err, size_t errlen)
{
    const eng_runner_config_t *cfg = &r->cfg;
    if (cfg->spec_history < 0 || cfg->spec_history > ENG_SPEC_HISTORY_MAX)
        return rcd_fail(RCD_EINVAL, err, errlen, "runner: spec history %d tokens (0..%d)",
                        (int)cfg->spec_history, ENG_SPEC_HISTORY_MAX);
    if (cfg->spec_mode == ENG_SPEC_OFF) return 0;
    const wrk_model_info_t *mi = wrk_model_info(wrk_backend_model(r->be));
    if ((cfg->spec_mode != ENG_SPEC_NGRAM && cfg->spec_mode != ENG_SPEC_DRAFT) ||
        cfg->spec_tokens < 1 || cfg->spec_tokens > ENG_DRAFT_MAX || cfg->spec_max_batch < 0)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "runner: speculation mode %d with %d tokens (1..%d), max batch %d",
                        (int)cfg->spec_mode, cfg->spec_tokens, ENG_DRAFT_MAX, cfg->spec_max_batch);
    if (!wrk_spec_supported(r->be)) {
        eng__log(r, ENG_INFO, "speculate",
                 "speculative decoding off: the %s backend has no verify entries for %s",
                 wrk_backend_name(r->be), mi->architecture);
        return 0;
    }
    if (cfg->spec_mode == ENG_SPEC_NGRAM) {
        /* the lookup window: the history kept and 8,192 tokens of the turn beside it */
        eng_ngram_opts_t no = {.window = cfg->spec_history + 8192};
        if (eng_draft_ngram_create(&no, &r->draft))
            return rcd_fail(RCD_ENOMEM, err, errlen, "runner: out of memory");
        r->st.spec_on = true;
        eng__log(r, ENG_INFO, "speculate",
                 "speculative decoding: n-gram drafts, up to %d per verify, none in steps "
                 "of more than %d sequences",
                 cfg->spec_tokens, cfg->spec_max_batch);
        return 0;
    }
    if (!cfg->draft_be)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "runner: --speculate draft without a "
                        "draft model's backend");
    const wrk_model_info_t *di = wrk_model_info(wrk_backend_model(cfg->draft_be));
    if (di->vocab_size != mi->vocab_size)
        return rcd_fail(RCD_EMISMATCH, err, errlen,
                        "runner: the draft model's vocabulary (%d) is not the model's (%d)",
                        di->vocab_size, mi->vocab_size);
    int rc = eng_draft_model_create(cfg->draft_be, r->n_slots, &r->draft, err, errlen);
    if (rc) return rc;
    if (!(r->w_jobs = calloc((size_t)r->n_slots, sizeof(*r->w_jobs))))
        return rcd_fail(RCD_ENOMEM, err, errlen, "runner: out of memory");
    r->draft_fp = di->fingerprint; /* with a history to resume it at, the draft's */
    if (cfg->spec_history > 0) {   /* state (and its KV) rides in commits */
        r->draft_state_bytes = di->state_bytes;
        r->draft_kv_bpt = di->n_kv_layers > 0 ? di->kv_bytes_per_token : 0;
    }
    r->st.spec_on = true;
    eng__log(r, ENG_INFO, "speculate",
             "speculative decoding: a draft model (%s, %s, %zu state bytes per slot + "
             "%zu per KV position), up to %d drafts per verify, none in steps of more "
             "than %d sequences",
             di->architecture, di->fingerprint_hex, di->state_bytes,
             di->n_kv_layers > 0 ? di->kv_bytes_per_token : (size_t)0, cfg->spec_tokens,
             cfg->spec_max_batch);
    return 0;
}

/* eng_runner_submit: a turn that speculates (a draft source, s->no_speculate unset) gets its
 * policy and its draft sampling; a draft model's section of its loaded payload (dsec,
 * dsec_bytes) that fits this draft is kept for the slot's LOAD, the draft then holding all but
 * the newest `lag` of the n_loaded history tokens. Its logit rows come at its first verify. */
void eng__spec_turn_init(eng_runner_t *r, eng__req_t *q, const eng_seq_t *s, const void *dsec,
                         uint64_t dsec_bytes, int32_t n_loaded)
{
    if (!r->draft || s->no_speculate) return;
    q->spec = true;
    eng_spec_policy_init(&q->pol, r->cfg.spec_tokens, r->cfg.spec_max_batch);
    q->d_smp = s->draft_sampling;
    q->d_rng = eng_draft_rng_seed(s->draft_sampling.seed);
    int32_t lag; /* the stored history's newest `lag` tokens are not in the draft state */
    if (dsec && r->draft_state_bytes &&
        eng_draft_section_use(dsec, dsec_bytes, r->draft_fp, r->draft_state_bytes, r->draft_kv_bpt,
                              n_loaded, &q->d_init, &q->d_init_len, &lag))
        q->d_init_fed = n_loaded - lag; /* loaded (and counted) at its LOAD */
}

/* eng__plan_done: the draft model's side of the device's run — a failed proposal (the step's
 * entries decoded plainly: the step is not a gain-check sample), the checkpointed draft states
 * loaded or not, the states written back at a swap-in — logged and counted. */
void eng__spec_run_done(eng_runner_t *r)
{
    if (r->w_draft_rc) { /* the step's entries decoded plainly */
        r->w_gate = -1;
        eng__log(r, ENG_WARN, "speculate", "draft model step failed (%s): decoded plainly",
                 r->w_draft_err);
        r->w_draft_rc = 0;
    }
    r->st.draft_resumed += (uint64_t)r->w_draft_loaded;
    r->st.draft_swap_ins += (uint64_t)r->w_draft_swapped_in;
    if (r->w_draft_load_failed) /* a KV draft's pool short of blocks, or a malformed state */
        eng__log(r, ENG_INFO, "speculate",
                 "%d checkpointed draft state(s) not loaded (%s): rebuilt over the history",
                 r->w_draft_load_failed, rcd_strerror(r->w_draft_load_rc));
    r->w_draft_loaded = r->w_draft_load_failed = r->w_draft_swapped_in = 0;
}

/* The draft tokens the scheduler reserves beside the turn's next decode entries: the policy's
 * k, none while it pauses (one near the pause's end, so it can resume). */
int32_t eng__spec_reserve(const eng__req_t *q)
{
    if (q->pol.paused > 2) return 0;
    return q->pol.paused > 0 ? 1 : q->pol.k;
}

/* A verify entry of the last sampled token and k drafts ran: its rows are sampled in order, one
 * LOGITS callback each exactly as plain decoding would (so stops, max_tokens, logprobs,
 * penalties, seeds and cancellation behave the same), while each sampled token equals the
 * next draft; the first that differs (or the row after the last draft, or a stop) ends it.
 * The slot is rolled back to the tokens kept (wrk_spec_accept, first thing in the device's
 * next run) and the scheduler is told how many extra tokens the entry sampled. */
void eng__spec_sample(eng_runner_t *r, eng__req_t *q, int32_t slot, int32_t k, sched_result_t *res)
{
    const int32_t n0 = q->n_gen;
    eng_seq_t *s = q->seq;
    s->spec_drafted += (uint32_t)k;
    int32_t j = 0;
    for (;; j++) {
        memcpy(q->logits, q->spec_logits + (size_t)j * (size_t)r->vocab,
               sizeof(float) * (size_t)r->vocab);
        s->spec_draft = j < k ? q->w_toks[j + 1] : -1;
        s->spec_q = j < k && q->spec_q && q->d_smp.temperature > 0.0f
                        ? q->spec_q + (size_t)j * (size_t)r->vocab
                        : NULL;
        q->decided = false;
        q->outcome = SCHED_OUT_TOKEN;
        s->cb(s, ENG_SEQ_LOGITS);
        if (!q->decided) {
            eng__fail_req(r, q, "the sampler neither fed nor finished the sequence");
            return;
        }
        s->spec_draft = -1;
        s->spec_q = NULL;
        if (q->cancelled) return; /* the slot is reset or refilled: no rollback needed */
        if (q->finished || j == k || q->toks[q->n_toks - 1] != q->w_toks[j + 1]) break;
        s->spec_accepted++; /* draft j + 1 was the token sampled: its row is next */
    }
    const int32_t emitted = q->n_gen - n0, kept = emitted - 1;
    r->st.spec_verifies++;
    r->w_emitted += emitted;
    rcd_counter_add(&rcd_metrics.spec_draft_tokens, (uint64_t)k);
    rcd_counter_add(&rcd_metrics.spec_accepted_tokens, (uint64_t)kept);
    eng_spec_policy_update(&q->pol, k, kept);
    q->extra += kept;
    if (emitted < k + 1) { /* keep the entry's first `emitted` tokens */
        r->acc_slot[r->n_acc] = slot;
        r->acc_keep[r->n_acc++] = emitted;
    }
    /* A turn that ended inside a run of accepted drafts: entries planned past it are dropped
     * (the scheduler planned one token per step; STOP rewinds what it planned) */
    if (q->finished && kept > 0) {
        q->outcome = SCHED_OUT_STOP;
        q->stop_upto = r->last_issued;
    }
    *res = (sched_result_t){.id = q->id,
                            .outcome = q->outcome,
                            .n_drafted = k,
                            .n_extra = kept,
                            .set_spec = true,
                            .spec_tokens = eng__spec_reserve(q)};
}

/* The k drafts of a decode entry that may speculate: the policy's k within the reservation and
 * what max_new leaves, 0 where its rows (or the draft's q rows) cannot be allocated; n-gram
 * drafts are proposed here into q->w_toks + 1 (over the session's history and this turn), a
 * draft model's on the device thread. */
int32_t eng__spec_verify_k(eng_runner_t *r, eng__req_t *q, const sched_entry_t *e,
                           int32_t n_entries)
{
    int32_t k = eng_spec_policy_next(&q->pol, n_entries), left = q->max_new - q->n_gen - 1;
    if (k > e->n_draft) k = e->n_draft;
    if (k > left) k = left;
    if (k > 0 && !q->spec_logits) /* no memory for the rows: a plain decode */
        q->spec_logits =
            malloc(sizeof(float) * (size_t)r->vocab * (size_t)(r->cfg.spec_tokens + 1));
    if (k > 0 && !q->spec_logits) k = 0;
    if (k > 0 && r->draft->vt->propose_batch) { /* the device thread drafts */
        if (q->d_smp.temperature > 0.0f && !q->spec_q)
            q->spec_q = malloc(sizeof(float) * (size_t)r->vocab * (size_t)r->cfg.spec_tokens);
        if (q->d_smp.temperature > 0.0f && !q->spec_q) k = 0;
    } else if (k > 0) {
        /* over the session's history and this turn */
        k = eng_draft_propose(r->draft, q->ctx, q->n_hist + q->n_toks, k, q->w_toks + 1);
    }
    return k;
}

/* The gain check's sample of the step just run (r->w_gate's bucket): logged when it pauses. */
void eng__spec_gate_observe(eng_runner_t *r)
{
    eng_spec_gate_t *g = &r->gate[r->w_gate];
    if (!eng_spec_gate_observe(g, r->w_spec, (double)r->w_step_ns / 1e3, (double)r->w_emitted))
        return;
    eng__log(r, ENG_INFO, "speculate",
             "speculation does not pay in steps of bucket %d (%.3f tokens/ms speculating, %.3f "
             "plain): paused for %d steps",
             r->w_gate, g->spec_tok * 1e3 / g->spec_us, g->plain_tok * 1e3 / g->plain_us,
             g->paused);
}
