/* workers/model: loading a checkpoint directory (config.json + safetensors) into a
 * wrk_model_t: the family picked by model_type, its load, the leftover-tensor check and the
 * fingerprint (fingerprint.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/rcd_path.h"
#include "workers/model/cfg_json.h"
#include "workers/model/model_int.h"

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

static const wrk_family_i *const families[] = {&wrk_family_mamba, &wrk_family_mamba2,
                                               &wrk_family_granite, &wrk_family_recurrentgemma,
                                               &wrk_family_nemotronh, &wrk_family_jamba,
                                               &wrk_family_falconh1,
                                               &wrk_family_qwen3next};
#define N_FAMILIES (sizeof families / sizeof families[0])

/* Reads architectures[0] and picks the family by model_type. */
static int pick_family(wrk_model_t *m, const char *config, size_t len, const char *path, char *err,
                       size_t errlen)
{
    int rc = 0;
    cJSON *root = cJSON_ParseWithLength(config, len);
    if (!root || !cJSON_IsObject(root)) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen, "%s: not a JSON object", path);
        goto cleanup;
    }
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, 0) : NULL;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen, "%s: model_type missing", path);
        goto cleanup;
    }
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(families[i]->config->model_type, mt->valuestring) == 0) m->fam = families[i];
    if (!m->fam) {
        char list[256] = "";
        for (size_t i = 0; i < N_FAMILIES; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s\"%s\"", i ? ", " : "",
                     families[i]->config->model_type);
        rc = rcd_fail(RCD_EUNSUPPORTED, err, errlen,
                      "%s: model_type \"%.64s\" is not supported (this build serves %s)", path,
                      mt->valuestring, list);
        goto cleanup;
    }
    snprintf(m->arch, sizeof m->arch, "%s",
             cJSON_IsString(a0) ? a0->valuestring : m->fam->config->model_type);
cleanup:
    cJSON_Delete(root);
    return rc;
}

int wrk_model_load(const char *dir, wrk_model_t **out, char *err, size_t errlen)
{
    int rc;
    char path[RCD_PATH_MAX];
    char *config = NULL;
    size_t config_len = 0;
    *out = NULL;
    wrk_model_t *m = calloc(1, sizeof *m);
    if (!m) return rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");

    if ((rc = rcd_path_join(path, sizeof path, dir, "config.json"))) {
        rc = rcd_fail(rc, err, errlen, "model directory path too long");
        goto cleanup;
    }
    if ((rc = read_small_file(path, &config, &config_len, err, errlen))) goto cleanup;
    if ((rc = pick_family(m, config, config_len, path, err, errlen))) goto cleanup;
    if ((rc = wrk__pq_parse(config, config_len, path, &m->pq, err, errlen))) goto cleanup;
    if ((rc = wrk_st_open_dir(dir, &m->st, err, errlen))) goto cleanup;
    char sub[1024];
    if (!(m->priv = wrk_model_alloc(m, 1, m->fam->layout_size))) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto cleanup;
    }
    if ((rc = wrk_cfg_parse(config, config_len, m->fam->config, m->priv, sub, sizeof sub)) ||
        (rc = m->fam->load(m, sub, sizeof sub))) {
        /* config problems name config.json; tensor problems already name their file */
        if (strncmp(sub, "config.json", 11) == 0)
            rcd_fail(rc, err, errlen, "%s/%s", dir, sub);
        else
            rcd_fail(rc, err, errlen, "%s", sub);
        goto cleanup;
    }
    const wrk_st_tensor_t *extra = wrk_st_first_unused(m->st);
    if (extra) {
        rc = rcd_fail(RCD_EFORMAT, err, errlen,
                      "%s: unexpected tensor %s (not part of a %s model with this config.json)",
                      extra->file, extra->name, m->arch);
        goto cleanup;
    }
    if ((rc = wrk__fingerprint(m, config, config_len, err, errlen))) goto cleanup;
    m->info.family = m->fam->family;
    m->info.architecture = m->arch;
    m->info.quantization = wrk__pq_desc(m->pq);
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
    free(m->mats);
    if (m->packs) m->packs_free(m->packs);
    wrk__pq_free(m->pq);
    for (int i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m);
}

const wrk_model_info_t *wrk_model_info(const wrk_model_t *m)
{
    return &m->info;
}

void wrk_model_set_lm(wrk_model_t *m, int vocab, int hidden, int n_layers, int bos_id,
                      int eos_id, int pad_id, float norm_eps)
{
    m->info.vocab_size = vocab;
    m->info.hidden_size = hidden;
    m->info.n_layers = n_layers;
    m->info.bos_token_id = bos_id;
    m->info.eos_token_id = eos_id;
    m->info.pad_token_id = pad_id;
    m->norm_eps = norm_eps;
    m->embed_scale = 1.0f;
    m->logit_scale = 1.0f;
    m->logit_softcap = 0.0f;
}
