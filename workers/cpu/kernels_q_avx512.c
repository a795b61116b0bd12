/* workers/cpu: the quantized matmul compiled for avx512 (16 floats per vector; kernels_q.h). */
#include <immintrin.h>

#define VW 16
#define LOAD_I8(p) _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define LOAD_U8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
/* vpermps uses the low 4 bits of each index lane: the nibble's value without masking */
#define NIB_F(tbl, v) ((vf)_mm512_permutexvar_ps((__m512i)(v), (__m512)(tbl)))
#define KFN(name) qavx512_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_avx512(void)
{
    return qavx512_qmm;
}
