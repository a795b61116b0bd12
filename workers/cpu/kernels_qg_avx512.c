/* workers/cpu: the qg matmul compiled for avx512 (16 floats per vector; kernels_qg.h). */
#include <immintrin.h>

#define VW 16
#define LOAD_U8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define KFN(name) qgavx512_##name
#include "workers/cpu/kernels_qg_impl.h"

wrk_qgmm_fn wrk__qgmm_avx512(void)
{
    return qgavx512_qgmm;
}
