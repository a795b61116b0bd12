/* The safetensors loader: header validation, shard index handling, name lookup, and the
 * bf16/f16 conversions that every weight path shares. Nothing read from a file is trusted. */
#include "workers/model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/rcd_error.h"

/* 2^53 - 1: from 2^53 on, a double no longer tells neighbouring integers apart (2^53 + 1
 * parses as 2^53), so such numbers in a header cannot be trusted. */
#define ST_MAX_EXACT 9007199254740991.0

/* One backing file: a mapping we own (map != NULL) or a caller's buffer (map == NULL). */
typedef struct st_file {
    char *path;
    void *map;
    size_t maplen;
} st_file_t;

/* A tensor plus what only the loader needs. `t` is first so &ent->t is what callers see. */
typedef struct st_ent {
    wrk_st_tensor_t t;
    size_t file;
    uint64_t begin, end; /* byte range relative to the file's data region */
    bool used;
} st_ent_t;

typedef struct st_kv {
    char *key, *val;
} st_kv_t;

struct wrk_st_set {
    st_ent_t *ents; /* sorted by name once opening succeeds */
    size_t n, cap;
    st_file_t *files;
    size_t nfiles;
    st_kv_t *meta; /* sorted by key */
    size_t nmeta;
};

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes there are not one. */
static size_t utf8_seq_len(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0; /* overlong */
        if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90; /* overlong */
        if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n;
}

/* rcd_fail for this file: messages quote tensor names, dtypes and paths taken from the file,
 * so control bytes and invalid UTF-8 are replaced by '?' before the message reaches logs,
 * terminals or a gRPC status (whose message must be UTF-8). */
static int st_fail(int err, char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int st_fail(int err, char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || !len) return err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    unsigned char *p = (unsigned char *)buf;
    while (*p) {
        size_t n = *p < 0x20 || *p == 0x7F ? 0 : utf8_seq_len(p);
        if (n == 0) {
            *p++ = '?';
        } else {
            p += n; /* a valid sequence never contains a NUL, so this stays in the string */
        }
    }
    return err;
}

size_t wrk_dtype_size(wrk_dtype_t dt)
{
    switch (dt) {
    case WRK_DT_F32:
        return 4;
    case WRK_DT_F16:
    case WRK_DT_BF16:
        return 2;
    case WRK_DT_I8:
        return 1;
    case WRK_DT_I32:
        return 4;
    case WRK_DT_I64:
        return 8;
    }
    return 0;
}

const char *wrk_dtype_name(wrk_dtype_t dt)
{
    switch (dt) {
    case WRK_DT_F32:
        return "F32";
    case WRK_DT_F16:
        return "F16";
    case WRK_DT_BF16:
        return "BF16";
    case WRK_DT_I8:
        return "I8";
    case WRK_DT_I32:
        return "I32";
    case WRK_DT_I64:
        return "I64";
    }
    return "?";
}

/* ---- set bookkeeping ---- */

static int set_new(wrk_st_set_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : RCD_ENOMEM;
}

void wrk_st_close(wrk_st_set_t *set)
{
    if (!set) return;
    for (size_t i = 0; i < set->n; i++)
        free((char *)set->ents[i].t.name);
    for (size_t i = 0; i < set->nfiles; i++) {
        if (set->files[i].map) munmap(set->files[i].map, set->files[i].maplen);
        free(set->files[i].path);
    }
    for (size_t i = 0; i < set->nmeta; i++) {
        free(set->meta[i].key);
        free(set->meta[i].val);
    }
    free(set->ents);
    free(set->files);
    free(set->meta);
    free(set);
}

/* Registers a backing file; on failure the caller still owns `map`. */
static int set_add_file(wrk_st_set_t *set, const char *path, void *map, size_t maplen, size_t *idx)
{
    st_file_t *files = realloc(set->files, (set->nfiles + 1) * sizeof *files);
    if (!files) return RCD_ENOMEM;
    set->files = files;
    char *p = strdup(path);
    if (!p) return RCD_ENOMEM;
    files[set->nfiles] = (st_file_t){.path = p, .map = map, .maplen = maplen};
    *idx = set->nfiles++;
    return 0;
}

static int set_reserve(wrk_st_set_t *set, size_t more)
{
    if (more <= set->cap - set->n) return 0;
    if (more > SIZE_MAX / sizeof(st_ent_t) - set->n) return RCD_ENOMEM;
    size_t cap = set->n + more;
    st_ent_t *e = realloc(set->ents, cap * sizeof *e);
    if (!e) return RCD_ENOMEM;
    set->ents = e;
    set->cap = cap;
    return 0;
}

static int cmp_ent_name(const void *a, const void *b)
{
    return strcmp(((const st_ent_t *)a)->t.name, ((const st_ent_t *)b)->t.name);
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp(((const st_kv_t *)a)->key, ((const st_kv_t *)b)->key);
}

/* ---- header parsing ---- */

/* A JSON number that must be an exact integer in [0, 2^53 - 1]. */
static int json_u53(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return RCD_EFORMAT;
    double d = v->valuedouble;
    if (d != d || d < 0) return RCD_EFORMAT;
    if (d > ST_MAX_EXACT) return RCD_ERANGE;
    if (d != floor(d)) return RCD_EFORMAT;
    *out = (uint64_t)d;
    return 0;
}

static const char *u53_why(int rc)
{
    return rc == RCD_ERANGE ? "exceeds 2^53 - 1" : "is not a non-negative integer";
}

static int parse_dtype(const cJSON *v, const char *fname, const char *name, wrk_dtype_t *dt,
                       char *err, size_t errlen)
{
    if (!cJSON_IsString(v))
        return st_fail(RCD_EFORMAT, err, errlen, "%s: tensor '%s': dtype is not a string", fname,
                       name);
    const char *s = v->valuestring;
    if (!strcmp(s, "F32")) {
        *dt = WRK_DT_F32;
    } else if (!strcmp(s, "F16")) {
        *dt = WRK_DT_F16;
    } else if (!strcmp(s, "BF16")) {
        *dt = WRK_DT_BF16;
    } else if (!strcmp(s, "I8")) {
        *dt = WRK_DT_I8;
    } else if (!strcmp(s, "I32")) {
        *dt = WRK_DT_I32;
    } else if (!strcmp(s, "I64")) {
        *dt = WRK_DT_I64;
    } else {
        return st_fail(RCD_EUNSUPPORTED, err, errlen,
                       "%s: tensor '%s': dtype '%.32s' is not supported (F32, F16, BF16, I8, I32, I64)",
                       fname, name, s);
    }
    return 0;
}

static int parse_shape(const cJSON *v, const char *fname, st_ent_t *e, char *err, size_t errlen)
{
    const char *name = e->t.name;
    if (!cJSON_IsArray(v))
        return st_fail(RCD_EFORMAT, err, errlen, "%s: tensor '%s': shape is not an array", fname,
                       name);
    int ndim = 0;
    uint64_t numel = 1;
    for (const cJSON *d = v->child; d; d = d->next) {
        if (ndim == WRK_ST_MAX_DIMS)
            return st_fail(RCD_EUNSUPPORTED, err, errlen,
                           "%s: tensor '%s': more than %d dimensions", fname, name,
                           WRK_ST_MAX_DIMS);
        uint64_t dim;
        int rc = json_u53(d, &dim);
        if (rc)
            return st_fail(rc, err, errlen, "%s: tensor '%s': shape[%d] %s", fname, name, ndim,
                           u53_why(rc));
        if (__builtin_mul_overflow(numel, dim, &numel) || numel > (uint64_t)INT64_MAX)
            return st_fail(RCD_ERANGE, err, errlen, "%s: tensor '%s': element count overflows",
                           fname, name);
        e->t.shape[ndim++] = (int64_t)dim;
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)wrk_dtype_size(e->t.dtype), &nbytes) ||
        nbytes > SIZE_MAX)
        return st_fail(RCD_ERANGE, err, errlen, "%s: tensor '%s': byte size overflows", fname,
                       name);
    e->t.ndim = ndim;
    e->t.numel = (int64_t)numel;
    e->t.nbytes = (size_t)nbytes;
    return 0;
}

static int parse_offsets(const cJSON *v, const char *fname, st_ent_t *e, uint64_t data_len,
                         char *err, size_t errlen)
{
    const char *name = e->t.name;
    if (!cJSON_IsArray(v) || !v->child || !v->child->next || v->child->next->next)
        return st_fail(RCD_EFORMAT, err, errlen,
                       "%s: tensor '%s': data_offsets is not an array of two integers", fname,
                       name);
    int rc = json_u53(v->child, &e->begin);
    if (!rc) rc = json_u53(v->child->next, &e->end);
    if (rc)
        return st_fail(rc, err, errlen, "%s: tensor '%s': a data_offsets value %s", fname, name,
                       u53_why(rc));
    if (e->begin > e->end)
        return st_fail(RCD_EFORMAT, err, errlen,
                       "%s: tensor '%s': data_offsets begin %llu > end %llu", fname, name,
                       (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_len)
        return st_fail(RCD_EFORMAT, err, errlen,
                       "%s: tensor '%s': data ends at %llu, past the %llu-byte data region", fname,
                       name, (unsigned long long)e->end, (unsigned long long)data_len);
    if (e->end - e->begin != e->t.nbytes)
        return st_fail(RCD_EFORMAT, err, errlen,
                       "%s: tensor '%s': data_offsets span %llu bytes, shape and dtype need %zu",
                       fname, name, (unsigned long long)(e->end - e->begin), e->t.nbytes);
    return 0;
}

/* Fills set->ents[set->n] from one header entry; bumps set->n only on success so that
 * wrk_st_close frees exactly the names it should. */
static int parse_entry(wrk_st_set_t *set, size_t fidx, const cJSON *item, const uint8_t *data,
                       uint64_t data_len, char *err, size_t errlen)
{
    const char *fname = set->files[fidx].path;
    const char *key = item->string;
    if (!key || !key[0])
        return st_fail(RCD_EFORMAT, err, errlen, "%s: tensor with an empty name", fname);
    if (!cJSON_IsObject(item))
        return st_fail(RCD_EFORMAT, err, errlen, "%s: tensor '%s': entry is not an object", fname,
                       key);
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *f = item->child; f; f = f->next) {
        const cJSON **slot = NULL;
        if (!f->string) continue;
        if (!strcmp(f->string, "dtype"))
            slot = &dtype;
        else if (!strcmp(f->string, "shape"))
            slot = &shape;
        else if (!strcmp(f->string, "data_offsets"))
            slot = &offs;
        if (!slot) continue; /* unknown fields are allowed, as in the reference reader */
        if (*slot)
            return st_fail(RCD_EFORMAT, err, errlen, "%s: tensor '%s': duplicate field '%s'", fname,
                           key, f->string);
        *slot = f;
    }
    const char *missing = !dtype ? "dtype" : !shape ? "shape" : !offs ? "data_offsets" : NULL;
    if (missing)
        return st_fail(RCD_EFORMAT, err, errlen, "%s: tensor '%s': missing field '%s'", fname, key,
                       missing);

    st_ent_t *e = &set->ents[set->n];
    memset(e, 0, sizeof *e);
    e->file = fidx;
    e->t.file = fname;
    e->t.name = key; /* borrowed until the entry is complete */
    int rc = parse_dtype(dtype, fname, key, &e->t.dtype, err, errlen);
    if (!rc) rc = parse_shape(shape, fname, e, err, errlen);
    if (!rc) rc = parse_offsets(offs, fname, e, data_len, err, errlen);
    if (rc) return rc;
    e->t.data = data + e->begin;
    char *name = strdup(key);
    if (!name) return st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", fname);
    e->t.name = name;
    set->n++;
    return 0;
}

static int parse_metadata(wrk_st_set_t *set, size_t fidx, const cJSON *meta, char *err,
                          size_t errlen)
{
    const char *fname = set->files[fidx].path;
    if (!cJSON_IsObject(meta))
        return st_fail(RCD_EFORMAT, err, errlen, "%s: __metadata__ is not an object", fname);
    size_t n = 0;
    for (const cJSON *kv = meta->child; kv; kv = kv->next) {
        if (!kv->string || !cJSON_IsString(kv))
            return st_fail(RCD_EFORMAT, err, errlen, "%s: __metadata__ value '%s' is not a string",
                           fname, kv->string ? kv->string : "");
        n++;
    }
    if (fidx != 0 || n == 0) return 0; /* only the first file's metadata is kept */
    set->meta = calloc(n, sizeof *set->meta);
    if (!set->meta) return st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", fname);
    for (const cJSON *kv = meta->child; kv; kv = kv->next) {
        st_kv_t *m = &set->meta[set->nmeta];
        m->key = strdup(kv->string);
        m->val = strdup(kv->valuestring);
        set->nmeta++;
        if (!m->key || !m->val) return st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", fname);
    }
    qsort(set->meta, set->nmeta, sizeof *set->meta, cmp_kv);
    for (size_t i = 1; i < set->nmeta; i++)
        if (!strcmp(set->meta[i - 1].key, set->meta[i].key))
            return st_fail(RCD_EFORMAT, err, errlen, "%s: __metadata__ key '%s' appears twice",
                           fname, set->meta[i].key);
    return 0;
}

static int cmp_range(const void *a, const void *b)
{
    const st_ent_t *x = *(st_ent_t *const *)a, *y = *(st_ent_t *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* Byte ranges of the tensors ents[first..n) (all from one file) must not overlap. Empty
 * tensors occupy no bytes and may sit anywhere. */
static int check_overlap(wrk_st_set_t *set, size_t first, char *err, size_t errlen)
{
    size_t m = 0;
    for (size_t i = first; i < set->n; i++)
        m += set->ents[i].end > set->ents[i].begin;
    if (m < 2) return 0;
    st_ent_t **v = malloc(m * sizeof *v);
    if (!v) return st_fail(RCD_ENOMEM, err, errlen, "out of memory");
    size_t k = 0;
    for (size_t i = first; i < set->n; i++)
        if (set->ents[i].end > set->ents[i].begin) v[k++] = &set->ents[i];
    qsort(v, m, sizeof *v, cmp_range);
    int rc = 0;
    for (size_t i = 1; i < m; i++) {
        if (v[i]->begin < v[i - 1]->end) {
            rc = st_fail(RCD_EFORMAT, err, errlen,
                         "%s: tensors '%s' and '%s' have overlapping data ranges", v[i]->t.file,
                         v[i - 1]->t.name, v[i]->t.name);
            break;
        }
    }
    free(v);
    return rc;
}

static bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Validates one file image and appends its tensors to the set (unsorted). */
static int parse_image(wrk_st_set_t *set, size_t fidx, const uint8_t *buf, size_t len, char *err,
                       size_t errlen)
{
    const char *fname = set->files[fidx].path;
    if (len < 8)
        return st_fail(RCD_EFORMAT, err, errlen,
                       "%s: file is %zu bytes, too short for a safetensors header", fname, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | buf[i];
    if (hlen == 0) return st_fail(RCD_EFORMAT, err, errlen, "%s: header length is 0", fname);
    if (hlen > len - 8)
        return st_fail(RCD_EFORMAT, err, errlen,
                       "%s: header length %llu runs past the end of the %zu-byte file", fname,
                       (unsigned long long)hlen, len);
    if (hlen > WRK_ST_MAX_HEADER)
        return st_fail(RCD_ETOOBIG, err, errlen, "%s: header length %llu exceeds %llu bytes", fname,
                       (unsigned long long)hlen, (unsigned long long)WRK_ST_MAX_HEADER);

    /* cJSON wants a NUL-terminated string, so parse a private copy. */
    int rc = 0;
    cJSON *root = NULL;
    char *hdr = malloc((size_t)hlen + 1);
    if (!hdr) return st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", fname);
    memcpy(hdr, buf + 8, (size_t)hlen);
    hdr[hlen] = '\0';
    if (memchr(hdr, '\0', (size_t)hlen)) {
        rc = st_fail(RCD_EFORMAT, err, errlen, "%s: header contains a NUL byte", fname);
        goto cleanup;
    }
    const char *end = NULL;
    root = cJSON_ParseWithOpts(hdr, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;
        rc = st_fail(RCD_EFORMAT, err, errlen, "%s: header is not valid JSON (near byte %zu)",
                     fname, at);
        goto cleanup;
    }
    for (const char *p = end; *p; p++) {
        if (!is_json_space(*p)) {
            rc = st_fail(RCD_EFORMAT, err, errlen,
                         "%s: unexpected bytes after the JSON header (at byte %zu)", fname,
                         (size_t)(p - hdr));
            goto cleanup;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = st_fail(RCD_EFORMAT, err, errlen, "%s: header is not a JSON object", fname);
        goto cleanup;
    }

    size_t count = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        count++;
    if (set_reserve(set, count)) {
        rc = st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", fname);
        goto cleanup;
    }
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    size_t first = set->n;
    bool seen_meta = false;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (it->string && !strcmp(it->string, "__metadata__")) {
            if (seen_meta) {
                rc = st_fail(RCD_EFORMAT, err, errlen, "%s: __metadata__ appears twice", fname);
                goto cleanup;
            }
            seen_meta = true;
            rc = parse_metadata(set, fidx, it, err, errlen);
        } else {
            rc = parse_entry(set, fidx, it, data, data_len, err, errlen);
        }
        if (rc) goto cleanup;
    }
    rc = check_overlap(set, first, err, errlen);

cleanup:
    cJSON_Delete(root);
    free(hdr);
    return rc;
}

/* Sorts all tensors by name and rejects duplicates (within a file or across shards). */
static int finish_set(wrk_st_set_t *set, char *err, size_t errlen)
{
    if (set->n > 1) qsort(set->ents, set->n, sizeof *set->ents, cmp_ent_name);
    for (size_t i = 1; i < set->n; i++) {
        const wrk_st_tensor_t *a = &set->ents[i - 1].t, *b = &set->ents[i].t;
        if (!strcmp(a->name, b->name)) {
            if (a->file == b->file)
                return st_fail(RCD_EFORMAT, err, errlen, "%s: duplicate tensor name '%s'", a->file,
                               a->name);
            return st_fail(RCD_EFORMAT, err, errlen, "duplicate tensor name '%s' (in %s and %s)",
                           a->name, a->file, b->file);
        }
    }
    return 0;
}

/* ---- files ---- */

/* mmaps `path` read-only and parses it into the set. */
static int load_file(wrk_st_set_t *set, const char *path, char *err, size_t errlen)
{
    int rc = 0;
    void *map = NULL;
    size_t maplen = 0, fidx;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return st_fail(e == ENOENT ? RCD_ENOTFOUND : RCD_EIO, err, errlen, "%s: cannot open: %s",
                       path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = st_fail(RCD_EIO, err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = st_fail(RCD_EIO, err, errlen, "%s: not a regular file", path);
        goto cleanup;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        rc = st_fail(RCD_ETOOBIG, err, errlen, "%s: file too large to map", path);
        goto cleanup;
    }
    maplen = (size_t)st.st_size;
    if (maplen >= 8) { /* shorter files are rejected by parse_image without a mapping */
        map = mmap(NULL, maplen, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            map = NULL;
            rc = st_fail(RCD_EIO, err, errlen, "%s: mmap failed: %s", path, strerror(errno));
            goto cleanup;
        }
    }
    rc = set_add_file(set, path, map, maplen, &fidx);
    if (rc) {
        rc = st_fail(rc, err, errlen, "%s: out of memory", path);
        goto cleanup;
    }
    map = NULL; /* the set owns it now */
    static const uint8_t empty[8];
    const uint8_t *img = set->files[fidx].map ? set->files[fidx].map : empty;
    rc = parse_image(set, fidx, img, maplen, err, errlen);

cleanup:
    if (map) munmap(map, maplen);
    close(fd);
    return rc;
}

int wrk_st_open_file(const char *path, wrk_st_set_t **out, char *err, size_t errlen)
{
    if (!path || !out) return st_fail(RCD_EINVAL, err, errlen, "wrk_st_open_file: NULL argument");
    *out = NULL;
    wrk_st_set_t *set = NULL;
    int rc = set_new(&set);
    if (rc) return st_fail(rc, err, errlen, "%s: out of memory", path);
    rc = load_file(set, path, err, errlen);
    if (!rc) rc = finish_set(set, err, errlen);
    if (rc) {
        wrk_st_close(set);
        return rc;
    }
    *out = set;
    return 0;
}

int wrk_st_open_mem(const void *buf, size_t len, const char *fname, wrk_st_set_t **out, char *err,
                    size_t errlen)
{
    if (!out || (!buf && len)) return st_fail(RCD_EINVAL, err, errlen, "wrk_st_open_mem: NULL");
    *out = NULL;
    if (!fname) fname = "<memory>";
    static const uint8_t empty[8];
    wrk_st_set_t *set = NULL;
    size_t fidx;
    int rc = set_new(&set);
    if (!rc) rc = set_add_file(set, fname, NULL, 0, &fidx);
    if (rc) {
        wrk_st_close(set);
        return st_fail(rc, err, errlen, "%s: out of memory", fname);
    }
    rc = parse_image(set, fidx, buf ? buf : empty, len, err, errlen);
    if (!rc) rc = finish_set(set, err, errlen);
    if (rc) {
        wrk_st_close(set);
        return rc;
    }
    *out = set;
    return 0;
}

/* ---- sharded directories ---- */

typedef struct st_wm {
    const char *name, *shard; /* borrowed from the index's cJSON tree */
} st_wm_t;

static int cmp_wm(const void *a, const void *b)
{
    return strcmp(((const st_wm_t *)a)->name, ((const st_wm_t *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Shard paths are relative to the checkpoint directory and may not leave it. */
static bool shard_path_ok(const char *s)
{
    if (!s[0] || s[0] == '/') return false;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.') return false;
        if (!q) break;
        p = q + 1;
    }
    return true;
}

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* Reads a small whole file into a NUL-terminated buffer. */
static int read_small(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    int rc = 0;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return st_fail(e == ENOENT ? RCD_ENOTFOUND : RCD_EIO, err, errlen, "%s: cannot open: %s",
                       path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = st_fail(RCD_EIO, err, errlen, "%s: cannot stat or not a regular file", path);
        goto cleanup;
    }
    if ((uint64_t)st.st_size > WRK_ST_MAX_HEADER) {
        rc = st_fail(RCD_ETOOBIG, err, errlen, "%s: %lld bytes exceeds %llu", path,
                     (long long)st.st_size, (unsigned long long)WRK_ST_MAX_HEADER);
        goto cleanup;
    }
    size_t size = (size_t)st.st_size, got = 0;
    buf = malloc(size + 1);
    if (!buf) {
        rc = st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", path);
        goto cleanup;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = st_fail(RCD_EIO, err, errlen, "%s: read failed", path);
            goto cleanup;
        }
        got += (size_t)r;
    }
    buf[size] = '\0';
    *out = buf;
    *outlen = size;
    buf = NULL;

cleanup:
    free(buf);
    close(fd);
    return rc;
}

/* weight_map and the loaded shards must agree exactly: both lists are sorted by name. */
static int check_weight_map(const wrk_st_set_t *set, const st_wm_t *wm, size_t nwm, const char *dir,
                            const char *ipath, char *err, size_t errlen)
{
    size_t i = 0, j = 0;
    while (i < set->n || j < nwm) {
        const wrk_st_tensor_t *t = i < set->n ? &set->ents[i].t : NULL;
        int c = !t ? 1 : j == nwm ? -1 : strcmp(t->name, wm[j].name);
        if (c < 0)
            return st_fail(RCD_EFORMAT, err, errlen,
                           "%s: tensor '%s' is not listed in the weight_map of %s", t->file,
                           t->name, ipath);
        if (c > 0)
            return st_fail(RCD_EFORMAT, err, errlen,
                           "%s: weight_map lists tensor '%s' but its shard %s/%s lacks it", ipath,
                           wm[j].name, dir, wm[j].shard);
        /* Same name: it must come from the shard the map names. */
        const char *f = t->file;
        size_t dl = strlen(dir), sl = strlen(wm[j].shard);
        if (strlen(f) != dl + 1 + sl || strcmp(f + dl + 1, wm[j].shard) != 0)
            return st_fail(RCD_EFORMAT, err, errlen,
                           "%s: tensor '%s' is in %s but weight_map says %s", ipath, t->name, f,
                           wm[j].shard);
        i++;
        j++;
    }
    return 0;
}

static int open_index(wrk_st_set_t *set, const char *dir, const char *ipath, char *err,
                      size_t errlen)
{
    int rc = 0;
    char *text = NULL, *spath = NULL;
    size_t tlen = 0, nwm = 0, nsh = 0;
    cJSON *root = NULL;
    st_wm_t *wm = NULL;
    const char **shards = NULL;

    rc = read_small(ipath, &text, &tlen, err, errlen);
    if (rc) goto cleanup;
    if (strlen(text) != tlen) {
        rc = st_fail(RCD_EFORMAT, err, errlen, "%s: contains a NUL byte", ipath);
        goto cleanup;
    }
    const char *end = NULL;
    root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        size_t at = end && end >= text && end <= text + tlen ? (size_t)(end - text) : 0;
        rc = st_fail(RCD_EFORMAT, err, errlen, "%s: not valid JSON (near byte %zu)", ipath, at);
        goto cleanup;
    }
    const cJSON *map =
        cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        rc = st_fail(RCD_EFORMAT, err, errlen, "%s: missing or invalid weight_map object", ipath);
        goto cleanup;
    }
    for (const cJSON *it = map->child; it; it = it->next)
        nwm++;
    if (nwm == 0) {
        rc = st_fail(RCD_EFORMAT, err, errlen, "%s: weight_map is empty", ipath);
        goto cleanup;
    }
    wm = malloc(nwm * sizeof *wm);
    shards = malloc(nwm * sizeof *shards);
    if (!wm || !shards) {
        rc = st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", ipath);
        goto cleanup;
    }
    size_t k = 0;
    for (const cJSON *it = map->child; it; it = it->next, k++) {
        if (!it->string || !it->string[0]) {
            rc =
                st_fail(RCD_EFORMAT, err, errlen, "%s: weight_map has an empty tensor name", ipath);
            goto cleanup;
        }
        if (!cJSON_IsString(it)) {
            rc = st_fail(RCD_EFORMAT, err, errlen,
                         "%s: weight_map entry for tensor '%s' is not a string", ipath, it->string);
            goto cleanup;
        }
        if (!shard_path_ok(it->valuestring)) {
            rc = st_fail(RCD_EFORMAT, err, errlen,
                         "%s: tensor '%s': shard path '%s' is empty or leaves the directory", ipath,
                         it->string, it->valuestring);
            goto cleanup;
        }
        wm[k] = (st_wm_t){.name = it->string, .shard = it->valuestring};
        shards[k] = it->valuestring;
    }
    qsort(wm, nwm, sizeof *wm, cmp_wm);
    for (size_t i = 1; i < nwm; i++) {
        if (!strcmp(wm[i - 1].name, wm[i].name)) {
            rc = st_fail(RCD_EFORMAT, err, errlen, "%s: weight_map lists tensor '%s' twice", ipath,
                         wm[i].name);
            goto cleanup;
        }
    }
    qsort(shards, nwm, sizeof *shards, cmp_str);
    for (size_t i = 0; i < nwm; i++)
        if (nsh == 0 || strcmp(shards[nsh - 1], shards[i]) != 0) shards[nsh++] = shards[i];

    for (size_t i = 0; i < nsh; i++) {
        spath = path_join(dir, shards[i]);
        if (!spath) {
            rc = st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", ipath);
            goto cleanup;
        }
        rc = load_file(set, spath, err, errlen);
        if (rc) goto cleanup;
        free(spath);
        spath = NULL;
    }
    rc = finish_set(set, err, errlen);
    if (!rc) rc = check_weight_map(set, wm, nwm, dir, ipath, err, errlen);

cleanup:
    free(spath);
    free(shards);
    free(wm);
    cJSON_Delete(root);
    free(text);
    return rc;
}

int wrk_st_open_dir(const char *dir, wrk_st_set_t **out, char *err, size_t errlen)
{
    if (!dir || !out) return st_fail(RCD_EINVAL, err, errlen, "wrk_st_open_dir: NULL argument");
    *out = NULL;
    int rc = 0;
    wrk_st_set_t *set = NULL;
    char *single = path_join(dir, "model.safetensors");
    char *index = path_join(dir, "model.safetensors.index.json");
    if (!single || !index || set_new(&set)) {
        rc = st_fail(RCD_ENOMEM, err, errlen, "%s: out of memory", dir);
        goto cleanup;
    }
    /* Same preference as transformers: a single file wins over an index. */
    if (access(single, F_OK) == 0) {
        rc = load_file(set, single, err, errlen);
        if (!rc) rc = finish_set(set, err, errlen);
    } else if (access(index, F_OK) == 0) {
        rc = open_index(set, dir, index, err, errlen);
    } else {
        rc = st_fail(RCD_ENOTFOUND, err, errlen,
                     "%s: neither model.safetensors nor model.safetensors.index.json found", dir);
    }
    if (!rc) {
        *out = set;
        set = NULL;
    }

cleanup:
    wrk_st_close(set);
    free(single);
    free(index);
    return rc;
}

/* ---- lookups ---- */

size_t wrk_st_count(const wrk_st_set_t *set)
{
    return set ? set->n : 0;
}

const wrk_st_tensor_t *wrk_st_at(const wrk_st_set_t *set, size_t i)
{
    return set && i < set->n ? &set->ents[i].t : NULL;
}

static st_ent_t *find_ent(const wrk_st_set_t *set, const char *name)
{
    if (!set || !name) return NULL;
    size_t lo = 0, hi = set->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, set->ents[mid].t.name);
        if (c == 0) return &set->ents[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const wrk_st_tensor_t *wrk_st_find(const wrk_st_set_t *set, const char *name)
{
    st_ent_t *e = find_ent(set, name);
    return e ? &e->t : NULL;
}

const wrk_st_tensor_t *wrk_st_take(wrk_st_set_t *set, const char *name)
{
    st_ent_t *e = find_ent(set, name);
    if (!e) return NULL;
    e->used = true;
    return &e->t;
}

const wrk_st_tensor_t *wrk_st_first_unused(const wrk_st_set_t *set)
{
    for (size_t i = 0; set && i < set->n; i++)
        if (!set->ents[i].used) return &set->ents[i].t;
    return NULL;
}

size_t wrk_st_unused_count(const wrk_st_set_t *set)
{
    size_t n = 0;
    for (size_t i = 0; set && i < set->n; i++)
        n += !set->ents[i].used;
    return n;
}

const char *wrk_st_metadata(const wrk_st_set_t *set, const char *key)
{
    if (!set || !key || !set->nmeta) return NULL;
    st_kv_t probe = {.key = (char *)key};
    const st_kv_t *kv = bsearch(&probe, set->meta, set->nmeta, sizeof *set->meta, cmp_kv);
    return kv ? kv->val : NULL;
}

/* ---- half conversions ---- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float wrk_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t wrk_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0; /* NaN, as torch writes it */
    u += 0x7FFFu + ((u >> 16) & 1u); /* ties go to the even result; overflow carries to inf */
    return (uint16_t)(u >> 16);
}

float wrk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | mant << 13); /* inf, NaN payload */
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);
        /* Subnormal: mant * 2^-24 is exact in f32. */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | (exp + 112u) << 23 | mant << 13);
}

uint16_t wrk_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    u &= 0x7FFFFFFFu;
    if (u > 0x7F800000u) return sign | 0x7E00u | (uint16_t)((u >> 13) & 0x3FFu); /* quiet NaN */
    if (u >= 0x477FF000u) return sign | 0x7C00u; /* >= 65520 rounds to inf (and inf itself) */
    if (u >= 0x38800000u) {                      /* normal in f16 */
        /* Rebias the exponent (127 -> 15), add the rounding bias with ties to even. */
        u += 0xC8000FFFu + ((u >> 13) & 1u);
        return sign | (uint16_t)(u >> 13);
    }
    uint32_t exp = u >> 23;
    if (exp < 102) return sign; /* below half the smallest subnormal (2^-25): zero */
    uint32_t mant = (u & 0x7FFFFFu) | 0x800000u, shift = 126 - exp; /* 14..24 */
    uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++; /* may round up to the smallest normal */
    return sign | (uint16_t)r;
}
