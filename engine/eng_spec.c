/* engine: speculative decoding on the loop side — sampling a verify entry's rows in order
 * and the scheduler's reservation (engine/README.md, "Speculative decoding"); the runner
 * (eng_runner.c) calls it from eng__plan_done, and from submit_plan for a verify entry's k and
 * the gain check's samples. */
#include "common/rcd_metrics.h"
#include "engine/eng_int.h"

#include <stdlib.h>
#include <string.h>

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
