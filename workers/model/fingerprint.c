/* workers/model: the model fingerprint that checkpoints are tied to (XXH3-64 of the canonical
 * config.json, the sorted tensor table and every weight byte). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "workers/model/model_int.h"

static int cmp_tensor_name(const void *a, const void *b)
{
    const wrk_st_tensor_t *x = *(const wrk_st_tensor_t *const *)a;
    const wrk_st_tensor_t *y = *(const wrk_st_tensor_t *const *)b;
    return strcmp(x->name, y->name);
}

/* Hash of the canonical config, the tensor table (sorted by name) and every weight byte. */
int wrk__fingerprint(wrk_model_t *m, const char *config, size_t config_len, char *err,
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

void wrk__fingerprint_weights(wrk_model_t *m, const char *fmt)
{
    char buf[64];
    int n = snprintf(buf, sizeof buf, "weights=%s", fmt);
    m->info.fingerprint = XXH3_64bits_withSeed(buf, (size_t)n, m->info.fingerprint);
    snprintf(m->info.fingerprint_hex, sizeof m->info.fingerprint_hex, "%016llx",
             (unsigned long long)m->info.fingerprint);
}
