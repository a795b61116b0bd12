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
