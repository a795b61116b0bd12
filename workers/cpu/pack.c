/* workers/cpu: packed copies of a model's matrices for the CPU matmul (layout in kernels.h).
 * Made once per model, when the first CPU backend is created; found by data pointer. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/rcd_cpus.h"
#include "workers/cpu/cpu_int.h"
#include "workers/cpu/kernels.h"
#include "workers/cpu/kernels_q.h"
#include "workers/cpu/kernels_qg.h"

typedef struct pack_ent {
    const void *data;
    wrk_dtype_t dt;
    int rows, cols;
    void *pk;
    wrk_wq_t qf; /* the format pk holds */
    const wrk_pq_src_t *src; /* WRK_WQ_QG: the pre-quantized source (kernels_qg.h) */
    size_t qg_bytes;         /* WRK_WQ_QG: pk's size */
} pack_ent_t;

struct wrk_packs {
    int n;
    wrk_wq_t weights; /* --weights the model was packed with */
    pack_ent_t *e; /* sorted by data */
};

static pthread_mutex_t g_pack_mu = PTHREAD_MUTEX_INITIALIZER;

void wrk_pack(const wrk_mat_t *W, void *dst)
{
    const int K = W->cols, np = (W->rows + WRK_PANEL - 1) / WRK_PANEL;
    const size_t esz = wrk_dtype_size(W->dt), pb = wrk_pack_panel_bytes(W->dt, K);
    memset(dst, 0, (size_t)np * pb);
    for (int r = 0; r < W->rows; r++) {
        const char *src = (const char *)W->data + (size_t)r * K * esz;
        char *panel = (char *)dst + (size_t)(r / WRK_PANEL) * pb;
        const int lane = r % WRK_PANEL;
        if (W->dt == WRK_DT_BF16) {
            /* column pair j of row `lane`: bytes [j*64 + lane*4, +4) = (W[r][2j], W[r][2j+1]) */
            for (int k = 0; k < K; k++)
                memcpy(panel + (size_t)(k / 2) * WRK_PANEL * 4 + (size_t)lane * 4 + (k & 1) * 2,
                       src + (size_t)k * 2, 2);
        } else {
            for (int k = 0; k < K; k++)
                memcpy(panel + ((size_t)k * WRK_PANEL + lane) * esz, src + (size_t)k * esz, esz);
        }
    }
}

/* Packing (and quantizing) the entries on up to 16 threads, one matrix at a time each. */
typedef struct pack_job {
    struct wrk_packs *p;
    const wrk_model_t *m;
    atomic_int next;
    atomic_int failed;
} pack_job_t;

static void *pack_worker(void *arg)
{
    pack_job_t *j = arg;
    for (int i; (i = atomic_fetch_add(&j->next, 1)) < j->p->n;) {
        const pack_ent_t *e = &j->p->e[i];
        const wrk_mat_t W = {.dt = e->dt, .data = e->data, .rows = e->rows, .cols = e->cols};
        if (e->qf == WRK_WQ_QG) {
            /* the codes decoded from the file for this matrix only, dropped once packed */
            wrk_pq_src_t d;
            if (wrk__pq_src_load(j->m, e->src, &d) || wrk_pack_qg(&d, e->pk))
                atomic_store(&j->failed, 1);
            wrk__pq_src_done(&d);
        } else if (e->qf) {
            if (wrk_pack_q(&W, e->qf, e->pk)) atomic_store(&j->failed, 1);
        } else {
            wrk_pack(&W, e->pk);
        }
    }
    return NULL;
}

static int pack_all(const wrk_model_t *m, struct wrk_packs *p)
{
    pack_job_t j = {.p = p, .m = m};
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, 0);
    int ncpu = rcd_cpus_available(NULL, 0);
    int nth = ncpu > 16 ? 16 : ncpu;
    if (nth > p->n) nth = p->n > 0 ? p->n : 1;
    pthread_t th[16];
    int started = 0;
    for (int t = 1; t < nth; t++)
        if (pthread_create(&th[started], NULL, pack_worker, &j) == 0) started++;
    pack_worker(&j);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    return atomic_load(&j.failed) ? RCD_ENOMEM : 0;
}

static void packs_free(struct wrk_packs *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++) free(p->e[i].pk);
    free(p->e);
    free(p);
}

static int ent_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const pack_ent_t *)a)->data,
              y = (uintptr_t)((const pack_ent_t *)b)->data;
    return x < y ? -1 : x > y;
}

/* Whether the model can run with `weights`: not after another format, not requantized.
 * Under g_pack_mu. */
static int check_weights(const wrk_model_t *m, wrk_wq_t weights, char *err, size_t errlen)
{
    if (m->weights_fmt && m->weights_fmt != 1 + (int)weights)
        return rcd_fail(RCD_EINVAL, err, errlen,
                        "backend: this model is already packed with --weights %s; a backend "
                        "with --weights %s needs its own load of the model",
                        wrk_wq_name((wrk_wq_t)(m->weights_fmt - 1)), wrk_wq_name(weights));
    if (m->pq && weights != WRK_WQ_NATIVE) /* no second quantization of s * (q - z) */
        return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                        "backend: the checkpoint is already quantized (quantization_config: %s); "
                        "--weights %s is refused for it (use --weights native)",
                        wrk__pq_desc(m->pq), wrk_wq_name(weights));
    return 0;
}

/* The weight format the model runs with, recorded once packs of it exist (and in the
 * fingerprint: checkpoints of a quantized model are its own; the state layout is unchanged).
 * Under g_pack_mu, after check_weights. */
static void note_weights(wrk_model_t *m, wrk_wq_t weights)
{
    if (!m->weights_fmt && weights) wrk__fingerprint_weights(m, wrk_wq_name(weights));
    m->weights_fmt = 1 + (int)weights;
}

/* Packs the n matrices (each data pointer once) in `weights`; lm_head: the model's head. */
static int packs_build(const wrk_model_t *m, const wrk_mat_t *mats, int n_mats,
                       const void *lm_head, wrk_wq_t weights, struct wrk_packs **out,
                       char *err, size_t errlen)
{
    *out = NULL;
    struct wrk_packs *p = calloc(1, sizeof *p);
    pack_ent_t *e = calloc((size_t)(n_mats ? n_mats : 1), sizeof *e);
    if (!p || !e) {
        free(p);
        free(e);
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory packing weights");
    }
    p->e = e;
    p->weights = weights;
    /* by data pointer, so a tensor bound twice (a tied head) is packed once */
    for (int i = 0; i < n_mats; i++) {
        const wrk_mat_t *W = &mats[i];
        e[i] = (pack_ent_t){W->data, W->dt, W->rows, W->cols, NULL, WRK_WQ_NATIVE, NULL, 0};
    }
    qsort(e, (size_t)n_mats, sizeof *e, ent_cmp);
    for (int i = 0; i < n_mats; i++) {
        if (e[i].rows <= 0 || e[i].cols <= 0 || (p->n && e[p->n - 1].data == e[i].data)) continue;
        const wrk_mat_t W = {.dt = e[i].dt, .data = e[i].data, .rows = e[i].rows,
                             .cols = e[i].cols};
        /* q4: the lm_head (the embedding when tied) is q8, as llama.cpp keeps output.weight
         * above 4 bits (workers/README.md, "Quantized weights") */
        wrk_wq_t qf = weights;
        if (qf == WRK_WQ_Q4 && e[i].data == lm_head) qf = WRK_WQ_Q8;
        /* a pre-quantized checkpoint's matrix: its own groups, served from its codes */
        const wrk_pq_src_t *src = wrk__pq_source(m, e[i].data);
        size_t qgb = src ? wrk_pack_qg_bytes(src) : 0;
        if (qgb) qf = WRK_WQ_QG;
        if (src && !qgb) { /* never the fp32 pack: its fp32 copy is not filled */
            packs_free(p);
            return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory packing weights");
        }
        size_t bytes = qgb                ? qgb
                       : qf ? wrk_pack_q_bytes(qf, W.rows, W.cols)
                            : wrk_pack_bytes(&W);
        void *pk = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!pk) {
            packs_free(p);
            return rcd_fail(RCD_ENOMEM, err, errlen,
                            "out of memory packing weights (%zu bytes for a %dx%d matrix)", bytes,
                            W.rows, W.cols);
        }
        e[p->n] = e[i];
        e[p->n].qf = qf;
        e[p->n].src = qgb ? src : NULL;
        e[p->n].qg_bytes = qgb;
        e[p->n++].pk = pk;
    }
    if (pack_all(m, p)) {
        packs_free(p);
        return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory quantizing weights");
    }
    *out = p;
    return 0;
}

int wrk_cpu_pack_model(wrk_model_t *m, wrk_wq_t weights, char *err, size_t errlen)
{
    pthread_mutex_lock(&g_pack_mu);
    int rc = check_weights(m, weights, err, errlen);
    struct wrk_packs *p = NULL;
    if (!rc && !m->packs &&
        !(rc = packs_build(m, m->mats, m->n_mats, m->lm_head.data, weights, &p, err, errlen))) {
        m->packs = p;
        m->packs_free = packs_free;
    }
    if (!rc) note_weights(m, weights);
    pthread_mutex_unlock(&g_pack_mu);
    return rc;
}

int wrk_cpu_pack_shard(const wrk_model_t *m, const wrk_shard_t *s, wrk_wq_t weights,
                       struct wrk_packs **out, char *err, size_t errlen)
{
    *out = NULL;
    pthread_mutex_lock(&g_pack_mu);
    int rc = check_weights(m, weights, err, errlen);
    pthread_mutex_unlock(&g_pack_mu);
    if (rc) return rc;
    /* the slices, and on the group leader (which computes the logits) the replicated head */
    wrk_mat_t *mats = calloc((size_t)s->n_mats + 1, sizeof *mats);
    if (!mats) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory packing weights");
    memcpy(mats, s->mats, (size_t)s->n_mats * sizeof *mats);
    int n = s->n_mats;
    if (s->rank == 0 && m->lm_head.data) mats[n++] = m->lm_head;
    rc = packs_build(m, mats, n, m->lm_head.data, weights, out, err, errlen);
    free(mats);
    if (rc) return rc;
    pthread_mutex_lock(&g_pack_mu); /* again: another backend may have come in between */
    if (!(rc = check_weights(m, weights, err, errlen))) note_weights((wrk_model_t *)m, weights);
    pthread_mutex_unlock(&g_pack_mu);
    if (rc) {
        packs_free(*out);
        *out = NULL;
    }
    return rc;
}

void wrk_cpu_packs_free(struct wrk_packs *p)
{
    packs_free(p);
}

const void *wrk_cpu_packed(const wrk_model_t *m, const wrk_mat_t *W, wrk_wq_t *qf)
{
    return wrk_cpu_packed_in(m->packs, W, qf);
}

const void *wrk_cpu_packed_in(const struct wrk_packs *p, const wrk_mat_t *W, wrk_wq_t *qf)
{
    *qf = WRK_WQ_NATIVE;
    if (!p || !W->data) return NULL;
    int lo = 0, hi = p->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const pack_ent_t *e = &p->e[mid];
        if (e->data == W->data) {
            if (e->dt != W->dt || e->rows != W->rows || e->cols != W->cols) return NULL;
            *qf = e->qf;
            return e->pk;
        }
        if ((uintptr_t)e->data < (uintptr_t)W->data)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

void wrk_cpu_pack_stats(const wrk_model_t *m, size_t *native, size_t *packed)
{
    *native = *packed = 0;
    const struct wrk_packs *p = m->packs;
    for (int i = 0; p && i < p->n; i++) {
        const pack_ent_t *e = &p->e[i];
        *native += (size_t)e->rows * (size_t)e->cols * wrk_dtype_size(e->dt);
        if (e->qf == WRK_WQ_QG) {
            *packed += e->qg_bytes;
        } else if (e->qf) {
            *packed += wrk_pack_q_bytes(e->qf, e->rows, e->cols);
        } else {
            const wrk_mat_t W = {.dt = e->dt, .rows = e->rows, .cols = e->cols};
            *packed += wrk_pack_bytes(&W);
        }
    }
}
