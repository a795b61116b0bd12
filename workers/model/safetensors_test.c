/* Tests for the safetensors loader: valid single and sharded checkpoints written at run time,
 * every malformed-header rule, and the bf16/f16 conversions (exhaustive round trips). */
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/rcd_error.h"
#include "tests/support/rcd_test.h"
#include "workers/model/safetensors.h"

static char g_tmp[64];

/* ---- helpers that build safetensors images ---- */

/* Builds: u64 header length, header (+pad spaces), data. Caller frees. */
static uint8_t *build(const char *hdr, size_t pad, const void *data, size_t dlen, size_t *len)
{
    size_t h = strlen(hdr) + pad;
    *len = 8 + h + dlen;
    uint8_t *b = malloc(*len ? *len : 1);
    if (!b) return NULL;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, strlen(hdr));
    memset(b + 8 + strlen(hdr), ' ', pad);
    if (dlen) memcpy(b + 8 + h, data, dlen);
    return b;
}

static int write_bytes(const char *path, const void *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(b, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

static int write_st(const char *path, const char *hdr, size_t pad, const void *data, size_t dlen)
{
    size_t len;
    uint8_t *b = build(hdr, pad, data, dlen, &len);
    int rc = b ? write_bytes(path, b, len) : -1;
    free(b);
    return rc;
}

static int write_text(const char *path, const char *text)
{
    return write_bytes(path, text, strlen(text));
}

static char *tpath(const char *sub, const char *name)
{
    static char buf[16][512]; /* a ring, so a few results can be held at once */
    static int k;
    char *p = buf[k++ & 15];
    snprintf(p, 512, "%s/%s%s%s", g_tmp, sub, sub[0] ? "/" : "", name);
    return p;
}

static char *mkdir_sub(const char *sub)
{
    char *p = tpath(sub, "");
    p[strlen(p) - 1] = '\0'; /* drop the trailing slash */
    mkdir(p, 0755);
    return p;
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* ---- valid files ---- */

static float rd_f32(const void *p, size_t i)
{
    float f;
    memcpy(&f, (const uint8_t *)p + 4 * i, 4);
    return f;
}

static uint16_t rd_u16(const void *p, size_t i)
{
    uint16_t h;
    memcpy(&h, (const uint8_t *)p + 2 * i, 2);
    return h;
}

/* Data for three tensors and two special ones; laid out back to back in the data region. */
static uint8_t g_data[24 + 8 + 8 + 4];
static const char *g_hdr =
    "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"hi\"},"
    "\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"c\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[32,40]},"
    "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[40,44]},"
    "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[24,24]}}";
static const float g_b[4] = {1.0f, -2.0f, 0.5f, 65504.0f};
static const float g_c[4] = {1.0f, -3.5f, 0.15625f, 1e30f};

static void fill_data(void)
{
    for (int i = 0; i < 6; i++) {
        float f = (float)i * 1.5f;
        memcpy(g_data + 4 * i, &f, 4);
    }
    for (int i = 0; i < 4; i++) {
        uint16_t h = wrk_f32_to_f16(g_b[i]), b = wrk_f32_to_bf16(g_c[i]);
        memcpy(g_data + 24 + 2 * i, &h, 2);
        memcpy(g_data + 32 + 2 * i, &b, 2);
    }
    float s = -7.25f;
    memcpy(g_data + 40, &s, 4);
}

static void check_valid_set(wrk_st_set_t *set, const char *fname)
{
    CHECK(wrk_st_count(set) == 5);
    /* Sorted by name. */
    const char *order[] = {"a.weight", "b", "c", "empty", "scalar"};
    for (size_t i = 0; i < 5; i++) {
        const wrk_st_tensor_t *t = wrk_st_at(set, i);
        CHECK(t && strcmp(t->name, order[i]) == 0);
        CHECK(t && strcmp(t->file, fname) == 0);
    }
    CHECK(wrk_st_at(set, 5) == NULL);

    const wrk_st_tensor_t *a = wrk_st_find(set, "a.weight");
    CHECK(a && a->dtype == WRK_DT_F32 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3);
    CHECK(a && a->numel == 6 && a->nbytes == 24);
    for (int i = 0; a && i < 6; i++)
        CHECK(rd_f32(a->data, i) == (float)i * 1.5f);

    const wrk_st_tensor_t *b = wrk_st_find(set, "b");
    CHECK(b && b->dtype == WRK_DT_F16 && b->ndim == 1 && b->shape[0] == 4 && b->nbytes == 8);
    for (int i = 0; b && i < 4; i++)
        CHECK(wrk_f16_to_f32(rd_u16(b->data, i)) == g_b[i]);

    const wrk_st_tensor_t *c = wrk_st_find(set, "c");
    CHECK(c && c->dtype == WRK_DT_BF16 && c->ndim == 2 && c->numel == 4 && c->nbytes == 8);
    CHECK(c && wrk_bf16_to_f32(rd_u16(c->data, 0)) == 1.0f);
    CHECK(c && wrk_bf16_to_f32(rd_u16(c->data, 1)) == -3.5f);
    CHECK(c && wrk_bf16_to_f32(rd_u16(c->data, 2)) == 0.15625f);
    CHECK(c && fabsf(wrk_bf16_to_f32(rd_u16(c->data, 3)) - 1e30f) < 1e28f);

    const wrk_st_tensor_t *s = wrk_st_find(set, "scalar");
    CHECK(s && s->ndim == 0 && s->numel == 1 && s->nbytes == 4 && rd_f32(s->data, 0) == -7.25f);
    const wrk_st_tensor_t *e = wrk_st_find(set, "empty");
    CHECK(e && e->ndim == 2 && e->shape[0] == 0 && e->shape[1] == 5 && e->numel == 0);
    CHECK(e && e->nbytes == 0);

    CHECK(wrk_st_find(set, "missing") == NULL);
    CHECK(wrk_st_find(set, "") == NULL);
    CHECK(wrk_st_find(set, "a") == NULL);
    CHECK(wrk_st_metadata(set, "format") && !strcmp(wrk_st_metadata(set, "format"), "pt"));
    CHECK(wrk_st_metadata(set, "note") && !strcmp(wrk_st_metadata(set, "note"), "hi"));
    CHECK(wrk_st_metadata(set, "nope") == NULL);

    /* take / first_unused */
    CHECK(wrk_st_first_unused(set) == a);
    CHECK(wrk_st_take(set, "a.weight") == a);
    CHECK(wrk_st_take(set, "zzz") == NULL);
    CHECK(wrk_st_first_unused(set) == b);
    CHECK(wrk_st_take(set, "b") == b && wrk_st_take(set, "c") == c);
    CHECK(wrk_st_take(set, "scalar") == s);
    CHECK(wrk_st_first_unused(set) == e && wrk_st_unused_count(set) == 1);
    CHECK(wrk_st_take(set, "empty") == e);
    CHECK(wrk_st_first_unused(set) == NULL && wrk_st_unused_count(set) == 0);
}

static void test_valid_single(void)
{
    char err[256];
    wrk_st_set_t *set = NULL;
    fill_data();
    mkdir_sub("single");
    /* 3 pad spaces: header length becomes odd, so tensor data is unaligned. */
    const char *path = tpath("single", "model.safetensors");
    CHECK(write_st(path, g_hdr, 3, g_data, sizeof g_data) == 0);

    int rc = wrk_st_open_dir(mkdir_sub("single"), &set, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (set) check_valid_set(set, path);
    wrk_st_close(set);

    set = NULL;
    rc = wrk_st_open_file(path, &set, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (set) check_valid_set(set, path);
    wrk_st_close(set);

    size_t len;
    uint8_t *img = build(g_hdr, 0, g_data, sizeof g_data, &len);
    set = NULL;
    rc = wrk_st_open_mem(img, len, "mem.safetensors", &set, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (set) check_valid_set(set, "mem.safetensors");
    wrk_st_close(set);
    free(img);

    /* Trailing data after the last tensor and gaps between tensors are tolerated. */
    uint8_t more[64] = {0};
    img = build("{\"x\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[10,12]}}", 0, more,
                sizeof more, &len);
    set = NULL;
    CHECK(wrk_st_open_mem(img, len, "gap", &set, err, sizeof err) == 0);
    CHECK(wrk_st_count(set) == 1 && wrk_st_metadata(set, "format") == NULL);
    wrk_st_close(set);
    free(img);

    /* Header with only metadata: an empty set. */
    img = build("{\"__metadata__\":{}}", 0, NULL, 0, &len);
    set = NULL;
    CHECK(wrk_st_open_mem(img, len, "meta-only", &set, err, sizeof err) == 0);
    CHECK(wrk_st_count(set) == 0 && wrk_st_first_unused(set) == NULL);
    CHECK(wrk_st_find(set, "x") == NULL);
    wrk_st_close(set);
    free(img);

    wrk_st_close(NULL);
    CHECK(wrk_dtype_size(WRK_DT_F32) == 4 && wrk_dtype_size(WRK_DT_F16) == 2);
    CHECK(wrk_dtype_size(WRK_DT_BF16) == 2);
    CHECK(!strcmp(wrk_dtype_name(WRK_DT_F32), "F32") && !strcmp(wrk_dtype_name(WRK_DT_F16), "F16"));
    CHECK(!strcmp(wrk_dtype_name(WRK_DT_BF16), "BF16"));
}

/* ---- malformed single files ---- */

/* Expects open_mem of (hdr, data) to fail with `code` and a message naming the file and
 * `needle` (usually the tensor name). */
static void expect_bad_at(int line, const char *hdr, size_t dlen, int code, const char *needle)
{
    static uint8_t zeros[256];
    char err[512] = "";
    size_t len;
    uint8_t *img = build(hdr, 0, zeros, dlen, &len);
    wrk_st_set_t *set = (wrk_st_set_t *)1;
    int rc = wrk_st_open_mem(img, len, "bad.safetensors", &set, err, sizeof err);
    CHECK_MSG(rc == code, "line %d: got %s want %s (%s)", line, rcd_errname(rc), rcd_errname(code),
              err);
    CHECK_MSG(set == NULL, "line %d", line);
    CHECK_MSG(strstr(err, "bad.safetensors") != NULL, "line %d: %s", line, err);
    CHECK_MSG(!needle || strstr(err, needle) != NULL, "line %d: '%s' not in: %s", line, needle,
              err);
    if (rc == 0) wrk_st_close(set);
    free(img);
}
#define expect_bad(...) expect_bad_at(__LINE__, __VA_ARGS__)

#define T(name, rest) "{\"" name "\":{" rest "}}"
#define F32_2 "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"

static void test_bad_headers(void)
{
    char err[256];
    wrk_st_set_t *set = NULL;
    uint8_t raw[16] = {0};

    /* Framing. */
    CHECK(wrk_st_open_mem(raw, 5, "short.st", &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(set == NULL && strstr(err, "short.st"));
    CHECK(wrk_st_open_mem(NULL, 0, "nil.st", &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(wrk_st_open_mem(raw, 16, "zero.st", &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "zero.st") && strstr(err, "header length is 0"));
    raw[0] = 9; /* header of 9 bytes, only 8 present */
    CHECK(wrk_st_open_mem(raw, 16, "past.st", &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "past.st") && strstr(err, "past the end"));
    memset(raw, 0xFF, 8); /* 2^64 - 1 */
    CHECK(wrk_st_open_mem(raw, 16, "huge.st", &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(wrk_st_open_mem(NULL, 4, "x", &set, err, sizeof err) == RCD_EINVAL);

    /* JSON level. */
    expect_bad("{\"a\":", 0, RCD_EFORMAT, "JSON");
    expect_bad("[1,2,3]", 0, RCD_EFORMAT, "not a JSON object");
    expect_bad("{} x", 0, RCD_EFORMAT, "after the JSON");
    expect_bad("{}{}", 0, RCD_EFORMAT, "after the JSON");
    expect_bad("\"str\"", 0, RCD_EFORMAT, "object");

    /* Entries. */
    expect_bad("{\"w\":[1,2]}", 8, RCD_EFORMAT, "'w'");
    expect_bad(T("w1", "\"shape\":[2],\"data_offsets\":[0,8]"), 8, RCD_EFORMAT, "'w1'");
    expect_bad(T("w2", "\"dtype\":\"F32\",\"data_offsets\":[0,8]"), 8, RCD_EFORMAT, "'w2'");
    expect_bad(T("w3", "\"dtype\":\"F32\",\"shape\":[2]"), 8, RCD_EFORMAT, "'w3'");
    expect_bad(T("w4", "\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]"), 8, RCD_EFORMAT,
               "'w4'");
    expect_bad(T("w5", "\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[0,8]"), 8,
               RCD_EUNSUPPORTED, "U64");
    expect_bad(T("w5b", "\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]"), 8,
               RCD_EUNSUPPORTED, "'w5b'");
    expect_bad(T("w6", "\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]"), 8, RCD_EFORMAT,
               "'w6'");
    expect_bad(T("w7", "\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]"), 8, RCD_EFORMAT,
               "'w7'");
    expect_bad(T("w8", "\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]"), 8, RCD_EFORMAT,
               "'w8'");
    expect_bad(T("w9", "\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]"), 8,
               RCD_EFORMAT, "'w9'");
    expect_bad(T("w10", "\"dtype\":\"F32\",\"shape\":[1e17],\"data_offsets\":[0,8]"), 8, RCD_ERANGE,
               "'w10'");
    expect_bad(T("w11", "\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
                        "\"data_offsets\":[0,8]"),
               8, RCD_ERANGE, "'w11'");
    /* 2^52 * 2^10 elements fit in int64 but not their 4-byte size. */
    expect_bad(T("w12", "\"dtype\":\"F32\",\"shape\":[4503599627370496,1024],"
                        "\"data_offsets\":[0,8]"),
               8, RCD_ERANGE, "'w12'");
    expect_bad(T("w13", "\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]"),
               8, RCD_EUNSUPPORTED, "'w13'");
    expect_bad(T("w14", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]"), 8, RCD_EFORMAT,
               "'w14'");
    expect_bad(T("w15", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]"), 8, RCD_EFORMAT,
               "'w15'");
    expect_bad(T("w16", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]"), 8, RCD_EFORMAT,
               "'w16'");
    expect_bad(T("w17", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]"), 8, RCD_EFORMAT,
               "'w17'");
    expect_bad(T("w18", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.5,8]"), 8, RCD_EFORMAT,
               "'w18'");
    expect_bad(T("w19", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"), 7, RCD_EFORMAT,
               "'w19'");
    expect_bad(T("w20", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9007199254740993]"), 8,
               RCD_ERANGE, "'w20'");
    expect_bad(T("w21", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]"), 16, RCD_EFORMAT,
               "'w21'");
    expect_bad(T("w22", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"a\":0}"), 8,
               RCD_EFORMAT, "'w22'");
    expect_bad(T("w23", F32_2 ",\"dtype\":\"F16\""), 8, RCD_EFORMAT, "'w23'");
    expect_bad("{\"p\":{" F32_2 "},\"q\":{\"dtype\":\"F32\",\"shape\":[2],"
               "\"data_offsets\":[4,12]}}",
               16, RCD_EFORMAT, "'q'");
    expect_bad("{\"dup\":{" F32_2 "},\"dup\":{\"dtype\":\"F32\",\"shape\":[2],"
               "\"data_offsets\":[8,16]}}",
               16, RCD_EFORMAT, "'dup'");
    expect_bad(T("", F32_2), 8, RCD_EFORMAT, "empty name");
    expect_bad("{\"__metadata__\":[1]}", 0, RCD_EFORMAT, "__metadata__");
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, RCD_EFORMAT, "'k'");
    expect_bad("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, RCD_EFORMAT, "'k'");
    expect_bad("{\"__metadata__\":{},\"__metadata__\":{}}", 0, RCD_EFORMAT, "__metadata__");
    /* Names that differ only after an escaped NUL collapse to the same C string. */
    expect_bad("{\"n\\u0000a\":{" F32_2 "},\"n\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],"
               "\"data_offsets\":[8,16]}}",
               16, RCD_EFORMAT, "duplicate");

    /* Names from the file reach messages only as valid UTF-8 without control bytes. */
    expect_bad(T("caf\xc3\xa9\x1b[31m\xff\xc3", "\"dtype\":\"F64\",\"shape\":[1],"
                                                "\"data_offsets\":[0,8]"),
               8, RCD_EUNSUPPORTED, "'caf\xc3\xa9?[31m?\?'");
    expect_bad(T("t", "\"dtype\":\"\xed\xa0\x80\xf4\x90\x80\x80\",\"shape\":[1],"
                      "\"data_offsets\":[0,8]"),
               8, RCD_EUNSUPPORTED, "'?\?\?\?\?\?\?'");

    /* A raw NUL inside the header. */
    size_t len;
    uint8_t *img = build("{}   ", 0, NULL, 0, &len);
    img[10] = 0;
    CHECK(wrk_st_open_mem(img, len, "nul.st", &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "nul.st") != NULL);
    free(img);
}

/* A header length over the cap, in a sparse file large enough to hold it. */
static void test_header_cap(void)
{
    char err[256];
    wrk_st_set_t *set = NULL;
    const char *path = tpath("", "big.safetensors");
    uint64_t h = WRK_ST_MAX_HEADER + 1;
    uint8_t hdr[8];
    for (int i = 0; i < 8; i++)
        hdr[i] = (uint8_t)(h >> (8 * i));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK(write(fd, hdr, 8) == 8);
    CHECK(ftruncate(fd, (off_t)(h + 16)) == 0);
    close(fd);
    CHECK(wrk_st_open_file(path, &set, err, sizeof err) == RCD_ETOOBIG);
    CHECK(set == NULL && strstr(err, "big.safetensors"));
    unlink(path);

    /* File-level failures of open_file. */
    CHECK(wrk_st_open_file(tpath("", "nope.safetensors"), &set, err, sizeof err) == RCD_ENOTFOUND);
    CHECK(strstr(err, "nope.safetensors") != NULL);
    CHECK(write_bytes(tpath("", "tiny.safetensors"), "abc", 3) == 0);
    CHECK(wrk_st_open_file(tpath("", "tiny.safetensors"), &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "tiny.safetensors") != NULL);
    CHECK(write_bytes(tpath("", "empty.safetensors"), "", 0) == 0);
    CHECK(wrk_st_open_file(tpath("", "empty.safetensors"), &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(wrk_st_open_file(g_tmp, &set, err, sizeof err) == RCD_EIO);
    CHECK(wrk_st_open_file(NULL, &set, err, sizeof err) == RCD_EINVAL);
    CHECK(set == NULL);
}

/* ---- sharded directories ---- */

#define SH1                                                                                        \
    "{\"__metadata__\":{\"format\":\"pt\"},"                                                       \
    "\"l0.w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"                           \
    "\"l0.b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]}}"
#define SH2                                                                                        \
    "{\"__metadata__\":{\"format\":\"other\"},"                                                    \
    "\"l1.w\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}}"
#define MAP_OK                                                                                     \
    "\"l0.w\":\"m-1.safetensors\",\"l0.b\":\"m-1.safetensors\","                                   \
    "\"l1.w\":\"sub/m-2.safetensors\""

/* Makes dir `sub` with the two shards and the given index.json body. */
static char *make_sharded(const char *sub, const char *index)
{
    static const uint8_t d1[12] = {0, 0, 128, 63, 0, 0, 0, 64, 128, 63, 0, 64};
    static const uint8_t d2[6] = {0, 60, 0, 64, 0, 66};
    char *dir = mkdir_sub(sub);
    char subsub[128];
    snprintf(subsub, sizeof subsub, "%s/sub", sub);
    mkdir_sub(subsub);
    CHECK(write_st(tpath(sub, "m-1.safetensors"), SH1, 0, d1, sizeof d1) == 0);
    CHECK(write_st(tpath(subsub, "m-2.safetensors"), SH2, 1, d2, sizeof d2) == 0);
    CHECK(write_text(tpath(sub, "model.safetensors.index.json"), index) == 0);
    return dir;
}

static void test_sharded(void)
{
    char err[256];
    wrk_st_set_t *set = NULL;
    char *dir =
        make_sharded("sh", "{\"metadata\":{\"total_size\":18},\"weight_map\":{" MAP_OK "}}");
    int rc = wrk_st_open_dir(dir, &set, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    CHECK(wrk_st_count(set) == 3);
    const wrk_st_tensor_t *w0 = wrk_st_find(set, "l0.w"), *b0 = wrk_st_find(set, "l0.b");
    const wrk_st_tensor_t *w1 = wrk_st_find(set, "l1.w");
    CHECK(w0 && w0->dtype == WRK_DT_F32 && rd_f32(w0->data, 0) == 1.0f && rd_f32(w0->data, 1) == 2);
    CHECK(w0 && strstr(w0->file, "m-1.safetensors"));
    CHECK(b0 && b0->dtype == WRK_DT_BF16 && wrk_bf16_to_f32(rd_u16(b0->data, 1)) == 2.0f);
    CHECK(w1 && w1->dtype == WRK_DT_F16 && w1->shape[0] == 3 && strstr(w1->file, "sub/m-2"));
    CHECK(w1 && wrk_f16_to_f32(rd_u16(w1->data, 0)) == 1.0f);
    CHECK(w1 && wrk_f16_to_f32(rd_u16(w1->data, 2)) == 3.0f);
    CHECK(wrk_st_metadata(set, "format") && !strcmp(wrk_st_metadata(set, "format"), "pt"));
    wrk_st_close(set);
}

static void expect_bad_dir_at(int line, const char *sub, const char *index, int code,
                              const char *needle)
{
    char err[512] = "";
    wrk_st_set_t *set = (wrk_st_set_t *)1;
    char *dir = make_sharded(sub, index);
    int rc = wrk_st_open_dir(dir, &set, err, sizeof err);
    CHECK_MSG(rc == code, "line %d: got %s want %s (%s)", line, rcd_errname(rc), rcd_errname(code),
              err);
    CHECK_MSG(set == NULL, "line %d", line);
    CHECK_MSG(strstr(err, needle) != NULL, "line %d: '%s' not in: %s", line, needle, err);
    if (rc == 0) wrk_st_close(set);
}
#define expect_bad_dir(...) expect_bad_dir_at(__LINE__, __VA_ARGS__)

static void test_bad_sharded(void)
{
    expect_bad_dir("i1", "{\"metadata\":{}}", RCD_EFORMAT, "weight_map");
    expect_bad_dir("i2", "{\"weight_map\":[1]}", RCD_EFORMAT, "index.json");
    expect_bad_dir("i3", "{\"weight_map\":{}}", RCD_EFORMAT, "empty");
    expect_bad_dir("i4", "{\"weight_map\":", RCD_EFORMAT, "index.json");
    expect_bad_dir("i5", "[]", RCD_EFORMAT, "weight_map");
    expect_bad_dir("i6", "{\"weight_map\":{" MAP_OK ",\"l2\":\"../i1/m-1.safetensors\"}}",
                   RCD_EFORMAT, "'l2'");
    expect_bad_dir("i7", "{\"weight_map\":{" MAP_OK ",\"l3\":\"/etc/passwd\"}}", RCD_EFORMAT,
                   "'l3'");
    expect_bad_dir("i8", "{\"weight_map\":{" MAP_OK ",\"l4\":\"sub/../../x\"}}", RCD_EFORMAT,
                   "'l4'");
    expect_bad_dir("i9", "{\"weight_map\":{" MAP_OK ",\"l5\":\"m-3.safetensors\"}}", RCD_ENOTFOUND,
                   "m-3.safetensors");
    expect_bad_dir("i10", "{\"weight_map\":{" MAP_OK ",\"l6\":\"m-1.safetensors\"}}", RCD_EFORMAT,
                   "'l6'");
    expect_bad_dir("i11",
                   "{\"weight_map\":{\"l0.w\":\"m-1.safetensors\","
                   "\"l1.w\":\"sub/m-2.safetensors\"}}",
                   RCD_EFORMAT, "'l0.b'");
    expect_bad_dir("i12",
                   "{\"weight_map\":{\"l0.w\":\"m-1.safetensors\",\"l0.b\":\"m-1.safetensors\","
                   "\"l1.w\":\"m-1.safetensors\"}}",
                   RCD_EFORMAT, "'l1.w'");
    expect_bad_dir("i13", "{\"weight_map\":{" MAP_OK ",\"l0.w\":\"m-1.safetensors\"}}", RCD_EFORMAT,
                   "'l0.w'");
    expect_bad_dir("i14", "{\"weight_map\":{" MAP_OK ",\"l7\":7}}", RCD_EFORMAT, "'l7'");
    expect_bad_dir("i15", "{\"weight_map\":{" MAP_OK ",\"l8\":\"\"}}", RCD_EFORMAT, "'l8'");
    /* Both shards load, but weight_map puts l0.b in the wrong one. */
    expect_bad_dir("i18",
                   "{\"weight_map\":{\"l0.w\":\"m-1.safetensors\",\"l0.b\":\"sub/m-2.safetensors\","
                   "\"l1.w\":\"sub/m-2.safetensors\"}}",
                   RCD_EFORMAT, "'l0.b'");

    /* The same tensor name in two shards. */
    char *dir = make_sharded("i16", "{\"weight_map\":{" MAP_OK "}}");
    CHECK(write_st(tpath("i16", "m-3.safetensors"), SH2, 0, "123456", 6) == 0);
    CHECK(write_text(tpath("i16", "model.safetensors.index.json"),
                     "{\"weight_map\":{" MAP_OK ",\"x\":\"m-3.safetensors\"}}") == 0);
    char err[512];
    wrk_st_set_t *set = NULL;
    CHECK(wrk_st_open_dir(dir, &set, err, sizeof err) == RCD_EFORMAT);
    CHECK(strstr(err, "'l1.w'") && strstr(err, "m-3.safetensors"));

    /* A bad shard's own error names the shard and the tensor. */
    dir = make_sharded("i17", "{\"weight_map\":{" MAP_OK "}}");
    CHECK(write_st(tpath("i17/sub", "m-2.safetensors"),
                   T("l1.w", "\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]"), 0, "abc",
                   3) == 0);
    CHECK(wrk_st_open_dir(dir, &set, err, sizeof err) == RCD_EUNSUPPORTED);
    CHECK(strstr(err, "sub/m-2.safetensors") && strstr(err, "'l1.w'") && strstr(err, "U8"));

    /* Nothing to open. */
    CHECK(wrk_st_open_dir(mkdir_sub("none"), &set, err, sizeof err) == RCD_ENOTFOUND);
    CHECK(strstr(err, "none") != NULL && set == NULL);
    CHECK(wrk_st_open_dir(NULL, &set, err, sizeof err) == RCD_EINVAL);
}

/* ---- half conversions ---- */

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float fbits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_roundtrip(void)
{
    int bad_bf = 0, bad_f16 = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = wrk_bf16_to_f32((uint16_t)h);
        CHECK(bits(f) == h << 16); /* bf16 -> f32 is a shift */
        uint16_t back = wrk_f32_to_bf16(f);
        if (isnan(f) ? !isnan(wrk_bf16_to_f32(back)) : back != h) bad_bf++;

        float g = wrk_f16_to_f32((uint16_t)h);
        back = wrk_f32_to_f16(g);
        if (isnan(g) ? !isnan(wrk_f16_to_f32(back)) : back != h) bad_f16++;
        /* Decode check against the definition. */
        int e = (h >> 10) & 31, m = h & 1023;
        double want = e == 0    ? ldexp(m, -24)
                      : e == 31 ? (m ? NAN : INFINITY)
                                : ldexp(1024 + m, e - 25);
        if (h & 0x8000) want = -want;
        if (isnan(want) ? !isnan(g) : (double)g != want) bad_f16++;
    }
    CHECK_MSG(bad_bf == 0, "%d bf16 patterns do not round-trip", bad_bf);
    CHECK_MSG(bad_f16 == 0, "%d f16 patterns do not round-trip", bad_f16);
}

static void test_rounding_cases(void)
{
    /* bf16: ties to even, above-tie up, overflow to inf, NaN canonical. */
    CHECK(wrk_f32_to_bf16(fbits(0x3F808000)) == 0x3F80);
    CHECK(wrk_f32_to_bf16(fbits(0x3F818000)) == 0x3F82);
    CHECK(wrk_f32_to_bf16(fbits(0x3F808001)) == 0x3F81);
    CHECK(wrk_f32_to_bf16(fbits(0x3F807FFF)) == 0x3F80);
    CHECK(wrk_f32_to_bf16(fbits(0x7F7FFFFF)) == 0x7F80);
    CHECK(wrk_f32_to_bf16(fbits(0xFF7FFFFF)) == 0xFF80);
    CHECK(wrk_f32_to_bf16(fbits(0x00008000)) == 0x0000); /* subnormal tie to even 0 */
    CHECK(wrk_f32_to_bf16(fbits(0x00018000)) == 0x0002);
    CHECK(wrk_f32_to_bf16(-0.0f) == 0x8000);
    CHECK(wrk_f32_to_bf16(INFINITY) == 0x7F80 && wrk_f32_to_bf16(-INFINITY) == 0xFF80);
    CHECK(wrk_f32_to_bf16(NAN) == 0x7FC0);
    CHECK(isnan(wrk_bf16_to_f32(wrk_f32_to_bf16(fbits(0x7F800001))))); /* signalling NaN */
    CHECK(isnan(wrk_bf16_to_f32(wrk_f32_to_bf16(fbits(0xFFFFFFFF)))));

    /* f16. */
    CHECK(wrk_f32_to_f16(1.0f) == 0x3C00);
    CHECK(wrk_f32_to_f16(1.0f + 0x1p-11f) == 0x3C00);     /* tie -> even */
    CHECK(wrk_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3C02); /* tie -> even (up) */
    CHECK(wrk_f32_to_f16(fbits(0x3F801001)) == 0x3C01);   /* just above the tie */
    CHECK(wrk_f32_to_f16(65504.0f) == 0x7BFF);
    CHECK(wrk_f32_to_f16(65519.99f) == 0x7BFF);
    CHECK(wrk_f32_to_f16(65520.0f) == 0x7C00);
    CHECK(wrk_f32_to_f16(-1e10f) == 0xFC00);
    CHECK(wrk_f32_to_f16(0x1p-24f) == 0x0001); /* smallest subnormal */
    CHECK(wrk_f32_to_f16(0x1p-25f) == 0x0000); /* tie -> even zero */
    CHECK(wrk_f32_to_f16(fbits(0x33000001)) == 0x0001);
    CHECK(wrk_f32_to_f16(3 * 0x1p-25f) == 0x0002);
    CHECK(wrk_f32_to_f16(5 * 0x1p-25f) == 0x0002);
    CHECK(wrk_f32_to_f16(0x1p-14f) == 0x0400);            /* smallest normal */
    CHECK(wrk_f32_to_f16(0x1p-14f - 0x1p-25f) == 0x0400); /* tie between 0x3FF and 0x400 */
    CHECK(wrk_f32_to_f16(0x1p-14f - 0x1p-24f) == 0x03FF);
    CHECK(wrk_f32_to_f16(-0x1p-24f) == 0x8001);
    CHECK(wrk_f32_to_f16(1e-30f) == 0x0000 && wrk_f32_to_f16(-1e-30f) == 0x8000);
    CHECK(wrk_f32_to_f16(fbits(0x00000001)) == 0x0000);
    CHECK(wrk_f32_to_f16(INFINITY) == 0x7C00 && wrk_f32_to_f16(-INFINITY) == 0xFC00);
    uint16_t n = wrk_f32_to_f16(NAN);
    CHECK((n & 0x7C00) == 0x7C00 && (n & 0x3FF) != 0);
    n = wrk_f32_to_f16(fbits(0xFF800001)); /* NaN whose payload sits below f16's mantissa */
    CHECK((n & 0xFC00) == 0xFC00 && (n & 0x3FF) != 0);
    CHECK(wrk_f16_to_f32(0x7BFF) == 65504.0f && wrk_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(wrk_f16_to_f32(0x8000) == 0.0f && signbit(wrk_f16_to_f32(0x8000)));
    CHECK(isinf(wrk_f16_to_f32(0xFC00)) && wrk_f16_to_f32(0xFC00) < 0);
}

/* Nearest-even oracle in double for a finite non-negative x and the encoded result h, where
 * val(h) decodes (with the all-ones exponent taken as the next power of two). */
static int is_nearest_even(double x, uint32_t h, uint32_t hmax, double (*val)(uint32_t))
{
    double d = fabs(x - val(h));
    for (int s = -1; s <= 1; s += 2) {
        if ((s < 0 && h == 0) || (s > 0 && h == hmax)) continue;
        double dn = fabs(x - val(h + (uint32_t)s));
        if (dn < d || (dn == d && (h & 1))) return 0;
    }
    return 1;
}

static double val_f16(uint32_t h)
{
    return h == 0x7C00 ? 65536.0 : (double)wrk_f16_to_f32((uint16_t)h);
}

static double val_bf16(uint32_t h)
{
    return h == 0x7F80 ? ldexp(1, 128) : (double)wrk_bf16_to_f32((uint16_t)h);
}

static void test_rounding_sweep(void)
{
    int bad16 = 0, badbf = 0;
    for (uint64_t u = 0; u < 0x7F800000u; u += 997) {
        for (int neg = 0; neg < 2; neg++) {
            float f = fbits((uint32_t)u | (neg ? 0x80000000u : 0));
            double x = fabs((double)f);
            uint16_t h = wrk_f32_to_f16(f), b = wrk_f32_to_bf16(f);
            if ((h >> 15) != (uint16_t)neg || (h & 0x7FFF) > 0x7C00 ||
                !is_nearest_even(x, h & 0x7FFF, 0x7C00, val_f16))
                bad16++;
            if ((b >> 15) != (uint16_t)neg || (b & 0x7FFF) > 0x7F80 ||
                !is_nearest_even(x, b & 0x7FFF, 0x7F80, val_bf16))
                badbf++;
        }
    }
    CHECK_MSG(bad16 == 0, "%d f32->f16 results are not nearest-even", bad16);
    CHECK_MSG(badbf == 0, "%d f32->bf16 results are not nearest-even", badbf);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/st_test_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_valid_single);
    RUN(test_bad_headers);
    RUN(test_header_cap);
    RUN(test_sharded);
    RUN(test_bad_sharded);
    RUN(test_roundtrip);
    RUN(test_rounding_cases);
    RUN(test_rounding_sweep);
    nftw(g_tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return rcd_test_summary();
}
