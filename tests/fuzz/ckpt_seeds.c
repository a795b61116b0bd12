/* Writes fuzz_ckpt's seed corpus: valid checkpoints (a fixed-size state with metadata, owner and
 * TTL; a version-0 record; a fork; a variable-size KV state), one header without its payload,
 * and truncations. Run once from the repository root when the format changes:
 *   build/fuzz/tests/fuzz/ckpt_seeds tests/fuzz/corpus/ckpt */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/rcd_path.h"
#include "statestore/ckpt.h"

static int put(const char *dir, const char *name, const uint8_t *a, size_t na, const uint8_t *b,
               size_t nb)
{
    char path[RCD_PATH_MAX];
    if (rcd_path_join(path, sizeof(path), dir, name)) return -1;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(a, 1, na, f) + (nb ? fwrite(b, 1, nb, f) : 0);
    return fclose(f) == 0 && w == na + nb ? 0 : -1;
}

/* Writes h (+ payload of h->payload_bytes, its hash set here) as `name`; with cut > 0 also
 * the first `cut` bytes as name.cut. */
static int seed(const char *dir, const char *name, ckpt_hdr_t *h, const uint8_t *payload,
                size_t cut)
{
    uint8_t *b;
    size_t n;
    h->payload_hash = h->payload_bytes ? XXH3_64bits(payload, (size_t)h->payload_bytes) : 0;
    if (ckpt_encode(h, &b, &n)) return -1;
    int rc = put(dir, name, b, n, payload, (size_t)h->payload_bytes);
    if (!rc && cut) {
        char cn[200];
        snprintf(cn, sizeof(cn), "%s.cut", name);
        rc = put(dir, cn, b, cut < n ? cut : n, NULL, 0);
    }
    free(b);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    static uint8_t payload[128 + 3 * 64];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 13 + 7);
    store_tensor_t t[4] = {
        {"layers.0.conv", 0, 64, 2, {4, 4, 0}},
        {"layers.0.ssm", 64, 64, 2, {4, 4, 0}},
        {"kv.k.0", 128, 96, 2, {3, 8, 0}},
        {"kv.v.0", 224, 96, 2, {3, 8, 0}},
    };
    store_meta_t md[2] = {{"user", "ann"}, {"topic", ""}};
    ckpt_hdr_t h = {.fingerprint = 0x1122334455667788ull,
                    .version = 7,
                    .n_tokens = 1234,
                    .created_ms = 1700000000000,
                    .updated_ms = 1700000005000,
                    .payload_bytes = 128,
                    .dtype = CKPT_DTYPE_F32,
                    .n_tensors = 2,
                    .tensors = t,
                    .n_meta = 2,
                    .meta = md,
                    .ttl_s = 3600};
    strcpy(h.id, "chat.1:x-y");
    strcpy(h.owner, "team-a/alice");
    int rc = seed(dir, "fixed_owner_ttl", &h, payload, CKPT_FIXED + 20);
    /* the header alone, as the startup scan reads it */
    uint8_t *b;
    size_t n;
    if (!rc && !ckpt_encode(&h, &b, &n)) {
        rc = put(dir, "header_only", b, n, NULL, 0);
        if (!rc) rc = put(dir, "header_half", b, n / 2, NULL, 0);
        free(b);
    }
    /* version 0: created, no state yet, no metadata, no owner or TTL (an older file's shape) */
    h.version = 0;
    h.n_tokens = 0;
    h.payload_bytes = 0;
    h.n_meta = 0;
    h.owner[0] = 0;
    h.ttl_s = 0;
    if (!rc) rc = seed(dir, "version0", &h, payload, 0);
    /* a fork: parent id, the source's owner */
    h.version = 3;
    h.payload_bytes = 128;
    strcpy(h.id, "fork-2");
    strcpy(h.parent, "chat.1:x-y");
    strcpy(h.owner, "bob");
    if (!rc) rc = seed(dir, "fork", &h, payload, 0);
    /* a variable-size state: 128 fixed bytes + 3 positions x 64 KV bytes, the tail described */
    h.parent[0] = 0;
    h.payload_bytes = sizeof(payload);
    h.n_tensors = 4;
    h.ttl_s = 60;
    if (!rc) rc = seed(dir, "kv_state", &h, payload, CKPT_FIXED);
    /* a fixed state followed by extension sections (ckpt_ext.h): the token history, 5 ids */
    static uint8_t sect[128 + 128];
    memcpy(sect, payload, 128);
    int32_t hist[5] = {5, 17, 42, 99, 3};
    ckpt_ext_sec_t hs = {CKPT_EXT_HIST, hist, sizeof(hist), 4};
    size_t ext = ckpt_ext_size(&hs, 1), wrote = 0;
    store_tensor_t ts[4] = {t[0], t[1]};
    ts[2] = (store_tensor_t){CKPT_EXT_RECORD, 128, ext, 1, {(int64_t)ext, 0, 0}};
    ts[3] = (store_tensor_t){CKPT_EXT_HIST, 128, sizeof(hist), 1, {5, 0, 0}};
    if (!rc && (ext > sizeof(sect) - 128 || ckpt_ext_write(sect + 128, ext, &hs, 1, &wrote)))
        rc = -1;
    h.payload_bytes = 128 + ext;
    h.tensors = ts;
    h.n_tensors = 4;
    if (!rc) rc = seed(dir, "sections", &h, sect, 0);
    if (rc) fprintf(stderr, "cannot write the seeds under %s\n", dir);
    return rc ? 1 : 0;
}
