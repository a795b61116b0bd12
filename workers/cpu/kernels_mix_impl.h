/* workers/cpu: the kernels of the later families' layers — Mamba2's SSD recurrence, the
 * Gated DeltaNet's delta rule (Qwen3-Next), attention over a KV block and the gated MLP's
 * swiglu — written once over GCC vector extensions and compiled once per instruction set.
 * Not a header of its own: kernels_impl.h includes it before its table, in the including
 * file's VW / KFN / KISA (see there), after the vector helpers (ld, st, splat, hsum, exp_v,
 * silu_v, ...) it uses. */
#ifndef KFN
#error "kernels_mix_impl.h is included by kernels_impl.h, not on its own"
#endif

/* ---- Mamba2's SSD recurrence (kernels.h, `ssd`) ---------------------------------------
 * One head at a time, over chunks of SSD_TB tokens. A tile of the state (SSD_PR rows x SSD_NT
 * vectors of N) sits in registers for the whole chunk: per token, B and C are loaded once for
 * the tile's rows and nothing of the state goes to memory; each row's C . S partial sums
 * (VW lanes) carry from one tile to the next through `accm`. Per row and token the
 * arithmetic is fixed: v = dA s + dx B lane by lane over n (dx = dt x rounded once), C . S
 * summed in VW lanes (n ascending within each lane), one hsum, then the tail n ascending,
 * then + D x. None of it depends on the tiling, on T or on how tokens are split between
 * calls. */
#define SSD_TB 64
#if VW >= 16
#define SSD_PR 4
#define SSD_NT 4
#else
#define SSD_PR 2
#define SSD_NT 2
#endif

static inline __attribute__((always_inline)) void
KFN(ssd_tile)(const int NR, const int NV, int n, int N, int i0, const float *B, const float *Cm,
              int ldx, const float *dav, const float *dxs, float *S, vf *accm, bool first)
{
    vf st[SSD_PR][SSD_NT];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) st[r][v] = KFN(ld)(S + (size_t)r * N + i0 + v * VW);
    for (int t = 0; t < n; t++) {
        const float *Bt = B + (size_t)t * ldx + i0, *Ct = Cm + (size_t)t * ldx + i0;
        const vf da = KFN(splat)(dav[t]);
        vf dx[SSD_PR], acc[SSD_PR];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            dx[r] = KFN(splat)(dxs[t * SSD_PR + r]);
            acc[r] = first ? KFN(splat)(0.f) : accm[t * SSD_PR + r];
        }
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            const vf b = KFN(ld)(Bt + v * VW), cv = KFN(ld)(Ct + v * VW);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                st[r][v] = da * st[r][v] + dx[r] * b;
                acc[r] += cv * st[r][v];
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) accm[t * SSD_PR + r] = acc[r];
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) KFN(st)(S + (size_t)r * N + i0 + v * VW, st[r][v]);
}

/* Rows [0, NR) of the state from S over the chunk's n tokens. */
static inline __attribute__((always_inline)) void
KFN(ssd_rows)(const int NR, int n, int N, const float *x, const float *B, const float *Cm,
              int ldx, const float *dtv, const float *dav, float D, float *S, float *y, int ldy,
              float *dxs, vf *accm)
{
    for (int t = 0; t < n; t++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) dxs[t * SSD_PR + r] = dtv[t] * x[(size_t)t * ldx + r];
    int i = 0;
    for (; i + SSD_NT * VW <= N; i += SSD_NT * VW)
        KFN(ssd_tile)(NR, SSD_NT, n, N, i, B, Cm, ldx, dav, dxs, S, accm, i == 0);
    for (; i + VW <= N; i += VW) KFN(ssd_tile)(NR, 1, n, N, i, B, Cm, ldx, dav, dxs, S, accm, i == 0);
    for (int t = 0; t < n; t++) {
        const float *Bt = B + (size_t)t * ldx, *Ct = Cm + (size_t)t * ldx;
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            float sum = i ? KFN(hsum)(accm[t * SSD_PR + r]) : 0.f;
            float *s = S + (size_t)r * N;
            const float dx = dxs[t * SSD_PR + r];
            for (int j = i; j < N; j++) {
                const float v = dav[t] * s[j] + dx * Bt[j];
                s[j] = v;
                sum += Ct[j] * v;
            }
            y[(size_t)t * ldy + r] = sum + D * x[(size_t)t * ldx + r];
        }
    }
}

static void KFN(ssd)(int T, int P, int N, const float *x, const float *B, const float *Cm,
                     int ldx, const float *dt, int lddt, float dt_b, float A, float D,
                     float dt_min, float dt_max, float *S, float *y, int ldy)
{
    /* padded to whole vectors: lanes past the chunk are computed and never read */
    float dtv[SSD_TB + VW] = {0}, dav[SSD_TB + VW], dxs[SSD_TB * SSD_PR];
    vf accm[SSD_TB * SSD_PR];
    for (int tb = 0; tb < T; tb += SSD_TB) {
        const int n = T - tb < SSD_TB ? T - tb : SSD_TB;
        for (int t = 0; t < n; t++)
            dtv[t] = dt[(size_t)(tb + t) * lddt] + dt_b;
        for (int t = 0; t < n; t += VW) {
            vf d = KFN(softplus_v)(KFN(ld)(dtv + t));
            const vf lo = KFN(splat)(dt_min), hi = KFN(splat)(dt_max);
            d = KFN(vsel)(d < lo, lo, d);
            d = KFN(vsel)(d > hi, hi, d);
            KFN(st)(dtv + t, d);
            KFN(st)(dav + t, KFN(exp_neg_v)(d * KFN(splat)(A)));
        }
        const size_t off = (size_t)tb * ldx;
        int p = 0;
        for (; p + SSD_PR <= P; p += SSD_PR)
            KFN(ssd_rows)(SSD_PR, n, N, x + off + p, B + off, Cm + off, ldx, dtv, dav, D,
                          S + (size_t)p * N, y + (size_t)tb * ldy + p, ldy, dxs, accm);
        for (; p < P; p++)
            KFN(ssd_rows)(1, n, N, x + off + p, B + off, Cm + off, ldx, dtv, dav, D,
                          S + (size_t)p * N, y + (size_t)tb * ldy + p, ldy, dxs, accm);
    }
}

static void KFN(delta_rule)(int dk, int dv, float *S, const float *k, const float *q,
                            const float *v, float beta, float decay, float *o)
{
    int e = 0;
    for (; e + VW <= dv; e += VW) {
        const vf dc = KFN(splat)(decay);
        vf u = KFN(splat)(0.f), acc = KFN(splat)(0.f);
        for (int i = 0; i < dk; i++) {
            float *Si = S + (size_t)i * dv + e;
            const vf s = KFN(ld)(Si) * dc;
            KFN(st)(Si, s);
            u += s * KFN(splat)(k[i]);
        }
        const vf d = (KFN(ld)(v + e) - u) * KFN(splat)(beta);
        for (int i = 0; i < dk; i++) {
            float *Si = S + (size_t)i * dv + e;
            const vf s = KFN(ld)(Si) + KFN(splat)(k[i]) * d;
            KFN(st)(Si, s);
            acc += s * KFN(splat)(q[i]);
        }
        KFN(st)(o + e, acc);
    }
    for (; e < dv; e++) {
        float u = 0.f, acc = 0.f;
        for (int i = 0; i < dk; i++) {
            float *Si = S + (size_t)i * dv + e;
            *Si *= decay;
            u += *Si * k[i];
        }
        const float d = (v[e] - u) * beta;
        for (int i = 0; i < dk; i++) {
            float *Si = S + (size_t)i * dv + e;
            *Si += k[i] * d;
            acc += *Si * q[i];
        }
        o[e] = acc;
    }
}

/* a . b over n floats: lanes of VW, one horizontal sum, then the tail; a fixed order. */
static inline float KFN(dot)(const float *a, const float *b, int n)
{
    vf acc = KFN(splat)(0.f);
    int i = 0;
    for (; i + VW <= n; i += VW) acc += KFN(ld)(a + i) * KFN(ld)(b + i);
    float s = KFN(hsum)(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* The chunked delta rule's coefficients (decay factors times dots) below 2^-100 in
 * magnitude become 0: with strong decays they would otherwise reach the subnormal range, where
 * every FMA that reads them takes a microcode assist (tens of times slower). What is dropped is
 * below 2^-100 times a value, far under fp32's rounding of the sums it joins. */
static inline float KFN(gdn_flush)(float c)
{
    return fabsf(c) < 0x1p-100f ? 0.f : c;
}

/* W[t] = S0^T x[t], P[t] = S0^T y[t] for t < m (x, y rows of dk): lanes over dv, tokens in
 * tiles of 4 or 1, each output summed over i ascending from 0 (the same for any tile). */
static void KFN(gdn_s0)(int dk, int dv, const float *S0, const float *x, const float *y, int m,
                        float *W, float *P)
{
    int e = 0;
    for (; e + VW <= dv; e += VW) {
        int t = 0;
        for (; t + 4 <= m; t += 4) {
            const float *x0 = x + (size_t)t * dk, *y0 = y + (size_t)t * dk;
            vf a0 = KFN(splat)(0.f), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int i = 0; i < dk; i++) {
                const vf s = KFN(ld)(S0 + (size_t)i * dv + e);
                a0 += s * KFN(splat)(x0[i]);
                a1 += s * KFN(splat)(x0[dk + i]);
                a2 += s * KFN(splat)(x0[2 * dk + i]);
                a3 += s * KFN(splat)(x0[3 * dk + i]);
                b0 += s * KFN(splat)(y0[i]);
                b1 += s * KFN(splat)(y0[dk + i]);
                b2 += s * KFN(splat)(y0[2 * dk + i]);
                b3 += s * KFN(splat)(y0[3 * dk + i]);
            }
            KFN(st)(W + (size_t)t * dv + e, a0);
            KFN(st)(W + (size_t)(t + 1) * dv + e, a1);
            KFN(st)(W + (size_t)(t + 2) * dv + e, a2);
            KFN(st)(W + (size_t)(t + 3) * dv + e, a3);
            KFN(st)(P + (size_t)t * dv + e, b0);
            KFN(st)(P + (size_t)(t + 1) * dv + e, b1);
            KFN(st)(P + (size_t)(t + 2) * dv + e, b2);
            KFN(st)(P + (size_t)(t + 3) * dv + e, b3);
        }
        for (; t < m; t++) {
            const float *x0 = x + (size_t)t * dk, *y0 = y + (size_t)t * dk;
            vf a0 = KFN(splat)(0.f), b0 = a0;
            for (int i = 0; i < dk; i++) {
                const vf s = KFN(ld)(S0 + (size_t)i * dv + e);
                a0 += s * KFN(splat)(x0[i]);
                b0 += s * KFN(splat)(y0[i]);
            }
            KFN(st)(W + (size_t)t * dv + e, a0);
            KFN(st)(P + (size_t)t * dv + e, b0);
        }
    }
    for (; e < dv; e++)
        for (int t = 0; t < m; t++) {
            const float *x0 = x + (size_t)t * dk, *y0 = y + (size_t)t * dk;
            float a0 = 0.f, b0 = 0.f;
            for (int i = 0; i < dk; i++) {
                const float s = S0[(size_t)i * dv + e];
                a0 += s * x0[i];
                b0 += s * y0[i];
            }
            W[(size_t)t * dv + e] = a0;
            P[(size_t)t * dv + e] = b0;
        }
}

static void KFN(gdn_chunk)(int dk, int dv, const float *S0, int j0, int j1, const float *Kb,
                           float *Ub, const float *G, const float *q, const float *v, int ldv,
                           const float *beta, float *o, float *scratch)
{
    const int m = j1 - j0;
    float *W = scratch, *P = W + (size_t)WRK_GDN_BLOCK * dv;
    float *a = P + (size_t)WRK_GDN_BLOCK * dv, *b = a + WRK_GDN_BLOCK;
    KFN(gdn_s0)(dk, dv, S0, Kb + (size_t)j0 * dk, q, m, W, P);
    for (int j = j0; j < j1; j++) {
        const int t = j - j0;
        const float *kj = Kb + (size_t)j * dk, *qt = q + (size_t)t * dk;
        const float *vt = v + (size_t)t * ldv, *wt = W + (size_t)t * dv, *pt = P + (size_t)t * dv;
        for (int i = 0; i <= j; i++) a[i] = G[j] - G[i];
        KFN(vexp)(b, a, j + 1);
        const float eg = KFN(exp_s)(G[j]), bt = beta[t];
        for (int i = 0; i <= j; i++) {
            const float *ki = Kb + (size_t)i * dk;
            a[i] = i < j ? KFN(gdn_flush)(b[i] * KFN(dot)(ki, kj, dk)) : 0.f;
            b[i] = KFN(gdn_flush)(b[i] * KFN(dot)(ki, qt, dk));
        }
        float *uj = Ub + (size_t)j * dv, *ot = o + (size_t)t * dv;
        int e = 0;
        for (; e + VW <= dv; e += VW) {
            vf x = KFN(ld)(vt + e) - KFN(splat)(eg) * KFN(ld)(wt + e);
            for (int i = 0; i < j; i++) x -= KFN(splat)(a[i]) * KFN(ld)(Ub + (size_t)i * dv + e);
            const vf u = x * KFN(splat)(bt);
            KFN(st)(uj + e, u);
            vf y = KFN(splat)(eg) * KFN(ld)(pt + e);
            for (int i = 0; i < j; i++) y += KFN(splat)(b[i]) * KFN(ld)(Ub + (size_t)i * dv + e);
            y += KFN(splat)(b[j]) * u;
            KFN(st)(ot + e, y);
        }
        for (; e < dv; e++) {
            float x = vt[e] - eg * wt[e];
            for (int i = 0; i < j; i++) x -= a[i] * Ub[(size_t)i * dv + e];
            const float u = x * bt;
            uj[e] = u;
            float y = eg * pt[e];
            for (int i = 0; i < j; i++) y += b[i] * Ub[(size_t)i * dv + e];
            y += b[j] * u;
            ot[e] = y;
        }
    }
}

static void KFN(gdn_close)(int dk, int dv, float *S, int n, const float *Kb, const float *Ub,
                           const float *G, float *scratch)
{
    float *c = scratch, *d = c + WRK_GDN_BLOCK, *kc = d + WRK_GDN_BLOCK;
    for (int j = 0; j < n; j++) d[j] = G[n - 1] - G[j];
    KFN(vexp)(c, d, n);
    const float eg = KFN(exp_s)(G[n - 1]);
    /* kc[j][i] = e^(G_{n-1}-G_j) k_j[i], flushed as the chunk's coefficients */
    for (int j = 0; j < n; j++)
        for (int i = 0; i < dk; i++)
            kc[(size_t)j * dk + i] = KFN(gdn_flush)(c[j] * Kb[(size_t)j * dk + i]);
    int e = 0;
    for (; e + VW <= dv; e += VW) {
        int i = 0;
        for (; i + 4 <= dk; i += 4) {
            float *s0 = S + (size_t)i * dv + e;
            vf a0 = KFN(splat)(eg) * KFN(ld)(s0), a1 = KFN(splat)(eg) * KFN(ld)(s0 + dv);
            vf a2 = KFN(splat)(eg) * KFN(ld)(s0 + 2 * dv), a3 = KFN(splat)(eg) * KFN(ld)(s0 + 3 * dv);
            for (int j = 0; j < n; j++) {
                const vf u = KFN(ld)(Ub + (size_t)j * dv + e);
                const float *kj = kc + (size_t)j * dk + i;
                a0 += KFN(splat)(kj[0]) * u;
                a1 += KFN(splat)(kj[1]) * u;
                a2 += KFN(splat)(kj[2]) * u;
                a3 += KFN(splat)(kj[3]) * u;
            }
            KFN(st)(s0, a0);
            KFN(st)(s0 + dv, a1);
            KFN(st)(s0 + 2 * dv, a2);
            KFN(st)(s0 + 3 * dv, a3);
        }
        for (; i < dk; i++) {
            float *s0 = S + (size_t)i * dv + e;
            vf a0 = KFN(splat)(eg) * KFN(ld)(s0);
            for (int j = 0; j < n; j++)
                a0 += KFN(splat)(kc[(size_t)j * dk + i]) * KFN(ld)(Ub + (size_t)j * dv + e);
            KFN(st)(s0, a0);
        }
    }
    for (; e < dv; e++)
        for (int i = 0; i < dk; i++) {
            float *s0 = S + (size_t)i * dv + e;
            float a0 = eg * *s0;
            for (int j = 0; j < n; j++) a0 += kc[(size_t)j * dk + i] * Ub[(size_t)j * dv + e];
            *s0 = a0;
        }
}

/* y[i] = u[i] silu(g[i] m) (kernels.h, `swiglu`); y may be u or g. */
static void KFN(swiglu)(float *y, const float *g, const float *u, size_t n, float m)
{
    const vf mv = KFN(splat)(m);
    size_t i = 0;
    for (; i + VW <= n; i += VW)
        KFN(st)(y + i, KFN(ld)(u + i) * KFN(silu_v)(KFN(ld)(g + i) * mv));
    for (; i < n; i++) y[i] = u[i] * KFN(silu_s)(g[i] * m);
}

/* Attention over the rows of one KV block for nq queries (kernels.h, `attn_scores` /
 * `attn_mix`). */

/* The VW sums of VW accumulators at once: lane r of the result is KFN(hsum)(A[r]) exactly —
 * each level adds the same lane pairs hsum does (lane l and l + half of what is left), for VW
 * keys side by side, so a score does not depend on whether its key went through here or
 * through KFN(dot). */
static inline vf KFN(hsum_vw)(const vf *A)
{
#if VW == 16
    vf x[8], y[4], z[2];
    for (int r = 0; r < 8; r++)
        x[r] = __builtin_shufflevector(A[2 * r], A[2 * r + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17,
                                       18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(A[2 * r], A[2 * r + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24,
                                       25, 26, 27, 28, 29, 30, 31);
    for (int r = 0; r < 4; r++)
        y[r] = __builtin_shufflevector(x[2 * r], x[2 * r + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17,
                                       18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(x[2 * r], x[2 * r + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20,
                                       21, 22, 23, 28, 29, 30, 31);
    for (int r = 0; r < 2; r++)
        z[r] = __builtin_shufflevector(y[2 * r], y[2 * r + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17,
                                       20, 21, 24, 25, 28, 29) +
               __builtin_shufflevector(y[2 * r], y[2 * r + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18,
                                       19, 22, 23, 26, 27, 30, 31);
    return __builtin_shufflevector(z[0], z[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                   28, 30) +
           __builtin_shufflevector(z[0], z[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                   29, 31);
#elif VW == 8
    vf x[4], y[2];
    for (int r = 0; r < 4; r++)
        x[r] = __builtin_shufflevector(A[2 * r], A[2 * r + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
               __builtin_shufflevector(A[2 * r], A[2 * r + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int r = 0; r < 2; r++)
        y[r] = __builtin_shufflevector(x[2 * r], x[2 * r + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
               __builtin_shufflevector(x[2 * r], x[2 * r + 1], 2, 3, 6, 7, 10, 11, 14, 15);
    return __builtin_shufflevector(y[0], y[1], 0, 2, 4, 6, 8, 10, 12, 14) +
           __builtin_shufflevector(y[0], y[1], 1, 3, 5, 7, 9, 11, 13, 15);
#else
    vf x[2];
    for (int r = 0; r < 2; r++)
        x[r] = __builtin_shufflevector(A[2 * r], A[2 * r + 1], 0, 1, 4, 5) +
               __builtin_shufflevector(A[2 * r], A[2 * r + 1], 2, 3, 6, 7);
    return __builtin_shufflevector(x[0], x[1], 0, 2, 4, 6) +
           __builtin_shufflevector(x[0], x[1], 1, 3, 5, 7);
#endif
}

static void KFN(attn_scores)(const float *q, int nq, const float *k, int ldk, int n, int d,
                             float scale, float *s, size_t lds)
{
    int p = 0;
    if (d % VW == 0) /* VW keys at a time: one transposed sum instead of VW horizontal ones */
        for (; p + VW <= n; p += VW) {
            const float *kp = k + (size_t)p * ldk;
            for (int j = 0; j < nq; j++) {
                const float *qj = q + (size_t)j * d;
                vf A[VW];
                for (int r = 0; r < VW; r++) A[r] = KFN(splat)(0.f);
                for (int i = 0; i < d; i += VW) {
                    const vf qv = KFN(ld)(qj + i);
#pragma GCC unroll 16
                    for (int r = 0; r < VW; r++) A[r] += qv * KFN(ld)(kp + (size_t)r * ldk + i);
                }
                KFN(st)(s + (size_t)j * lds + p, KFN(hsum_vw)(A) * KFN(splat)(scale));
            }
        }
    for (; p < n; p++)
        for (int j = 0; j < nq; j++)
            s[(size_t)j * lds + p] = KFN(dot)(q + (size_t)j * d, k + (size_t)p * ldk, d) * scale;
}

/* s[p] <- exp(s[p] - max) / sum over p < n (kernels.h, `softmax`). */
static void KFN(softmax)(float *s, int n)
{
    vf mv = KFN(splat)(-INFINITY);
    int p = 0;
    for (; p + VW <= n; p += VW) {
        const vf x = KFN(ld)(s + p);
        mv = KFN(vsel)(x > mv, x, mv);
    }
    float mx = -INFINITY;
    for (int l = 0; l < VW; l++)
        if (mv[l] > mx) mx = mv[l];
    for (; p < n; p++)
        if (s[p] > mx) mx = s[p];
    /* the sum in double, element p in lane p % VW, the lanes added in order at the end */
    typedef float vfh __attribute__((vector_size(VW * 2)));
    typedef double vd __attribute__((vector_size(VW * 4)));
    const vf mxv = KFN(splat)(mx);
    vd lo = {0}, hi = {0};
    for (p = 0; p + VW <= n; p += VW) {
        const vf e = KFN(exp_v)(KFN(ld)(s + p) - mxv);
        KFN(st)(s + p, e);
        vfh h0, h1;
        memcpy(&h0, &e, sizeof h0);
        memcpy(&h1, (const char *)&e + sizeof h0, sizeof h1);
        lo += __builtin_convertvector(h0, vd);
        hi += __builtin_convertvector(h1, vd);
    }
    double lane[VW];
    memcpy(lane, &lo, sizeof lo);
    memcpy(lane + VW / 2, &hi, sizeof hi);
    for (; p < n; p++) {
        s[p] = KFN(exp_s)(s[p] - mx);
        lane[p % VW] += s[p];
    }
    double sum = 0;
    for (int l = 0; l < VW; l++) sum += lane[l];
    const float inv = (float)(1.0 / sum);
    const vf iv = KFN(splat)(inv);
    for (p = 0; p + VW <= n; p += VW) KFN(st)(s + p, KFN(ld)(s + p) * iv);
    for (; p < n; p++) s[p] *= inv;
}

/* Up to MIX_Q queries share each loaded row of v. */
#define MIX_Q 4
static void KFN(attn_mix)(float *o, int nq, const float *v, int ldv, int n, int d, const float *w,
                          size_t ldw)
{
    for (int j0 = 0; j0 < nq; j0 += MIX_Q) {
        const int jn = nq - j0 < MIX_Q ? nq - j0 : MIX_Q;
        float *oj = o + (size_t)j0 * d;
        const float *wj = w + (size_t)j0 * ldw;
        int i = 0;
        for (; i + 2 * VW <= d; i += 2 * VW) {
            vf a0[MIX_Q], a1[MIX_Q];
            for (int j = 0; j < jn; j++) {
                a0[j] = KFN(ld)(oj + (size_t)j * d + i);
                a1[j] = KFN(ld)(oj + (size_t)j * d + i + VW);
            }
            for (int p = 0; p < n; p++) {
                const vf v0 = KFN(ld)(v + (size_t)p * ldv + i);
                const vf v1 = KFN(ld)(v + (size_t)p * ldv + i + VW);
#pragma GCC unroll 4
                for (int j = 0; j < jn; j++) {
                    const vf pr = KFN(splat)(wj[(size_t)j * ldw + p]);
                    a0[j] += pr * v0;
                    a1[j] += pr * v1;
                }
            }
            for (int j = 0; j < jn; j++) {
                KFN(st)(oj + (size_t)j * d + i, a0[j]);
                KFN(st)(oj + (size_t)j * d + i + VW, a1[j]);
            }
        }
        for (; i + VW <= d; i += VW)
            for (int j = 0; j < jn; j++) {
                vf a0 = KFN(ld)(oj + (size_t)j * d + i);
                for (int p = 0; p < n; p++)
                    a0 += KFN(splat)(wj[(size_t)j * ldw + p]) * KFN(ld)(v + (size_t)p * ldv + i);
                KFN(st)(oj + (size_t)j * d + i, a0);
            }
        /* The tail with an explicit fused multiply-add where the ISA has one: left to
         * contraction, the compiler vectorizes this loop for some jn and not others, and
         * contracts only some of the versions. */
        for (; i < d; i++)
            for (int j = 0; j < jn; j++) {
                float a = oj[(size_t)j * d + i];
                for (int p = 0; p < n; p++)
#ifdef __FMA__
                    a = __builtin_fmaf(wj[(size_t)j * ldw + p], v[(size_t)p * ldv + i], a);
#else
                    a += wj[(size_t)j * ldw + p] * v[(size_t)p * ldv + i];
#endif
                oj[(size_t)j * d + i] = a;
            }
    }
}
#undef MIX_Q
