/* statestore: checkpoint extension sections (ckpt_ext.h has the layout). */
#include "statestore/ckpt_ext.h"

#include <string.h>

#include "common/rcd_error.h"
#include "statestore/ckpt_le.h"

static uint64_t pad8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

/* The state-size rule (the same as ckpt_payload_ok for a non-empty state). */
static bool state_ok(uint64_t n, size_t state_bytes, size_t kv_bpt)
{
    if (n == state_bytes) return true;
    return kv_bpt > 0 && n > state_bytes && (n - state_bytes) % kv_bpt == 0;
}

static bool elem_ok(uint32_t e)
{
    return e == 1 || e == 2 || e == 4 || e == 8;
}

bool ckpt_ext_name_ok(const char *name)
{
    size_t n = strnlen(name, CKPT_EXT_NAME_MAX + 1);
    if (n == 0 || n > CKPT_EXT_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

const ckpt_ext_sec_t *ckpt_ext_find(const ckpt_ext_t *ext, const char *name)
{
    for (int i = 0; i < ext->n; i++)
        if (!strcmp(ext->sec[i].name, name)) return &ext->sec[i];
    return NULL;
}

int ckpt_ext_split(const void *blob, size_t len, size_t state_bytes, size_t kv_bpt,
                   size_t *state_len, ckpt_ext_t *ext, char *err, size_t errlen)
{
    const uint8_t *b = blob;
    memset(ext, 0, sizeof(*ext));
    *state_len = len;
    if (len == 0) return 0;
    if (len <= state_bytes || len < CKPT_EXT_TRAILER ||
        memcmp(b + len - 8, CKPT_EXT_MAGIC, 8) != 0) { /* no sections: the state alone */
        if (!state_ok(len, state_bytes, kv_bpt))
            return rcd_fail(RCD_ECORRUPT, err, errlen,
                            "state is %zu bytes, the model's is %zu + n x %zu (KV per position)",
                            len, state_bytes, kv_bpt);
        return 0;
    }
    const uint8_t *t = b + len - CKPT_EXT_TRAILER;
    uint32_t n = get32(t), ver = get32(t + 4);
    uint64_t region = get64(t + 8);
    if (ver != CKPT_EXT_VERSION)
        return rcd_fail(RCD_ECORRUPT, err, errlen,
                        "extension sections: version %u, this build "
                        "reads %d",
                        ver, CKPT_EXT_VERSION);
    if (n < 1 || n > CKPT_EXT_MAX)
        return rcd_fail(RCD_ECORRUPT, err, errlen, "extension sections: count %u out of range", n);
    uint64_t meta = (uint64_t)n * CKPT_EXT_DIRREC + CKPT_EXT_TRAILER;
    if (region < meta || region > len - state_bytes || region % 8)
        return rcd_fail(RCD_ECORRUPT, err, errlen,
                        "extension sections: region of %llu bytes does not fit a %zu-byte payload",
                        (unsigned long long)region, len);
    size_t sl = len - (size_t)region;
    if (!state_ok(sl, state_bytes, kv_bpt))
        return rcd_fail(RCD_ECORRUPT, err, errlen,
                        "state part is %zu bytes, the model's is %zu + n x %zu (KV per position)",
                        sl, state_bytes, kv_bpt);
    const uint8_t *r = b + sl, *dir = b + len - meta;
    uint64_t data_bytes = region - meta, off = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *d = dir + (size_t)i * CKPT_EXT_DIRREC;
        ckpt_ext_sec_t *s = &ext->sec[i];
        if (memchr(d, 0, CKPT_EXT_NAME_MAX + 1) == NULL) goto bad_dir;
        memcpy(s->name, d, CKPT_EXT_NAME_MAX + 1);
        for (size_t k = strlen(s->name); k <= CKPT_EXT_NAME_MAX; k++)
            if (d[k]) goto bad_dir; /* NUL-padded */
        uint64_t so = get64(d + 24), sb = get64(d + 32);
        s->elem = get32(d + 40);
        if (!ckpt_ext_name_ok(s->name) || get32(d + 44) != 0 || !elem_ok(s->elem) || so != off ||
            sb > data_bytes - off || sb % s->elem || pad8(sb) > data_bytes - off)
            goto bad_dir;
        for (uint32_t k = 0; k < i; k++)
            if (!strcmp(ext->sec[k].name, s->name)) goto bad_dir;
        for (uint64_t p = so + sb; p < so + pad8(sb); p++)
            if (r[p]) goto bad_dir; /* padding is zero */
        s->data = r + so;
        s->bytes = sb;
        off = so + pad8(sb);
    }
    if (off != data_bytes) goto bad_dir;
    ext->n = (int)n;
    ext->region_bytes = region;
    *state_len = sl;
    return 0;
bad_dir:
    memset(ext, 0, sizeof(*ext));
    *state_len = len;
    return rcd_fail(RCD_ECORRUPT, err, errlen, "extension sections: bad directory");
}

size_t ckpt_ext_size(const ckpt_ext_sec_t *secs, int n)
{
    if (n == 0) return 0;
    if (n < 0 || n > CKPT_EXT_MAX || !secs) return SIZE_MAX;
    uint64_t total = (uint64_t)n * CKPT_EXT_DIRREC + CKPT_EXT_TRAILER;
    for (int i = 0; i < n; i++) {
        if (!ckpt_ext_name_ok(secs[i].name) || !elem_ok(secs[i].elem) ||
            secs[i].bytes % secs[i].elem || (secs[i].bytes && !secs[i].data) ||
            secs[i].bytes > SIZE_MAX / 2)
            return SIZE_MAX;
        for (int k = 0; k < i; k++)
            if (!strcmp(secs[k].name, secs[i].name)) return SIZE_MAX;
        total += pad8(secs[i].bytes);
        if (total > SIZE_MAX / 2) return SIZE_MAX;
    }
    return (size_t)total;
}

int ckpt_ext_write(void *dst, size_t cap, const ckpt_ext_sec_t *secs, int n, size_t *written)
{
    *written = 0;
    size_t total = ckpt_ext_size(secs, n);
    if (total == SIZE_MAX) return RCD_EINVAL;
    if (total == 0) return 0;
    if (total > cap) return RCD_ETOOBIG;
    uint8_t *r = dst, *dir = r + total - (size_t)n * CKPT_EXT_DIRREC - CKPT_EXT_TRAILER;
    uint64_t off = 0;
    memset(dir, 0, (size_t)n * CKPT_EXT_DIRREC);
    for (int i = 0; i < n; i++) {
        if (secs[i].bytes) memcpy(r + off, secs[i].data, (size_t)secs[i].bytes);
        memset(r + off + secs[i].bytes, 0, (size_t)(pad8(secs[i].bytes) - secs[i].bytes));
        uint8_t *d = dir + (size_t)i * CKPT_EXT_DIRREC;
        memcpy(d, secs[i].name, strlen(secs[i].name));
        put64(d + 24, off);
        put64(d + 32, secs[i].bytes);
        put32(d + 40, secs[i].elem);
        off += pad8(secs[i].bytes);
    }
    uint8_t *t = r + total - CKPT_EXT_TRAILER;
    put32(t, (uint32_t)n);
    put32(t + 4, CKPT_EXT_VERSION);
    put64(t + 8, total);
    memcpy(t + 16, CKPT_EXT_MAGIC, 8);
    *written = total;
    return 0;
}
