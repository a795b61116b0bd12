/* engine: the session's extension sections in a checkpoint payload (statestore/ckpt_ext.h):
 * split off a loaded payload at submit (the state goes to the slot; the history and a draft
 * model's state stay with the turn), appended after the state at a commit. */
#include "engine/eng_int.h"
#include "statestore/ckpt_ext.h"

/* Sections hold int32 little-endian (ckpt_ext.h): copied as they are on this host. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian host");

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* eng_runner.h: the bytes a commit buffer needs past the state for the sections. A draft
 * state whose bound does not fit a size_t is left out (such a draft is rebuilt). */
size_t eng_runner_ext_bound(const eng_runner_t *r, uint64_t n_positions)
{
    if (r->cfg.spec_history <= 0) return 0;
    ckpt_ext_sec_t h[2] = {
        {.name = CKPT_EXT_HIST, .data = r, .elem = 4, .bytes = (uint64_t)r->cfg.spec_history * 4},
        {.name = ENG_DRAFT_SECTION, .data = r, .elem = 1, .bytes = 0}};
    size_t room = SIZE_MAX / 2 - ENG_DRAFT_SECTION_HEAD - r->draft_state_bytes; /* and padding */
    if (!r->draft_state_bytes || (r->draft_kv_bpt && n_positions > room / r->draft_kv_bpt))
        return ckpt_ext_size(h, 1);
    h[1].bytes = ENG_DRAFT_SECTION_HEAD + r->draft_state_bytes + n_positions * r->draft_kv_bpt;
    return ckpt_ext_size(h, 2);
}

/* A loaded payload of *init_len bytes: *init_len becomes the state's own length; *hist /
 * *n_hist view the history section (every id checked against the vocabulary), *dsec /
 * *dsec_bytes the draft model's section (views into the payload). A payload whose sections do
 * not check out: RCD_ECORRUPT. */
int eng__ext_split(const eng_runner_t *r, const void *payload, size_t *init_len,
                   const int32_t **hist_out, int32_t *n_hist_out, const void **dsec,
                   uint64_t *dsec_bytes, char *err, size_t errlen)
{
    ckpt_ext_t ext;
    char why[160];
    int rc = ckpt_ext_split(payload, *init_len, r->state_bytes, r->kv_bpt, init_len, &ext, why,
                            sizeof(why));
    if (rc) return rcd_fail(rc, err, errlen, "session state: %s", why);
    const ckpt_ext_sec_t *h = ckpt_ext_find(&ext, CKPT_EXT_HIST);
    const ckpt_ext_sec_t *ds = ckpt_ext_find(&ext, ENG_DRAFT_SECTION);
    if (ds) *dsec = ds->data, *dsec_bytes = ds->bytes;
    if (h && h->elem != 4)
        return rcd_fail(RCD_ECORRUPT, err, errlen, "session state: history of %u-byte elements",
                        h->elem);
    if (!h) return 0;
    const int32_t *hist = h->data;
    int32_t n_hist = (int32_t)(h->bytes / 4 < (uint64_t)INT32_MAX ? h->bytes / 4 : INT32_MAX);
    for (int32_t j = 0; j < n_hist; j++) { /* every id is fed to the model as a draft */
        int32_t t;
        memcpy(&t, (const uint8_t *)hist + 4 * (size_t)j, 4);
        if (t < 0 || t >= r->vocab)
            return rcd_fail(RCD_ECORRUPT, err, errlen,
                            "session state: history token %d out of the vocabulary (%d)", t,
                            r->vocab);
    }
    *hist_out = hist;
    *n_hist_out = n_hist;
    return 0;
}

/* A commit: the session's sections go after the state read into state_out (the history: the
 * newest spec_history tokens of the loaded history and this turn's tokens, int32 little-endian,
 * the host's order: see submit; the draft model's state when the commit read it and the
 * history kept holds the tokens it still lacks). Returns the bytes appended; 0 with
 * spec_history 0 (the format without sections), or when state_out has no room for them (the
 * state goes alone; logged when the caller left some room, but too little). Without room for
 * the draft's state the history goes alone (the next turn rebuilds the draft). */
size_t eng__ext_append(eng_runner_t *r, eng__req_t *q)
{
    int32_t n = q->n_hist + q->n_toks, keep = n < r->cfg.spec_history ? n : r->cfg.spec_history;
    if (keep <= 0 || q->state_len >= q->state_cap) return 0; /* no room asked: the state alone */
    ckpt_ext_sec_t secs[2] = {{.name = CKPT_EXT_HIST,
                               .data = q->ctx + (n - keep),
                               .elem = 4,
                               .bytes = (uint64_t)keep * 4}};
    uint8_t *dst = (uint8_t *)q->state_out + q->state_len;
    size_t cap = q->state_cap - q->state_len, wrote = 0;
    int32_t lag = n - q->d_commit_fed;
    if (q->d_commit && lag >= 1 && lag <= keep) {
        uint8_t *dsec = NULL;
        secs[1] = (ckpt_ext_sec_t){.name = ENG_DRAFT_SECTION,
                                   .data = q->d_buf, /* sized now, written from dsec */
                                   .elem = 1,
                                   .bytes = ENG_DRAFT_SECTION_HEAD + (uint64_t)q->d_len};
        size_t need = ckpt_ext_size(secs, 2);
        if (need <= cap && (dsec = malloc(ENG_DRAFT_SECTION_HEAD + q->d_len))) {
            eng_draft_section_head(dsec, r->draft_fp, (uint64_t)lag);
            memcpy(dsec + ENG_DRAFT_SECTION_HEAD, q->d_buf, q->d_len);
            secs[1].data = dsec;
            int rc = ckpt_ext_write(dst, cap, secs, 2, &wrote);
            free(dsec);
            if (!rc) return wrote;
        }
        if (need <= cap) /* the copy's memory */
            eng__log(r, ENG_WARN, "speculate",
                     "commit: out of memory for the draft model's state (%zu bytes): the "
                     "history goes alone, the draft is rebuilt next turn",
                     q->d_len);
        else
            eng__log(r, ENG_INFO, "speculate",
                     "commit: no room for the draft model's state (%zu bytes of sections, %zu "
                     "left after the state): the history goes alone, the draft is rebuilt next "
                     "turn",
                     need, cap);
    }
    if (ckpt_ext_write(dst, cap, secs, 1, &wrote)) {
        eng__log(r, ENG_WARN, "runner",
                 "commit: no room for the session's history (%zu bytes after a %zu-byte state, "
                 "buffer %zu): committed without it",
                 ckpt_ext_size(secs, 1), q->state_len, q->state_cap);
        return 0;
    }
    return wrote;
}
