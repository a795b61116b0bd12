/* workers/cpu: the CPU backend — state slots in host memory, activation buffers sized once
 * for the step budget (no allocation in the hot path), and the vtable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/cpu/cpu_int.h"
#include "workers/cpu/kernels_q.h"

/* The families this backend runs: a new family adds its forward here. */
static const wrk_cpu_family_i *const families[] = {
    &wrk_cpu_mamba,     &wrk_cpu_mamba2, &wrk_cpu_granite,  &wrk_cpu_recurrentgemma,
    &wrk_cpu_nemotronh, &wrk_cpu_jamba,  &wrk_cpu_falconh1, &wrk_cpu_qwen3next};

static const wrk_cpu_family_i *find_family(wrk_family_t f)
{
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (families[i]->family == f) return families[i];
    return NULL;
}

static void cpu_destroy(wrk_backend_t *b)
{
    wrk_cpu_t *c = (wrk_cpu_t *)b;
    if (c->fam_ctx) c->fam->free(c->fam_ctx);
    wrk_pool_destroy(c->pool);
    free(c->slots);
    free(c->res);
    free(c->logit_in);
    free(c->logit_out);
    free(c->scratch);
    free(c->local);
    free(c->pf_next);
    wrk_kv_destroy(c->kv);
    if (c->spec)
        for (int i = 0; i < c->base.n_slots; i++) {
            free(c->spec[i].saved);
            free(c->spec[i].rec);
        }
    free(c->spec);
    free(c->spec_tmp);
    wrk_cpu_packs_free(c->packs);
    free(c);
}

/* A pending verify on the slot ends, keeping every token (reset, write, copy into, step). */
static void spec_drop(wrk_cpu_t *c, int slot)
{
    if (c->spec) c->spec[slot].n_tokens = 0;
}

static int check_slot(const wrk_backend_t *b, int slot)
{
    return slot >= 0 && slot < b->n_slots ? 0 : RCD_ERANGE;
}

static int cpu_state_reset(wrk_backend_t *b, int slot)
{
    wrk_cpu_t *c = (wrk_cpu_t *)b;
    if (check_slot(b, slot)) return RCD_ERANGE;
    memset(c->slots + (size_t)slot * c->state_floats, 0, c->state_floats * sizeof(float));
    if (c->kv) wrk_kv_reset(c->kv, slot);
    spec_drop(c, slot);
    return 0;
}

/* A KV model's blob: the fixed part (info.state_bytes, whose last 8 bytes are the position
 * count as a uint64; the slot keeps room for it but the count lives in c->kv), then the
 * exported KV of those positions. */
static size_t cpu_state_size(wrk_backend_t *b, int slot)
{
    wrk_cpu_t *c = (wrk_cpu_t *)b;
    if (check_slot(b, slot)) return 0;
    return c->m->info.state_bytes + (c->kv ? wrk_kv_export_bytes(c->kv, slot) : 0);
}

static int cpu_state_read_n(wrk_backend_t *b, int slot, void *dst, size_t cap, size_t *len)
{
    wrk_cpu_t *c = (wrk_cpu_t *)b;
    if (check_slot(b, slot)) return RCD_ERANGE;
    const size_t fixed = c->m->info.state_bytes, n = cpu_state_size(b, slot);
    if (cap < n) return RCD_ETOOBIG;
    memcpy(dst, c->slots + (size_t)slot * c->state_floats, fixed);
    if (c->kv) {
        const uint64_t count = (uint64_t)c->kv->n_tokens[slot];
        memcpy((char *)dst + fixed - sizeof count, &count, sizeof count);
        wrk_kv_export(c->kv, slot, (float *)((char *)dst + fixed));
    }
    if (len) *len = n;
    return 0;
}

static int cpu_state_write_n(wrk_backend_t *b, int slot, const void *src, size_t len)
{
    wrk_cpu_t *c = (wrk_cpu_t *)b;
    if (check_slot(b, slot)) return RCD_ERANGE;
    const size_t fixed = c->m->info.state_bytes;
    if (len < fixed) return RCD_EFORMAT;
    if (c->kv) {
        uint64_t count;
        memcpy(&count, (const char *)src + fixed - sizeof count, sizeof count);
        if (count > (uint64_t)wrk_kv_capacity(c->kv)) return RCD_ETOOBIG;
        if (len != fixed + count * c->m->info.kv_bytes_per_token) return RCD_EFORMAT;
        /* The blob may be unaligned: copy the KV part through the pool directly. */
        const float *kvsrc = (const float *)((const char *)src + fixed);
        int rc = wrk_kv_import(c->kv, slot, kvsrc, (int32_t)count);
        if (rc) return rc;
    } else if (len != fixed) {
        return RCD_EFORMAT;
    }
    memcpy(c->slots + (size_t)slot * c->state_floats, src, fixed);
    spec_drop(c, slot);
    return 0;
}

static int cpu_state_copy(wrk_backend_t *b, int dst, int src)
{
    wrk_cpu_t *c = (wrk_cpu_t *)b;
    if (check_slot(b, dst) || check_slot(b, src)) return RCD_ERANGE;
    if (c->kv && dst != src) {
        int rc = wrk_kv_copy(c->kv, dst, src);
        if (rc) return rc;
    }
    if (dst != src) {
        memcpy(c->slots + (size_t)dst * c->state_floats, c->slots + (size_t)src * c->state_floats,
               c->state_floats * sizeof(float));
        spec_drop(c, dst);
    }
    return 0;
}

/* The rollback buffers of every verify entry's slot (and the replay scratch), before the
 * step touches anything. */
static int spec_alloc(wrk_cpu_t *c, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen)
{
    for (int i = 0; i < n_seqs; i++) {
        if (!seqs[i].verify) continue;
        if (!c->spec || !c->fam->spec_replay)
            return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                            "step: entry %d: no speculative verify for %s on this backend", i,
                            c->m->info.architecture);
        wrk_cpu_spec_t *sp = &c->spec[seqs[i].slot];
        if (!c->spec_tmp && (c->spec_tmp = wrk_cpu_alloc_floats(c->spec_tmp_floats)))
            memset(c->spec_tmp, 0, c->spec_tmp_floats * sizeof(float));
        if (!sp->saved) sp->saved = wrk_cpu_alloc_floats(c->spec_saved_floats);
        if (!sp->rec) sp->rec = wrk_cpu_alloc_floats(c->spec_rec_floats);
        if (!c->spec_tmp || !sp->saved || !sp->rec)
            return rcd_fail(RCD_ENOMEM, err, errlen,
                            "step: cannot allocate the speculative rollback buffers of slot %d "
                            "(%zu bytes)",
                            seqs[i].slot,
                            (c->spec_saved_floats + c->spec_rec_floats) * sizeof(float));
    }
    return 0;
}

static int cpu_step(wrk_backend_t *b, const wrk_seq_t *seqs, int n_seqs, char *err, size_t errlen)
{
    int rc = wrk__check_batch(b, seqs, n_seqs, err, errlen);
    if (rc) return rc;
    wrk_cpu_t *c = (wrk_cpu_t *)b;
    if ((rc = spec_alloc(c, seqs, n_seqs, err, errlen))) return rc;
    if (c->kv && (rc = wrk_kv_reserve(c->kv, seqs, n_seqs, err, errlen))) return rc;
    for (int i = 0; i < n_seqs; i++) {
        const int slot = seqs[i].slot;
        spec_drop(c, slot);
        if (!seqs[i].verify) continue;
        wrk_cpu_spec_t *sp = &c->spec[slot];
        if (c->fam->spec_save)
            c->fam->spec_save(c, slot, seqs[i].n_tokens, sp->saved);
        else
            memcpy(sp->saved, wrk_cpu_slot(c, slot), c->state_floats * sizeof(float));
        sp->n_tokens = seqs[i].n_tokens;
        sp->kv0 = c->kv ? c->kv->n_tokens[slot] : 0;
    }
    if (c->adapt_on) wrk_adapt_begin(&c->adapt, c->pool, wrk_adapt_now());
    wrk__cpu_forward(c, seqs, n_seqs);
    if (c->adapt_on) wrk_adapt_end(&c->adapt, wrk_adapt_now());
    if (c->kv) wrk_kv_advance(c->kv, seqs, n_seqs);
    return 0;
}

static void cpu_threads(wrk_backend_t *b, int *active, int *max, uint64_t *changes,
                        bool *adapting, const char **why)
{
    const wrk_cpu_t *c = (const wrk_cpu_t *)b;
    *active = wrk_pool_active(c->pool);
    *max = wrk_pool_size(c->pool);
    *changes = __atomic_load_n(&c->adapt.changes, __ATOMIC_RELAXED);
    *adapting = c->adapt_on;
    *why = c->adapt_why;
}

static void cpu_kv_blocks(wrk_backend_t *b, int64_t *n_free, int64_t *n_total)
{
    const wrk_cpu_t *c = (const wrk_cpu_t *)b;
    *n_free = c->kv ? c->kv->n_free : 0;
    *n_total = c->kv ? c->kv->n_blocks : 0;
}

static int cpu_spec_accept(wrk_backend_t *b, int slot, int n_keep)
{
    wrk_cpu_t *c = (wrk_cpu_t *)b;
    if (check_slot(b, slot)) return RCD_ERANGE;
    if (!c->spec) return RCD_EUNSUPPORTED; /* a family without rollback hooks */
    wrk_cpu_spec_t *sp = &c->spec[slot];
    if (sp->n_tokens == 0) return RCD_EINVAL;
    if (n_keep < 0 || n_keep > sp->n_tokens) return RCD_ERANGE;
    if (n_keep < sp->n_tokens) {
        if (c->fam->spec_restore)
            c->fam->spec_restore(c, slot, sp->n_tokens, sp->saved);
        else
            memcpy(wrk_cpu_slot(c, slot), sp->saved, c->state_floats * sizeof(float));
        wrk_cpu_replay_t r = {
            .c = c, .slot = slot, .n = n_keep, .rec = sp->rec, .tmp = c->spec_tmp};
        if (n_keep > 0) wrk_pool_run(c->pool, c->fam->spec_replay, &r);
        if (c->kv) wrk_kv_truncate(c->kv, slot, sp->kv0 + n_keep);
    }
    sp->n_tokens = 0;
    return 0;
}

static bool cpu_spec_ok(const wrk_backend_t *b)
{
    const wrk_cpu_t *c = (const wrk_cpu_t *)b;
    return c->spec && c->fam->spec_replay;
}

static const wrk_backend_i cpu_vt = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .state_reset = cpu_state_reset,
    .state_copy = cpu_state_copy,
    .step = cpu_step,
    .state_size = cpu_state_size,
    .state_read_n = cpu_state_read_n,
    .state_write_n = cpu_state_write_n,
    .kv_blocks = cpu_kv_blocks,
    .spec_accept = cpu_spec_accept,
    .spec_ok = cpu_spec_ok,
    .threads = cpu_threads,
};

int wrk_cpu_backend_create(const wrk_model_t *m, const wrk_backend_opts_t *opts,
                           wrk_backend_t **out, char *err, size_t errlen)
{
    wrk_backend_opts_t o;
    *out = NULL;
    int rc = wrk_backend_opts_resolve(opts, &o, err, errlen);
    if (rc) return rc;
    if (o.tp > 1) return wrk__cpu_tp_create(m, &o, out, err, errlen);
    wrk_cpu_t *c;
    rc = wrk__cpu_create(m, &o, NULL, NULL, &c, err, errlen);
    *out = rc ? NULL : &c->base;
    return rc;
}

int wrk__cpu_create(const wrk_model_t *m, const wrk_backend_opts_t *opts, const wrk_shard_t *shard,
                    wrk_comm_t *comm, wrk_cpu_t **out, char *err, size_t errlen)
{
    const wrk_backend_opts_t o = *opts; /* defaults already filled in */
    *out = NULL;
    const char *why = "";
    const wrk_kern_t *k = wrk_kern_for(o.isa, o.matmul, &why);
    if (!k)
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "backend: cannot run the \"%s\" kernels with the %s matmul: %s",
                        o.isa ? o.isa : "auto", o.matmul ? o.matmul : "fp32", why);
    /* The model's matrices in the matmul's panel layout (quantized with --weights q8|q4),
     * once per model; a TP rank packs its shard's own slices (and rank 0 the lm_head). */
    const int wq = wrk_wq_parse(o.weights);
    if (wq < 0)
        return rcd_fail(RCD_EINVAL, err, errlen, "backend: weights must be native, q8 or q4");
    struct wrk_packs *rank_packs = NULL;
    int prc = shard ? wrk_cpu_pack_shard(m, shard, (wrk_wq_t)wq, &rank_packs, err, errlen)
                    : wrk_cpu_pack_model((wrk_model_t *)m, (wrk_wq_t)wq, err, errlen);
    if (prc) return prc;
    const wrk_cpu_family_i *fam = find_family(m->info.family);
    wrk_cpu_t *c = fam ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        wrk_cpu_packs_free(rank_packs);
        return fam ? rcd_fail(RCD_ENOMEM, err, errlen, "out of memory")
                   : rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                              "backend: the cpu backend has no %s forward", m->info.architecture);
    }
    c->packs = rank_packs;
    c->fam = fam;
    c->base = (wrk_backend_t){.vt = &cpu_vt,
                              .model = m,
                              .n_slots = o.n_slots,
                              .max_step_tokens = o.max_step_tokens,
                              .isa = k->isa};
    c->m = m;
    c->k = k;
    c->n_threads = o.n_threads;
    c->shard = shard;
    c->comm = comm;
    c->state_floats = shard ? shard->state_floats : m->info.state_bytes / sizeof(float);
    const size_t T = (size_t)o.max_step_tokens, H = m->info.hidden_size;
    const size_t V = m->info.vocab_size;
    c->scratch_floats = wrk_mm_scratch_floats(m->max_matmul_cols);
    c->slots = wrk_cpu_alloc_floats((size_t)o.n_slots * c->state_floats);
    c->res = wrk_cpu_alloc_floats(T * H);
    c->logit_in = wrk_cpu_alloc_floats(WRK_LOGIT_CHUNK * H);
    c->logit_out = wrk_cpu_alloc_floats(WRK_LOGIT_CHUNK * V);
    c->scratch = wrk_cpu_alloc_floats((size_t)o.n_threads * c->scratch_floats);
    c->local_floats =
        (size_t)WRK_CPU_LOCAL_T * ((size_t)m->max_matmul_cols > H ? (size_t)m->max_matmul_cols : H);
    c->local = wrk_cpu_alloc_floats((size_t)o.n_threads * c->local_floats);
    c->pf_next = calloc((size_t)o.n_threads, sizeof *c->pf_next);
    if (m->info.n_kv_layers > 0 && wrk_kv_create(o.n_slots, m->info.n_kv_layers, m->info.kv_width,
                                                 o.kv_block_tokens, o.n_kv_blocks, &c->kv)) {
        cpu_destroy(&c->base);
        return rcd_fail(RCD_ENOMEM, err, errlen,
                        "backend: cannot allocate the KV cache: %d blocks of %d tokens x %zu "
                        "bytes",
                        o.n_kv_blocks, o.kv_block_tokens, m->info.kv_bytes_per_token);
    }
    if (!c->slots || !c->res || !c->logit_in || !c->logit_out || !c->scratch || !c->local ||
        !c->pf_next || wrk_pool_create(o.n_threads, &c->pool) || c->fam->init(c, &c->fam_ctx)) {
        cpu_destroy(&c->base);
        return rcd_fail(RCD_ENOMEM, err, errlen,
                        "backend: cannot allocate %d state slots of %zu bytes and buffers for "
                        "%d tokens",
                        o.n_slots, m->info.state_bytes, o.max_step_tokens);
    }
    memset(c->slots, 0, (size_t)o.n_slots * c->state_floats * sizeof(float));
    wrk_adapt_init(&c->adapt, o.n_threads, NULL);
    if (o.adapt_threads) {
        if (shard)
            c->adapt_why = "not under tensor parallelism";
        else if (o.n_threads < 2)
            c->adapt_why = "one thread";
        else
            c->adapt_on = wrk_adapt_available(&c->adapt_why);
    }
    /* Speculative rollback on one rank only (the TP group refuses verify entries). */
    if (!shard && fam->spec_sizes) {
        fam->spec_sizes(c, &c->spec_rec_floats, &c->spec_tmp_floats, &c->spec_saved_floats);
        if (!c->spec_saved_floats) c->spec_saved_floats = c->state_floats;
        if (!(c->spec = calloc((size_t)o.n_slots, sizeof *c->spec))) {
            cpu_destroy(&c->base);
            return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        }
    }
    *out = c;
    return 0;
}

void wrk__cpu_forward(wrk_cpu_t *c, const wrk_seq_t *seqs, int n_seqs)
{
    wrk_cpu_fwd_t f = {.c = c, .a = c->fam_ctx, .seqs = seqs, .n_seqs = n_seqs};
    wrk_cpu_batch_size(seqs, n_seqs, &f.T, &f.n_rows);
    if (c->fam->prepare) c->fam->prepare(&f);
    wrk_pool_run(c->pool, c->fam->forward, &f);
    if (c->fam->finish) c->fam->finish(&f);
}

float *wrk_cpu_alloc_floats(size_t n)
{
    return aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) / 64 * 64);
}
