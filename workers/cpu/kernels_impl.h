/* workers/cpu: the kernel bodies, written once over GCC vector extensions and compiled
 * once per instruction set. The including file defines:
 *   VW              floats per vector (4 portable, 8 AVX2, 16 AVX-512)
 *   KFN(name)       the per-ISA function name
 *   KISA            the table's name string
 *   LOAD_F16(p)     VW halves at p (unaligned) -> vf
 * and compiles with -ffp-contract=fast so a*b+c becomes an FMA where the ISA has one.
 * Here: the vector helpers, the elementwise kernels, rmsnorm, the matmuls, the causal conv and
 * Mamba's scan; kernels_mix_impl.h (included before the table at the end) holds SSD, the delta
 * rule, attention and swiglu. */
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
/* A broadcast (vbroadcastss): not `(vf){0} + x`, which the compiler must keep as a scalar
 * add before the broadcast (0 + -0.0 is +0.0). */
static inline vf KFN(splat)(float x)
{
    vf v = {x};
#if VW == 16
    return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
#elif VW == 8
    return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
#else
    return __builtin_shufflevector(v, v, 0, 0, 0, 0);
#endif
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

/* ---- matmul: y[t][o] = (acc ? y : 0) + x[t] . W[o] (+ bias[o]) ------------------------
 *
 * One kernel for every token count. A register tile holds R rows x up to TR tokens of
 * accumulators; per step of 2*VW columns it loads (and converts) two weight vectors per row
 * and two x vectors per token, and adds both products into the same accumulator. Rows go in
 * panels of about MM_PANEL_BYTES of weights: the first token block streams a panel from
 * memory, the later ones find it in L2, so weights are read from memory once per call.
 *
 * Every output element is computed in the same order whatever T, the tile or the panel it
 * falls in (the per-lane sums over the steps, hsum, the scalar tail, then the bias), so a
 * token's result does not depend on how many tokens share the call: prefill chunkings and
 * batch compositions give bit-identical outputs.
 *
 * BF16 weights: a 2*VW step is VW 32-bit words, each a pair of bf16s; `w << 16` is the even
 * elements and `w & 0xffff0000` the odd ones, one integer op per vector of fp32 weights
 * (instead of a widening load and a shift). x is de-interleaved to match, once per call, into
 * `xpack` (even elements of each 2*VW block, then the odd ones; the tail as is). */
#ifndef MM_PANEL_BYTES
#define MM_PANEL_BYTES (96 * 1024)
#endif
#ifndef PF_ROWS
#define PF_ROWS 4
#endif
/* Software prefetch of the same columns PF_ROWS rows ahead, into L2 (locality 2: prefetcht1),
 * on the pass that streams weights from memory; later passes over a panel find it in L2.
 * Measured on a Sapphire Rapids VM, batch-1 decode of the 130m-shaped BF16 checkpoint: with
 * prefetchnta (locality 0) or no software prefetch it reached about half the rate of
 * prefetcht1/t2/t0, which were within noise of each other. */
#ifndef MM_PF_LOC
#define MM_PF_LOC 2
#endif
#if VW >= 16
#define MM_TR 5 /* tokens per tile: 4x5 accumulators + 8 weight + 2 x vectors of 32 registers */
#define MM_R(T) 4
#else
#define MM_TR 4 /* 16 registers: 2x4 accumulators, or 4 rows when there is one token */
#define MM_R(T) ((T) == 1 ? 4 : 2)
#endif

/* The two fp32 weight vectors of columns [k, k + 2*VW) of a row, in x's order for dt. */
static inline __attribute__((always_inline)) void
KFN(ld_w2)(const char *row, wrk_dtype_t dt, int k, vf *we, vf *wo)
{
    if (dt == WRK_DT_BF16) {
        vu u;
        memcpy(&u, row + (size_t)k * 2, sizeof u);
        vu e = u << 16, o = u & 0xffff0000u;
        memcpy(we, &e, sizeof e);
        memcpy(wo, &o, sizeof o);
    } else if (dt == WRK_DT_F16) {
        *we = LOAD_F16(row + (size_t)k * 2);
        *wo = LOAD_F16(row + (size_t)(k + VW) * 2);
    } else {
        *we = KFN(ld)((const float *)(const void *)row + k);
        *wo = KFN(ld)((const float *)(const void *)row + k + VW);
    }
}

static inline __attribute__((always_inline)) void
KFN(mm_tile)(const wrk_mat_t *W, int o, int nr, const int R, const float *x, int ldx,
             const int T, const wrk_dtype_t dt, float *y, int ldy, const float *bias, bool acc,
             int pf)
{
    const int K = W->cols, KB = K / (2 * VW) * (2 * VW);
    const size_t rb = (size_t)K * (dt == WRK_DT_F32 ? 4 : 2);
    const char *rows[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) rows[r] = (const char *)W->data + (size_t)(o + (r < nr ? r : 0)) * rb;
    vf a[4][MM_TR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) a[r][t] = KFN(splat)(0.f);
    for (int k = 0; k < KB; k += 2 * VW) {
        vf we[4], wo[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            /* the same columns of the next row block: the hardware streamers alone leave
             * half-width weights short of the bandwidth */
            const char *p = rows[r] + (size_t)PF_ROWS * rb + (size_t)k * (rb / K);
            if (pf) {
                __builtin_prefetch(p, 0, MM_PF_LOC);
                if (dt == WRK_DT_F32 && VW >= 16) __builtin_prefetch(p + 64, 0, MM_PF_LOC);
            }
            KFN(ld_w2)(rows[r], dt, k, &we[r], &wo[r]);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const vf xe = KFN(ld)(x + (size_t)t * ldx + k), xo = KFN(ld)(x + (size_t)t * ldx + k + VW);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                a[r][t] += we[r] * xe;
                a[r][t] += wo[r] * xo;
            }
        }
    }
    int kt = KB;
    if (K - KB >= VW) { /* one more vector of columns (x is not de-interleaved there) */
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const vf w = KFN(ld_w)(rows[r], dt, KB);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) a[r][t] += w * KFN(ld)(x + (size_t)t * ldx + KB);
        }
        kt += VW;
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < T; t++) {
            float s = KFN(hsum)(a[r][t]);
            for (int kk = kt; kk < K; kk++) s += KFN(w1)(rows[r], dt, kk) * x[(size_t)t * ldx + kk];
            if (bias) s += bias[o + r];
            float *dst = y + (size_t)t * ldy + o + r;
            *dst = acc ? *dst + s : s;
        }
}

/* All rows [o0, o1) for T <= MM_TR tokens, T and dt fixed at compile time per instance. */
static inline __attribute__((always_inline)) void
KFN(mm_rows)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, const int T,
             const wrk_dtype_t dt, float *y, int ldy, const float *bias, bool acc, int pf)
{
    const int R = MM_R(T);
    for (int o = o0; o < o1; o += R)
        KFN(mm_tile)(W, o, o1 - o < R ? o1 - o : R, R, x, ldx, T, dt, y, ldy, bias, acc, pf);
}

#define KMM_T(DT)                                                                            \
    switch (T) {                                                                             \
    case 1: KFN(mm_rows)(W, o0, o1, x, ldx, 1, DT, y, ldy, bias, acc, pf); break;                \
    case 2: KFN(mm_rows)(W, o0, o1, x, ldx, 2, DT, y, ldy, bias, acc, pf); break;                \
    case 3: KFN(mm_rows)(W, o0, o1, x, ldx, 3, DT, y, ldy, bias, acc, pf); break;                \
    case 4: KFN(mm_rows)(W, o0, o1, x, ldx, 4, DT, y, ldy, bias, acc, pf); break;                \
    default: KFN(mm_rows)(W, o0, o1, x, ldx, MM_TR, DT, y, ldy, bias, acc, pf); break;           \
    }

/* Rows [o0, o1), T <= MM_TR tokens. */
static void KFN(mm_block)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T,
                          float *y, int ldy, const float *bias, bool acc, int pf)
{
    switch (W->dt) {
    case WRK_DT_BF16: KMM_T(WRK_DT_BF16); break;
    case WRK_DT_F16: KMM_T(WRK_DT_F16); break;
    default: KMM_T(WRK_DT_F32); break;
    }
}
#undef KMM_T

/* x rows [0, T) de-interleaved per 2*VW block for bf16 weights (see above). */
static void KFN(pack_x)(float *xp, const float *x, int ldx, int T, int K)
{
    const int KB = K / (2 * VW) * (2 * VW);
    for (int t = 0; t < T; t++) {
        const float *s = x + (size_t)t * ldx;
        float *d = xp + (size_t)t * K;
        for (int k = 0; k < KB; k += 2 * VW)
            for (int j = 0; j < VW; j++) {
                d[k + j] = s[k + 2 * j];
                d[k + VW + j] = s[k + 2 * j + 1];
            }
        memcpy(d + KB, s + KB, (size_t)(K - KB) * sizeof(float));
    }
}

/* ---- matmul over packed weights (W->pk, layout in kernels.h) -------------------------
 *
 * Outer products: a tile of NP panels (16 rows each, PV vectors) x up to PTR tokens of
 * accumulators; per column k, one weight vector per panel and one broadcast x[t][k] per
 * token. Each output element is a plain sequence of FMAs over k = 0, 1, ..., K-1 from 0,
 * then + bias, then + y (acc): the same whatever T and tile, and no horizontal sums.
 *
 * x comes transposed per block of tokens ([K][n], pk_xt), so the tile reads every token's
 * x at a constant offset from one pointer. Prefill runs the columns in blocks of MM_KC when
 * K is larger (the blocks' x for a whole chunk of tokens and the group's weights then stay
 * in L2): a tile stores its sums after a block and loads them again for the next, which
 * leaves every output's sequence of FMAs as it was (a float stored and loaded is the same
 * float), so the results do not depend on the blocking either. */
#define PV (WRK_PANEL / VW)
#if VW >= 16
#ifndef PTR
#define PTR 12 /* 2 panels x 12 tokens: 24 accumulators + 4 weight vectors of 32 registers */
#endif
#define PNP(T) ((T) <= 2 ? 4 : 2)
#elif VW == 8
#define PTR 6 /* 1 panel (2 vectors) x 6 tokens of 16 registers */
#define PNP(T) ((T) <= 2 ? 2 : 1)
#else
#define PTR 2
#define PNP(T) 1
#endif
#define PNP_MAX 4
#ifndef MM_PK_PF_DIST
#define MM_PK_PF_DIST 1024
#endif
/* Columns per block in prefill (even: bf16 panels hold column pairs). A chunk's x, its
 * WRK_MM_XPACK_T tokens transposed, then the sums of a group of rows (WRK_MM_XPACK_T x
 * MM_PK_GROUP_ROWS floats) fill xpack (wrk_mm_scratch_floats). */
#ifndef MM_KC
#define MM_KC 1024
#endif
#define MM_PK_CHUNK WRK_MM_XPACK_T
#define MM_PK_GROUP_ROWS WRK_MM_SUM_ROWS

/* What a tile call does besides its panels and tokens. */
typedef struct {
    const float *xt;   /* [K][T] */
    float *y;          /* final outputs: y[t * ldy + row] */
    int ldy;
    const float *bias;
    bool acc;
    int o0, o1;        /* the rows to write */
    int pf;            /* prefetch distance in bytes, 0 for none */
    int k0, k1;        /* the columns of this call */
    float *sum;        /* running sums [t * MM_PK_GROUP_ROWS + row - sum_row0] */
    int sum_row0;
    bool first, last;  /* start from 0 (else from sum); finish into y (else into sum) */
} KFN(pk_arg);

static inline __attribute__((always_inline)) void
KFN(pk_tile)(const wrk_mat_t *W, int p, const int NP, const int T, const wrk_dtype_t dt,
             const KFN(pk_arg) *g)
{
    const int K = W->cols;
    const size_t pb = wrk_pack_panel_bytes(dt, K);
    const char *base = (const char *)W->pk + (size_t)p * pb;
    const float *xt = g->xt;
    const int pf = g->pf;
    vf a[PNP_MAX][PV][PTR];
    float *const sum = g->first && g->last ? NULL : g->sum + (p * WRK_PANEL - g->sum_row0);
    if (g->first) {
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
            for (int v = 0; v < PV; v++)
#pragma GCC unroll 12
                for (int t = 0; t < T; t++) a[q][v][t] = KFN(splat)(0.f);
    } else {
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
            for (int v = 0; v < PV; v++)
#pragma GCC unroll 12
                for (int t = 0; t < T; t++)
                    a[q][v][t] = KFN(ld)(sum + (size_t)t * MM_PK_GROUP_ROWS + q * WRK_PANEL + v * VW);
    }
    if (dt == WRK_DT_BF16) {
        /* per pair of columns: 16 rows x (k, k+1) as 32-bit words */
        /* pairs [k0/2, k1/2), and an odd k1's last column (K's: the even half of its pair) */
        const int je = g->k1 / 2, jend = je + (g->k1 & 1);
        for (int j = g->k0 / 2; j < jend; j++) {
            vf we[PNP_MAX][PV], wo[PNP_MAX][PV];
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++) {
                const char *w = base + (size_t)q * pb + (size_t)j * WRK_PANEL * 4;
                if (pf) __builtin_prefetch(w + pf, 0, MM_PF_LOC);
#pragma GCC unroll 4
                for (int v = 0; v < PV; v++) {
                    vu u;
                    memcpy(&u, w + (size_t)v * VW * 4, sizeof u);
                    vu e = u << 16, o = u & 0xffff0000u;
                    memcpy(&we[q][v], &e, sizeof e);
                    memcpy(&wo[q][v], &o, sizeof o);
                }
            }
#pragma GCC unroll 12
            for (int t = 0; t < T; t++) {
                const vf xb = KFN(splat)(xt[(size_t)(2 * j) * T + t]);
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < PV; v++) a[q][v][t] += we[q][v] * xb;
            }
            if (j == je) break; /* odd K: the last column has no pair */
#pragma GCC unroll 12
            for (int t = 0; t < T; t++) {
                const vf xb = KFN(splat)(xt[(size_t)(2 * j + 1) * T + t]);
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < PV; v++) a[q][v][t] += wo[q][v] * xb;
            }
        }
    } else {
        const size_t esz = dt == WRK_DT_F32 ? 4 : 2;
        for (int k = g->k0; k < g->k1; k++) {
            vf w[PNP_MAX][PV];
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++) {
                const char *wp = base + (size_t)q * pb + (size_t)k * WRK_PANEL * esz;
                if (pf) __builtin_prefetch(wp + pf, 0, MM_PF_LOC);
#pragma GCC unroll 4
                for (int v = 0; v < PV; v++)
                    w[q][v] = dt == WRK_DT_F32 ? KFN(ld)((const float *)(const void *)wp + v * VW)
                                               : LOAD_F16(wp + (size_t)v * VW * 2);
            }
#pragma GCC unroll 12
            for (int t = 0; t < T; t++) {
                const vf xb = KFN(splat)(xt[(size_t)k * T + t]);
#pragma GCC unroll 4
                for (int q = 0; q < NP; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < PV; v++) a[q][v][t] += w[q][v] * xb;
            }
        }
    }
    if (!g->last) {
        for (int q = 0; q < NP; q++)
            for (int v = 0; v < PV; v++)
                for (int t = 0; t < T; t++)
                    KFN(st)(sum + (size_t)t * MM_PK_GROUP_ROWS + q * WRK_PANEL + v * VW, a[q][v][t]);
        return;
    }
    const int o0 = g->o0, o1 = g->o1;
    for (int q = 0; q < NP; q++)
        for (int v = 0; v < PV; v++) {
            const int r0 = (p + q) * WRK_PANEL + v * VW;
            if (r0 >= o1 || r0 + VW <= o0) continue;
            const bool full = r0 >= o0 && r0 + VW <= o1;
            for (int t = 0; t < T; t++) {
                float *dst = g->y + (size_t)t * g->ldy + r0;
                vf r = a[q][v][t];
                if (full) {
                    if (g->bias) r += KFN(ld)(g->bias + r0);
                    if (g->acc) r = KFN(ld)(dst) + r;
                    KFN(st)(dst, r);
                    continue;
                }
                for (int l = 0; l < VW; l++) {
                    if (r0 + l < o0 || r0 + l >= o1) continue;
                    float s = r[l];
                    if (g->bias) s += g->bias[r0 + l];
                    dst[l] = g->acc ? dst[l] + s : s;
                }
            }
        }
}

/* Panels [pa, pb) for T <= PTR tokens, T and dt fixed at compile time per instance. */
static inline __attribute__((always_inline)) void
KFN(pk_rows)(const wrk_mat_t *W, int pa, int pe, const int T, const wrk_dtype_t dt,
             const KFN(pk_arg) *g)
{
    const int NP = PNP(T);
    int p = pa;
    for (; p + NP <= pe; p += NP) KFN(pk_tile)(W, p, NP, T, dt, g);
    for (; p < pe; p++) KFN(pk_tile)(W, p, 1, T, dt, g);
}

#define KPK_T(DT)                                                                            \
    switch (T) {                                                                             \
    case 1: KFN(pk_rows)(W, pa, pe, 1, DT, g); break;                                        \
    case 2: KFN(pk_rows)(W, pa, pe, 2, DT, g); break;                                        \
    PK_CASES_ABOVE_2(DT)                                                                     \
    default: KFN(pk_rows)(W, pa, pe, PTR, DT, g); break;                                     \
    }
#if PTR == 12
#define PK_CASES_ABOVE_2(DT)                                                                 \
    case 3: KFN(pk_rows)(W, pa, pe, 3, DT, g); break;                                        \
    case 4: KFN(pk_rows)(W, pa, pe, 4, DT, g); break;                                        \
    case 5: KFN(pk_rows)(W, pa, pe, 5, DT, g); break;                                        \
    case 6: KFN(pk_rows)(W, pa, pe, 6, DT, g); break;                                        \
    case 7: KFN(pk_rows)(W, pa, pe, 7, DT, g); break;                                        \
    case 8: KFN(pk_rows)(W, pa, pe, 8, DT, g); break;                                        \
    case 9: KFN(pk_rows)(W, pa, pe, 9, DT, g); break;                                        \
    case 10: KFN(pk_rows)(W, pa, pe, 10, DT, g); break;                                      \
    case 11: KFN(pk_rows)(W, pa, pe, 11, DT, g); break;
#elif PTR == 6
#define PK_CASES_ABOVE_2(DT)                                                                 \
    case 3: KFN(pk_rows)(W, pa, pe, 3, DT, g); break;                                        \
    case 4: KFN(pk_rows)(W, pa, pe, 4, DT, g); break;                                        \
    case 5: KFN(pk_rows)(W, pa, pe, 5, DT, g); break;
#else
#define PK_CASES_ABOVE_2(DT)
#endif

static void KFN(pk_block)(const wrk_mat_t *W, int pa, int pe, int T, const KFN(pk_arg) *g)
{
    switch (W->dt) {
    case WRK_DT_BF16: KPK_T(WRK_DT_BF16); break;
    case WRK_DT_F16: KPK_T(WRK_DT_F16); break;
    default: KPK_T(WRK_DT_F32); break;
    }
}
#undef KPK_T
#undef PK_CASES_ABOVE_2

/* x rows [0, T) transposed to [K][T] (token t of column k at xt[k * T + t]). */
static void KFN(pk_xt)(float *xt, const float *x, int ldx, int T, int K)
{
    for (int k = 0; k < K; k++)
        for (int t = 0; t < T; t++) xt[(size_t)k * T + t] = x[(size_t)t * ldx + k];
}

/* Bytes from column k0 of a panel to column k1 of the same panel. */
static inline size_t KFN(pk_col_bytes)(wrk_dtype_t dt, int k0, int k1)
{
    return (size_t)(k1 - k0) * WRK_PANEL * (dt == WRK_DT_F32 ? 4 : 2);
}

static void KFN(mm_packed)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T,
                           float *y, int ldy, const float *bias, bool acc, float *xpack)
{
    const int K = W->cols;
    const int p0 = o0 / WRK_PANEL, p1 = (o1 + WRK_PANEL - 1) / WRK_PANEL;
    const size_t pb = wrk_pack_panel_bytes(W->dt, W->cols);
    KFN(pk_arg) g = {.ldy = ldy, .bias = bias, .acc = acc, .o0 = o0, .o1 = o1, .k0 = 0, .k1 = K,
                     .first = true, .last = true};
    if (T <= PTR) { /* decode: every panel once, a single token from its own row */
        if (T > 1) KFN(pk_xt)(xpack, x, ldx, T, K);
        g.xt = T > 1 ? xpack : x;
        g.y = y;
        g.pf = MM_PK_PF_DIST;
        KFN(pk_block)(W, p0, p1, T, &g);
        return;
    }
    /* Prefill: chunks of MM_PK_CHUNK tokens, transposed per block of PTR into xpack (block t
     * at t * K); the sums of a group's rows after each column block behind them. */
    const bool kblk = K > MM_KC;
    const int kc = kblk ? MM_KC : K;
    int group = kblk ? MM_PK_GROUP_ROWS / WRK_PANEL : (int)(MM_PANEL_BYTES / (pb ? pb : 1));
    if (group < PNP_MAX) group = PNP_MAX;
    for (int c = 0; c < T; c += MM_PK_CHUNK) {
        const int tn = T - c < MM_PK_CHUNK ? T - c : MM_PK_CHUNK;
        const float *xc = x + (size_t)c * ldx;
        for (int t = 0; t < tn; t += PTR) {
            const int n = tn - t < PTR ? tn - t : PTR;
            if (n > 1) KFN(pk_xt)(xpack + (size_t)t * K, xc + (size_t)t * ldx, ldx, n, K);
        }
        /* The first token block streams a group's columns from memory (prefetching just
         * ahead); the second one prefetches the same place in what comes next, and the later
         * ones find both in L2. (Prefetching in every later block, as before, issued prefetches
         * that hit L2: a one-thread harness measured the matmul ~4% faster without them.) */
        for (int p = p0; p < p1; p += group) {
            const int pe = p1 - p < group ? p1 : p + group;
            g.sum_row0 = p * WRK_PANEL;
            for (int k = 0; k < K; k += kc) {
                const int ke = K - k < kc ? K : k + kc;
                size_t next = 0; /* bytes from here to the same place in the next block */
                if (ke < K) next = KFN(pk_col_bytes)(W->dt, k, ke);
                else if (pe < p1) next = (size_t)(pe - p) * pb - KFN(pk_col_bytes)(W->dt, 0, k);
                g.k0 = k;
                g.k1 = ke;
                g.first = k == 0;
                g.last = ke == K;
                for (int t = 0; t < tn; t += PTR) {
                    const int n = tn - t < PTR ? tn - t : PTR;
                    g.xt = n > 1 ? xpack + (size_t)t * K : xc + (size_t)t * ldx;
                    g.y = y + (size_t)(c + t) * ldy;
                    if (kblk) g.sum = xpack + (size_t)MM_PK_CHUNK * K + (size_t)t * MM_PK_GROUP_ROWS;
                    g.pf = t == 0 ? MM_PK_PF_DIST : t == PTR ? (int)next : 0;
                    KFN(pk_block)(W, p, pe, n, &g);
                }
            }
        }
    }
}

static void KFN(mm)(const wrk_mat_t *W, int o0, int o1, const float *x, int ldx, int T,
                    float *y, int ldy, const float *bias, bool acc, float *xpack)
{
    if (W->pk) {
        KFN(mm_packed)(W, o0, o1, x, ldx, T, y, ldy, bias, acc, xpack);
        return;
    }
    const int K = W->cols;
    const size_t rb = (size_t)K * wrk_dtype_size(W->dt);
    int panel = (int)(MM_PANEL_BYTES / (rb ? rb : 1)) & ~3;
    if (panel < 4) panel = 4;
    for (int t0 = 0; t0 < T; t0 += WRK_MM_XPACK_T) {
        const int tn = T - t0 < WRK_MM_XPACK_T ? T - t0 : WRK_MM_XPACK_T;
        const float *xs = x + (size_t)t0 * ldx;
        int lds = ldx;
        if (W->dt == WRK_DT_BF16) {
            KFN(pack_x)(xpack, xs, ldx, tn, K);
            xs = xpack;
            lds = K;
        }
        float *yt = y + (size_t)t0 * ldy;
        if (tn <= MM_TR) { /* decode: no panels, every row once */
            KFN(mm_block)(W, o0, o1, xs, lds, tn, yt, ldy, bias, acc, 1);
            continue;
        }
        for (int p = o0; p < o1; p += panel) {
            const int pe = o1 - p < panel ? o1 : p + panel;
            for (int t = 0; t < tn; t += MM_TR)
                KFN(mm_block)(W, p, pe, xs + (size_t)t * lds, lds, tn - t < MM_TR ? tn - t : MM_TR,
                              yt + (size_t)t * ldy, ldy, bias, acc, t == 0);
        }
    }
}

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

#ifndef SCAN_PF
#define SCAN_PF 64
#endif
static void KFN(scan)(int T, int c0, int c1, int I, int N, const float *dt, const float *dt_b,
                      const float *xc, const float *z, int ldz, const float *bc, int ldbc,
                      const float *A, const float *D, float *h, float *y)
{
    int c = c0;
    for (; c + VW <= c1; c += VW) {
        const vf db = KFN(ld)(dt_b + c), dd = KFN(ld)(D + c);
        /* A and the state are N rows I apart: 2N streams, more than the hardware prefetcher
         * follows at once; fetch their columns SCAN_PF floats ahead (decode streams the whole
         * state through here) */
        if (c + SCAN_PF < c1)
            for (int n = 0; n < N; n++) {
                __builtin_prefetch(h + (size_t)n * I + c + SCAN_PF, 1, 3);
                __builtin_prefetch(A + (size_t)n * I + c + SCAN_PF, 0, 3);
            }
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

/* SSD, the delta rule, attention and swiglu: kernels_mix_impl.h, in this ISA. */
#include "workers/cpu/kernels_mix_impl.h"

static const wrk_kern_t KFN(table) = {
    .isa = KISA,
    .mm = KFN(mm),
    .to_f32 = KFN(to_f32),
    .rmsnorm = KFN(rmsnorm),
    .conv_silu = KFN(conv_silu),
    .scan = KFN(scan),
    .ssd = KFN(ssd),
    .attn_scores = KFN(attn_scores),
    .attn_mix = KFN(attn_mix),
    .softmax = KFN(softmax),
    .swiglu = KFN(swiglu),
    .delta_rule = KFN(delta_rule),
    .gdn_chunk = KFN(gdn_chunk),
    .gdn_close = KFN(gdn_close),
    .vexp = KFN(vexp),
    .vsoftplus = KFN(vsoftplus),
};
