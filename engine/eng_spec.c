/* engine: speculative decoding on the loop side — sampling a verify entry's rows in order
 * and the scheduler's reservation (engine/README.md, "Speculative decoding"); the runner
 * (eng_runner.c) calls it from eng__plan_done. */
#include "common/rcd_metrics.h"
#include "engine/eng_int.h"

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
void eng__spec_sample(eng_runner_t *r, eng__req_t *q, int32_t slot, int32_t k,
                      sched_result_t *res)
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

