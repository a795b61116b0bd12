/* libFuzzer target for gRPC request metadata (dmn_meta_add, what dmn_server.c runs on every
 * call's metadata). The input is a list of entries, each a key length (1 byte), a value length
 * (2 bytes, little-endian: up to 64 KiB) and the bytes; a short tail is the last entry, cut.
 * Keys and values may hold any byte (NUL, non-ASCII); a key byte 0xff in front picks one of
 * the keys the daemon reads, so they are hit often. The result is checked against a plain
 * re-reading of the same entries. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_meta.h"

static const char *const known[] = {"x-request-id", "authorization", "x-recurd-tenant",
                                    "x-session-id"};

#define MUST(cond)                                                                                 \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_metadata: %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dmn_meta_t m;
    dmn_meta_init(&m);
    const uint8_t *last_rid = NULL;
    size_t last_rid_len = 0;
    bool have_rid = false;
    size_t p = 0;
    while (p < size) {
        size_t kl = data[p++];
        size_t vl = 0;
        if (p < size) vl = data[p++];
        if (p < size) vl |= (size_t)data[p++] << 8;
        const char *key;
        size_t key_len;
        if (kl == 0xff && p < size) { /* a known key, by the next byte */
            key = known[data[p++] % (sizeof(known) / sizeof(known[0]))];
            key_len = strlen(key);
        } else {
            if (kl > size - p) kl = size - p;
            key = (const char *)data + p;
            key_len = kl;
            p += kl;
        }
        if (vl > size - p) vl = size - p;
        /* copies, so ASan sees a read past either end */
        char *k = malloc(key_len ? key_len : 1), *v = malloc(vl ? vl : 1);
        MUST(k && v);
        memcpy(k, key, key_len);
        memcpy(v, data + p, vl);
        MUST(dmn_meta_add(&m, k, key_len, v, vl) == 0);
        if (key_len == 12 && !memcmp(key, "x-request-id", 12)) {
            last_rid = data + p;
            last_rid_len = vl;
            have_rid = true;
        }
        free(k);
        free(v);
        p += vl;
    }
    size_t n = strnlen(m.rid, sizeof(m.rid));
    MUST(n < sizeof(m.rid));
    if (!have_rid) {
        MUST(n == 0);
        return 0;
    }
    MUST(n == (last_rid_len < DMN_RID_MAX ? last_rid_len : DMN_RID_MAX));
    for (size_t i = 0; i < n; i++) {
        uint8_t b = last_rid[i];
        MUST(m.rid[i] == (b < 0x20 || b > 0x7e ? '?' : (char)b));
    }
    return 0;
}
