/* daemon: the minimal batching runner — the seam a later session replaces with scheduler/.
 * It owns the backend's state slots, admits sequences FIFO, and runs one ragged step at a
 * time on a libuv worker thread: every decoding sequence's next token plus prefill chunks
 * within the step's token budget. Everything but the step itself runs on the loop thread. */
#ifndef DMN_RUNNER_H
#define DMN_RUNNER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "workers/wrk.h"

typedef struct dmn_runner dmn_runner_t;
typedef struct dmn_seq dmn_seq_t;

typedef enum dmn_seq_ev {
    DMN_SEQ_LOGITS,  /* logits of the last fed token are in seq->logits: call _feed or _finish */
    DMN_SEQ_STARTED, /* first step with this sequence began (for queue timings) */
    DMN_SEQ_DONE,    /* terminal: _finish with a state completed; state_out is filled */
    DMN_SEQ_FAILED,  /* terminal: seq->rc says why (RCD_ECANCELLED after _cancel) */
} dmn_seq_ev_t;

typedef void (*dmn_seq_cb)(dmn_seq_t *s, dmn_seq_ev_t ev);

/* Filled by the caller before dmn_runner_submit; the runner owns the private part. The seq
 * and everything it points to must live until a terminal event or a synchronous release. */
struct dmn_seq {
    const int32_t *prompt; /* borrowed; tokens fed before the first logits, >= 1 */
    int32_t n_prompt;
    const void *init_state; /* borrowed until DMN_SEQ_STARTED; NULL: zero state */
    float *logits;          /* caller-owned, vocab floats */
    dmn_seq_cb cb;
    void *user;
    int rc; /* for DMN_SEQ_FAILED */
    /* private */
    dmn_seq_t *next;
    int32_t slot;
    int32_t fed;     /* prompt tokens fed so far */
    int32_t pending; /* token to feed next (-1: none) */
    bool admitted, started, in_step, cancelled, finishing, decode_ready;
    void *state_out;
};

int dmn_runner_create(uv_loop_t *loop, wrk_backend_t *be, int max_queue, dmn_runner_t **out);
void dmn_runner_destroy(dmn_runner_t *r); /* only when idle */
/* Queues a sequence: RCD_ETOOBIG when max_queue sequences are already held. */
int dmn_runner_submit(dmn_runner_t *r, dmn_seq_t *s);
/* After DMN_SEQ_LOGITS: feed the sampled token; its logits come with the next event. */
void dmn_runner_feed(dmn_runner_t *r, dmn_seq_t *s, int32_t token);
/* After DMN_SEQ_LOGITS: the sequence ends. With state_out, `last` (the token sampled but not
 * yet fed, >= 0) is fed and the state after it copied into state_out; DMN_SEQ_DONE follows
 * and 1 is returned. Without, the slot is freed at once, no event follows, and 0 returned. */
int dmn_runner_finish(dmn_runner_t *r, dmn_seq_t *s, int32_t last, void *state_out);
/* Stops a sequence at the next step boundary. Returns 0 if it was released at once (no
 * event follows), 1 if DMN_SEQ_FAILED with RCD_ECANCELLED follows. */
int dmn_runner_cancel(dmn_runner_t *r, dmn_seq_t *s);
int dmn_runner_held(const dmn_runner_t *r); /* sequences queued or running */

#endif
