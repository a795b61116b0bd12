/* libFuzzer target: config.json parsing for every model family. Any input must give either
 * a config whose sizes are all in range or an error with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "workers/mamba.h"
#include "workers/mamba2.h"

static void mamba(const char *json, size_t size)
{
    wrk_mamba_config_t cfg;
    char err[256] = "";
    if (wrk_mamba_config_parse(json, size, &cfg, err, sizeof err) == 0) {
        if (cfg.vocab < 1 || cfg.hidden < 1 || cfg.inner < 1 || cfg.d_state < 1 ||
            cfg.d_conv < 1 || cfg.dt_rank < 1 || cfg.n_layers < 1 || !(cfg.eps > 0))
            abort();
        if (cfg.bos_id >= cfg.vocab || cfg.eos_id >= cfg.vocab) abort();
    } else if (!err[0]) {
        abort(); /* every error explains itself */
    }
}

static void mamba2(const char *json, size_t size)
{
    wrk_mamba2_config_t cfg;
    char err[256] = "";
    if (wrk_mamba2_config_parse(json, size, &cfg, err, sizeof err) == 0) {
        if (cfg.vocab < 1 || cfg.hidden < 1 || cfg.inner < 1 || cfg.d_state < 1 ||
            cfg.d_conv < 1 || cfg.n_heads < 1 || cfg.head_dim < 1 || cfg.n_groups < 1 ||
            cfg.n_layers < 1 || !(cfg.eps > 0))
            abort();
        if (cfg.n_heads % cfg.n_groups || cfg.inner != cfg.n_heads * cfg.head_dim) abort();
    } else if (!err[0]) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mamba((const char *)data, size);
    mamba2((const char *)data, size);
    return 0;
}
