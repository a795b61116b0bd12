/* libFuzzer target: config.json parsing for every model family. Any input must give either
 * a config whose sizes are all in range or an error with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "workers/families/mamba.h"
#include "workers/families/granite.h"
#include "workers/families/jamba.h"
#include "workers/families/qwen3next.h"
#include "workers/families/mamba2.h"
#include "workers/families/recurrentgemma.h"

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

static void recurrentgemma(const char *json, size_t size)
{
    wrk_rg_config_t cfg;
    char err[256] = "";
    if (wrk_rg_config_parse(json, size, &cfg, err, sizeof err) == 0) {
        if (cfg.vocab < 1 || cfg.hidden < 1 || cfg.n_layers < 1 || cfg.mlp < 1 ||
            cfg.n_heads < 1 || cfg.n_kv_heads < 1 || cfg.head_dim < 1 || cfg.window < 1 ||
            cfg.d_conv < 1 || cfg.block_w < 1 || !(cfg.eps > 0) || !(cfg.softcap > 0))
            abort();
        if (cfg.n_heads % cfg.n_kv_heads || cfg.lru_width != cfg.n_heads * cfg.block_w ||
            2 * cfg.rot_freqs > cfg.head_dim || cfg.n_attn + cfg.n_rec != cfg.n_layers)
            abort();
    } else if (!err[0]) {
        abort();
    }
}

static void granite(const char *json, size_t size)
{
    wrk_granite_config_t cfg;
    char err[256] = "";
    if (wrk_granite_config_parse(json, size, &cfg, err, sizeof err) == 0) {
        const wrk_mamba2_config_t *mx = &cfg.mx;
        if (mx->vocab < 1 || mx->hidden < 1 || mx->n_layers < 1 || mx->inner < 1 ||
            mx->n_heads < 1 || mx->head_dim < 1 || mx->n_groups < 1 || mx->d_state < 1 ||
            mx->d_conv < 1 || !(mx->eps > 0) || cfg.n_q < 1 || cfg.n_kv < 1 ||
            cfg.head_dim < 1 || cfg.shared_dim < 1 || cfg.expert_dim < 1 || cfg.logits_div == 0)
            abort();
        if (mx->n_heads % mx->n_groups || mx->inner != mx->n_heads * mx->head_dim ||
            cfg.n_q % cfg.n_kv || cfg.n_attn + cfg.n_mamba != mx->n_layers ||
            (cfg.rope && cfg.head_dim % 2) ||
            (cfg.n_experts && (cfg.top_k < 1 || cfg.top_k > cfg.n_experts)))
            abort();
    } else if (!err[0]) {
        abort();
    }
}

static void jamba(const char *json, size_t size)
{
    wrk_jamba_config_t cfg;
    char err[256] = "";
    if (wrk_jamba_config_parse(json, size, &cfg, err, sizeof err) == 0) {
        const wrk_mamba_config_t *mx = &cfg.mx;
        if (mx->vocab < 1 || mx->hidden < 1 || mx->n_layers < 1 || mx->inner < 1 ||
            mx->d_state < 1 || mx->d_conv < 1 || mx->dt_rank < 1 || !(mx->eps > 0) ||
            cfg.n_q < 1 || cfg.n_kv < 1 || cfg.head_dim < 1 || cfg.ffn_dim < 1)
            abort();
        if (cfg.n_q % cfg.n_kv || cfg.n_attn + cfg.n_mamba != mx->n_layers ||
            (cfg.n_moe && (cfg.top_k < 1 || cfg.top_k > cfg.n_experts)))
            abort();
    } else if (!err[0]) {
        abort();
    }
}

static void qwen3next(const char *json, size_t size)
{
    wrk_qwen3next_config_t cfg;
    char err[256] = "";
    if (wrk_qwen3next_config_parse(json, size, &cfg, err, sizeof err) == 0) {
        bool any_moe = false;
        for (int l = 0; l < cfg.n_layers; l++)
            any_moe |= cfg.moe[l];
        if (cfg.vocab < 1 || cfg.hidden < 1 || cfg.n_layers < 1 || !(cfg.eps > 0) ||
            cfg.n_q < 1 || cfg.n_kv < 1 || cfg.n_q % cfg.n_kv || cfg.nk < 1 || cfg.nv % cfg.nk ||
            cfg.d_conv < 1 || cfg.rot_dim % 2 || cfg.rot_dim > cfg.head_dim ||
            cfg.n_attn + cfg.n_gdn != cfg.n_layers ||
            cfg.conv_dim != 2 * cfg.nk * cfg.dk + cfg.nv * cfg.dv ||
            (any_moe && (cfg.top_k < 1 || cfg.top_k > cfg.n_experts)))
            abort();
    } else if (!err[0]) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mamba((const char *)data, size);
    mamba2((const char *)data, size);
    recurrentgemma((const char *)data, size);
    granite((const char *)data, size);
    jamba((const char *)data, size);
    qwen3next((const char *)data, size);
    return 0;
}
