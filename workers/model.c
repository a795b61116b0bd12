/* workers: loading a checkpoint directory (config.json + safetensors) into a wrk_model_t,
 * and the model fingerprint that checkpoints are tied to. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "workers/model_int.h"

#define CONFIG_MAX_BYTES (4u << 20)

static int read_small_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    int rc = 0;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rcd_fail(errno == ENOENT ? RCD_ENOTFOUND : RCD_EIO, err, errlen, "%s: %s", path,
                        strerror(errno));
    buf = malloc(CONFIG_MAX_BYTES + 1);
    if (!buf) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto cleanup;
    }
    size_t n = fread(buf, 1, CONFIG_MAX_BYTES + 1, f);
    if (ferror(f)) {
        rc = rcd_fail(RCD_EIO, err, errlen, "%s: read error", path);
        goto cleanup;
    }
    if (n > CONFIG_MAX_BYTES) {
        rc = rcd_fail(RCD_ETOOBIG, err, errlen, "%s: larger than %u bytes", path,
                      CONFIG_MAX_BYTES);
        goto cleanup;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    buf = NULL;
cleanup:
    free(buf);
    fclose(f);
    return rc;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    const wrk_st_tensor_t *x = *(const wrk_st_tensor_t *const *)a;
    const wrk_st_tensor_t *y = *(const wrk_st_tensor_t *const *)b;
    return strcmp(x->name, y->name);
}

/* Hash of the canonical config, the tensor table (sorted by name) and every weight byte. */
static int fingerprint(wrk_model_t *m, const char *config, size_t config_len, char *err,
                       size_t errlen)
{
    int rc = 0;
    size_t n = wrk_st_count(m->st);
    const wrk_st_tensor_t **sorted = malloc((n ? n : 1) * sizeof *sorted);
    cJSON *root = cJSON_ParseWithLength(config, config_len);
    char *canon = root ? cJSON_PrintUnformatted(root) : NULL;
    XXH3_state_t *st = XXH3_createState();
    if (!sorted || !canon || !st) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto cleanup;
    }
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, canon, strlen(canon) + 1);
    for (size_t i = 0; i < n; i++) sorted[i] = wrk_st_at(m->st, i);
    qsort(sorted, n, sizeof *sorted, cmp_tensor_name);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const wrk_st_tensor_t *t = sorted[i];
        int32_t meta[2] = {(int32_t)t->dtype, t->ndim};
        XXH3_64bits_update(st, t->name, strlen(t->name) + 1);
        XXH3_64bits_update(st, meta, sizeof meta);
        XXH3_64bits_update(st, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        XXH3_64bits_update(st, t->data, t->nbytes);
        total += t->nbytes;
    }
    m->info.fingerprint = XXH3_64bits_digest(st);
    m->info.weight_bytes = total;
    snprintf(m->info.fingerprint_hex, sizeof m->info.fingerprint_hex, "%016llx",
             (unsigned long long)m->info.fingerprint);
cleanup:
    XXH3_freeState(st);
    free(canon);
    cJSON_Delete(root);
    free(sorted);
    return rc;
}

static int read_architecture(wrk_model_t *m, const char *config, size_t len)
{
    cJSON *root = cJSON_ParseWithLength(config, len);
    const cJSON *a = root ? cJSON_GetObjectItemCaseSensitive(root, "architectures") : NULL;
    const cJSON *a0 = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, 0) : NULL;
    snprintf(m->arch, sizeof m->arch, "%s", cJSON_IsString(a0) ? a0->valuestring : "MambaForCausalLM");
    cJSON_Delete(root);
    return 0;
}

int wrk_model_load(const char *dir, wrk_model_t **out, char *err, size_t errlen)
{
    int rc;
    char path[4096];
    char *config = NULL;
    size_t config_len = 0;
    *out = NULL;
    wrk_model_t *m = calloc(1, sizeof *m);
    if (!m) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");

    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path) {
        rc = rcd_fail(RCD_EINVAL, err, errlen, "model directory path too long");
        goto cleanup;
    }
    if ((rc = read_small_file(path, &config, &config_len, err, errlen))) goto cleanup;
    char sub[512];
    if ((rc = wrk_mamba_config_parse(config, config_len, &m->cfg, sub, sizeof sub))) {
        rcd_fail(rc, err, errlen, "%s: %s", path, sub);
        goto cleanup;
    }
    if ((rc = wrk_st_open_dir(dir, &m->st, err, errlen))) goto cleanup;
    if ((rc = wrk_mamba_bind(m, err, errlen))) goto cleanup;
    if ((rc = fingerprint(m, config, config_len, err, errlen))) goto cleanup;
    read_architecture(m, config, config_len);

    m->info.family = WRK_FAMILY_MAMBA;
    m->info.architecture = m->arch;
    m->info.vocab_size = m->cfg.vocab;
    m->info.hidden_size = m->cfg.hidden;
    m->info.n_layers = m->cfg.n_layers;
    m->info.bos_token_id = m->cfg.bos_id;
    m->info.eos_token_id = m->cfg.eos_id;
    m->info.pad_token_id = m->cfg.pad_id;
    *out = m;
    m = NULL;
cleanup:
    free(config);
    wrk_model_free(m);
    return rc;
}

void wrk_model_free(wrk_model_t *m)
{
    if (!m) return;
    wrk_st_close(m->st);
    free(m->params);
    free(m->layers);
    free(m->state_tensors);
    free(m);
}

const wrk_model_info_t *wrk_model_info(const wrk_model_t *m)
{
    return &m->info;
}
