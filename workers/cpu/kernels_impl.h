/* workers/cpu: the kernel bodies, written once over GCC vector extensions and compiled
 * once per instruction set. The including file defines:
 *   VW              floats per vector (4 portable, 8 AVX2, 16 AVX-512)
 *   KFN(name)       the per-ISA function name
 *   KISA            the table's name string
 *   LOAD_F16(p)     VW halves at p (unaligned) -> vf
 * and compiles with -ffp-contract=fast so a*b+c becomes an FMA where the ISA has one. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "workers/cpu/kernels.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));
typedef uint16_t vh __attribute__((vector_size(VW * 2)));

static inline vf KFN(ld)(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void KFN(st)(float *p, vf v)
{
    memcpy(p, &v, sizeof v);
}
static inline vf KFN(splat)(float x)
{
    return (vf){0} + x;
}
/* Horizontal sum by halving (log2(VW) shuffles and adds) instead of a lane-by-lane chain of
 * VW extracts and dependent adds: the GEMV epilogue runs one per (row, token). */
typedef float KFN(v8) __attribute__((vector_size(32)));
typedef float KFN(v4) __attribute__((vector_size(16)));
static inline float KFN(hsum)(vf v)
{
#if VW == 16
    KFN(v8) h8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    KFN(v4) h4 = __builtin_shufflevector(h8, h8, 0, 1, 2, 3) +
                 __builtin_shufflevector(h8, h8, 4, 5, 6, 7);
#elif VW == 8
    KFN(v4) h4 = __builtin_shufflevector(v, v, 0, 1, 2, 3) +
                 __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
    KFN(v4) h4 = v;
#endif
    KFN(v4) h2 = h4 + __builtin_shufflevector(h4, h4, 2, 3, 0, 1);
    return h2[0] + h2[1];
}
static inline vf KFN(ld_bf16)(const void *p)
{
#ifdef LOAD_BF16_U32
    vu u = LOAD_BF16_U32(p) << 16; /* one widening load where the ISA has it */
#else
    vh h;
    memcpy(&h, p, sizeof h);
    vu u = __builtin_convertvector(h, vu) << 16;
#endif
    vf f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline vf KFN(ld_w)(const void *row, wrk_dtype_t dt, int k)
{
    switch (dt) {
    case WRK_DT_BF16: return KFN(ld_bf16)((const uint16_t *)row + k);
    case WRK_DT_F16: return LOAD_F16((const uint16_t *)row + k);
    default: return KFN(ld)((const float *)row + k);
    }
}
/* One weight element; rows may be unaligned (safetensors offsets are arbitrary). */
static inline float KFN(w1)(const void *row, wrk_dtype_t dt, int k)
{
    uint16_t h;
    float f;
    switch (dt) {
    case WRK_DT_BF16: memcpy(&h, (const uint16_t *)row + k, 2); return wrk_bf16_to_f32(h);
    case WRK_DT_F16: memcpy(&h, (const uint16_t *)row + k, 2); return wrk_f16_to_f32(h);
    default: memcpy(&f, (const float *)row + k, 4); return f;
    }
}
static inline vf KFN(vsel)(vi mask, vf a, vf b)
{
    vi ai, bi;
    memcpy(&ai, &a, sizeof a);
    memcpy(&bi, &b, sizeof b);
    vi r = (ai & mask) | (bi & ~mask);
    vf f;
    memcpy(&f, &r, sizeof f);
    return f;
}

/* exp with Cody-Waite reduction and a degree-6 polynomial: within ~1 ulp of expf over
 * [-87.3, 88.7]; below that 0, above +inf. */
static inline vf KFN(exp_v)(vf x)
{
    const vf hi = KFN(splat)(88.72283935546875f), lo = KFN(splat)(-87.33654022216797f);
    vi under = x < lo, over = x > hi;
    x = KFN(vsel)(over, hi, KFN(vsel)(under, lo, x));
    /* n = round(x / ln2) via the 1.5 * 2^23 trick (round-to-nearest-even). */
    const vf magic = KFN(splat)(12582912.0f);
    vf n = (x * 1.44269504088896341f + magic) - magic;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = KFN(splat)(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    vf e = p * (r * r) + r + 1.0f;
    /* 2^n in two halves so that n = 128 (x near the top of the range) does not overflow
     * the exponent field before the multiply. */
    vi ni = __builtin_convertvector(n, vi);
    vi n1 = ni >> 1, n2 = ni - n1;
    vi b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
    vf s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    e = e * s1 * s2;
    e = KFN(vsel)(under, KFN(splat)(0.f), e);
    return KFN(vsel)(over, KFN(splat)(INFINITY), e);
}

/* exp for x <= 0 (the scan's exp(A * delta), A < 0 < delta): no overflow path, and the
 * underflow clamp is one max. Same polynomial and accuracy as exp_v; results below
 * 2^-126 flush to zero. */
static inline vf KFN(exp_neg_v)(vf x)
{
    const vf lo = KFN(splat)(-87.33654022216797f);
#ifdef VMAX
    x = VMAX(x, lo);
    vi under = x <= lo;
#else
    vi under = x < lo;
    x = KFN(vsel)(under, lo, x);
#endif
    const vf magic = KFN(splat)(12582912.0f);
    vf n = (x * 1.44269504088896341f + magic) - magic;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = KFN(splat)(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    vf e = p * (r * r) + r + 1.0f;
    /* n >= -126 here, so 2^n is one exponent field (n + 127 >= 1). */
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vf scale;
    memcpy(&scale, &bits, sizeof scale);
    vi ei;
    vf res = e * scale;
    memcpy(&ei, &res, sizeof ei);
    ei &= ~under;
    memcpy(&res, &ei, sizeof res);
    return res;
}

/* log(x) for finite x >= 1 (all softplus needs): frexp, then the minimax polynomial on
 * [sqrt(1/2), sqrt(2)). */
static inline vf KFN(log_v)(vf x)
{
    vi xi;
    memcpy(&xi, &x, sizeof xi);
    vi ex = ((xi >> 23) & 0xff) - 126;
    vi mi = (xi & 0x007fffff) | 0x3f000000; /* mantissa in [0.5, 1) */
    vf m;
    memcpy(&m, &mi, sizeof m);
    vf e = __builtin_convertvector(ex, vf);
    vi small = m < 0.70710678118654752f;
    e = KFN(vsel)(small, e - 1.0f, e);
    m = KFN(vsel)(small, m + m, m) - 1.0f;
    vf z = m * m;
    vf p = KFN(splat)(7.0376836292e-2f);
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    vf y = p * m * z;
    y = y + e * -2.12194440e-4f;
    y = y - 0.5f * z;
    return m + y + e * 0.693359375f;
}

/* torch's softplus: v > 20 ? v : log1p(exp(v)). log1p(t) = log(1+t) + (t - ((1+t)-1))/(1+t)
 * keeps full precision for tiny t. */
static inline vf KFN(softplus_v)(vf v)
{
    vf t = KFN(exp_v)(v);
    vf u = 1.0f + t;
    vf r = KFN(log_v)(u) + (t - (u - 1.0f)) / u;
    return KFN(vsel)(v > 20.0f, v, r);
}

static inline vf KFN(silu_v)(vf v)
{
    return v / (1.0f + KFN(exp_v)(-v));
}

/* Scalar forms with the same math, for tails. */
static inline float KFN(exp_s)(float x)
{
    return KFN(exp_v)(KFN(splat)(x))[0];
}
static inline float KFN(softplus_s)(float x)
{
    return KFN(softplus_v)(KFN(splat)(x))[0];
}
static inline float KFN(silu_s)(float x)
{
    return KFN(silu_v)(KFN(splat)(x))[0];
}

static void KFN(vexp)(float *y, const float *x, int n)
{
    int i = 0;
    for (; i + VW <= n; i += VW) KFN(st)(y + i, KFN(exp_v)(KFN(ld)(x + i)));
    for (; i < n; i++) y[i] = KFN(exp_s)(x[i]);
}

static void KFN(vsoftplus)(float *y, const float *x, int n)
{
    int i = 0;
    for (; i + VW <= n; i += VW) KFN(st)(y + i, KFN(softplus_v)(KFN(ld)(x + i)));
    for (; i < n; i++) y[i] = KFN(softplus_s)(x[i]);
}

static void KFN(to_f32)(float *dst, const void *src, wrk_dtype_t dt, size_t n)
{
    size_t i = 0;
    if (dt == WRK_DT_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (; i + VW <= n; i += VW) KFN(st)(dst + i, KFN(ld_w)(src, dt, (int)i));
    for (; i < n; i++) dst[i] = KFN(w1)(src, dt, (int)i);
}

static void KFN(rmsnorm)(float *y, const float *x, const float *w, int n, float eps)
{
    vf acc = KFN(splat)(0.f);
    int i = 0;
    for (; i + VW <= n; i += VW) {
        vf v = KFN(ld)(x + i);
        acc += v * v;
    }
    float ss = KFN(hsum)(acc);
    for (; i < n; i++) ss += x[i] * x[i];
    float s = 1.0f / sqrtf(ss / (float)n + eps);
    i = 0;
    for (; i + VW <= n; i += VW) KFN(st)(y + i, KFN(ld)(w + i) * (KFN(ld)(x + i) * s));
    for (; i < n; i++) y[i] = w[i] * (x[i] * s);
}

/* GEMV over RB rows at a time with T and the weight dtype fixed at compile time (always
 * inlined per combination), so the inner loop holds RB x T accumulators in registers and
 * converts each weight vector once for all T tokens. */
#ifndef PF_ROWS
#define PF_ROWS 4
#endif
static inline __attribute__((always_inline)) void
KFN(gemv_t)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, const int T,
            const wrk_dtype_t dt, float *y, int ldy, const float *bias, bool acc)
{
    const int K = W->cols;
    const size_t esz = dt == WRK_DT_F32 ? 4 : 2;
    const int RB = (T <= 2 || VW >= 16) ? 4 : 2;
    for (int o = o0; o < o1; o += RB) {
        const int nr = o1 - o < RB ? o1 - o : RB;
        const char *rows[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            rows[r] = (const char *)W->data + (size_t)(o + (r < nr ? r : 0)) * K * esz;
        vf a[4][WRK_GEMV_MAX_T];
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) a[r][t] = KFN(splat)(0.f);
        int k = 0;
        for (; k + VW <= K; k += VW) {
            vf xv[WRK_GEMV_MAX_T];
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) xv[t] = KFN(ld)(x + (size_t)t * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) {
                /* Prefetch the same columns of the next row block: the hardware streamers
                 * alone leave half-width weights well short of the bandwidth. */
                if (((k * esz) & 63) == 0)
                    __builtin_prefetch(rows[r] + (size_t)(k + PF_ROWS * K) * esz, 0, 0);
                vf w = KFN(ld_w)(rows[r], dt, k);
#pragma GCC unroll 4
                for (int t = 0; t < T; t++) a[r][t] += w * xv[t];
            }
        }
        for (int r = 0; r < nr; r++) {
            for (int t = 0; t < T; t++) {
                float s = KFN(hsum)(a[r][t]);
                for (int kk = k; kk < K; kk++)
                    s += KFN(w1)(rows[r], dt, kk) * x[(size_t)t * ldx + kk];
                if (bias) s += bias[o + r];
                float *dst = y + (size_t)t * ldy + o + r;
                *dst = acc ? *dst + s : s;
            }
        }
    }
}

#define KGEMV_DT(DT)                                                                         \
    switch (T) {                                                                             \
    case 1: KFN(gemv_t)(W, o0, o1, x, ldx, 1, DT, y, ldy, bias, acc); break;                 \
    case 2: KFN(gemv_t)(W, o0, o1, x, ldx, 2, DT, y, ldy, bias, acc); break;                 \
    case 3: KFN(gemv_t)(W, o0, o1, x, ldx, 3, DT, y, ldy, bias, acc); break;                 \
    default: KFN(gemv_t)(W, o0, o1, x, ldx, 4, DT, y, ldy, bias, acc); break;                \
    }

static void KFN(gemv)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T,
                      float *y, int ldy, const float *bias, bool acc)
{
    switch (W->dt) {
    case WRK_DT_BF16: KGEMV_DT(WRK_DT_BF16); break;
    case WRK_DT_F16: KGEMV_DT(WRK_DT_F16); break;
    default: KGEMV_DT(WRK_DT_F32); break;
    }
}

/* Any T: the rows in tiles small enough to stay in L1 while every 4-token chunk of x
 * runs the GEMV over the tile, so weights come from memory once and are converted in
 * registers (no fp32 copy, no packing). */
static void KFN(gemm_stream)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx,
                             int T, float *y, int ldy, const float *bias, bool acc)
{
    const size_t row_b = (size_t)W->cols * wrk_dtype_size(W->dt);
    int tile = (int)(WRK_STREAM_TILE_BYTES / (row_b ? row_b : 1)) & ~3;
    if (tile < 4) tile = 4;
    for (int o = o0; o < o1; o += tile) {
        const int oe = o1 - o < tile ? o1 : o + tile;
        for (int t = 0; t < T; t += WRK_GEMV_MAX_T) {
            const int tc = T - t < WRK_GEMV_MAX_T ? T - t : WRK_GEMV_MAX_T;
            KFN(gemv)(W, o, oe, x + (size_t)t * ldx, ldx, tc, y + (size_t)t * ldy, ldy, bias,
                      acc);
        }
    }
}
#undef KGEMV_DT

static void KFN(conv_silu)(int T, int c0, int c1, int I, int K, const float *x, int ldx,
                           const float *w, const float *b, float *win, float *out)
{
    const int W = K - 1;
    for (int t = 0; t < T; t++) {
        int c = c0;
        for (; c < c1; c += VW) {
            const int full = c + VW <= c1;
            if (full) {
                vf acc = b ? KFN(ld)(b + c) : KFN(splat)(0.f);
                for (int k = 0; k < K; k++) {
                    int j = t - W + k;
                    const float *src = j < 0 ? win + (size_t)(W + j) * I : x + (size_t)j * ldx;
                    acc += KFN(ld)(w + (size_t)k * I + c) * KFN(ld)(src + c);
                }
                KFN(st)(out + (size_t)t * I + c, KFN(silu_v)(acc));
            } else {
                for (int cc = c; cc < c1; cc++) {
                    float acc = b ? b[cc] : 0.f;
                    for (int k = 0; k < K; k++) {
                        int j = t - W + k;
                        const float *src = j < 0 ? win + (size_t)(W + j) * I : x + (size_t)j * ldx;
                        acc += w[(size_t)k * I + cc] * src[cc];
                    }
                    out[(size_t)t * I + cc] = KFN(silu_s)(acc);
                }
            }
        }
    }
    /* The window becomes the last K-1 inputs of [old window ‖ x_0..x_{T-1}]. */
    for (int s = 0; s < W; s++) {
        int j = T - W + s; /* input index of new window row s */
        float *dst = win + (size_t)s * I;
        if (j >= 0) {
            memcpy(dst + c0, x + (size_t)j * ldx + c0, (size_t)(c1 - c0) * sizeof(float));
        } else {
            /* j < 0: an older window row W + j, always at or after row s: moving forward is safe. */
            memmove(dst + c0, win + (size_t)(W + j) * I + c0, (size_t)(c1 - c0) * sizeof(float));
        }
    }
}

static void KFN(scan)(int T, int c0, int c1, int I, int N, const float *dt, const float *dt_b,
                      const float *xc, const float *z, int ldz, const float *bc, int ldbc,
                      const float *A, const float *D, float *h, float *y)
{
    int c = c0;
    for (; c + VW <= c1; c += VW) {
        const vf db = KFN(ld)(dt_b + c), dd = KFN(ld)(D + c);
        for (int t = 0; t < T; t++) {
            const vf delta = KFN(softplus_v)(KFN(ld)(dt + (size_t)t * I + c) + db);
            const vf u = KFN(ld)(xc + (size_t)t * I + c);
            const vf du = delta * u;
            const float *B = bc + (size_t)t * ldbc, *C = B + N;
            vf acc = KFN(splat)(0.f);
            for (int n = 0; n < N; n++) {
                float *hp = h + (size_t)n * I + c;
                vf dA = KFN(exp_neg_v)(KFN(ld)(A + (size_t)n * I + c) * delta);
                vf hv = dA * KFN(ld)(hp) + du * B[n];
                KFN(st)(hp, hv);
                acc += hv * C[n];
            }
            vf out = (acc + dd * u) * KFN(silu_v)(KFN(ld)(z + (size_t)t * ldz + c));
            KFN(st)(y + (size_t)t * I + c, out);
        }
    }
    for (; c < c1; c++) {
        for (int t = 0; t < T; t++) {
            float delta = KFN(softplus_s)(dt[(size_t)t * I + c] + dt_b[c]);
            float u = xc[(size_t)t * I + c], du = delta * u;
            const float *B = bc + (size_t)t * ldbc, *C = B + N;
            float acc = 0.f;
            for (int n = 0; n < N; n++) {
                float *hp = h + (size_t)n * I + c;
                float hv = KFN(exp_s)(A[(size_t)n * I + c] * delta) * *hp + du * B[n];
                *hp = hv;
                acc += hv * C[n];
            }
            y[(size_t)t * I + c] = (acc + D[c] * u) * KFN(silu_s)(z[(size_t)t * ldz + c]);
        }
    }
}

static const wrk_kern_t KFN(table) = {
    .isa = KISA,
    .gemv = KFN(gemv),
    .gemm_stream = KFN(gemm_stream),
    .to_f32 = KFN(to_f32),
    .rmsnorm = KFN(rmsnorm),
    .conv_silu = KFN(conv_silu),
    .scan = KFN(scan),
    .vexp = KFN(vexp),
    .vsoftplus = KFN(vsoftplus),
};
