/* workers/cpu: the qg matmul compiled for portable (4 floats per vector; kernels_qg.h). */
#include <stdint.h>

#define VW 4
#define LOAD_U8(p)                                                                                 \
    ((vi){((const uint8_t *)(p))[0], ((const uint8_t *)(p))[1], ((const uint8_t *)(p))[2],         \
          ((const uint8_t *)(p))[3]})
#define KFN(name) qgportable_##name
#include "workers/cpu/kernels_qg_impl.h"

wrk_qgmm_fn wrk__qgmm_portable(void)
{
    return qgportable_qgmm;
}
