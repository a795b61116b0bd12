/* workers/cpu: the qg pack of pre-quantized matrices and the dispatch of its matmul (layout
 * and arithmetic in kernels_qg.h). */
#include <stdlib.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/cpu/kernels_qg.h"

/* Pack column order: a stable sort of the columns by group (identity when already sorted). */
static bool sorted_perm(const wrk_pq_src_t *src, int32_t *perm, int32_t *start)
{
    const int K = src->cols, G = src->G;
    bool sorted = true;
    for (int i = 1; i < K; i++)
        if (src->gidx[i] < src->gidx[i - 1]) sorted = false;
    memset(start, 0, (size_t)(G + 1) * sizeof *start);
    for (int i = 0; i < K; i++)
        start[src->gidx[i] + 1]++;
    for (int g = 0; g < G; g++)
        start[g + 1] += start[g];
    if (perm) {
        int32_t *next = malloc((size_t)(G ? G : 1) * sizeof *next);
        if (next) {
            memcpy(next, start, (size_t)G * sizeof *next);
            for (int i = 0; i < K; i++)
                perm[next[src->gidx[i]]++] = i;
            free(next);
        }
    }
    return sorted;
}

static size_t meta_bytes(int K, int G, bool has_perm)
{
    size_t b = sizeof(wrk_qg_hdr_t) + (size_t)(has_perm ? K : 0) * 4 + (size_t)(G + 1) * 4;
    return (b + 63) / 64 * 64;
}

static size_t panel_bytes(const int32_t *start, int G, int bits)
{
    size_t b = 0;
    for (int g = 0; g < G; g++)
        b += wrk_qg_group_bytes(bits, start[g + 1] - start[g]);
    return b;
}

size_t wrk_pack_qg_bytes(const wrk_pq_src_t *src)
{
    if ((src->bits != 4 && src->bits != 8) || src->G <= 0 || src->cols <= 0) return 0;
    int32_t *start = malloc((size_t)(src->G + 1) * sizeof *start);
    if (!start) return 0;
    const bool sorted = sorted_perm(src, NULL, start);
    const size_t np = (size_t)(src->rows + WRK_PANEL - 1) / WRK_PANEL;
    const size_t b =
        meta_bytes(src->cols, src->G, !sorted) + np * panel_bytes(start, src->G, src->bits);
    free(start);
    return b;
}

int wrk_pack_qg(const wrk_pq_src_t *src, void *dst)
{
    const int K = src->cols, G = src->G, bits = src->bits;
    int32_t *perm = malloc((size_t)K * sizeof *perm), *start = malloc((size_t)(G + 1) * 4);
    if (!perm || !start) {
        free(perm);
        free(start);
        return RCD_ENOMEM;
    }
    const bool has_perm = !sorted_perm(src, perm, start);
    const size_t mb = meta_bytes(K, G, has_perm), pb = panel_bytes(start, G, bits);
    const int np = (src->rows + WRK_PANEL - 1) / WRK_PANEL;
    memset(dst, 0, mb + (size_t)np * pb);
    wrk_qg_hdr_t h = {.rows = src->rows,
                      .cols = K,
                      .bits = bits,
                      .G = G,
                      .has_perm = has_perm,
                      .data_off = (int32_t)mb};
    unsigned char *base = dst;
    memcpy(base, &h, sizeof h);
    size_t off = sizeof h;
    if (has_perm) {
        memcpy(base + off, perm, (size_t)K * 4);
        off += (size_t)K * 4;
    }
    memcpy(base + off, start, (size_t)(G + 1) * 4);
    for (int r = 0; r < src->rows; r++) {
        unsigned char *gp = base + mb + (size_t)(r / WRK_PANEL) * pb;
        const int lane = r % WRK_PANEL;
        for (int g = 0; g < G; g++) {
            const int n = start[g + 1] - start[g];
            memcpy(gp + (size_t)lane * 4, &src->s[(size_t)r * G + g], 4);
            memcpy(gp + WRK_PANEL * 4 + (size_t)lane * 4, &src->z[(size_t)r * G + g], 4);
            unsigned char *cp = gp + WRK_PANEL * 8;
            for (int j = 0; j < n; j++) {
                const int col = has_perm ? perm[start[g] + j] : start[g] + j;
                const unsigned char q = src->q[(size_t)r * K + col];
                if (bits == 8) {
                    cp[(size_t)j * WRK_PANEL + lane] = q;
                } else {
                    unsigned char *b = cp + (size_t)(j / 2) * WRK_PANEL + lane;
                    *b = (j & 1) ? (unsigned char)((*b & 0x0f) | (q & 15) << 4)
                                 : (unsigned char)((*b & 0xf0) | (q & 15));
                }
            }
            gp += wrk_qg_group_bytes(bits, n);
        }
    }
    free(perm);
    free(start);
    return 0;
}

void wrk_dequant_qg_row(const void *pk, int r, float *out)
{
    wrk_qg_hdr_t h;
    memcpy(&h, pk, sizeof h);
    const unsigned char *base = pk;
    const int32_t *perm = h.has_perm ? (const int32_t *)(base + sizeof h) : NULL;
    const int32_t *start =
        (const int32_t *)(base + sizeof h + (h.has_perm ? (size_t)h.cols * 4 : 0));
    const size_t pb = panel_bytes(start, h.G, h.bits);
    const unsigned char *gp = base + h.data_off + (size_t)(r / WRK_PANEL) * pb;
    const int lane = r % WRK_PANEL;
    for (int g = 0; g < h.G; g++) {
        const int n = start[g + 1] - start[g];
        float s, z;
        memcpy(&s, gp + (size_t)lane * 4, 4);
        memcpy(&z, gp + WRK_PANEL * 4 + (size_t)lane * 4, 4);
        const unsigned char *cp = gp + WRK_PANEL * 8;
        for (int j = 0; j < n; j++) {
            int q;
            if (h.bits == 8) {
                q = cp[(size_t)j * WRK_PANEL + lane];
            } else {
                const unsigned char b = cp[(size_t)(j / 2) * WRK_PANEL + lane];
                q = (j & 1) ? b >> 4 : b & 15;
            }
            const int col = perm ? perm[start[g] + j] : start[g] + j;
            out[col] = s * ((float)q - z);
        }
        gp += wrk_qg_group_bytes(h.bits, n);
    }
}

void wrk_qgmm(const wrk_kern_t *k, float *scratch, const wrk_mat_t *W, int o0, int o1,
              const float *x, int ldx, int T, float *y, int ldy, const float *bias, bool acc)
{
    wrk_qgmm_fn f = NULL;
    if (strncmp(k->isa, "avx512", 6) == 0)
        f = wrk__qgmm_avx512();
    else if (strcmp(k->isa, "avx2") == 0)
        f = wrk__qgmm_avx2();
    if (!f) f = wrk__qgmm_portable();
    wrk_qg_hdr_t h;
    memcpy(&h, W->pk, sizeof h);
    if (!h.has_perm) {
        f(W, o0, o1, x, ldx, T, y, ldy, bias, acc);
        return;
    }
    /* act-order: x gathered into pack column order, WRK_GEMM_BLOCK_ROWS tokens at a time */
    const int32_t *perm = (const int32_t *)((const unsigned char *)W->pk + sizeof h);
    const int K = W->cols;
    for (int t0 = 0; t0 < T; t0 += WRK_GEMM_BLOCK_ROWS) {
        const int n = T - t0 < WRK_GEMM_BLOCK_ROWS ? T - t0 : WRK_GEMM_BLOCK_ROWS;
        for (int t = 0; t < n; t++) {
            const float *xs = x + (size_t)(t0 + t) * ldx;
            float *xd = scratch + (size_t)t * K;
            for (int j = 0; j < K; j++)
                xd[j] = xs[perm[j]];
        }
        f(W, o0, o1, scratch, K, n, y + (size_t)t0 * ldy, ldy, bias, acc);
    }
}
