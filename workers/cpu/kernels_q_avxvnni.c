/* workers/cpu: the quantized matmul with AVX-VNNI (vpdpbusd ymm, 8 lanes; kernels_q.h). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline int32_t qavxvnni_ld32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

#define VW 8
#define DOT4(a, w, x) _mm256_dpbusd_avx_epi32((__m256i)(a), (__m256i)(w), (__m256i)(x))
#define DOT8(a, w, x) _mm256_dpbusd_avx_epi32((__m256i)(a), (__m256i)(w), (__m256i)(x))
#define Q8_OFF 128
#define BCAST4(p) _mm256_set1_epi32(qavxvnni_ld32(p))
#define VFMA(a, b, c) _mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c))
#define KFN(name) qavxvnni_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_avxvnni(void)
{
    return qavxvnni_qmm;
}
