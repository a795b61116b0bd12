/* workers/cpu: the quantized matmul compiled for avx2 (8 floats per vector; kernels_q.h). */
#define VW 8
#define KFN(name) qavx2_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_avx2(void)
{
    return qavx2_qmm;
}
