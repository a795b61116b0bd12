/* workers/cpu: the quantized matmul with AVX2 (8 lanes; kernels_q.h), vpmaddubsw + vpmaddwd.
 * vpmaddubsw adds two u8 x s8 products with int16 saturation, so:
 *   q4: u = nibble <= 15, |x| <= 127: a pair is at most 2 * 15 * 127 = 3810, never saturates;
 *   q8: u = q + 128 would reach 2 * 255 * 127 and saturate, so DOT8 multiplies |q| by
 *       sign(q) * x (vpsignb; q and x both in [-127, 127]): at most 2 * 127 * 127 = 32258.
 *       It sums q * x itself: Q8_OFF 0. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline int32_t qavx2_ld32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline __m256i qavx2_dot4(__m256i a, __m256i w, __m256i x)
{
    const __m256i p = _mm256_maddubs_epi16(w, x);
    return _mm256_add_epi32(a, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
static inline __m256i qavx2_dot8(__m256i a, __m256i w, __m256i x)
{
    const __m256i q = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80));
    return qavx2_dot4(a, _mm256_abs_epi8(q), _mm256_sign_epi8(x, q));
}

#define VW 8
#define QTR 2 /* 16 registers: int + fp32 sums of 1 panel (2 vectors) x 2 tokens, |q|, sign */
#define QNP(T) ((T) == 1 ? 2 : 1)
#define DOT4(a, w, x) qavx2_dot4((__m256i)(a), (__m256i)(w), (__m256i)(x))
#define DOT8(a, w, x) qavx2_dot8((__m256i)(a), (__m256i)(w), (__m256i)(x))
#define Q8_OFF 0
#define BCAST4(p) _mm256_set1_epi32(qavx2_ld32(p))
#define VFMA(a, b, c) _mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c))
#define KFN(name) qavx2_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_avx2(void)
{
    return qavx2_qmm;
}
