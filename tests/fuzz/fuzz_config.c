/* libFuzzer target: config.json parsing for Mamba checkpoints. Any input must give either
 * a config whose sizes are all in range or an error with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "workers/mamba.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    wrk_mamba_config_t cfg;
    char err[256];
    err[0] = 0;
    int rc = wrk_mamba_config_parse((const char *)data, size, &cfg, err, sizeof err);
    if (rc == 0) {
        if (cfg.vocab < 1 || cfg.hidden < 1 || cfg.inner < 1 || cfg.d_state < 1 ||
            cfg.d_conv < 1 || cfg.dt_rank < 1 || cfg.n_layers < 1 || !(cfg.eps > 0))
            abort();
        if (cfg.bos_id >= cfg.vocab || cfg.eos_id >= cfg.vocab) abort();
    } else if (!err[0]) {
        abort(); /* every error explains itself */
    }
    return 0;
}
