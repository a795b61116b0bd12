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

/* ---- extension sections (ckpt_ext.h) ------------------------------------------------------ */

/* A 128-byte state (the fixed model of these tests), then a history of n tokens and a 3-byte
 * second section: a malloc'd payload of *len bytes. */
static uint8_t *sectioned(int n_hist, size_t *len)
{
    int32_t hist[64];
    for (int i = 0; i < n_hist; i++)
        hist[i] = 1000 + i;
    ckpt_ext_sec_t sec[2] = {{CKPT_EXT_HIST, hist, (uint64_t)n_hist * 4, 4}, {"x.y", "abc", 3, 1}};
    size_t ext = ckpt_ext_size(sec, 2);
    uint8_t *b = malloc(128 + ext);
    for (int i = 0; i < 128; i++)
        b[i] = (uint8_t)(i * 7);
    size_t w = 0;
    CHECK(ckpt_ext_write(b + 128, ext, sec, 2, &w) == 0 && w == ext);
    *len = 128 + ext;
    return b;
}

static void test_ext_blob(void)
{
    size_t len, sl;
    ckpt_ext_t e;
    uint8_t *b = sectioned(5, &len);
    /* 5 x 4 = 20 bytes -> 24, "abc" -> 8, two 48-byte records, the 24-byte trailer */
    CHECK(len == 128 + 24 + 8 + 96 + 24);
    CHECK(ckpt_ext_split(b, len, 128, 0, &sl, &e, NULL, 0) == 0);
    CHECK(sl == 128 && e.n == 2 && e.region_bytes == len - 128);
    const ckpt_ext_sec_t *h = ckpt_ext_find(&e, CKPT_EXT_HIST);
    CHECK(h && h->bytes == 20 && h->elem == 4 && h->data == b + 128);
    int32_t t;
    memcpy(&t, (const uint8_t *)h->data + 16, 4);
    CHECK(t == 1004);
    const ckpt_ext_sec_t *x = ckpt_ext_find(&e, "x.y");
    CHECK(x && x->bytes == 3 && !memcmp(x->data, "abc", 3) && !ckpt_ext_find(&e, "nope"));
    /* with a KV tail (state 64 + 4 x 16) the same region splits off the same way */
    CHECK(ckpt_ext_split(b, len, 64, 16, &sl, &e, NULL, 0) == 0 && sl == 128 && e.n == 2);
    /* no sections: the state alone, byte for byte; an empty region is never written */
    CHECK(ckpt_ext_split(b, 128, 128, 0, &sl, &e, NULL, 0) == 0 && sl == 128 && e.n == 0);
    CHECK(ckpt_ext_size(NULL, 0) == 0);
    size_t w = 1;
    CHECK(ckpt_ext_write(b, 0, NULL, 0, &w) == 0 && w == 0);
    /* every truncation is refused, except the empty payload and the bare state */
    int missed = 0;
    for (size_t k = 1; k < len; k++)
        if (k != 128 && ckpt_ext_split(b, k, 128, 0, &sl, &e, NULL, 0) != RCD_ECORRUPT) missed++;
    CHECK_MSG(missed == 0, "%d truncations accepted", missed);
    /* every byte flip outside the sections' own data (padding, directory, trailer) is refused;
     * a flip inside the data is the payload hash's to find (test_ext_files) */
    missed = 0;
    size_t data_end = 128 + 24 + 8;
    for (size_t i = 128; i < len; i++) {
        bool in_data = (i >= 128 && i < 148) || (i >= 152 && i < 155);
        b[i] ^= 0x21;
        int rc = ckpt_ext_split(b, len, 128, 0, &sl, &e, NULL, 0);
        if (!in_data && rc != RCD_ECORRUPT) missed++;
        b[i] ^= 0x21;
    }
    CHECK_MSG(missed == 0, "%d flips accepted (data ends at %zu)", missed, data_end);
    /* a state part off the size rule */
    char err[200];
    CHECK(ckpt_ext_split(b, len, 120, 0, &sl, &e, err, sizeof(err)) == RCD_ECORRUPT);
    CHECK(strstr(err, "state part") != NULL);
    CHECK(ckpt_ext_split(b, len, 120, 3, &sl, &e, NULL, 0) == RCD_ECORRUPT);
    /* bad sections are refused when written */
    ckpt_ext_sec_t bad[2] = {{"Caps", "abcd", 4, 4}, {"ok", "abcd", 4, 4}};
    CHECK(ckpt_ext_size(bad, 1) == SIZE_MAX && ckpt_ext_write(b, len, bad, 1, &w) == RCD_EINVAL);
    bad[0] = bad[1];
    CHECK(ckpt_ext_size(bad, 2) == SIZE_MAX); /* a duplicate name */
    bad[0].elem = 3;
    CHECK(ckpt_ext_size(bad, 1) == SIZE_MAX);
    bad[0] = bad[1];
    CHECK(ckpt_ext_write(b, 10, bad, 1, &w) == RCD_ETOOBIG);
    free(b);
}

/* A sectioned checkpoint on disk: round trip, its tensor-table record, and every byte flip
 * and every truncation of the file refused when read with its payload. */
static void test_ext_files(void)
{
    char dir[] = "/tmp/ckpt-ext-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    size_t len;
    uint8_t *pl = sectioned(7, &len);
    ckpt_hdr_t h, r;
    store_tensor_t tt[4] = {k_tensors[0], k_tensors[1]};
    fill(&h, NULL);
    h.n_meta = 0;
    h.version = 1;
    h.tensors = tt;
    h.n_tensors = 4;
    tt[2] = (store_tensor_t){CKPT_EXT_RECORD, 128, len - 128, 1, {(int64_t)(len - 128), 0, 0}};
    tt[3] = (store_tensor_t){CKPT_EXT_HIST, 128, 28, 1, {7, 0, 0}};
    h.payload_bytes = len;
    h.payload_hash = XXH3_64bits(pl, len);
    char err[1000];
    CHECK(ckpt_write(dir, &h, pl, 2, err, sizeof(err)) == 0);
    uint8_t back[512];
    CHECK(ckpt_read_v(dir, h.id, 1, h.fingerprint, 128, 0, &r, back, sizeof(back), err, sizeof(err)) == 0);
    CHECK(r.payload_bytes == len && r.ext_bytes == len - 128 && !memcmp(back, pl, len));
    CHECK(ckpt_hdr_payload_ok(&r, 128, 0) && !ckpt_payload_ok(r.payload_bytes, 128, 0));
    ckpt_hdr_free(&r);
    /* a reader that predates sections refuses it by size (the bare state rule) and the
     * header alone is checked too: its region record must end the payload */
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_%s/%020d.ckpt", dir, h.id, 1) == 0);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    uint8_t file[4096];
    size_t fl = fread(file, 1, sizeof(file), f);
    fclose(f);
    CHECK(fl > len && fl < sizeof(file));
    int missed = 0;
    for (size_t i = 0; i < fl; i++) {
        file[i] ^= 0x10;
        f = fopen(path, "wb");
        fwrite(file, 1, fl, f);
        fclose(f);
        int rc = ckpt_read_v(dir, h.id, 1, h.fingerprint, 128, 0, &r, back, sizeof(back), err, sizeof(err));
        if (rc == 0) {
            missed++;
            ckpt_hdr_free(&r);
        }
        file[i] ^= 0x10;
    }
    CHECK_MSG(missed == 0, "%d flipped bytes accepted", missed);
    missed = 0;
    for (size_t k = 0; k < fl; k++) {
        f = fopen(path, "wb");
        fwrite(file, 1, k, f);
        fclose(f);
        int rc = ckpt_read_v(dir, h.id, 1, h.fingerprint, 128, 0, &r, back, sizeof(back), err, sizeof(err));
        if (rc == 0) {
            missed++;
            ckpt_hdr_free(&r);
        }
    }
    CHECK_MSG(missed == 0, "%d truncations accepted", missed);
    /* hash-valid lies: a header whose region record disagrees with the payload's own */
    tt[2].offset = 136;
    tt[2].bytes = len - 136;
    h.version = 2;
    CHECK(ckpt_write(dir, &h, pl, 2, err, sizeof(err)) == 0);
    CHECK(ckpt_read(dir, h.id, 2, h.fingerprint, 128, &r, NULL, err, sizeof(err)) ==
          RCD_ECORRUPT); /* the state part (136) is off the rule: the header alone says so */
    tt[2].offset = 64;
    tt[2].bytes = len - 64;
    h.version = 3;
    CHECK(ckpt_write(dir, &h, pl, 2, err, sizeof(err)) == 0);
    /* (a KV model of 64 + n x 64: both the header's 64 and the payload's 128 are states) */
    CHECK(ckpt_read_v(dir, h.id, 3, h.fingerprint, 64, 64, &r, NULL, 0, err, sizeof(err)) == 0);
    ckpt_hdr_free(&r);
    CHECK(ckpt_read_v(dir, h.id, 3, h.fingerprint, 64, 64, &r, back, sizeof(back), err,
                      sizeof(err)) == RCD_ECORRUPT);
    CHECK(strstr(err, "header says") != NULL);
    /* a region record that does not end the payload */
    tt[2].bytes = len - 128 - 8;
    tt[2].offset = 128;
    h.version = 4;
    CHECK(ckpt_write(dir, &h, pl, 2, err, sizeof(err)) == 0);
    CHECK(ckpt_read(dir, h.id, 4, h.fingerprint, 128, &r, NULL, err, sizeof(err)) == RCD_ECORRUPT);
    /* a payload without sections is the old format, byte for byte: no record, no region */
    h.version = 5;
    h.n_tensors = 2;
    h.payload_bytes = 128;
    h.payload_hash = XXH3_64bits(pl, 128);
    CHECK(ckpt_write(dir, &h, pl, 2, err, sizeof(err)) == 0);
    CHECK(ckpt_read_v(dir, h.id, 5, h.fingerprint, 128, 0, &r, back, sizeof(back), err, sizeof(err)) == 0);
    CHECK(r.ext_bytes == 0 && r.n_tensors == 2 && !memcmp(back, pl, 128));
    ckpt_hdr_free(&r);
    uint8_t *hb;
    size_t hn;
    CHECK(ckpt_encode(&h, &hb, &hn) == 0);
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_%s/%020d.ckpt", dir, h.id, 5) == 0);
    f = fopen(path, "rb");
    fl = fread(file, 1, sizeof(file), f);
    fclose(f);
    CHECK(fl == hn + 128 && !memcmp(file, hb, hn) && !memcmp(file + hn, pl, 128));
    free(hb);
    free(pl);
    CHECK(ckpt_remove_session(dir, h.id, err, sizeof(err)) == 0);
    CHECK(rmdir(dir) == 0);
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
    RUN(test_ext_blob);
    RUN(test_ext_files);
    return rcd_test_summary();
}
