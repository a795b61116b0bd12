/* workers/cpu: the quantized matmul compiled for portable (4 floats per vector; kernels_q.h). */
#define VW 4
#define KFN(name) qportable_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_portable(void)
{
    return qportable_qmm;
}
