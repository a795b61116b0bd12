/* workers/cpu: the pieces of a forward pass every family shares (see cpu_int.h). */
#include <math.h>
#include <string.h>

#include "workers/cpu/cpu_int.h"

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
                for (int i = 0; i < H; i++) row[i] *= m->embed_scale;
        }
}

void wrk_cpu_mm(wrk_cpu_t *c, int ith, int nth, const wrk_mat_t *W, const float *x, int ldx,
                int T, float *y, int ldy, const float *bias, bool acc)
{
    int o0, o1;
    wrk_split(W->rows, WRK_PANEL, ith, nth, &o0, &o1);
    wrk_cpu_matmul(c, ith, W, o0, o1, x, ldx, T, y, ldy, bias, acc);
}

void wrk_cpu_matmul(wrk_cpu_t *c, int ith, const wrk_mat_t *W, int o0, int o1, const float *x,
                    int ldx, int T, float *y, int ldy, const float *bias, bool acc)
{
    wrk_mat_t w = *W;
    if (!w.pk)
        w.pk = c->packs ? wrk_cpu_packed_in(c->packs, W, &w.qf) : wrk_cpu_packed(c->m, W, &w.qf);
    wrk_matmul(c->k, wrk_cpu_scratch(c, ith), &w, o0, o1, x, ldx, T, y, ldy, bias, acc);
}

void wrk_cpu_logits(wrk_cpu_t *c, int ith, int nth, const wrk_seq_t *seqs, int n_seqs,
                    int n_rows)
{
    const wrk_model_t *m = c->m;
    const int H = m->info.hidden_size, V = m->info.vocab_size;
    int row = 0, t = 0, s = 0, j = 0; /* walk (sequence s, logit row j) in order */
    while (row < n_rows) {
        int nr = 0;
        const wrk_seq_t *owner[WRK_LOGIT_CHUNK];
        int owner_row[WRK_LOGIT_CHUNK];
        /* Gather up to a chunk of rows (every thread computes the same walk). */
        while (nr < WRK_LOGIT_CHUNK && row + nr < n_rows) {
            const wrk_seq_t *q = &seqs[s];
            if (j >= q->n_logits) {
                t += q->n_tokens;
                s++;
                j = 0;
                continue;
            }
            int tok = t + q->n_tokens - q->n_logits + j;
            if (nr % nth == ith)
                c->k->rmsnorm(c->logit_in + (size_t)nr * H, c->res + (size_t)tok * H, m->norm_f,
                              H, m->norm_eps);
            owner[nr] = q;
            owner_row[nr] = j;
            nr++;
            j++;
        }
        wrk_pool_barrier(c->pool);
        int v0, v1;
        wrk_split(V, WRK_PANEL, ith, nth, &v0, &v1);
        wrk_cpu_matmul(c, ith, &m->lm_head, v0, v1, c->logit_in, H, nr, c->logit_out, V, NULL,
                       false);
        for (int r = 0; r < nr; r++) {
            float *dst = owner[r]->logits + (size_t)owner_row[r] * V;
            const float *src = c->logit_out + (size_t)r * V;
            memcpy(dst + v0, src + v0, (size_t)(v1 - v0) * sizeof(float));
            if (m->logit_scale != 1.0f)
                for (int v = v0; v < v1; v++) dst[v] *= m->logit_scale;
            if (m->logit_softcap > 0.0f)
                for (int v = v0; v < v1; v++)
                    dst[v] = m->logit_softcap * tanhf(dst[v] / m->logit_softcap);
        }
        row += nr;
        wrk_pool_barrier(c->pool);
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
