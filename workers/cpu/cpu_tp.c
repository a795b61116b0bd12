/* workers/cpu: tensor parallelism on the CPU backend — a group of N in-process ranks behind
 * one wrk_backend_t. Each rank is a CPU backend over its shard (tp_shard.c) with its own
 * state slots, activations and n_threads / N pool threads, and talks to the others through
 * the in-process communicator. The caller's thread plays rank 0, the group leader: it runs
 * its share, computes the logits and returns; state reads and writes gather and scatter the
 * shards so the blob is the TP=1 blob. */
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/cpu_int.h"

typedef struct tp {
    wrk_backend_t base;
    int n;
    wrk_pool_t *group;    /* thread r plays rank r; the caller is thread 0 */
    wrk_comm_t **comm;    /* [n] */
    wrk_shard_t **shards; /* [n] */
    wrk_cpu_t **ranks;    /* [n] */
} tp_t;

typedef enum op { OP_STEP, OP_RESET, OP_READ, OP_WRITE, OP_COPY } op_t;

typedef struct job {
    tp_t *tp;
    op_t op;
    const wrk_seq_t *seqs;
    int n_seqs;
    int slot, src_slot;
    float *dst;       /* OP_READ: the full blob */
    const float *src; /* OP_WRITE: the full blob */
} job_t;

static void run_rank(void *arg, int r, int n)
{
    job_t *j = arg;
    wrk_cpu_t *c = j->tp->ranks[r];
    const wrk_shard_t *s = c->shard;
    float *local = j->op == OP_STEP ? NULL : wrk_cpu_slot(c, j->slot);
    switch (j->op) {
    case OP_STEP:
        wrk__cpu_forward(c, j->seqs, j->n_seqs);
        break;
    case OP_RESET:
        memset(local, 0, c->state_floats * sizeof(float));
        break;
    case OP_READ: /* ranks write disjoint ranges: shared values only by their owner */
        for (int i = 0; i < s->n_runs; i++)
            if (s->runs[i].owner)
                memcpy(j->dst + s->runs[i].global, local + s->runs[i].local,
                       s->runs[i].n * sizeof(float));
        break;
    case OP_WRITE:
        for (int i = 0; i < s->n_runs; i++)
            memcpy(local + s->runs[i].local, j->src + s->runs[i].global,
                   s->runs[i].n * sizeof(float));
        break;
    case OP_COPY:
        if (j->slot != j->src_slot)
            memcpy(local, wrk_cpu_slot(c, j->src_slot), c->state_floats * sizeof(float));
        break;
    }
}

static void tp_destroy(wrk_backend_t *b)
{
    tp_t *t = (tp_t *)b;
    wrk_pool_destroy(t->group);
    for (int r = 0; r < t->n; r++) {
        if (t->ranks && t->ranks[r]) t->ranks[r]->base.vt->destroy(&t->ranks[r]->base);
        if (t->shards) wrk_shard_free(t->shards[r]);
        if (t->comm) wrk_comm_destroy(t->comm[r]);
    }
    free(t->ranks);
    free(t->shards);
    free(t->comm);
    free(t);
}

static int run_slot_op(wrk_backend_t *b, op_t op, int slot, int src_slot, float *dst,
                       const float *src)
{
    tp_t *t = (tp_t *)b;
    if (slot < 0 || slot >= b->n_slots || src_slot < 0 || src_slot >= b->n_slots) return RCD_ERANGE;
    job_t j = {.tp = t, .op = op, .slot = slot, .src_slot = src_slot, .dst = dst, .src = src};
    wrk_pool_run(t->group, run_rank, &j);
    return 0;
}

static int tp_state_reset(wrk_backend_t *b, int slot)
{
    return run_slot_op(b, OP_RESET, slot, slot, NULL, NULL);
}

/* Fixed-size states (no state_size): the wrappers checked cap and len. */
static int tp_state_read_n(wrk_backend_t *b, int slot, void *dst, size_t cap, size_t *len)
{
    return run_slot_op(b, OP_READ, slot, slot, dst, NULL);
}

static int tp_state_write_n(wrk_backend_t *b, int slot, const void *src, size_t len)
{
    return run_slot_op(b, OP_WRITE, slot, slot, NULL, src);
}

static int tp_state_copy(wrk_backend_t *b, int dst, int src)
{
    return run_slot_op(b, OP_COPY, dst, src, NULL, NULL);
}

static int tp_step(wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen)
{
    int rc = wrk__check_batch(b, seqs, n_seqs, err, errlen);
    if (rc) return rc;
    tp_t *t = (tp_t *)b;
    job_t j = {.tp = t, .op = OP_STEP, .seqs = seqs, .n_seqs = n_seqs};
    wrk_pool_run(t->group, run_rank, &j);
    for (int r = 0; r < t->n; r++)
        if ((rc = t->ranks[r]->comm_rc)) {
            t->ranks[r]->comm_rc = 0;
            return rcd_fail(rc, err, errlen, "step: tensor-parallel rank %d: all-reduce failed", r);
        }
    return 0;
}

static const wrk_backend_i tp_vt = {
    .name = "cpu-tp",
    .destroy = tp_destroy,
    .state_reset = tp_state_reset,
    .state_copy = tp_state_copy,
    .step = tp_step,
    .state_read_n = tp_state_read_n,
    .state_write_n = tp_state_write_n,
};

/* The shards' owned runs must cover the blob exactly once, or a state read would leave
 * holes or race: checked once at creation. */
static int check_cover(const tp_t *t, size_t state_floats, char *err, size_t errlen)
{
    unsigned char *hit = calloc(state_floats ? state_floats : 1, 1);
    if (!hit) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    int rc = 0;
    for (int r = 0; r < t->n && !rc; r++) {
        const wrk_shard_t *s = t->shards[r];
        for (int i = 0; i < s->n_runs && !rc; i++) {
            const wrk_shard_run_t *u = &s->runs[i];
            if (u->global + u->n > state_floats || u->local + u->n > s->state_floats)
                rc = RCD_EINTERNAL;
            for (size_t k = 0; !rc && u->owner && k < u->n; k++)
                if (hit[u->global + k]++) rc = RCD_EINTERNAL;
        }
    }
    for (size_t k = 0; !rc && k < state_floats; k++)
        if (!hit[k]) rc = RCD_EINTERNAL;
    free(hit);
    return rc ? rcd_fail(rc, err, errlen, "tensor parallel: the shards do not tile the state") : 0;
}

int wrk__cpu_tp_create(const wrk_model_t *m, const wrk_backend_opts_t *opts, wrk_backend_t **out,
                       char *err, size_t errlen)
{
    const int n = opts->tp;
    *out = NULL;
    if (n > WRK_COMM_INPROC_MAX)
        return rcd_fail(RCD_EINVAL, err, errlen, "tensor parallel: %d ranks (at most %d)", n,
                        WRK_COMM_INPROC_MAX);
    if (!m->fam->shard)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "tensor parallel: %s has no sharded forward (use tp 1)",
                        m->info.architecture);
    tp_t *t = calloc(1, sizeof *t);
    if (!t) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
    t->n = n;
    t->comm = calloc((size_t)n, sizeof *t->comm);
    t->shards = calloc((size_t)n, sizeof *t->shards);
    t->ranks = calloc((size_t)n, sizeof *t->ranks);
    int rc = RCD_ENOMEM;
    if (!t->comm || !t->shards || !t->ranks || wrk_pool_create(n, &t->group)) {
        rcd_fail(rc, err, errlen, "out of memory");
        goto fail;
    }
    if ((rc = wrk_comm_inproc_create(n, t->comm, err, errlen))) goto fail;
    /* a pre-quantized checkpoint's fp32 copies, filled while the shards copy their slices */
    if ((rc = wrk__pq_f32_hold(m, err, errlen))) goto fail;
    for (int r = 0; r < n && !rc; r++)
        rc = m->fam->shard(m, r, n, &t->shards[r], err, errlen);
    wrk__pq_f32_release(m);
    if (rc) goto fail;
    if ((rc = check_cover(t, m->info.state_bytes / sizeof(float), err, errlen))) goto fail;
    /* Each rank gets an equal share of the threads (at least one): its rank thread is thread
     * 0 of its pool, so the group runs n_threads threads in all when tp divides it. */
    wrk_backend_opts_t ro = *opts;
    ro.tp = 1;
    ro.n_threads = opts->n_threads / n > 0 ? opts->n_threads / n : 1;
    for (int r = 0; r < n; r++)
        if ((rc = wrk__cpu_create(m, &ro, t->shards[r], t->comm[r], &t->ranks[r], err, errlen)))
            goto fail;
    t->base = (wrk_backend_t){.vt = &tp_vt,
                              .model = m,
                              .n_slots = opts->n_slots,
                              .max_step_tokens = opts->max_step_tokens,
                              .isa = t->ranks[0]->base.isa};
    *out = &t->base;
    return 0;
fail:
    tp_destroy(&t->base);
    return rc;
}
