/* workers/cpu: the qg matmul compiled for avx2 (8 floats per vector; kernels_qg.h). */
#include <immintrin.h>

#define VW 8
#define LOAD_U8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define KFN(name) qgavx2_##name
#include "workers/cpu/kernels_qg_impl.h"

wrk_qgmm_fn wrk__qgmm_avx2(void)
{
    return qgavx2_qgmm;
}
