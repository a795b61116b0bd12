/* workers/cpu: choosing the kernel table from the CPU's features, and the matmul that
 * routes token counts to the streaming kernel or OpenBLAS sgemm. */
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "workers/cpu/kernels.h"

#include <cblas.h>
#undef I /* complex.h, pulled in by cblas.h */

static bool cpu_has_avx2(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    unsigned a, b, c, d;
    /* F16C is CPUID.1:ECX bit 29 (not every compiler's __builtin_cpu_supports knows it). */
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
    return false;
#endif
}

static bool cpu_has_avx512(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
#else
    return false;
#endif
}

const wrk_kern_t *wrk_kern_select(const char *isa)
{
    if (!isa || !*isa || strcmp(isa, "auto") == 0) {
        if (cpu_has_avx512()) return wrk__kern_avx512();
        if (cpu_has_avx2()) return wrk__kern_avx2();
        return wrk__kern_portable();
    }
    if (strcmp(isa, "avx512") == 0) return cpu_has_avx512() ? wrk__kern_avx512() : NULL;
    if (strcmp(isa, "avx2") == 0) return cpu_has_avx2() ? wrk__kern_avx2() : NULL;
    if (strcmp(isa, "portable") == 0) return wrk__kern_portable();
    return NULL;
}

void wrk_matmul(const wrk_kern_t *k, float *scratch, const wrk_mat_t *W, int o0, int o1,
                const float *x, int ldx, int T, float *y, int ldy, const float *bias, bool acc)
{
    if (o1 <= o0 || T <= 0) return;
    if (T <= WRK_MM_MAX_T) {
        k->mm(W, o0, o1, x, ldx, T, y, ldy, bias, acc, scratch);
        return;
    }
    const int K = W->cols;
    const size_t esz = wrk_dtype_size(W->dt);
    const bool direct = W->dt == WRK_DT_F32 && ((uintptr_t)W->data & 3) == 0;
    const int block = direct ? o1 - o0 : WRK_GEMM_BLOCK_ROWS;
    for (int o = o0; o < o1; o += block) {
        const int nr = o1 - o < block ? o1 - o : block;
        const float *wb;
        const void *src = (const char *)W->data + (size_t)o * K * esz;
        if (direct) {
            wb = src;
        } else {
            k->to_f32(scratch, src, W->dt, (size_t)nr * K);
            wb = scratch;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, nr, K, 1.0f, x, ldx, wb, K,
                    acc ? 1.0f : 0.0f, y + o, ldy);
        if (bias)
            for (int t = 0; t < T; t++)
                for (int r = 0; r < nr; r++) y[(size_t)t * ldy + o + r] += bias[o + r];
    }
}
