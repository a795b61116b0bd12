/* workers/cpu: the quantized matmul compiled for portable (4 floats per vector; kernels_q.h). */
#include <stdint.h>

#define VW 4
#define LOAD_I8(p)                                                                                 \
    ((vi){((const int8_t *)(p))[0], ((const int8_t *)(p))[1], ((const int8_t *)(p))[2],            \
          ((const int8_t *)(p))[3]})
#define LOAD_U8(p)                                                                                 \
    ((vi){((const uint8_t *)(p))[0], ((const uint8_t *)(p))[1], ((const uint8_t *)(p))[2],         \
          ((const uint8_t *)(p))[3]})
#define KFN(name) qportable_##name
#include "workers/cpu/kernels_q_impl.h"

wrk_qmm_fn wrk__qmm_portable(void)
{
    return qportable_qmm;
}
