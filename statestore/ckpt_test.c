/* Unit tests of the checkpoint format: round trip, every single-byte corruption and every
 * truncation of a header is refused (never crashes), and the file operations detect torn,
 * padded, foreign and corrupt files. */
#include "statestore/ckpt.h"
#include "tests/support/rcd_test.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static const store_tensor_t k_tensors[2] = {
    {"layers.0.conv", 0, 64, 2, {4, 4, 0}},
    {"layers.0.ssm", 64, 64, 2, {4, 4, 0}},
};

static void fill(ckpt_hdr_t *h, store_meta_t *md)
{
    memset(h, 0, sizeof(*h));
    h->fingerprint = 0x1122334455667788ull;
    h->version = 7;
    h->n_tokens = 1234;
    h->created_ms = 1000;
    h->updated_ms = 2000;
    h->payload_bytes = 128;
    h->payload_hash = 42;
    h->dtype = CKPT_DTYPE_F32;
    strcpy(h->id, "chat.1:x-y");
    strcpy(h->parent, "root");
    h->n_tensors = 2;
    h->tensors = (store_tensor_t *)k_tensors;
    h->n_meta = 2;
    h->meta = md;
}

static void test_roundtrip_and_corruption(void)
{
    store_meta_t md[2] = {{"user", "ann"}, {"topic", ""}};
    ckpt_hdr_t h, p;
    fill(&h, md);
    uint8_t *b;
    size_t n;
    CHECK(ckpt_encode(&h, &b, &n) == 0);
    CHECK(n == CKPT_FIXED + strlen("chat.1:x-y") + 4 + 2 * CKPT_TENSOR_REC + 9 + 7 + 8);
    CHECK(ckpt_parse(b, n, &p, NULL, 0) == 0);
    CHECK(p.fingerprint == h.fingerprint && p.version == 7 && p.n_tokens == 1234);
    CHECK(p.created_ms == 1000 && p.updated_ms == 2000 && p.payload_bytes == 128);
    CHECK(p.payload_hash == 42 && p.dtype == CKPT_DTYPE_F32);
    CHECK(!strcmp(p.id, "chat.1:x-y") && !strcmp(p.parent, "root"));
    CHECK(p.n_tensors == 2 && !strcmp(p.tensors[1].name, "layers.0.ssm"));
    CHECK(p.tensors[1].offset == 64 && p.tensors[1].shape[1] == 4 && p.tensors[1].ndim == 2);
    CHECK(p.n_meta == 2 && !strcmp(p.meta[0].value, "ann") && !strcmp(p.meta[1].key, "topic"));
    CHECK(!strcmp(p.meta[1].value, ""));
    ckpt_hdr_free(&p);
    /* a version-0 record: the layout, no payload yet */
    h.payload_bytes = 0;
    uint8_t *b0;
    size_t n0;
    CHECK(ckpt_encode(&h, &b0, &n0) == 0);
    CHECK(ckpt_parse(b0, n0, &p, NULL, 0) == 0 && p.n_tensors == 2 && p.payload_bytes == 0);
    ckpt_hdr_free(&p);
    free(b0);
    h.payload_bytes = 128;
    /* every single-byte change and every truncation is refused */
    int missed = 0;
    for (size_t i = 0; i < n; i++) {
        b[i] ^= 0x5a;
        if (ckpt_parse(b, n, &p, NULL, 0) != RCD_ECORRUPT) missed++;
        b[i] ^= 0x5a;
    }
    CHECK_MSG(missed == 0, "%d corruptions accepted", missed);
    missed = 0;
    for (size_t k = 0; k < n; k++)
        if (ckpt_parse(b, k, &p, NULL, 0) != RCD_ECORRUPT) missed++;
    CHECK_MSG(missed == 0, "%d truncations accepted", missed);
    free(b);
}

/* A header whose hash is right but whose fields lie (as a hostile file could): refused. */
static void test_lying_fields(void)
{
    store_meta_t md[1] = {{"k", "v"}};
    ckpt_hdr_t h, p;
    fill(&h, md);
    h.n_meta = 1;
    uint8_t *b;
    size_t n;
    char err[200];
    CHECK(ckpt_encode(&h, &b, &n) == 0);
    /* tensor extends past the payload */
    uint8_t *t1 = b + CKPT_FIXED + strlen(h.id) + strlen(h.parent) + CKPT_TENSOR_REC;
    t1[56] = 200; /* bytes = 200 > 128 - 64 */
    uint64_t x = XXH3_64bits(b, n - 8);
    for (int i = 0; i < 8; i++)
        b[n - 8 + i] = (uint8_t)(x >> (8 * i));
    CHECK(ckpt_parse(b, n, &p, err, sizeof(err)) == RCD_ECORRUPT);
    CHECK(strstr(err, "tensor") != NULL);
    t1[56] = 64;
    /* metadata without its final NUL */
    b[n - 9] = 'z';
    x = XXH3_64bits(b, n - 8);
    for (int i = 0; i < 8; i++)
        b[n - 8 + i] = (uint8_t)(x >> (8 * i));
    CHECK(ckpt_parse(b, n, &p, err, sizeof(err)) == RCD_ECORRUPT);
    CHECK(strstr(err, "metadata") != NULL);
    free(b);
}

/* Owner and TTL ride as reserved metadata pairs: they round-trip, stay out of `meta`, and a
 * file without them (as every file before them) parses with none. */
static void test_owner_ttl(void)
{
    store_meta_t md[1] = {{"k", "v"}};
    ckpt_hdr_t h, p;
    fill(&h, md);
    h.n_meta = 1;
    uint8_t *b;
    size_t n, n_plain;
    CHECK(ckpt_encode(&h, &b, &n_plain) == 0);
    CHECK(ckpt_parse(b, n_plain, &p, NULL, 0) == 0 && p.owner[0] == 0 && p.ttl_s == 0);
    CHECK(p.n_meta == 1);
    ckpt_hdr_free(&p);
    free(b);
    strcpy(h.owner, "team-a/alice");
    h.ttl_s = 4294967295u;
    CHECK(ckpt_encode(&h, &b, &n) == 0);
    CHECK(n == n_plain + sizeof(CKPT_KEY_OWNER) + 13 + sizeof(CKPT_KEY_TTL) + 11);
    CHECK(ckpt_parse(b, n, &p, NULL, 0) == 0 && !strcmp(p.owner, "team-a/alice"));
    CHECK(p.ttl_s == 4294967295u && p.n_meta == 1 && !strcmp(p.meta[0].key, "k"));
    ckpt_hdr_free(&p);
    free(b);
    /* the pairs count against the metadata limits */
    CHECK(ckpt_meta_check(md, 1, "x", 1) == 0);
    CHECK(ckpt_meta_check(md, 1, "x\x01", 0) == RCD_EINVAL);
    store_meta_t res[1] = {{CKPT_KEY_TTL, "5"}};
    CHECK(ckpt_meta_check(res, 1, NULL, 0) == RCD_EINVAL);
    /* hash-valid files with a duplicate or malformed reserved value are refused */
    const char *bad_ttl[] = {"0", "07", "x", "4294967296", "", "12345678901"};
    char err[200];
    h.ttl_s = 0;
    h.n_meta = 1;
    h.meta = res;
    for (size_t i = 0; i < sizeof(bad_ttl) / sizeof(bad_ttl[0]); i++) {
        res[0].value = bad_ttl[i];
        CHECK(ckpt_encode(&h, &b, &n) == 0);
        CHECK_MSG(ckpt_parse(b, n, &p, err, sizeof(err)) == RCD_ECORRUPT, "ttl '%s'", bad_ttl[i]);
        free(b);
    }
    res[0].value = "9";
    h.ttl_s = 9; /* written twice */
    CHECK(ckpt_encode(&h, &b, &n) == 0);
    CHECK(ckpt_parse(b, n, &p, err, sizeof(err)) == RCD_ECORRUPT);
    free(b);
    h.ttl_s = 0;
    res[0] = (store_meta_t){CKPT_KEY_OWNER, "bob"}; /* and the owner from h: twice */
    CHECK(ckpt_encode(&h, &b, &n) == 0);
    CHECK(ckpt_parse(b, n, &p, err, sizeof(err)) == RCD_ECORRUPT);
    free(b);
    h.owner[0] = 0;
    res[0].value = "tab\there";
    CHECK(ckpt_encode(&h, &b, &n) == 0);
    CHECK(ckpt_parse(b, n, &p, err, sizeof(err)) == RCD_ECORRUPT);
    free(b);
}

static void test_files(void)
{
    char dir[] = "/tmp/ckpt-test-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    store_meta_t md[1] = {{"k", "v"}};
    ckpt_hdr_t h, r;
    fill(&h, md);
    h.n_meta = 1;
    uint8_t payload[128];
    for (int i = 0; i < 128; i++)
        payload[i] = (uint8_t)(i * 7);
    h.payload_hash = XXH3_64bits(payload, sizeof(payload));
    char err[1000];
    for (uint64_t v = 1; v <= 4; v++) {
        h.version = v;
        CHECK(ckpt_write(dir, &h, payload, 2, err, sizeof(err)) == 0);
    }
    uint8_t back[128];
    CHECK(ckpt_read(dir, h.id, 4, h.fingerprint, 128, &r, back, err, sizeof(err)) == 0);
    CHECK(r.version == 4 && memcmp(back, payload, 128) == 0);
    ckpt_hdr_free(&r);
    CHECK(ckpt_read(dir, h.id, 3, h.fingerprint, 128, &r, back, err, sizeof(err)) == 0);
    ckpt_hdr_free(&r);
    /* keep = 2: versions 1 and 2 are gone */
    CHECK(ckpt_read(dir, h.id, 2, h.fingerprint, 128, &r, back, err, sizeof(err)) == RCD_ENOTFOUND);
    /* another model */
    CHECK(ckpt_read(dir, h.id, 4, 99, 128, &r, back, err, sizeof(err)) == RCD_EMISMATCH);
    CHECK(r.fingerprint == h.fingerprint && strstr(err, "1122334455667788") != NULL);
    ckpt_hdr_free(&r);
    /* a flipped payload byte: only the payload checksum sees it */
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_%s/%020d.ckpt", dir, h.id, 4) == 0);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    fseek(f, -5, SEEK_END);
    int c = fgetc(f);
    fseek(f, -5, SEEK_END);
    fputc(c ^ 1, f);
    fclose(f);
    CHECK(ckpt_read(dir, h.id, 4, h.fingerprint, 128, &r, NULL, err, sizeof(err)) == 0);
    ckpt_hdr_free(&r);
    CHECK(ckpt_read(dir, h.id, 4, h.fingerprint, 128, &r, back, err, sizeof(err)) == RCD_ECORRUPT);
    CHECK(strstr(err, "payload checksum") != NULL);
    /* truncated newest: ckpt_latest quarantines it and falls back to version 3 */
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_%s/%020d.ckpt", dir, h.id, 4) == 0);
    CHECK(truncate(path, 200) == 0);
    size_t q = 0;
    CHECK(ckpt_latest(dir, h.id, UINT64_MAX, h.fingerprint, 128, &r, &q, NULL, NULL) == 0);
    CHECK(r.version == 3 && q == 1);
    ckpt_hdr_free(&r);
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_%s/%020d.ckpt.corrupt", dir, h.id, 4) == 0);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    /* wrong state size for this model */
    CHECK(ckpt_read(dir, h.id, 3, h.fingerprint, 64, &r, back, err, sizeof(err)) == RCD_ECORRUPT);
    CHECK(ckpt_remove_session(dir, h.id, err, sizeof(err)) == 0);
    CHECK(ckpt_latest(dir, h.id, UINT64_MAX, h.fingerprint, 128, &r, &q, NULL, NULL) ==
          RCD_ENOTFOUND);
    CHECK(rmdir(dir) == 0); /* nothing left behind */
}

/* A state dir so long that the checkpoint paths under it do not fit: each file operation
 * fails with RCD_ERANGE and says why, instead of touching a shortened name. */
static void test_path_too_long(void)
{
    static char dir[RCD_PATH_MAX];
    memset(dir, 'd', sizeof(dir) - 1);
    dir[0] = '/';
    dir[RCD_PATH_MAX - 10] = 0; /* the dir fits; "/s_chat.1:x-y" under it does not */
    store_meta_t md[2] = {{"user", "ann"}, {"topic", ""}};
    ckpt_hdr_t h, r;
    fill(&h, md);
    uint8_t payload[128] = {0};
    char err[RCD_PATH_MAX + 200] = "";
    CHECK(ckpt_write(dir, &h, payload, 2, err, sizeof(err)) == RCD_ERANGE);
    CHECK_MSG(strstr(err, "longer than 4095 bytes") != NULL, "%s", err);
    CHECK(ckpt_read(dir, h.id, 7, h.fingerprint, 128, &r, payload, err, sizeof(err)) == RCD_ERANGE);
    CHECK(ckpt_latest(dir, h.id, UINT64_MAX, h.fingerprint, 128, &r, NULL, NULL, NULL) ==
          RCD_ERANGE);
    CHECK(ckpt_quarantine(dir, h.id, 7) == RCD_ERANGE);
    CHECK(ckpt_remove_session(dir, h.id, err, sizeof(err)) == RCD_ERANGE);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_roundtrip_and_corruption);
    RUN(test_lying_fields);
    RUN(test_owner_ttl);
    RUN(test_files);
    RUN(test_path_too_long);
    return rcd_test_summary();
}
