/* statestore: the checkpoint format (encode, parse, verify) and the blocking file operations
 * behind it — crash-safe write, verified read, quarantine, scan of a session's versions. */
#include "statestore/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "statestore/ckpt_le.h"

/* ---- metadata --------------------------------------------------------------------------- */

int ckpt_meta_pack(const store_meta_t *meta, int n_meta, store_meta_t **out)
{
    *out = NULL;
    if (n_meta == 0) return 0;
    if (n_meta < 0 || n_meta > STORE_META_MAX || !meta) return RCD_EINVAL;
    size_t bytes = 0;
    for (int i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value || !meta[i].key[0]) return RCD_EINVAL;
        bytes += strlen(meta[i].key) + strlen(meta[i].value) + 2;
    }
    if (bytes > STORE_META_BYTES) return RCD_ETOOBIG;
    store_meta_t *blk = malloc(sizeof(*blk) * (size_t)n_meta + bytes);
    if (!blk) return RCD_ENOMEM;
    char *p = (char *)(blk + n_meta);
    for (int i = 0; i < n_meta; i++) {
        size_t kl = strlen(meta[i].key) + 1, vl = strlen(meta[i].value) + 1;
        memcpy(p, meta[i].key, kl);
        blk[i].key = p;
        p += kl;
        memcpy(p, meta[i].value, vl);
        blk[i].value = p;
        p += vl;
    }
    *out = blk;
    return 0;
}

bool ckpt_owner_ok(const char *owner, size_t len)
{
    if (len == 0 || len > STORE_OWNER_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)owner[i] < 0x20 || owner[i] == 0x7f) return false;
    return true;
}

/* The reserved pairs a header adds to its metadata: count and bytes ("key\0value\0"). */
static void reserved_size(const char *owner, uint32_t ttl_s, int *n, size_t *bytes)
{
    char num[16];
    *n = 0;
    *bytes = 0;
    if (owner && owner[0]) {
        (*n)++;
        *bytes += sizeof(CKPT_KEY_OWNER) + strlen(owner) + 1;
    }
    if (ttl_s) {
        (*n)++;
        *bytes += sizeof(CKPT_KEY_TTL) + (size_t)snprintf(num, sizeof(num), "%u", ttl_s) + 1;
    }
}

int ckpt_meta_check(const store_meta_t *meta, int n_meta, const char *owner, uint32_t ttl_s)
{
    if (n_meta < 0 || (n_meta && !meta)) return RCD_EINVAL;
    if (owner && owner[0] && !ckpt_owner_ok(owner, strlen(owner))) return RCD_EINVAL;
    int n;
    size_t bytes;
    reserved_size(owner, ttl_s, &n, &bytes);
    for (int i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value || !meta[i].key[0]) return RCD_EINVAL;
        if (!strncmp(meta[i].key, CKPT_KEY_PREFIX, strlen(CKPT_KEY_PREFIX))) return RCD_EINVAL;
        bytes += strlen(meta[i].key) + strlen(meta[i].value) + 2;
    }
    if (n_meta + n > STORE_META_MAX || bytes > STORE_META_BYTES) return RCD_ETOOBIG;
    return 0;
}

/* ---- encode / parse --------------------------------------------------------------------- */

int ckpt_encode(const ckpt_hdr_t *h, uint8_t **out, size_t *len)
{
    *out = NULL;
    size_t id_len = strlen(h->id), par_len = strlen(h->parent), meta_bytes;
    int n_res;
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%u", h->ttl_s);
    reserved_size(h->owner, h->ttl_s, &n_res, &meta_bytes);
    for (int i = 0; i < h->n_meta; i++)
        meta_bytes += strlen(h->meta[i].key) + strlen(h->meta[i].value) + 2;
    if (h->n_tensors < 0 || h->n_tensors > CKPT_MAX_TENSORS || id_len > STORE_SID_MAX ||
        par_len > STORE_SID_MAX || meta_bytes > STORE_META_BYTES || h->n_meta < 0 ||
        h->n_meta + n_res > STORE_META_MAX)
        return RCD_EINVAL;
    size_t n =
        CKPT_FIXED + id_len + par_len + (size_t)h->n_tensors * CKPT_TENSOR_REC + meta_bytes + 8;
    uint8_t *b = calloc(1, n);
    if (!b) return RCD_ENOMEM;
    memcpy(b, CKPT_MAGIC, 8); /* with its NUL */
    put32(b + 8, CKPT_FORMAT);
    put32(b + 12, (uint32_t)n);
    put64(b + 16, h->fingerprint);
    put64(b + 24, h->version);
    put64(b + 32, h->n_tokens);
    put64(b + 40, (uint64_t)h->created_ms);
    put64(b + 48, (uint64_t)h->updated_ms);
    put64(b + 56, h->payload_bytes);
    put64(b + 64, h->payload_hash);
    put32(b + 72, h->dtype);
    put32(b + 76, (uint32_t)h->n_tensors);
    put32(b + 80, (uint32_t)id_len);
    put32(b + 84, (uint32_t)par_len);
    put32(b + 88, (uint32_t)(h->n_meta + n_res));
    put32(b + 92, (uint32_t)meta_bytes);
    uint8_t *p = b + CKPT_FIXED;
    memcpy(p, h->id, id_len);
    p += id_len;
    memcpy(p, h->parent, par_len);
    p += par_len;
    for (int i = 0; i < h->n_tensors; i++) {
        const store_tensor_t *t = &h->tensors[i];
        size_t nl = strnlen(t->name, sizeof(t->name) - 1);
        memcpy(p, t->name, nl);
        put64(p + 48, t->offset);
        put64(p + 56, t->bytes);
        put32(p + 64, (uint32_t)t->ndim);
        for (int d = 0; d < 3; d++)
            put64(p + 72 + 8 * d, (uint64_t)t->shape[d]);
        p += CKPT_TENSOR_REC;
    }
    for (int i = 0; i < h->n_meta + n_res; i++) {
        const char *k, *v;
        if (i < h->n_meta) {
            k = h->meta[i].key;
            v = h->meta[i].value;
        } else if (i == h->n_meta && h->owner[0]) {
            k = CKPT_KEY_OWNER;
            v = h->owner;
        } else {
            k = CKPT_KEY_TTL;
            v = ttl;
        }
        size_t kl = strlen(k) + 1, vl = strlen(v) + 1;
        memcpy(p, k, kl);
        p += kl;
        memcpy(p, v, vl);
        p += vl;
    }
    put64(p, XXH3_64bits(b, n - 8));
    *out = b;
    *len = n;
    return 0;
}

int64_t ckpt_header_len(const uint8_t *buf, size_t len, char *err, size_t errlen)
{
    if (len < CKPT_FIXED)
        return rcd_fail(RCD_ECORRUPT, err, errlen, "truncated: %zu bytes, header needs %d", len,
                        CKPT_FIXED);
    if (memcmp(buf, CKPT_MAGIC, 8) != 0)
        return rcd_fail(RCD_ECORRUPT, err, errlen, "not a recurd checkpoint (bad magic)");
    uint32_t fmt = get32(buf + 8), n = get32(buf + 12);
    if (fmt != CKPT_FORMAT)
        return rcd_fail(RCD_ECORRUPT, err, errlen, "checkpoint format %u, this build reads %d", fmt,
                        CKPT_FORMAT);
    if (n < CKPT_FIXED + 8 || n > CKPT_MAX_HEADER)
        return rcd_fail(RCD_ECORRUPT, err, errlen, "header length %u out of range", n);
    return n;
}

static bool id_ok(const uint8_t *p, size_t n)
{
    char tmp[STORE_SID_MAX + 1];
    if (n > STORE_SID_MAX) return false;
    memcpy(tmp, p, n);
    tmp[n] = 0;
    return store_check_sid(tmp) == 0;
}

/* A recorded TTL: canonical decimal, 1..UINT32_MAX. */
static bool parse_ttl(const char *v, uint32_t *out)
{
    size_t n = strlen(v);
    if (n == 0 || n > 10 || v[0] == '0') return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return false;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (x > UINT32_MAX) return false;
    *out = (uint32_t)x;
    return true;
}

int ckpt_parse(const uint8_t *buf, size_t len, ckpt_hdr_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int64_t hl = ckpt_header_len(buf, len, err, errlen);
    if (hl < 0) return (int)hl;
    size_t n = (size_t)hl;
    if (len < n)
        return rcd_fail(RCD_ECORRUPT, err, errlen, "truncated header: %zu of %zu bytes", len, n);
    if (XXH3_64bits(buf, n - 8) != get64(buf + n - 8))
        return rcd_fail(RCD_ECORRUPT, err, errlen, "header checksum mismatch");
    /* The hash matched, but a checkpoint is outside data: every field is still checked. */
    uint32_t n_t = get32(buf + 76), id_len = get32(buf + 80), par_len = get32(buf + 84),
             n_meta = get32(buf + 88), meta_bytes = get32(buf + 92);
    if (n_t > CKPT_MAX_TENSORS || id_len == 0 || id_len > STORE_SID_MAX ||
        par_len > STORE_SID_MAX || n_meta > STORE_META_MAX || meta_bytes > STORE_META_BYTES ||
        (uint64_t)CKPT_FIXED + id_len + par_len + (uint64_t)n_t * CKPT_TENSOR_REC + meta_bytes +
                8 !=
            n)
        return rcd_fail(RCD_ECORRUPT, err, errlen, "header field lengths are inconsistent");
    out->fingerprint = get64(buf + 16);
    out->version = get64(buf + 24);
    out->n_tokens = get64(buf + 32);
    out->created_ms = (int64_t)get64(buf + 40);
    out->updated_ms = (int64_t)get64(buf + 48);
    out->payload_bytes = get64(buf + 56);
    out->payload_hash = get64(buf + 64);
    out->dtype = get32(buf + 72);
    const uint8_t *p = buf + CKPT_FIXED;
    if (!id_ok(p, id_len) || (par_len && !id_ok(p + id_len, par_len)))
        return rcd_fail(RCD_ECORRUPT, err, errlen, "bad session id in header");
    memcpy(out->id, p, id_len);
    memcpy(out->parent, p + id_len, par_len);
    p += id_len + par_len;
    if (n_t) {
        out->tensors = calloc(n_t, sizeof(*out->tensors));
        if (!out->tensors) return RCD_ENOMEM;
    }
    out->n_tensors = (int)n_t;
    for (uint32_t i = 0; i < n_t; i++, p += CKPT_TENSOR_REC) {
        store_tensor_t *t = &out->tensors[i];
        if (memchr(p, 0, 48) == NULL) goto bad_tensor;
        memcpy(t->name, p, 48);
        t->offset = get64(p + 48);
        t->bytes = get64(p + 56);
        uint32_t nd = get32(p + 64);
        /* The layout describes the state; a version-0 record has none yet (payload 0). */
        if (nd > 3 || (out->payload_bytes && (t->offset > out->payload_bytes ||
                                              t->bytes > out->payload_bytes - t->offset)))
            goto bad_tensor;
        t->ndim = (int)nd;
        for (int d = 0; d < 3; d++)
            t->shape[d] = (int64_t)get64(p + 72 + 8 * d);
        /* the extension region: once, non-empty, ending exactly at the payload's end */
        if (!strcmp(t->name, CKPT_EXT_RECORD)) {
            if (out->ext_bytes || !out->payload_bytes ||
                t->bytes < CKPT_EXT_DIRREC + CKPT_EXT_TRAILER ||
                t->offset + t->bytes != out->payload_bytes)
                goto bad_tensor;
            out->ext_bytes = t->bytes;
        }
    }
    /* metadata: exactly n_meta "key\0value\0" pairs filling meta_bytes, keys non-empty */
    if (n_meta) {
        store_meta_t tmp[STORE_META_MAX];
        const char *q = (const char *)p, *end = q + meta_bytes;
        for (uint32_t i = 0; i < n_meta; i++) {
            for (int kv = 0; kv < 2; kv++) {
                const char *z = memchr(q, 0, (size_t)(end - q));
                if (!z || (kv == 0 && z == q)) goto bad_meta;
                if (kv == 0)
                    tmp[i].key = q;
                else
                    tmp[i].value = q;
                q = z + 1;
            }
        }
        if (q != end) goto bad_meta;
        /* Owner and TTL leave the caller-visible metadata (see ckpt.h). */
        int n_user = 0;
        bool has_owner = false;
        for (uint32_t i = 0; i < n_meta; i++) {
            if (!strcmp(tmp[i].key, CKPT_KEY_OWNER)) {
                size_t ol = strlen(tmp[i].value);
                if (has_owner || !ckpt_owner_ok(tmp[i].value, ol)) goto bad_meta;
                memcpy(out->owner, tmp[i].value, ol + 1);
                has_owner = true;
            } else if (!strcmp(tmp[i].key, CKPT_KEY_TTL)) {
                if (out->ttl_s || !parse_ttl(tmp[i].value, &out->ttl_s)) goto bad_meta;
            } else {
                tmp[n_user++] = tmp[i];
            }
        }
        int rc = ckpt_meta_pack(tmp, n_user, &out->meta);
        if (rc) {
            ckpt_hdr_free(out);
            return rc;
        }
        out->n_meta = n_user;
    } else if (meta_bytes) {
        goto bad_meta;
    }
    return 0;
bad_tensor:
    ckpt_hdr_free(out);
    return rcd_fail(RCD_ECORRUPT, err, errlen, "bad tensor record in header");
bad_meta:
    ckpt_hdr_free(out);
    return rcd_fail(RCD_ECORRUPT, err, errlen, "bad metadata block in header");
}

void ckpt_hdr_free(ckpt_hdr_t *h)
{
    if (!h) return;
    free(h->tensors);
    free(h->meta);
    h->tensors = NULL;
    h->meta = NULL;
    h->n_tensors = h->n_meta = 0;
}

/* ---- files ------------------------------------------------------------------------------ */

/* dir/s_<id>, or RCD_ERANGE when it would not fit a path. */
static int sess_dir(char buf[RCD_PATH_MAX], const char *dir, const char *id)
{
    return rcd_path_fmt(buf, RCD_PATH_MAX, "%s/s_%s", dir, id);
}

/* dir/s_<id>/<version>.ckpt<suffix>, or RCD_ERANGE when it would not fit a path. */
static int ver_path(char buf[RCD_PATH_MAX], const char *dir, const char *id, uint64_t v,
                    const char *suffix)
{
    return rcd_path_fmt(buf, RCD_PATH_MAX, "%s/s_%s/%020" PRIu64 ".ckpt%s", dir, id, v, suffix);
}

static int too_long(char *err, size_t errlen, const char *dir, const char *id)
{
    return rcd_fail(RCD_ERANGE, err, errlen,
                    "checkpoint path of session '%s' under %s is longer than %d bytes", id, dir,
                    RCD_PATH_MAX - 1);
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static ssize_t read_all(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Parses "<20 digits>.ckpt" into a version. */
static bool parse_ver(const char *name, uint64_t *v)
{
    if (strlen(name) != 25 || strcmp(name + 20, ".ckpt") != 0) return false;
    uint64_t x = 0;
    for (int i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9') return false;
        x = x * 10 + (uint64_t)(name[i] - '0');
    }
    *v = x;
    return true;
}

static int cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Versions of a session on disk, newest first (malloc'd); removes stale *.tmp files. */
static int list_versions(const char *dir, const char *id, uint64_t **out, size_t *n_out)
{
    char path[RCD_PATH_MAX];
    *out = NULL;
    *n_out = 0;
    if (sess_dir(path, dir, id)) return RCD_ERANGE;
    DIR *d = opendir(path);
    if (!d) return errno == ENOENT ? RCD_ENOTFOUND : RCD_EIO;
    uint64_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        uint64_t x;
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".tmp")) {
            unlinkat(dirfd(d), e->d_name, 0); /* a write that never got renamed */
            continue;
        }
        if (!parse_ver(e->d_name, &x)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            uint64_t *nv = realloc(v, cap * sizeof(*v));
            if (!nv) {
                rc = RCD_ENOMEM;
                break;
            }
            v = nv;
        }
        v[n++] = x;
    }
    closedir(d);
    if (rc) {
        free(v);
        return rc;
    }
    if (n > 1) qsort(v, n, sizeof(*v), cmp_desc); /* v is NULL when n is 0 */
    *out = v;
    *n_out = n;
    return 0;
}

static atomic_uint g_tmp_seq;

int (*ckpt__syncfs)(int fd) = syncfs;

int ckpt_stage(const char *dir, const ckpt_hdr_t *h, const void *payload, bool sync,
               ckpt_staged_t *st, char *err, size_t errlen)
{
    uint8_t *hdr = NULL;
    size_t hlen = 0;
    int fd = -1, rc = ckpt_encode(h, &hdr, &hlen);
    memset(st, 0, sizeof(*st));
    if (rc) return rcd_fail(rc, err, errlen, "cannot encode checkpoint header");
    if (sess_dir(st->sdir, dir, h->id) || ver_path(st->final, dir, h->id, h->version, "") ||
        rcd_path_fmt(st->tmp, sizeof(st->tmp), "%s.%u.tmp", st->final,
                     atomic_fetch_add(&g_tmp_seq, 1))) {
        rc = too_long(err, errlen, dir, h->id);
        st->tmp[0] = 0;
        goto cleanup;
    }
    if (mkdir(st->sdir, 0755) == 0) {
        st->new_dir = true;
        /* unsynced (group commit): the batch's syncfs covers the new entry */
        if (sync && fsync_dir(dir) != 0) {
            rc = rcd_fail(rcd_errno_code(errno), err, errlen, "fsync %s: %s", dir, strerror(errno));
            goto cleanup;
        }
    } else if (errno != EEXIST) {
        rc =
            rcd_fail(rcd_errno_code(errno), err, errlen, "mkdir %s: %s", st->sdir, strerror(errno));
        goto cleanup;
    }
    fd = open(st->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc =
            rcd_fail(rcd_errno_code(errno), err, errlen, "create %s: %s", st->tmp, strerror(errno));
        st->tmp[0] = 0;
        goto cleanup;
    }
    if (write_all(fd, hdr, hlen) ||
        (h->payload_bytes && write_all(fd, payload, h->payload_bytes)) || (sync && fsync(fd))) {
        rc = rcd_fail(rcd_errno_code(errno), err, errlen, "write %s: %s", st->tmp, strerror(errno));
        goto cleanup;
    }
    /* Group commit: start the writeback now, so that it overlaps the batch's other writes
     * (the group's syncfs waits for it; an error surfaces there). */
    if (!sync) sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    int r = close(fd);
    fd = -1;
    if (r != 0)
        rc = rcd_fail(rcd_errno_code(errno), err, errlen, "close %s: %s", st->tmp, strerror(errno));
cleanup:
    if (fd >= 0) close(fd);
    if (rc && st->tmp[0]) unlink(st->tmp);
    if (rc) st->tmp[0] = 0;
    free(hdr);
    return rc;
}

int ckpt_publish(ckpt_staged_t *st, char *err, size_t errlen)
{
    if (rename(st->tmp, st->final) != 0) {
        int rc =
            rcd_fail(rcd_errno_code(errno), err, errlen, "rename %s: %s", st->tmp, strerror(errno));
        unlink(st->tmp);
        st->tmp[0] = 0;
        return rc;
    }
    st->published = true;
    st->tmp[0] = 0;
    return 0;
}

void ckpt_unstage(ckpt_staged_t *st)
{
    if (st->published)
        unlink(st->final);
    else if (st->tmp[0])
        unlink(st->tmp);
    if (st->new_dir) rmdir(st->sdir); /* only if nothing else is in it */
    st->tmp[0] = 0;
    st->published = false;
}

void ckpt_prune(const char *dir, const char *id, int keep)
{
    uint64_t *v;
    size_t n;
    if (keep <= 0 || list_versions(dir, id, &v, &n) != 0) return;
    for (size_t i = (size_t)keep; i < n; i++) {
        char old[RCD_PATH_MAX];
        if (ver_path(old, dir, id, v[i], "") == 0) unlink(old);
    }
    free(v);
}

int ckpt_write(const char *dir, const ckpt_hdr_t *h, const void *payload, int keep, char *err,
               size_t errlen)
{
    ckpt_staged_t st;
    int rc = ckpt_stage(dir, h, payload, true, &st, err, errlen);
    if (!rc) rc = ckpt_publish(&st, err, errlen);
    if (!rc && fsync_dir(st.sdir) != 0)
        rc = rcd_fail(rcd_errno_code(errno), err, errlen, "fsync %s: %s", st.sdir, strerror(errno));
    /* durable; now drop versions beyond the newest `keep` (best effort) */
    if (!rc) ckpt_prune(dir, h->id, keep);
    return rc;
}

bool ckpt_payload_ok(uint64_t payload_bytes, size_t state_bytes, size_t kv_bpt)
{
    if (payload_bytes == 0 || payload_bytes == state_bytes) return true;
    return kv_bpt > 0 && payload_bytes > state_bytes && (payload_bytes - state_bytes) % kv_bpt == 0;
}

bool ckpt_hdr_payload_ok(const ckpt_hdr_t *h, size_t state_bytes, size_t kv_bpt)
{
    if (h->payload_bytes == 0) return h->ext_bytes == 0;
    return h->ext_bytes < h->payload_bytes &&
           ckpt_payload_ok(h->payload_bytes - h->ext_bytes, state_bytes, kv_bpt);
}

int ckpt_payload_check(const ckpt_hdr_t *h, const void *payload, size_t state_bytes, size_t kv_bpt,
                       char *err, size_t errlen)
{
    size_t sl;
    ckpt_ext_t ext;
    int rc = ckpt_ext_split(payload, (size_t)h->payload_bytes, state_bytes, kv_bpt, &sl, &ext, err,
                            errlen);
    if (rc) return rc;
    if (ext.region_bytes != h->ext_bytes)
        return rcd_fail(RCD_ECORRUPT, err, errlen,
                        "extension sections: %llu bytes in the payload, the header says %llu",
                        (unsigned long long)ext.region_bytes, (unsigned long long)h->ext_bytes);
    return 0;
}

/* Reads n bytes into dst and checks their XXH3-64, a chunk at a time: each chunk is hashed
 * while it is still in the CPU cache, instead of a second pass over the whole state. */
static int read_payload(int fd, uint8_t *dst, size_t n, uint64_t hash, const char *path, char *err,
                        size_t errlen)
{
    enum { CHUNK = 256 << 10 };
    XXH3_state_t *hs = XXH3_createState();
    int rc = 0;
    if (!hs || XXH3_64bits_reset(hs) != XXH_OK) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "out of memory");
        goto cleanup;
    }
    for (size_t off = 0; off < n;) {
        size_t want = n - off < CHUNK ? n - off : CHUNK;
        ssize_t got = read_all(fd, dst + off, want);
        if (got != (ssize_t)want) {
            rc = got < 0 ? rcd_fail(RCD_EIO, err, errlen, "read %s: %s", path, strerror(errno))
                         : rcd_fail(RCD_ECORRUPT, err, errlen, "%s: payload truncated", path);
            goto cleanup;
        }
        XXH3_64bits_update(hs, dst + off, want);
        off += want;
    }
    if (XXH3_64bits_digest(hs) != hash)
        rc = rcd_fail(RCD_ECORRUPT, err, errlen, "%s: payload checksum mismatch", path);
cleanup:
    XXH3_freeState(hs);
    return rc;
}

int ckpt_read(const char *dir, const char *id, uint64_t version, uint64_t fingerprint,
              size_t state_bytes, ckpt_hdr_t *h, void *payload, char *err, size_t errlen)
{
    return ckpt_read_v(dir, id, version, fingerprint, state_bytes, 0, h, payload, state_bytes, err,
                       errlen);
}

int ckpt_read_v(const char *dir, const char *id, uint64_t version, uint64_t fingerprint,
                size_t state_bytes, size_t kv_bpt, ckpt_hdr_t *h, void *payload, size_t cap,
                char *err, size_t errlen)
{
    char path[RCD_PATH_MAX], why[200];
    uint8_t fixed[CKPT_FIXED], *hb = NULL;
    int rc = 0;
    memset(h, 0, sizeof(*h));
    if (ver_path(path, dir, id, version, "")) return too_long(err, errlen, dir, id);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return rcd_fail(RCD_ENOTFOUND, err, errlen, "%s: no such file", path);
        return rcd_fail(RCD_EIO, err, errlen, "open %s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = rcd_fail(RCD_EIO, err, errlen, "stat %s: %s", path, strerror(errno));
        goto cleanup;
    }
    ssize_t got = read_all(fd, fixed, sizeof(fixed));
    int64_t hl = ckpt_header_len(fixed, got < 0 ? 0 : (size_t)got, why, sizeof(why));
    if (hl < 0) {
        rc = rcd_fail(RCD_ECORRUPT, err, errlen, "%s: %s", path, why);
        goto cleanup;
    }
    if (!(hb = malloc((size_t)hl))) {
        rc = RCD_ENOMEM;
        goto cleanup;
    }
    memcpy(hb, fixed, CKPT_FIXED);
    got = read_all(fd, hb + CKPT_FIXED, (size_t)hl - CKPT_FIXED);
    if (got < 0) {
        rc = rcd_fail(RCD_EIO, err, errlen, "read %s: %s", path, strerror(errno));
        goto cleanup;
    }
    if ((rc = ckpt_parse(hb, CKPT_FIXED + (size_t)got, h, why, sizeof(why)))) {
        rc = rcd_fail(rc, err, errlen, "%s: %s", path, why);
        goto cleanup;
    }
    if (strcmp(h->id, id) != 0 || h->version != version) {
        rc = rcd_fail(RCD_ECORRUPT, err, errlen, "%s: header names session '%s' version %" PRIu64,
                      path, h->id, h->version);
        goto cleanup;
    }
    if ((uint64_t)st.st_size != (uint64_t)hl + h->payload_bytes) {
        rc = rcd_fail(RCD_ECORRUPT, err, errlen,
                      "%s: truncated or padded: %lld bytes, header says %" PRIu64, path,
                      (long long)st.st_size, (uint64_t)hl + h->payload_bytes);
        goto cleanup;
    }
    if (h->fingerprint != fingerprint) {
        rc =
            rcd_fail(RCD_EMISMATCH, err, errlen,
                     "%s: written by model fingerprint %016" PRIx64 ", loaded model is %016" PRIx64,
                     path, h->fingerprint, fingerprint);
        goto cleanup;
    }
    if (h->payload_bytes != 0 &&
        (!ckpt_hdr_payload_ok(h, state_bytes, kv_bpt) || h->dtype != CKPT_DTYPE_F32)) {
        rc = rcd_fail(RCD_ECORRUPT, err, errlen,
                      "%s: payload is %" PRIu64 " bytes of dtype %u, the model's state is %zu f32"
                      " + n x %zu (KV per position)",
                      path, h->payload_bytes, h->dtype, state_bytes, kv_bpt);
        goto cleanup;
    }
    if (payload && h->payload_bytes) {
        if (h->payload_bytes > cap) {
            rc = rcd_fail(RCD_ECORRUPT, err, errlen,
                          "%s: payload is %" PRIu64 " bytes, the index says %zu", path,
                          h->payload_bytes, cap);
            goto cleanup;
        }
        if ((rc = read_payload(fd, payload, (size_t)h->payload_bytes, h->payload_hash, path, err,
                               errlen)))
            goto cleanup;
        if ((rc = ckpt_payload_check(h, payload, state_bytes, kv_bpt, why, sizeof(why)))) {
            rc = rcd_fail(rc, err, errlen, "%s: %s", path, why);
            goto cleanup;
        }
    }
cleanup:
    if (rc && rc != RCD_EMISMATCH) ckpt_hdr_free(h);
    free(hb);
    close(fd);
    return rc;
}

int ckpt_quarantine(const char *dir, const char *id, uint64_t version)
{
    char from[RCD_PATH_MAX], to[RCD_PATH_MAX], sdir[RCD_PATH_MAX];
    if (ver_path(from, dir, id, version, "") || ver_path(to, dir, id, version, ".corrupt") ||
        sess_dir(sdir, dir, id))
        return RCD_ERANGE;
    if (rename(from, to) != 0) return RCD_EIO;
    fsync_dir(sdir);
    return 0;
}

int ckpt_latest(const char *dir, const char *id, uint64_t below, uint64_t fingerprint,
                size_t state_bytes, ckpt_hdr_t *h, size_t *n_quarantined,
                void (*warn)(void *u, const char *id, const char *msg), void *warn_user)
{
    return ckpt_latest_v(dir, id, below, fingerprint, state_bytes, 0, h, n_quarantined, warn,
                         warn_user);
}

int ckpt_latest_v(const char *dir, const char *id, uint64_t below, uint64_t fingerprint,
                  size_t state_bytes, size_t kv_bpt, ckpt_hdr_t *h, size_t *n_quarantined,
                  void (*warn)(void *u, const char *id, const char *msg), void *warn_user)
{
    uint64_t *v;
    size_t n;
    int rc = list_versions(dir, id, &v, &n);
    if (rc) return rc;
    rc = RCD_ENOTFOUND;
    for (size_t i = 0; i < n; i++) {
        if (v[i] >= below) continue;
        char why[700];
        int r = ckpt_read_v(dir, id, v[i], fingerprint, state_bytes, kv_bpt, h, NULL, 0, why,
                            sizeof(why));
        if (r == 0 || r == RCD_EMISMATCH) {
            rc = r;
            break;
        }
        if (r == RCD_ECORRUPT) {
            ckpt_quarantine(dir, id, v[i]);
            if (n_quarantined) (*n_quarantined)++;
            if (warn) {
                char msg[800];
                snprintf(msg, sizeof(msg), "%s; quarantined as *.corrupt", why);
                warn(warn_user, id, msg);
            }
            continue;
        }
        rc = r;
        break;
    }
    free(v);
    return rc;
}

static atomic_uint g_trash_seq;

int ckpt_remove_session(const char *dir, const char *id, char *err, size_t errlen)
{
    char sdir[RCD_PATH_MAX], trash[RCD_PATH_MAX];
    if (sess_dir(sdir, dir, id) || rcd_path_fmt(trash, sizeof(trash), "%s/.trash-%d-%u", dir,
                                                (int)getpid(), atomic_fetch_add(&g_trash_seq, 1)))
        return too_long(err, errlen, dir, id);
    if (rename(sdir, trash) != 0) {
        if (errno == ENOENT) return 0; /* never written */
        return rcd_fail(RCD_EIO, err, errlen, "rename %s: %s", sdir, strerror(errno));
    }
    if (fsync_dir(dir) != 0)
        return rcd_fail(RCD_EIO, err, errlen, "fsync %s: %s", dir, strerror(errno));
    DIR *d = opendir(trash);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(trash);
    return 0;
}
