/* workers/cpu: choosing the kernel table from the CPU's features, and the matmul entry. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "workers/cpu/kernels.h"
#include "workers/cpu/kernels_q.h"
#include "workers/cpu/kernels_qg.h"

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
    if (W->pk && W->qf == WRK_WQ_QG) { /* a pre-quantized checkpoint: kernels_qg.h */
        wrk_qgmm(k, scratch, W, o0, o1, x, ldx, T, y, ldy, bias, acc);
        return;
    }
    if (W->pk && W->qf != WRK_WQ_NATIVE) { /* --weights q8|q4: kernels_q.h */
        wrk_qmm(k, W, o0, o1, x, ldx, T, y, ldy, bias, acc, scratch);
        return;
    }
    k->mm(W, o0, o1, x, ldx, T, y, ldy, bias, acc, scratch);
}

const wrk_kern_t *wrk_kern_for(const char *isa, const char *matmul, const char **why)
{
    static const char *unused;
    if (!why) why = &unused;
    if (!matmul || !*matmul || strcmp(matmul, "fp32") == 0) {
        const wrk_kern_t *k = wrk_kern_select(isa);
        if (!k) *why = "this CPU cannot run those kernels";
        return k;
    }
    const bool force_dp = strcmp(matmul, "bf16-avx512") == 0;
    if (strcmp(matmul, "bf16") != 0 && !force_dp) {
        *why = "matmul must be fp32, bf16 or bf16-avx512";
        return NULL;
    }
    if (isa && *isa && strcmp(isa, "auto") != 0 && strcmp(isa, "avx512") != 0) {
        *why = "the bf16 matmul runs on the avx512 kernels only";
        return NULL;
    }
    /* bf16: AMX where the CPU and the kernel have it, else AVX512_BF16 (kernels_avx512bf16.c);
     * RCD_MATMUL_NO_AMX=1 in the environment, or bf16-avx512, skips AMX. */
    const char *no_amx = getenv("RCD_MATMUL_NO_AMX");
    const char *why_amx = "AMX not tried (RCD_MATMUL_NO_AMX)";
    if (!force_dp && !(no_amx && *no_amx && strcmp(no_amx, "0") != 0)) {
        const wrk_kern_t *k = wrk__kern_amx_bf16(&why_amx);
        if (k) return k;
    }
    const wrk_kern_t *k = wrk__kern_avx512_bf16(why);
    if (!k && !force_dp) { /* both reasons, in this thread's buffer (read right after) */
        static _Thread_local char both[256];
        snprintf(both, sizeof both, "%s; %s", why_amx, *why);
        *why = both;
    }
    return k;
}
