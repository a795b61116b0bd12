/* workers: the backend-independent side of every backend — the wrappers and accessors over
 * wrk_backend_i, the option defaults and the batch validation (backend_int.h). */
#include <stdlib.h>
#include <string.h>

#include "common/rcd_cpus.h"
#include "workers/backend_int.h"

int wrk_backend_opts_resolve(const wrk_backend_opts_t *opts, wrk_backend_opts_t *out, char *err,
                             size_t errlen)
{
    wrk_backend_opts_t o = opts ? *opts : (wrk_backend_opts_t){0};
    if (o.n_threads <= 0) o.n_threads = rcd_cpus_available(NULL, 0);
    if (o.n_threads > 256) o.n_threads = 256;
    if (o.n_slots <= 0) o.n_slots = 8;
    if (o.max_step_tokens <= 0) o.max_step_tokens = 512;
    if (o.n_slots > 1 << 20 || o.max_step_tokens > 1 << 20)
        return rcd_fail(RCD_EINVAL, err, errlen, "backend: n_slots or max_step_tokens too large");
    if (o.kv_block_tokens <= 0) o.kv_block_tokens = 16;
    if (o.kv_block_tokens > 1 << 16)
        return rcd_fail(RCD_EINVAL, err, errlen, "backend: kv_block_tokens too large");
    if (o.n_kv_blocks <= 0)
        o.n_kv_blocks = (int)(((long)o.n_slots * 2048 + o.kv_block_tokens - 1) / o.kv_block_tokens);
    if ((long)o.n_kv_blocks * o.kv_block_tokens > 1L << 30)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "backend: n_kv_blocks x kv_block_tokens exceeds 2^30 positions");
    if (o.weights && *o.weights && strcmp(o.weights, "native") != 0 &&
        strcmp(o.weights, "q8") != 0 && strcmp(o.weights, "q4") != 0)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "backend: weights must be native, q8 or q4 (got \"%s\")", o.weights);
    *out = o;
    return 0;
}

int wrk__check_batch(const wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err,
                     size_t errlen)
{
    const wrk_model_info_t *mi = wrk_model_info(b->model);
    long total = 0;
    if (n_seqs < 1 || !seqs) return rcd_fail(RCD_EINVAL, err, errlen, "step: empty batch");
    if (n_seqs > b->n_slots)
        return rcd_fail(RCD_EINVAL, err, errlen, "step: %d sequences but only %d slots", n_seqs,
                        b->n_slots);
    for (int i = 0; i < n_seqs; i++) {
        const wrk_seq_t *s = &seqs[i];
        if (s->slot < 0 || s->slot >= b->n_slots)
            return rcd_fail(RCD_ERANGE, err, errlen, "step: entry %d: slot %d out of [0, %d)", i,
                            s->slot, b->n_slots);
        for (int j = 0; j < i; j++)
            if (seqs[j].slot == s->slot)
                return rcd_fail(RCD_EINVAL, err, errlen,
                                "step: slot %d appears twice in one batch", s->slot);
        if (s->n_tokens < 1 || !s->tokens)
            return rcd_fail(RCD_EINVAL, err, errlen, "step: entry %d has no tokens", i);
        if (s->n_logits < 0 || s->n_logits > s->n_tokens || (s->n_logits && !s->logits))
            return rcd_fail(RCD_EINVAL, err, errlen,
                            "step: entry %d asks for %d logit rows of %d tokens", i, s->n_logits,
                            s->n_tokens);
        if (s->verify && !b->vt->spec_accept)
            return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                            "step: entry %d: the %s backend has no speculative verify", i,
                            b->vt->name);
        if (s->verify && s->n_tokens > WRK_SPEC_MAX_TOKENS)
            return rcd_fail(RCD_EINVAL, err, errlen,
                            "step: entry %d: a verify entry of %d tokens (at most %d)", i,
                            s->n_tokens, WRK_SPEC_MAX_TOKENS);
        for (int j = 0; j < s->n_tokens; j++)
            if (s->tokens[j] < 0 || s->tokens[j] >= mi->vocab_size)
                return rcd_fail(RCD_ERANGE, err, errlen,
                                "step: entry %d: token id %d out of the vocabulary [0, %d)", i,
                                s->tokens[j], mi->vocab_size);
        total += s->n_tokens;
    }
    if (total > b->max_step_tokens)
        return rcd_fail(RCD_ETOOBIG, err, errlen, "step: %ld tokens exceed the step budget of %d",
                        total, b->max_step_tokens);
    return 0;
}

const char *wrk_backend_name(const wrk_backend_t *b)
{
    return b->vt->name;
}
int wrk_backend_n_slots(const wrk_backend_t *b)
{
    return b->n_slots;
}
int wrk_backend_max_step_tokens(const wrk_backend_t *b)
{
    return b->max_step_tokens;
}
const char *wrk_backend_isa(const wrk_backend_t *b)
{
    return b->isa;
}
const wrk_model_t *wrk_backend_model(const wrk_backend_t *b)
{
    return b->model;
}

int wrk_step(wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen)
{
    return b->vt->step(b, seqs, n_seqs, err, errlen);
}
int wrk_state_reset(wrk_backend_t *b, int slot)
{
    return b->vt->state_reset(b, slot);
}
int wrk_state_copy(wrk_backend_t *b, int dst_slot, int src_slot)
{
    return b->vt->state_copy(b, dst_slot, src_slot);
}
void wrk_backend_destroy(wrk_backend_t *b)
{
    if (b) b->vt->destroy(b);
}

size_t wrk_state_bytes(wrk_backend_t *b, int slot)
{
    if (b->vt->state_size) return b->vt->state_size(b, slot);
    return wrk_model_info(b->model)->state_bytes;
}
int wrk_state_read_n(wrk_backend_t *b, int slot, void *dst, size_t cap, size_t *len)
{
    if (b->vt->state_size) return b->vt->state_read_n(b, slot, dst, cap, len);
    const size_t n = wrk_model_info(b->model)->state_bytes;
    if (cap < n) return RCD_ETOOBIG;
    int rc = b->vt->state_read_n(b, slot, dst, n, NULL);
    if (rc == 0 && len) *len = n;
    return rc;
}
int wrk_state_write_n(wrk_backend_t *b, int slot, const void *src, size_t len)
{
    if (b->vt->state_size) return b->vt->state_write_n(b, slot, src, len);
    if (len != wrk_model_info(b->model)->state_bytes) return RCD_EFORMAT;
    return b->vt->state_write_n(b, slot, src, len);
}
int wrk_spec_accept(wrk_backend_t *b, int slot, int n_keep)
{
    if (!b->vt->spec_accept) return RCD_EUNSUPPORTED;
    if (slot < 0 || slot >= b->n_slots) return RCD_ERANGE;
    return b->vt->spec_accept(b, slot, n_keep);
}
bool wrk_spec_supported(const wrk_backend_t *b)
{
    if (!b->vt->spec_accept) return false;
    return b->vt->spec_ok ? b->vt->spec_ok(b) : true;
}
void wrk_kv_blocks(wrk_backend_t *b, int64_t *n_free, int64_t *n_total)
{
    *n_free = *n_total = 0;
    if (b->vt->kv_blocks) b->vt->kv_blocks(b, n_free, n_total);
}

void wrk_threads(wrk_backend_t *b, int *active, int *max, uint64_t *changes, bool *adapting,
                 const char **why)
{
    int a = 0, m = 0;
    uint64_t ch = 0;
    bool ad = false;
    const char *w = NULL;
    if (b->vt->threads) b->vt->threads(b, &a, &m, &ch, &ad, &w);
    if (active) *active = a;
    if (max) *max = m;
    if (changes) *changes = ch;
    if (adapting) *adapting = ad;
    if (why) *why = w;
}
