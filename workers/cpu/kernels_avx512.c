/* workers/cpu: the kernels compiled for AVX-512 F/BW/VL/DQ (16 floats per vector). */
#include <immintrin.h>

#define VW 16
#define KFN(name) avx512_##name
#define KISA "avx512"
#define LOAD_F16(p) ((vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p))))
#define LOAD_BF16_U32(p) ((vu)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(p))))
#define VMAX(a, b) ((vf)_mm512_max_ps((a), (b)))
#include "workers/cpu/kernels_impl.h"

const wrk_kern_t *wrk__kern_avx512(void)
{
    return &avx512_table;
}
