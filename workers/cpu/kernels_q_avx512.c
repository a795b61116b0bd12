/* workers/cpu: the quantized matmul with AVX512_VNNI (vpdpbusd zmm, 16 lanes; kernels_q.h). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline int32_t qavx512_ld32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

#define VW 16
#define DOT4(a, w, x) _mm512_dpbusd_epi32((__m512i)(a), (__m512i)(w), (__m512i)(x))
#define DOT8(a, w, x) _mm512_dpbusd_epi32((__m512i)(a), (__m512i)(w), (__m512i)(x))
#define Q8_OFF 128
#define BCAST4(p) _mm512_set1_epi32(qavx512_ld32(p))
#define VFMA(a, b, c) _mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c))
#define KFN(name) qavx512_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_avx512(void)
{
    return qavx512_qmm;
}

/* wrk_quant_x on AVX-512 (quant.c dispatches to it): the same operations per element as the
 * scalar one (max of |x| skipping NaN: vmaxps keeps its second operand for a NaN first; the
 * division; the clamps, NaN -> -127; rint by +- 1.5 * 2^23), so the same bytes. */
static void qavx512_quant_x(const float *x, int K, void *dst)
{
    const int G = (K + 31) / 32;
    int8_t *xq = dst;
    unsigned char *sxp = (unsigned char *)dst + (size_t)G * 32, *sump = sxp + (size_t)G * 4;
    const __m512 absm = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f),
                 magic = _mm512_set1_ps(12582912.f);
    for (int g = 0; g < G; g++) {
        const int k0 = g * 32, kn = K - k0 < 32 ? K - k0 : 32;
        const __mmask16 m0 = kn >= 16 ? 0xffff : (__mmask16)((1u << kn) - 1);
        const __mmask16 m1 = kn >= 32 ? 0xffff : kn > 16 ? (__mmask16)((1u << (kn - 16)) - 1) : 0;
        const __m512 v0 = _mm512_maskz_loadu_ps(m0, x + k0);
        const __m512 v1 = _mm512_maskz_loadu_ps(m1, x + k0 + 16);
        const __m512 am = _mm512_max_ps(
            _mm512_and_ps(v1, absm), _mm512_max_ps(_mm512_and_ps(v0, absm), _mm512_setzero_ps()));
        /* the max over the lanes: order-free for non-NaN values (NaN lanes were dropped) */
        const float amax = _mm512_reduce_max_ps(am);
        const float s = amax / 127.f;
        __m512i q32[2];
        const __m512 v[2] = {v0, v1};
        for (int h = 0; h < 2; h++) {
            __m512 q = s > 0.f ? _mm512_div_ps(v[h], _mm512_set1_ps(s)) : _mm512_setzero_ps();
            q = _mm512_max_ps(q, lo); /* q > -127 ? q : -127, so NaN -> -127 */
            q = _mm512_min_ps(q, hi);
            q = _mm512_sub_ps(_mm512_add_ps(q, magic), magic);
            q32[h] = _mm512_cvttps_epi32(q);
        }
        _mm_storeu_si128((__m128i *)(void *)(xq + k0), _mm512_cvtepi32_epi8(q32[0]));
        _mm_storeu_si128((__m128i *)(void *)(xq + k0 + 16), _mm512_cvtepi32_epi8(q32[1]));
        const int32_t S = _mm512_reduce_add_epi32(_mm512_add_epi32(q32[0], q32[1]));
        memcpy(sxp + (size_t)g * 4, &s, 4);
        memcpy(sump + (size_t)g * 4, &S, 4);
    }
}

wrk_quant_x_fn wrk__quant_x_avx512(void)
{
    return qavx512_quant_x;
}
