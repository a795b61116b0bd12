/* workers: the backends by name, as the daemon's and tools' --backend pick them. The one file
 * that knows every backend, so that the CPU and CUDA libraries need not know each other. */
#include <string.h>

#include "workers/wrk.h"

int wrk_backend_create_by_name(const char *name, const wrk_model_t *m,
                               const wrk_backend_opts_t *opts, wrk_backend_t **out, char *err,
                               size_t errlen)
{
    *out = NULL;
    if (!name || !strcmp(name, "cpu")) return wrk_cpu_backend_create(m, opts, out, err, errlen);
    if (!strcmp(name, "cuda")) return wrk_cuda_backend_create(m, opts, out, err, errlen);
    return rcd_fail(RCD_EINVAL, err, errlen, "unknown backend \"%s\" (cpu or cuda)", name);
}

#ifndef RCD_WITH_CUDA
int wrk_cuda_backend_create(const wrk_model_t *m, const wrk_backend_opts_t *opts,
                            wrk_backend_t **out, char *err, size_t errlen)
{
    *out = NULL;
    return rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                    "the cuda backend is not built in (configure with -DWITH_CUDA=ON where the "
                    "CUDA toolkit is installed)");
}
#endif
