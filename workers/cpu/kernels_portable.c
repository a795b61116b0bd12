/* workers/cpu: the portable kernels (4-float vectors: SSE2 on x86-64, NEON elsewhere). */
#include "workers/model/safetensors.h"

static inline __attribute__((always_inline)) void portable_f16x4(const void *p, float *out)
{
    const unsigned char *b = p;
    for (int i = 0; i < 4; i++) out[i] = wrk_f16_to_f32((uint16_t)(b[2 * i] | b[2 * i + 1] << 8));
}
#define VW 4
#define KFN(name) portable_##name
#define KISA "portable"
#define LOAD_F16(p)                                                                          \
    ({                                                                                       \
        vf v__;                                                                              \
        portable_f16x4((p), (float *)&v__);                                                  \
        v__;                                                                                 \
    })
#include "workers/cpu/kernels_impl.h"

const wrk_kern_t *wrk__kern_portable(void)
{
    return &portable_table;
}
