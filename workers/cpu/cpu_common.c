/* workers/cpu: the pieces of a forward pass every family shares (see cpu_int.h). */
#include <math.h>
#include <string.h>

#include "workers/cpu/cpu_int.h"
#include "workers/cpu/kernels_q.h"

void wrk_cpu_batch_size(const wrk_seq_t *seqs, int n_seqs, int *T, int *n_rows)
{
    *T = 0;
    *n_rows = 0;
    for (int s = 0; s < n_seqs; s++) {
        *T += seqs[s].n_tokens;
        *n_rows += seqs[s].n_logits;
    }
}

void wrk_cpu_embed(wrk_cpu_t *c, int ith, int nth, const wrk_seq_t *seqs, int n_seqs)
{
    const wrk_model_t *m = c->m;
    const int H = m->info.hidden_size;
    const size_t esz = wrk_dtype_size(m->embed.dt);
    int T, rows, t0, t1, t = 0;
    wrk_cpu_batch_size(seqs, n_seqs, &T, &rows);
    wrk_split(T, 1, ith, nth, &t0, &t1);
    for (int s = 0; s < n_seqs; s++)
        for (int j = 0; j < seqs[s].n_tokens; j++, t++) {
            if (t < t0 || t >= t1) continue;
            float *row = c->res + (size_t)t * H;
            c->k->to_f32(row, (const char *)m->embed.data + (size_t)seqs[s].tokens[j] * H * esz,
                         m->embed.dt, (size_t)H);
            if (m->embed_scale != 1.0f)
                for (int i = 0; i < H; i++)
                    row[i] *= m->embed_scale;
        }
}

void wrk_cpu_mm(wrk_cpu_t *c, int ith, int nth, const wrk_mat_t *W, const float *x, int ldx, int T,
                float *y, int ldy, const float *bias, bool acc)
{
    int o0, o1;
    wrk_split(W->rows, WRK_PANEL, ith, nth, &o0, &o1);
    wrk_cpu_matmul(c, ith, W, o0, o1, x, ldx, T, y, ldy, bias, acc);
}

/* W with its packed copy (this backend's packs: a TP rank's, else the model's) where W has
 * none of its own. */
static wrk_mat_t with_pack(const wrk_cpu_t *c, const wrk_mat_t *W)
{
    wrk_mat_t w = *W;
    if (!w.pk)
        w.pk = c->packs ? wrk_cpu_packed_in(c->packs, W, &w.qf) : wrk_cpu_packed(c->m, W, &w.qf);
    return w;
}

void wrk_cpu_matmul(wrk_cpu_t *c, int ith, const wrk_mat_t *W, int o0, int o1, const float *x,
                    int ldx, int T, float *y, int ldy, const float *bias, bool acc)
{
    const wrk_mat_t w = with_pack(c, W);
    wrk_matmul(c->k, wrk_cpu_scratch(c, ith), &w, o0, o1, x, ldx, T, y, ldy, bias, acc);
}

wrk_cpu_pf_t wrk_cpu_pf_rows(const wrk_cpu_t *c, const wrk_mat_t *W, int o0, int o1)
{
    wrk_cpu_pf_t pf = {0};
    const wrk_mat_t w = with_pack(c, W);
    const void *pk = w.pk;
    const wrk_wq_t qf = w.qf;
    if (!pk || o1 <= o0 || qf == WRK_WQ_QG) return pf;
    const size_t pb = qf == WRK_WQ_NATIVE ? wrk_pack_panel_bytes(W->dt, W->cols)
                                          : wrk_pack_q_panel_bytes(qf, W->cols);
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    pf.p = (const char *)pk + (size_t)p0 * pb;
    pf.n = (size_t)(p1 - p0) * pb;
    return pf;
}

wrk_cpu_pf_t wrk_cpu_pf_mm(const wrk_cpu_t *c, int ith, int nth, const wrk_mat_t *W)
{
    int o0, o1;
    wrk_split(W->rows, WRK_PANEL, ith, nth, &o0, &o1);
    return wrk_cpu_pf_rows(c, W, o0, o1);
}

void wrk_cpu_logits(wrk_cpu_t *c, int ith, int nth, const wrk_seq_t *seqs, int n_seqs, int n_rows)
{
    const wrk_model_t *m = c->m;
    const int H = m->info.hidden_size, V = m->info.vocab_size;
    int row = 0, t = 0, s = 0, j = 0; /* walk (sequence s, logit row j) in order */
    while (row < n_rows) {
        int nr = 0;
        const wrk_seq_t *owner[WRK_LOGIT_CHUNK];
        int owner_row[WRK_LOGIT_CHUNK], tok[WRK_LOGIT_CHUNK];
        /* Gather up to a chunk of rows (every thread computes the same walk). */
        while (nr < WRK_LOGIT_CHUNK && row + nr < n_rows) {
            const wrk_seq_t *q = &seqs[s];
            if (j >= q->n_logits) {
                t += q->n_tokens;
                s++;
                j = 0;
                continue;
            }
            tok[nr] = t + q->n_tokens - q->n_logits + j;
            owner[nr] = q;
            owner_row[nr] = j;
            nr++;
            j++;
        }
        /* The final norm: for a few rows (decode) every thread normalizes all of them into
         * its own buffer, and no barrier follows (nor precedes the next chunk: every buffer
         * a thread then writes, only it reads); else split by row behind a barrier. */
        float *in = wrk_cpu_local(c, ith, nr);
        const bool local = in != NULL;
        if (!local) in = c->logit_in;
        for (int r = 0; r < nr; r++)
            if (local || r % nth == ith)
                c->k->rmsnorm(in + (size_t)r * H, c->res + (size_t)tok[r] * H, m->norm_f, H,
                              m->norm_eps);
        if (!local) wrk_pool_barrier(c->pool);
        int v0, v1;
        wrk_split(V, WRK_PANEL, ith, nth, &v0, &v1);
        /* one row: straight into the sequence's logits (no copy) */
        float *out = nr == 1 ? owner[0]->logits + (size_t)owner_row[0] * V : c->logit_out;
        wrk_cpu_matmul(c, ith, &m->lm_head, v0, v1, in, H, nr, out, V, NULL, false);
        for (int r = 0; r < nr; r++) {
            float *dst = owner[r]->logits + (size_t)owner_row[r] * V;
            const float *src = c->logit_out + (size_t)r * V;
            if (nr > 1) memcpy(dst + v0, src + v0, (size_t)(v1 - v0) * sizeof(float));
            if (m->logit_scale != 1.0f)
                for (int v = v0; v < v1; v++)
                    dst[v] *= m->logit_scale;
            if (m->logit_softcap > 0.0f)
                for (int v = v0; v < v1; v++)
                    dst[v] = m->logit_softcap * tanhf(dst[v] / m->logit_softcap);
        }
        row += nr;
        /* the next chunk overwrites logit_in / logit_out; after the last one the pool's join
         * (wrk_pool_run) orders every thread's writes before the caller reads them */
        if (!local && row < n_rows) wrk_pool_barrier(c->pool);
    }
}

void wrk_cpu_all_reduce(wrk_cpu_t *c, int ith, float *buf, size_t n)
{
    if (!c->comm) return;
    if (ith == 0) {
        int rc = wrk_comm_all_reduce_sum(c->comm, buf, n);
        if (rc && !c->comm_rc) c->comm_rc = rc;
    }
    wrk_pool_barrier(c->pool);
}
