/* workers/cpu: the quantized matmul compiled for avx512 (16 floats per vector; kernels_q.h). */
#define VW 16
#define KFN(name) qavx512_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_avx512(void)
{
    return qavx512_qmm;
}
