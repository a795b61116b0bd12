/* libFuzzer target for checkpoint headers (statestore/ckpt.h), the bytes a state dir or the
 * Redis shared tier hands the store: any input must be refused with RCD_ECORRUPT and a message,
 * or parse into a header whose every field is in range, that re-encodes and parses back to the
 * same values. The input is also judged as a whole checkpoint (header + payload) the way the
 * store judges one: exact size, a payload length valid for the model (the variable-size rule,
 * ckpt_payload_ok), payload hash, and the extension sections after the state (ckpt_ext.h:
 * the header's region record and the payload's own split agree, or are refused). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/rcd_error.h"
#include "statestore/ckpt.h"

/* A broken invariant is a bug in the parser, not in the input: crash so libFuzzer keeps it. */
#define FZ_REQUIRE(c)                                                                              \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

static volatile uint64_t g_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_msg(const char *err)
{
    FZ_REQUIRE(err[0] != '\0');
    for (const unsigned char *c = (const unsigned char *)err; *c; c++)
        FZ_REQUIRE(*c >= 0x20 && *c != 0x7F);
}

static void check_fields(const ckpt_hdr_t *h)
{
    FZ_REQUIRE(store_check_sid(h->id) == 0);
    FZ_REQUIRE(!h->parent[0] || store_check_sid(h->parent) == 0);
    FZ_REQUIRE(h->n_tensors >= 0 && h->n_tensors <= CKPT_MAX_TENSORS);
    FZ_REQUIRE(h->n_tensors == 0 || h->tensors != NULL);
    for (int i = 0; i < h->n_tensors; i++) {
        const store_tensor_t *t = &h->tensors[i];
        FZ_REQUIRE(memchr(t->name, 0, sizeof(t->name)) != NULL);
        FZ_REQUIRE(t->ndim >= 0 && t->ndim <= 3);
        if (h->payload_bytes)
            FZ_REQUIRE(t->offset <= h->payload_bytes && t->bytes <= h->payload_bytes - t->offset);
    }
    FZ_REQUIRE(h->n_meta >= 0 && h->n_meta <= STORE_META_MAX);
    for (int i = 0; i < h->n_meta; i++) {
        FZ_REQUIRE(h->meta[i].key[0] != '\0');
        FZ_REQUIRE(strcmp(h->meta[i].key, CKPT_KEY_OWNER) && strcmp(h->meta[i].key, CKPT_KEY_TTL));
        g_sink += strlen(h->meta[i].value);
    }
    FZ_REQUIRE(!h->owner[0] || ckpt_owner_ok(h->owner, strlen(h->owner)));
}

/* encode(parse(x)) parses back to the same values (not the same bytes: padding after a tensor
 * name and the reserved pairs' position are not canonical in the input). */
static void check_roundtrip(const ckpt_hdr_t *h)
{
    uint8_t *b = NULL;
    size_t n = 0;
    ckpt_hdr_t p;
    FZ_REQUIRE(ckpt_encode(h, &b, &n) == 0);
    FZ_REQUIRE(ckpt_header_len(b, n, NULL, 0) == (int64_t)n);
    FZ_REQUIRE(ckpt_parse(b, n, &p, NULL, 0) == 0);
    FZ_REQUIRE(p.fingerprint == h->fingerprint && p.version == h->version);
    FZ_REQUIRE(p.n_tokens == h->n_tokens && p.created_ms == h->created_ms);
    FZ_REQUIRE(p.updated_ms == h->updated_ms && p.payload_bytes == h->payload_bytes);
    FZ_REQUIRE(p.payload_hash == h->payload_hash && p.dtype == h->dtype);
    FZ_REQUIRE(!strcmp(p.id, h->id) && !strcmp(p.parent, h->parent));
    FZ_REQUIRE(!strcmp(p.owner, h->owner) && p.ttl_s == h->ttl_s);
    FZ_REQUIRE(p.n_tensors == h->n_tensors && p.n_meta == h->n_meta);
    for (int i = 0; i < p.n_tensors; i++) {
        const store_tensor_t *a = &p.tensors[i], *c = &h->tensors[i];
        FZ_REQUIRE(!strcmp(a->name, c->name) && a->offset == c->offset && a->bytes == c->bytes);
        FZ_REQUIRE(a->ndim == c->ndim && !memcmp(a->shape, c->shape, sizeof(a->shape)));
    }
    for (int i = 0; i < p.n_meta; i++)
        FZ_REQUIRE(!strcmp(p.meta[i].key, h->meta[i].key) &&
                   !strcmp(p.meta[i].value, h->meta[i].value));
    ckpt_hdr_free(&p);
    free(b);
}

/* The variable-size rule, restated: no state, exactly the fixed part, or the fixed part plus
 * whole positions of kv_bpt bytes. */
static bool payload_rule(uint64_t pb, uint64_t sb, uint64_t kv)
{
    if (pb == 0 || pb == sb) return true;
    return kv > 0 && pb > sb && (pb - sb) % kv == 0;
}

static void one(const uint8_t *data, size_t size)
{
    char err[300] = "";
    ckpt_hdr_t h;
    int64_t hl = ckpt_header_len(data, size, err, sizeof(err));
    if (hl < 0) {
        FZ_REQUIRE(hl == RCD_ECORRUPT);
        check_msg(err);
    } else {
        FZ_REQUIRE(hl >= CKPT_FIXED + 8 && hl <= CKPT_MAX_HEADER);
    }
    err[0] = 0;
    int rc = ckpt_parse(data, size, &h, err, sizeof(err));
    if (rc != 0) {
        FZ_REQUIRE(rc == RCD_ECORRUPT);
        check_msg(err);
        FZ_REQUIRE(h.tensors == NULL && h.meta == NULL);
        return;
    }
    FZ_REQUIRE(hl > 0 && (size_t)hl <= size);
    check_fields(&h);
    check_roundtrip(&h);
    /* As a whole checkpoint of a fixed-size model (the fixed part: the bundled model's state)
     * and of a variable-size one (fixed part and KV bytes per position from the input's
     * layout, so both kinds of files get accepted). */
    uint64_t sb[3] = {233472, 128, 0}, kv[3] = {0, 64, 0};
    if (h.n_tensors) { /* the first tensor's end as the fixed part, its bytes per position */
        sb[2] = h.tensors[0].offset + h.tensors[0].bytes;
        kv[2] = h.tensors[0].bytes;
    }
    for (int m = 0; m < 3; m++) {
        if (sb[m] == 0) continue;
        bool ok = ckpt_payload_ok(h.payload_bytes, (size_t)sb[m], (size_t)kv[m]);
        FZ_REQUIRE(ok == payload_rule(h.payload_bytes, sb[m], kv[m]));
        if (ok && h.payload_bytes && (uint64_t)size - (uint64_t)hl == h.payload_bytes &&
            XXH3_64bits(data + hl, (size_t)h.payload_bytes) == h.payload_hash)
            g_sink += h.payload_bytes; /* a checkpoint the store would load */
        /* extension sections (ckpt_ext.h): the header's rule, and the payload's own split,
         * which must agree with it or be refused with a message */
        bool hok = ckpt_hdr_payload_ok(&h, (size_t)sb[m], (size_t)kv[m]);
        FZ_REQUIRE(!hok || h.payload_bytes == 0 ||
                   payload_rule(h.payload_bytes - h.ext_bytes, sb[m], kv[m]));
        if (hok && h.payload_bytes && (uint64_t)size - (uint64_t)hl == h.payload_bytes) {
            err[0] = 0;
            rc = ckpt_payload_check(&h, data + hl, (size_t)sb[m], (size_t)kv[m], err,
                                    sizeof(err));
            if (rc) {
                FZ_REQUIRE(rc == RCD_ECORRUPT);
                check_msg(err);
            }
            size_t sl;
            ckpt_ext_t e;
            if (!rc) {
                FZ_REQUIRE(ckpt_ext_split(data + hl, (size_t)h.payload_bytes, (size_t)sb[m],
                                          (size_t)kv[m], &sl, &e, NULL, 0) == 0);
                FZ_REQUIRE(sl + e.region_bytes == h.payload_bytes && e.n <= CKPT_EXT_MAX);
                for (int i = 0; i < e.n; i++) /* every view inside the payload */
                    FZ_REQUIRE((const uint8_t *)e.sec[i].data >= data + hl + sl &&
                               e.sec[i].bytes <= h.payload_bytes &&
                               (const uint8_t *)e.sec[i].data + e.sec[i].bytes <=
                                   data + hl + h.payload_bytes);
            }
        }
    }
    ckpt_hdr_free(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(data, size);
    /* Again with the header hash made right, so that mutations reach the field checks
     * behind it (the checks a hostile but hash-valid file meets). */
    int64_t hl = ckpt_header_len(data, size, NULL, 0);
    if (hl < 0 || (size_t)hl > size) return 0;
    uint8_t *copy = malloc(size);
    if (!copy) return 0;
    memcpy(copy, data, size);
    uint64_t x = XXH3_64bits(copy, (size_t)hl - 8);
    for (int i = 0; i < 8; i++)
        copy[hl - 8 + i] = (uint8_t)(x >> (8 * i));
    one(copy, size);
    free(copy);
    return 0;
}
