/* workers/cpu: the quantized matmul compiled for avx2 (8 floats per vector; kernels_q.h). */
#include <immintrin.h>

#define VW 8
#define LOAD_I8(p) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define LOAD_U8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define KFN(name) qavx2_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_avx2(void)
{
    return qavx2_qmm;
}
