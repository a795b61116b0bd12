/* workers/cpu: the quantized matmul compiled for avx512 (16 floats per vector; kernels_q.h). */
#include <immintrin.h>

#define VW 16
#define LOAD_I8(p) _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define LOAD_U8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define KFN(name) qavx512_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_avx512(void)
{
    return qavx512_qmm;
}
