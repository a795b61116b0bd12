/* workers/cpu: the kernels compiled for AVX2 + FMA + F16C (8 floats per vector). */
#include <immintrin.h>

#define VW 8
#define KFN(name) avx2_##name
#define KISA "avx2"
#define LOAD_F16(p) ((vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p))))
#define LOAD_BF16_U32(p) ((vu)_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))))
#define VMAX(a, b) ((vf)_mm256_max_ps((a), (b)))
#include "workers/cpu/kernels_impl.h"

const wrk_kern_t *wrk__kern_avx2(void)
{
    return &avx2_table;
}
