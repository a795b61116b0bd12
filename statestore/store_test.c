/* Unit tests of the session store on a real libuv loop: the memory-only store, and the disk
 * tier — durability across reopen, commit visibility only after the checkpoint is durable,
 * version pruning, host cache hits and evictions, corrupt and truncated checkpoints (fall back
 * to the previous version), another model's checkpoints, the dir lock, fork from disk. */
#include "statestore/store_test_util.h"

static void test_memory(void)
{
    store_t *s = open_store(NULL, FP, 0, 0);
    store_meta_t md[2] = {{"user", "ann"}, {"topic", "x"}};
    store_session_t rec = {0};
    res_t r = {0};
    CHECK(store_create(s, "a", md, 2, NULL, 100, &rec, done, &r) == 0);
    CHECK(r.calls == 0); /* never from inside the call */
    run();
    CHECK(r.calls == 1 && r.rc == 0);
    CHECK(rec.version == 0 && !rec.has_state && rec.n_meta == 2 && !strcmp(rec.meta[1].value, "x"));
    store_session_clear(&rec);
    CHECK(store_create(s, "a", NULL, 0, NULL, 100, NULL, done, &r) == RCD_EEXISTS);
    CHECK(store_create(s, "bad id", NULL, 0, NULL, 100, NULL, done, &r) == RCD_EINVAL);
    CHECK(store_create(s, "", NULL, 0, NULL, 100, NULL, done, &r) == RCD_EINVAL);
    unsigned char back[SB];
    uint64_t v = 99;
    CHECK(store_load(s, "a", back, &v, done, &r, NULL, 0) == RCD_EAGAIN && v == 0);
    CHECK(commit(s, "a", 1, 1, &r) == RCD_EMISMATCH);
    CHECK(commit(s, "a", 0, 1, &r) == 0 && r.version == 1);
    CHECK(store_load(s, "a", back, &v, done, &r, NULL, 0) == 0 && v == 1 && is_blob(back, 1));
    memset(&r, 0, sizeof(r));
    CHECK(store_fork(s, "a", "b", NULL, 0, NULL, 300, &rec, done, &r) == 0);
    run();
    CHECK(r.rc == 0 && rec.version == 1 && rec.n_tokens == 10 && rec.has_state);
    CHECK(!strcmp(rec.parent_id, "a") && rec.n_meta == 2);
    store_session_clear(&rec);
    CHECK(store_load(s, "b", back, &v, done, &r, NULL, 0) == 0 && is_blob(back, 1));
    CHECK(commit(s, "b", 1, 2, &r) == 0);
    CHECK(store_load(s, "a", back, &v, done, &r, NULL, 0) == 0 && is_blob(back, 1));
    CHECK(store_delete(s, "a", NULL, NULL) == 0);
    CHECK(store_get(s, "a", NULL) == RCD_ENOTFOUND && store_count(s) == 1);
    for (int i = 0; i < 7; i++) {
        char id[16];
        snprintf(id, sizeof(id), "m%d", i);
        CHECK(store_create(s, id, NULL, 0, NULL, 1, NULL, NULL, NULL) == (i < 7 ? 0 : RCD_ETOOBIG));
    }
    CHECK(store_create(s, "full", NULL, 0, NULL, 1, NULL, NULL, NULL) == RCD_ETOOBIG);
    run();
    store_close(s);
}

static void flip_byte(const char *dir, const char *id, uint64_t v, long from_end)
{
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_%s/%020llu.ckpt", dir, id,
                       (unsigned long long)v) == 0);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (!f) return;
    fseek(f, -from_end, SEEK_END);
    int c = fgetc(f);
    fseek(f, -from_end, SEEK_END);
    fputc(c ^ 0x10, f);
    fclose(f);
}

static void test_disk(void)
{
    char dir[] = "/tmp/store-test-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    store_t *s = open_store(dir, FP, 2 * SB, 2);
    res_t r = {0};
    store_stats_t st;
    store_meta_t md[1] = {{"owner", "bob"}};
    CHECK(store_create(s, "chat", md, 1, NULL, 100, NULL, done, &r) == 0);
    run();
    CHECK(r.rc == 0 && count_files(dir, "chat", ".ckpt") == 1);
    /* the version moves only when the checkpoint is durable */
    CHECK(store_commit(s, "chat", 0, blob(1), 7, 200, done, &r) == 0);
    store_session_t rec = {0};
    CHECK(store_get(s, "chat", &rec) == 0 && rec.version == 0);
    store_session_clear(&rec);
    CHECK(store_commit(s, "chat", 0, blob(9), 7, 200, done, &r) == RCD_EBUSY);
    CHECK(store_delete(s, "chat", NULL, NULL) == RCD_EBUSY);
    run();
    CHECK(r.rc == 0 && r.version == 1);
    CHECK(store_get(s, "chat", &rec) == 0 && rec.version == 1 && rec.n_tokens == 7);
    store_session_clear(&rec);
    CHECK(commit(s, "chat", 1, 2, &r) == 0 && commit(s, "chat", 2, 3, &r) == 0);
    CHECK(count_files(dir, "chat", ".ckpt") == 2); /* keep 2 */
    /* never committed */
    CHECK(store_create(s, "fresh", md, 1, NULL, 100, NULL, done, &r) == 0);
    run();
    store_close(s);

    /* reopen: record and states come back from disk */
    s = open_store(dir, FP, 2 * SB, 2);
    CHECK(store_get(s, "chat", &rec) == 0);
    CHECK(rec.version == 3 && rec.n_tokens == 27 && rec.has_state && rec.created_ms == 100);
    CHECK(rec.updated_ms == 503 && rec.n_meta == 1 && !strcmp(rec.meta[0].value, "bob"));
    CHECK(!rec.foreign);
    store_session_clear(&rec);
    CHECK(store_get(s, "fresh", &rec) == 0 && rec.version == 0 && !rec.has_state);
    store_session_clear(&rec);
    store_get_stats(s, &st);
    CHECK(st.quarantined == 0);
    CHECK(store_delete(s, "fresh", NULL, NULL) == 0);
    unsigned char back[SB];
    uint64_t v = 0;
    memset(&r, 0, sizeof(r));
    CHECK(store_load(s, "chat", back, &v, done, &r, NULL, 0) == STORE_PENDING);
    run();
    CHECK(r.calls == 1 && r.rc == 0 && r.version == 3 && is_blob(back, 3));
    /* a state read from disk is not cached (its turn commits the next one, which is) */
    memset(back, 0, sizeof(back));
    CHECK(store_load(s, "chat", back, &v, done, &r, NULL, 0) == STORE_PENDING);
    run();
    CHECK(r.calls == 2 && r.rc == 0 && is_blob(back, 3));
    /* host cache: budget of 2 states, the least recently used one is evicted */
    CHECK(store_create(s, "x", NULL, 0, NULL, 1, NULL, NULL, NULL) == 0);
    CHECK(store_create(s, "y", NULL, 0, NULL, 1, NULL, NULL, NULL) == 0);
    run();
    CHECK(commit(s, "x", 0, 4, &r) == 0 && commit(s, "y", 0, 5, &r) == 0);
    store_get_stats(s, &st);
    CHECK(st.cache_entries == 2 && st.cache_bytes == 2 * SB);
    CHECK(store_load(s, "y", back, &v, done, &r, NULL, 0) == 0 && is_blob(back, 5));
    CHECK(store_load(s, "chat", back, &v, done, &r, NULL, 0) == STORE_PENDING);
    run();
    CHECK(r.rc == 0 && is_blob(back, 3));
    store_get_stats(s, &st);
    CHECK(st.cache_entries == 2 && st.cache_bytes == 2 * SB);
    CHECK(store_create(s, "z", NULL, 0, NULL, 1, NULL, NULL, NULL) == 0);
    run();
    CHECK(commit(s, "z", 0, 7, &r) == 0); /* evicts x, the least recently used */
    CHECK(store_delete(s, "z", NULL, NULL) == 0);
    run();
    /* fork of a session whose state is only on disk (x was evicted by z) */
    memset(&r, 0, sizeof(r));
    CHECK(store_fork(s, "x", "x2", NULL, 0, NULL, 50, NULL, done, &r) == 0);
    run();
    CHECK(r.rc == 0 && r.version == 1);
    CHECK(store_load(s, "x2", back, &v, done, &r, NULL, 0) == 0 && is_blob(back, 4));
    /* delete is durable */
    memset(&r, 0, sizeof(r));
    CHECK(store_delete(s, "y", done, &r) == 0);
    run();
    CHECK(r.calls == 1 && r.rc == 0);
    /* the dir is locked while open */
    store_opts_t o2 = {.state_bytes = SB, .fingerprint = FP, .loop = &g_loop, .dir = dir};
    store_t *s2 = NULL;
    char err[400];
    CHECK(store_open(&o2, &s2, err, sizeof(err)) == RCD_EBUSY && strstr(err, "locked"));
    store_close(s);

    /* corrupt payload of the newest version: found on load, rolled back to the previous one */
    flip_byte(dir, "chat", 3, 10);
    s = open_store(dir, FP, 2 * SB, 2);
    CHECK(store_get(s, "y", NULL) == RCD_ENOTFOUND);
    CHECK(store_get(s, "x2", &rec) == 0 && rec.version == 1 && !strcmp(rec.parent_id, "x"));
    store_session_clear(&rec);
    memset(&r, 0, sizeof(r));
    CHECK(store_load(s, "chat", back, &v, done, &r, NULL, 0) == STORE_PENDING);
    run();
    CHECK(r.rc == RCD_ECORRUPT && r.version == 2);
    CHECK_MSG(strstr(r.msg, "checksum") && strstr(r.msg, "rolled back to version 2"), "%s", r.msg);
    CHECK(count_files(dir, "chat", ".corrupt") == 1);
    CHECK(store_get(s, "chat", &rec) == 0 && rec.version == 2 && rec.n_tokens == 17);
    store_session_clear(&rec);
    CHECK(store_load(s, "chat", back, &v, done, &r, NULL, 0) == STORE_PENDING);
    run();
    CHECK(r.rc == 0 && r.version == 2 && is_blob(back, 2));
    CHECK(commit(s, "chat", 2, 6, &r) == 0 && r.version == 3); /* the session goes on */
    store_close(s);

    /* truncated newest version: the scan quarantines it */
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_chat/%020d.ckpt", dir, 3) == 0);
    CHECK(truncate(path, 300) == 0);
    s = open_store(dir, FP, 2 * SB, 2);
    store_get_stats(s, &st);
    CHECK(st.quarantined == 1 && st.sessions == 3);
    CHECK(store_get(s, "chat", &rec) == 0 && rec.version == 2);
    store_session_clear(&rec);
    store_close(s);

    /* another model: listed as foreign, never loaded or written */
    s = open_store(dir, FP ^ 1, 2 * SB, 2);
    store_get_stats(s, &st);
    CHECK(st.foreign == 3 && st.foreign_fingerprint == FP);
    CHECK(store_get(s, "chat", &rec) == 0 && rec.foreign && rec.fingerprint == FP);
    store_session_clear(&rec);
    CHECK(store_load(s, "chat", back, &v, done, &r, err, sizeof(err)) == RCD_EMISMATCH);
    CHECK_MSG(strstr(err, "abcdef0123456789") && strstr(err, "abcdef0123456788"), "%s", err);
    CHECK(store_commit(s, "chat", 2, blob(1), 1, 1, done, &r) == RCD_EMISMATCH);
    CHECK(store_fork(s, "chat", "c2", NULL, 0, NULL, 1, NULL, done, &r) == RCD_EMISMATCH);
    CHECK(store_delete(s, "chat", NULL, NULL) == 0); /* it may still be deleted */
    run();
    store_close(s);
    s = open_store(dir, FP, 0, 2);
    CHECK(store_get(s, "chat", NULL) == RCD_ENOTFOUND && store_count(s) == 2);
    CHECK(store_delete(s, "x", NULL, NULL) == 0 && store_delete(s, "x2", NULL, NULL) == 0);
    run();
    store_close(s);
    snprintf(path, sizeof(path), "rm -rf '%s'", dir);
    CHECK(system(path) == 0);
}

/* Variable-size states (a KV cache): blobs of SB + P x KVB bytes, one size per version. */
#define KVB 16 /* 1 layer x K,V x 2 floats */

static void *vblob(int seed, size_t len)
{
    unsigned char *b = malloc(len);
    for (size_t i = 0; i < len; i++)
        b[i] = (unsigned char)(seed * 31 + i * 7);
    return b;
}

static bool is_vblob(const void *p, int seed, size_t len)
{
    void *b = vblob(seed, len);
    bool eq = memcmp(p, b, len) == 0;
    free(b);
    return eq;
}

static store_t *open_kv_store(const char *dir, size_t cache)
{
    static const store_tensor_t t[1] = {{"layers.0.ssm", 0, SB, 1, {SB / 4, 0, 0}}};
    store_opts_t o = {.state_bytes = SB,
                      .fingerprint = FP,
                      .max_sessions = 8,
                      .loop = &g_loop,
                      .dir = dir,
                      .cache_bytes = cache,
                      .n_tensors = 1,
                      .tensors = t,
                      .kv_bytes_per_token = KVB,
                      .n_kv_layers = 1,
                      .kv_width = 2};
    store_t *s = NULL;
    char err[300];
    int rc = store_open(&o, &s, err, sizeof(err));
    CHECK_MSG(rc == 0, "store_open: %s", err);
    return s;
}

static int vcommit(store_t *s, const char *id, uint64_t expect, int seed, size_t len, res_t *r)
{
    memset(r, 0, sizeof(*r));
    int rc = store_commit_n(s, id, expect, vblob(seed, len), len, 10, 500 + seed, done, r);
    run();
    return rc ? rc : r->rc;
}

static int vload(store_t *s, const char *id, void **out, size_t *len)
{
    store_session_t rec = {0};
    int rc = store_get(s, id, &rec);
    store_session_clear(&rec);
    if (rc) return rc;
    *len = (size_t)rec.state_len;
    *out = malloc(*len);
    res_t r = {0};
    rc = store_load(s, id, *out, NULL, done, &r, NULL, 0);
    if (rc == STORE_PENDING) {
        run();
        rc = r.rc;
    }
    return rc;
}

static void test_variable_size(void)
{
    char dir[] = "/tmp/rcd-store-kv-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    store_t *s = open_kv_store(dir, 0); /* no cache: every load reads the disk */
    res_t r;
    void *b;
    size_t len;
    CHECK(store_create(s, "kv", NULL, 0, NULL, 1, NULL, NULL, NULL) == 0);
    run();
    CHECK(vcommit(s, "kv", 0, 1, SB + 5 * KVB, &r) == 0);
    CHECK(vcommit(s, "kv", 1, 2, SB + 9 * KVB, &r) == 0);
    /* sizes off the rule are refused (and freed) */
    CHECK(vcommit(s, "kv", 2, 3, SB + 9 * KVB + 3, &r) == RCD_EINVAL);
    CHECK(vcommit(s, "kv", 2, 3, SB - 4, &r) == RCD_EINVAL);
    CHECK(vload(s, "kv", &b, &len) == 0 && len == SB + 9 * KVB && is_vblob(b, 2, len));
    free(b);
    /* the checkpoint records its payload length and the KV tail's layout */
    ckpt_hdr_t h;
    char err[600];
    CHECK(ckpt_read_v(dir, "kv", 2, FP, SB, KVB, &h, NULL, 0, err, sizeof(err)) == 0);
    CHECK(h.payload_bytes == SB + 9 * KVB && h.n_tensors == 3);
    CHECK(!strcmp(h.tensors[1].name, "kv.k.0") && h.tensors[1].offset == SB &&
          h.tensors[1].bytes == 9 * 8 && h.tensors[1].shape[0] == 9 && h.tensors[1].shape[1] == 2);
    CHECK(!strcmp(h.tensors[2].name, "kv.v.0") && h.tensors[2].offset == SB + 9 * 8);
    ckpt_hdr_free(&h);
    /* a fixed-size reader refuses it by size */
    CHECK(ckpt_read(dir, "kv", 2, FP, SB, &h, NULL, err, sizeof(err)) == RCD_ECORRUPT);
    store_close(s);
    /* reopen: the scan indexes the variable length; fork copies the blob read from disk */
    s = open_kv_store(dir, 1 << 20);
    store_session_t rec = {0};
    CHECK(store_get(s, "kv", &rec) == 0 && rec.version == 2 && rec.state_len == SB + 9 * KVB);
    store_session_clear(&rec);
    memset(&r, 0, sizeof(r));
    CHECK(store_fork(s, "kv", "kv2", NULL, 0, NULL, 1, &rec, done, &r) == 0);
    run();
    CHECK(r.rc == 0 && rec.state_len == SB + 9 * KVB);
    store_session_clear(&rec);
    CHECK(vload(s, "kv2", &b, &len) == 0 && len == SB + 9 * KVB && is_vblob(b, 2, len));
    free(b);
    /* a shorter state after a longer one (cache accounting follows each blob's size) */
    CHECK(vcommit(s, "kv2", 2, 4, SB, &r) == 0);
    CHECK(vload(s, "kv2", &b, &len) == 0 && len == SB && is_vblob(b, 4, len));
    free(b);
    store_stats_t st;
    store_get_stats(s, &st);
    CHECK_MSG(st.cache_bytes == SB + (SB + 9 * KVB) || st.cache_bytes == SB, "cache %zu",
              st.cache_bytes);
    CHECK(store_delete(s, "kv", NULL, NULL) == 0 && store_delete(s, "kv2", NULL, NULL) == 0);
    run();
    store_close(s);
    snprintf(err, sizeof(err), "rm -rf '%s'", dir);
    CHECK(system(err) == 0);
}

/* ---- extension sections (ckpt_ext.h): the store checks, describes and carries them ------ */

/* A state of st bytes (vblob(seed)) followed by a history of n tokens: *len bytes. */
static void *sblob(int seed, size_t st, int n, size_t *len)
{
    int32_t hist[100];
    for (int i = 0; i < n; i++)
        hist[i] = seed * 100 + i;
    ckpt_ext_sec_t h = {CKPT_EXT_HIST, hist, (uint64_t)n * 4, 4};
    size_t ext = ckpt_ext_size(&h, 1), w;
    uint8_t *b = vblob(seed, st + ext);
    CHECK(ckpt_ext_write(b + st, ext, &h, 1, &w) == 0);
    *len = st + ext;
    return b;
}

static int scommit(store_t *s, const char *id, uint64_t expect, void *b, size_t len, res_t *r)
{
    memset(r, 0, sizeof(*r));
    int rc = store_commit_n(s, id, expect, b, len, 10, 600, done, r);
    run();
    return rc ? rc : r->rc;
}

static void test_sections(void)
{
    char dir[] = "/tmp/rcd-store-ext-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    store_t *s = open_store(dir, FP, 1 << 20, 2);
    res_t r;
    size_t len, l2;
    void *b;
    ckpt_hdr_t h;
    char err[600];
    CHECK(store_create(s, "a", NULL, 0, NULL, 1, NULL, NULL, NULL) == 0);
    run();
    /* the format without sections: the model's table alone, header + state bytes */
    CHECK(commit(s, "a", 0, 1, &r) == 0);
    CHECK(ckpt_read_v(dir, "a", 1, FP, SB, 0, &h, NULL, 0, err, sizeof(err)) == 0);
    CHECK(h.n_tensors == 1 && h.ext_bytes == 0 && h.payload_bytes == SB);
    ckpt_hdr_free(&h);
    /* with a history: accepted, described, loaded back whole (cache, then disk) */
    void *want = sblob(2, SB, 50, &len);
    b = malloc(len);
    memcpy(b, want, len);
    CHECK(scommit(s, "a", 1, b, len, &r) == 0 && r.version == 2);
    CHECK(ckpt_read_v(dir, "a", 2, FP, SB, 0, &h, NULL, 0, err, sizeof(err)) == 0);
    CHECK(h.payload_bytes == len && h.ext_bytes == len - SB && h.n_tensors == 3);
    CHECK(!strcmp(h.tensors[1].name, CKPT_EXT_RECORD) && h.tensors[1].offset == SB);
    CHECK(!strcmp(h.tensors[2].name, CKPT_EXT_HIST) && h.tensors[2].offset == SB &&
          h.tensors[2].bytes == 200 && h.tensors[2].shape[0] == 50 && h.tensors[2].ndim == 1);
    ckpt_hdr_free(&h);
    store_session_t rec = {0};
    CHECK(store_get(s, "a", &rec) == 0 && rec.state_len == len && rec.ext_len == len - SB);
    store_session_clear(&rec);
    uint64_t n_s, n_b; /* usage counts the model state, not the sections */
    store_total_usage(s, &n_s, &n_b);
    CHECK(n_s == 1 && n_b == SB);
    void *back;
    CHECK(vload(s, "a", &back, &l2) == 0 && l2 == len && !memcmp(back, want, len));
    free(back);
    /* fork from the cache keeps them */
    CHECK(store_fork(s, "a", "f1", NULL, 0, NULL, 1, &rec, done, &r) == 0);
    run();
    store_session_clear(&rec);
    CHECK(vload(s, "f1", &back, &l2) == 0 && l2 == len && !memcmp(back, want, len));
    free(back);
    /* malformed sections, or a state part off the rule, are refused at commit */
    b = malloc(len);
    memcpy(b, want, len);
    ((uint8_t *)b)[len - 16] ^= 1; /* the region length in the trailer */
    CHECK(scommit(s, "a", 2, b, len, &r) == RCD_EINVAL);
    size_t l3;
    b = sblob(3, SB - 4, 10, &l3);
    CHECK(scommit(s, "a", 2, b, l3, &r) == RCD_EINVAL);
    store_close(s);
    /* reopen with no cache: the scan indexes the length, loads and a fork read the disk */
    s = open_store(dir, FP, 0, 2);
    CHECK(store_get(s, "a", &rec) == 0 && rec.version == 2 && rec.state_len == len &&
          rec.ext_len == len - SB);
    store_session_clear(&rec);
    CHECK(vload(s, "a", &back, &l2) == 0 && l2 == len && !memcmp(back, want, len));
    free(back);
    CHECK(store_fork(s, "a", "f2", NULL, 0, NULL, 1, &rec, done, &r) == 0);
    run();
    CHECK(r.rc == 0);
    store_session_clear(&rec);
    CHECK(ckpt_read_v(dir, "f2", 2, FP, SB, 0, &h, NULL, 0, err, sizeof(err)) == 0);
    CHECK(h.ext_bytes == len - SB && h.n_tensors == 3); /* its own table, from the blob read */
    ckpt_hdr_free(&h);
    CHECK(store_get(s, "f2", &rec) == 0 && rec.ext_len == len - SB);
    store_session_clear(&rec);
    CHECK(vload(s, "f2", &back, &l2) == 0 && l2 == len && !memcmp(back, want, len));
    free(back);
    /* back to no sections: the next version is the old format again */
    CHECK(commit(s, "a", 2, 4, &r) == 0);
    CHECK(store_get(s, "a", &rec) == 0 && rec.ext_len == 0 && rec.state_len == SB);
    store_session_clear(&rec);
    CHECK(ckpt_read_v(dir, "a", 3, FP, SB, 0, &h, NULL, 0, err, sizeof(err)) == 0);
    CHECK(h.n_tensors == 1 && h.ext_bytes == 0 && h.payload_bytes == SB);
    ckpt_hdr_free(&h);
    store_close(s);
    free(want);
    /* a variable-size state (KV) with a history: the KV layout counts the state part only */
    s = open_kv_store(dir, 1 << 20);
    CHECK(store_create(s, "kv", NULL, 0, NULL, 1, NULL, NULL, NULL) == 0);
    run();
    want = sblob(5, SB + 3 * KVB, 20, &len);
    b = malloc(len);
    memcpy(b, want, len);
    CHECK(scommit(s, "kv", 0, b, len, &r) == 0);
    CHECK(ckpt_read_v(dir, "kv", 1, FP, SB, KVB, &h, NULL, 0, err, sizeof(err)) == 0);
    CHECK(h.n_tensors == 5 && !strcmp(h.tensors[1].name, "kv.k.0") && h.tensors[1].shape[0] == 3);
    CHECK(!strcmp(h.tensors[3].name, CKPT_EXT_RECORD) && h.tensors[3].offset == SB + 3 * KVB);
    CHECK(h.tensors[4].shape[0] == 20);
    ckpt_hdr_free(&h);
    /* a fixed-size reader refuses it (its state part is not state_bytes) */
    CHECK(ckpt_read(dir, "kv", 1, FP, SB, &h, NULL, err, sizeof(err)) == RCD_ECORRUPT);
    CHECK(store_fork(s, "kv", "kv2", NULL, 0, NULL, 1, &rec, done, &r) == 0);
    run();
    store_session_clear(&rec);
    CHECK(vload(s, "kv2", &back, &l2) == 0 && l2 == len && !memcmp(back, want, len));
    free(back);
    free(want);
    store_close(s);
    snprintf(err, sizeof(err), "rm -rf '%s'", dir);
    CHECK(system(err) == 0);
}

/* ---- expiry: the clock is the test's (every call takes now_ms) -------------------------- */

typedef struct sweep {
    const char *busy_id; /* the one session a "turn" holds */
    int n_expired;
    char ids[8][STORE_SID_MAX + 1];
    int64_t idle[8];
} sweep_t;

static bool sw_busy(void *user, const char *id)
{
    sweep_t *w = user;
    return w->busy_id && !strcmp(w->busy_id, id);
}

static void sw_expired(void *user, const store_session_t *rec, int64_t idle_ms)
{
    sweep_t *w = user;
    if (w->n_expired < 8) {
        snprintf(w->ids[w->n_expired], sizeof(w->ids[0]), "%s", rec->id);
        w->idle[w->n_expired] = idle_ms;
    }
    w->n_expired++;
}

static bool sw_has(const sweep_t *w, const char *id, int64_t idle_ms)
{
    for (int i = 0; i < w->n_expired && i < 8; i++)
        if (!strcmp(w->ids[i], id)) return idle_ms < 0 || w->idle[i] == idle_ms;
    return false;
}

static bool sess_dir_exists(const char *dir, const char *id)
{
    char path[RCD_PATH_MAX];
    CHECK(rcd_path_fmt(path, sizeof(path), "%s/s_%s", dir, id) == 0);
    return access(path, F_OK) == 0;
}

static void create_as(store_t *s, const char *id, const char *owner, uint32_t ttl, int64_t now)
{
    store_attrs_t a = {owner, ttl};
    res_t r = {0};
    CHECK_MSG(store_create(s, id, NULL, 0, &a, now, NULL, done, &r) == 0, "create %s", id);
    run();
    CHECK(r.calls == 1 && r.rc == 0);
}

static void test_expiry(void)
{
    char dir[] = "/tmp/store-ttl-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    g_default_ttl = 10;
    store_t *s = open_store(dir, FP, 4 * SB, 2);
    res_t r = {0};
    store_session_t rec = {0};
    create_as(s, "idle", NULL, 0, 1000); /* the store's default: 10 s */
    create_as(s, "own", "alice", 3, 1000);
    create_as(s, "busy", NULL, 1, 1000);
    create_as(s, "pend", NULL, 1, 1000);
    create_as(s, "kept", "bob", 2, 1000);
    CHECK(store_get(s, "idle", &rec) == 0 && rec.ttl_s == 0 && rec.eff_ttl_s == 10);
    CHECK(rec.expires_ms == 11000 && rec.owner[0] == 0);
    store_session_clear(&rec);
    CHECK(store_get(s, "own", &rec) == 0 && rec.ttl_s == 3 && rec.eff_ttl_s == 3);
    CHECK(rec.expires_ms == 4000 && !strcmp(rec.owner, "alice"));
    store_session_clear(&rec);
    /* a fork takes the source's owner and TTL unless it names its own */
    CHECK(store_fork(s, "own", "ownfork", NULL, 0, NULL, 1500, &rec, done, &r) == 0);
    CHECK(!strcmp(rec.owner, "alice") && rec.ttl_s == 3 && rec.expires_ms == 4500);
    store_session_clear(&rec);
    store_attrs_t other = {"carol", 7};
    CHECK(store_fork(s, "own", "fork2", NULL, 0, &other, 1500, &rec, done, &r) == 0);
    CHECK(!strcmp(rec.owner, "carol") && rec.ttl_s == 7);
    store_session_clear(&rec);
    run();
    CHECK(store_delete(s, "fork2", NULL, NULL) == 0);
    /* a turn keeps its session alive: the commit moves updated_ms */
    CHECK(commit(s, "kept", 0, 1, &r) == 0); /* at 501 */
    memset(&r, 0, sizeof(r));
    CHECK(store_commit(s, "kept", 1, blob(2), 1, 2500, done, &r) == 0);
    run();
    CHECK(r.rc == 0 && store_get(s, "kept", &rec) == 0 && rec.expires_ms == 4500);
    store_session_clear(&rec);

    sweep_t w = {0};
    int64_t next = 0;
    CHECK(store_expire(s, 1999, sw_busy, sw_expired, &w, &next) == 0 && next == 2000);
    /* due but held: a turn holds "busy", a commit is in flight on "pend" */
    w.busy_id = "busy";
    memset(&r, 0, sizeof(r));
    CHECK(store_commit(s, "pend", 0, blob(3), 1, 3000, done, &r) == 0);
    CHECK(store_expire(s, 3000, sw_busy, sw_expired, &w, &next) == 0 && next == 3000);
    CHECK(w.n_expired == 0);
    run(); /* pend's commit lands: idle since 3000 now */
    CHECK(r.rc == 0);
    w.busy_id = NULL;
    CHECK(store_expire(s, 3999, sw_busy, sw_expired, &w, &next) == 1 && next == 4000);
    CHECK(sw_has(&w, "busy", 2999));
    CHECK(store_expire(s, 4000, sw_busy, sw_expired, &w, &next) == 2 && next == 4500);
    CHECK(sw_has(&w, "own", 3000) && sw_has(&w, "pend", 1000) && w.n_expired == 3);
    CHECK(store_get(s, "own", NULL) == RCD_ENOTFOUND &&
          store_get(s, "busy", NULL) == RCD_ENOTFOUND);
    unsigned char back[SB];
    CHECK(store_load(s, "pend", back, NULL, done, &r, NULL, 0) == RCD_ENOTFOUND);
    run(); /* the durable deletes */
    CHECK(!sess_dir_exists(dir, "own") && !sess_dir_exists(dir, "busy"));
    CHECK(!sess_dir_exists(dir, "pend") && sess_dir_exists(dir, "kept"));
    store_stats_t st;
    store_get_stats(s, &st);
    CHECK(st.expired == 3 && st.sessions == 3);
    create_as(s, "own", NULL, 0, 4000); /* the id is free again */
    store_close(s);

    /* reopen with no default TTL: the sessions' own TTLs and owners came back from disk */
    g_default_ttl = 0;
    s = open_store(dir, FP, 4 * SB, 2);
    CHECK(store_get(s, "kept", &rec) == 0 && rec.ttl_s == 2 && !strcmp(rec.owner, "bob"));
    CHECK(rec.expires_ms == 4500 && rec.version == 2);
    store_session_clear(&rec);
    CHECK(store_get(s, "ownfork", &rec) == 0 && rec.ttl_s == 3 && !strcmp(rec.owner, "alice"));
    store_session_clear(&rec);
    CHECK(store_get(s, "idle", &rec) == 0 && rec.eff_ttl_s == 0 && rec.expires_ms == 0);
    store_session_clear(&rec);
    memset(&w, 0, sizeof(w));
    CHECK(store_expire(s, 4499, NULL, NULL, NULL, &next) == 0 && next == 4500);
    CHECK(store_expire(s, 1000000, sw_busy, sw_expired, &w, &next) == 2 && next == INT64_MAX);
    CHECK(sw_has(&w, "kept", -1) && sw_has(&w, "ownfork", -1));
    CHECK(store_get(s, "idle", NULL) == 0 && store_get(s, "own", NULL) == 0);
    run();

    /* owner and TTL count against the metadata limits; "recurd." keys are reserved */
    store_meta_t md[STORE_META_MAX];
    for (int i = 0; i < STORE_META_MAX; i++)
        md[i] = (store_meta_t){"k", "v"};
    store_attrs_t a = {"dave", 5};
    CHECK(store_create(s, "m1", md, STORE_META_MAX, &a, 1, NULL, NULL, NULL) == RCD_ETOOBIG);
    CHECK(store_create(s, "m1", md, STORE_META_MAX - 2, &a, 1, NULL, NULL, NULL) == 0);
    store_meta_t bad[1] = {{"recurd.owner", "eve"}};
    CHECK(store_create(s, "m2", bad, 1, NULL, 1, NULL, NULL, NULL) == RCD_EINVAL);
    store_attrs_t ctl = {"a\nb", 0};
    CHECK(store_create(s, "m2", NULL, 0, &ctl, 1, NULL, NULL, NULL) == RCD_EINVAL);
    char longo[STORE_OWNER_MAX + 2];
    memset(longo, 'o', sizeof(longo) - 1);
    longo[sizeof(longo) - 1] = 0;
    store_attrs_t lo = {longo, 0};
    CHECK(store_create(s, "m2", NULL, 0, &lo, 1, NULL, NULL, NULL) == RCD_EINVAL);
    longo[STORE_OWNER_MAX] = 0;
    CHECK(store_create(s, "m2", NULL, 0, &lo, 1, NULL, NULL, NULL) == 0);
    run();
    store_close(s);
    s = open_store(dir, FP, 4 * SB, 2);
    CHECK(store_get(s, "m1", &rec) == 0 && rec.n_meta == STORE_META_MAX - 2);
    CHECK(!strcmp(rec.owner, "dave") && rec.ttl_s == 5);
    store_session_clear(&rec);
    CHECK(store_get(s, "m2", &rec) == 0 && strlen(rec.owner) == STORE_OWNER_MAX);
    store_session_clear(&rec);
    store_close(s);

    /* a memory-only store expires too */
    g_default_ttl = 1;
    s = open_store(NULL, FP, 0, 2);
    create_as(s, "mem", NULL, 0, 0);
    CHECK(store_expire(s, 999, NULL, NULL, NULL, NULL) == 0);
    CHECK(store_expire(s, 1000, NULL, NULL, NULL, NULL) == 1);
    run();
    CHECK(store_count(s) == 0);
    /* timestamps at the ends of the range (a file may hold any): no overflow */
    create_as(s, "late", NULL, 5, INT64_MAX - 5);
    create_as(s, "early", NULL, 5, INT64_MIN + 5);
    CHECK(store_get(s, "late", &rec) == 0 && rec.expires_ms == INT64_MAX);
    store_session_clear(&rec);
    memset(&w, 0, sizeof(w));
    CHECK(store_expire(s, INT64_MAX - 1, sw_busy, sw_expired, &w, &next) == 1);
    CHECK(next == INT64_MAX && sw_has(&w, "early", INT64_MAX));
    run();
    store_close(s);
    g_default_ttl = 0;
    char cmd[100];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

/* ---- group commit ------------------------------------------------------------------------ */

#define GC_N 32
static atomic_int g_syncfs_calls, g_syncfs_fail_at, g_gc_acks, g_acks_at_flush;
static atomic_int g_syncfs_errno = EIO;

/* Stands in for syncfs(2): counts the calls, notes how many commits were acknowledged when
 * each flush ran, fails the g_syncfs_fail_at-th call (1-based; 0: none) with g_syncfs_errno. */
static int fake_syncfs(int fd)
{
    int n = atomic_fetch_add(&g_syncfs_calls, 1) + 1;
    atomic_fetch_add(&g_acks_at_flush, atomic_load(&g_gc_acks));
    if (n == atomic_load(&g_syncfs_fail_at)) {
        errno = atomic_load(&g_syncfs_errno);
        return -1;
    }
    return syncfs(fd);
}

static void gc_done(void *user, int rc, uint64_t version, const char *msg)
{
    atomic_fetch_add(&g_gc_acks, 1);
    done(user, rc, version, msg);
}

static store_t *open_gc_store(const char *dir, bool no_group_commit)
{
    store_opts_t o = {.state_bytes = SB,
                      .fingerprint = FP,
                      .max_sessions = GC_N + 1,
                      .loop = &g_loop,
                      .dir = dir,
                      .keep_versions = 2,
                      .cache_bytes = 0, /* every load reads the file */
                      .no_group_commit = no_group_commit};
    store_t *s = NULL;
    char err[300];
    int rc = store_open(&o, &s, err, sizeof(err));
    CHECK_MSG(rc == 0, "store_open: %s", err);
    return s;
}

/* A commit of "lead" (its own batch of one: per-file fsyncs, acknowledged before the next
 * batch starts), then every g<i> at once from version `from`: those GC_N share one batch.
 * Returns how many of the group's callbacks reported success. */
static uint64_t g_lead_v;

static int commit_all(store_t *s, uint64_t from, int seed, res_t *r)
{
    res_t lr = {0};
    atomic_store(&g_syncfs_calls, 0);
    atomic_store(&g_acks_at_flush, 0);
    atomic_store(&g_gc_acks, 0);
    CHECK(store_commit(s, "lead", g_lead_v, blob(seed), 1, 0, gc_done, &lr) == 0);
    for (int i = 0; i < GC_N; i++) {
        char id[16];
        snprintf(id, sizeof(id), "g%d", i);
        memset(&r[i], 0, sizeof(r[i]));
        CHECK(store_commit(s, id, from, blob(seed + i), 1, 0, gc_done, &r[i]) == 0);
    }
    run();
    CHECK(lr.calls == 1 && lr.rc == 0 && lr.version == g_lead_v + 1);
    g_lead_v = lr.version;
    int ok = 0;
    for (int i = 0; i < GC_N; i++)
        ok += r[i].calls == 1 && r[i].rc == 0;
    return ok;
}

/* How many sessions have version v and, read back from disk, the state of seed + i. */
static int check_all(store_t *s, uint64_t v, int seed)
{
    int good = 0;
    for (int i = 0; i < GC_N; i++) {
        char id[16];
        snprintf(id, sizeof(id), "g%d", i);
        unsigned char back[SB];
        uint64_t ver = 0;
        res_t r = {0};
        int rc = store_load(s, id, back, &ver, done, &r, NULL, 0);
        if (rc == STORE_PENDING) {
            run();
            rc = r.rc;
        }
        good += rc == 0 && ver == v && is_blob(back, seed + i);
    }
    return good;
}

/* A state dir too long for the checkpoint paths under it is refused at open. */
static void test_dir_too_long(void)
{
    static char dir[RCD_PATH_MAX];
    memset(dir, 'd', sizeof(dir) - 1);
    dir[0] = '/';
    dir[RCD_PATH_MAX - CKPT_PATH_TAIL_MAX] = 0;
    store_opts_t o = {.state_bytes = SB, .loop = &g_loop, .dir = dir};
    store_t *s = NULL;
    char err[300] = "";
    CHECK(store_open(&o, &s, err, sizeof(err)) == RCD_EINVAL && s == NULL);
    CHECK_MSG(strstr(err, "state dir path too long") != NULL, "%s", err);
}

static void test_group_commit(void)
{
    char dir[] = "/tmp/store-gc-XXXXXX", cmd[100], v2[RCD_PATH_MAX];
    CHECK(mkdtemp(dir) != NULL);
    ckpt__syncfs = fake_syncfs;
    atomic_store(&g_syncfs_fail_at, 0);
    g_lead_v = 0;
    store_t *s = open_gc_store(dir, false);
    res_t r[GC_N];
    CHECK(store_create(s, "lead", NULL, 0, NULL, 1, NULL, NULL, NULL) == 0);
    for (int i = 0; i < GC_N; i++) {
        char id[16];
        snprintf(id, sizeof(id), "g%d", i);
        CHECK(store_create(s, id, NULL, 0, NULL, 1, NULL, done, &r[i]) == 0);
    }
    run();
    for (int i = 0; i < GC_N; i++)
        CHECK(r[i].rc == 0);
    /* the group: exactly two flushes, both before any of it was acknowledged (only lead was) */
    CHECK(commit_all(s, 0, 10, r) == GC_N);
    CHECK(atomic_load(&g_syncfs_calls) == 2);
    CHECK(atomic_load(&g_acks_at_flush) == 2);
    for (int i = 0; i < GC_N; i++)
        CHECK(r[i].version == 1);
    CHECK(count_files(dir, "g7", ".ckpt") == 2 && count_files(dir, "g7", ".tmp") == 0);
    store_close(s);
    s = open_gc_store(dir, false);
    CHECK(store_count(s) == GC_N + 1 && check_all(s, 1, 10) == GC_N);

    /* the data flush fails: every commit of the group fails, no temp file is left */
    atomic_store(&g_syncfs_fail_at, 1);
    CHECK(commit_all(s, 1, 20, r) == 0);
    CHECK(atomic_load(&g_syncfs_calls) == 1);
    for (int i = 0; i < GC_N; i++)
        CHECK_MSG(r[i].rc == RCD_EIO && r[i].version == 1 && strstr(r[i].msg, "syncfs"), "%s",
                  r[i].msg);
    CHECK(count_files(dir, "g5", ".tmp") == 0 && count_files(dir, "g5", ".ckpt") == 2);
    /* the names flush fails: the renamed files are removed again */
    atomic_store(&g_syncfs_fail_at, 2);
    CHECK(commit_all(s, 1, 30, r) == 0);
    CHECK(atomic_load(&g_syncfs_calls) == 2);
    for (int i = 0; i < GC_N; i++)
        CHECK(r[i].rc == RCD_EIO && r[i].version == 1);
    CHECK(rcd_path_fmt(v2, sizeof(v2), "%s/s_g9/%020d.ckpt", dir, 2) == 0);
    CHECK(access(v2, F_OK) != 0 && count_files(dir, "g9", ".tmp") == 0);
    CHECK(check_all(s, 1, 10) == GC_N);
    /* a full disk (ENOSPC, or EDQUOT) is RCD_ENOSPACE (RESOURCE_EXHAUSTED), its text named */
    atomic_store(&g_syncfs_errno, ENOSPC);
    atomic_store(&g_syncfs_fail_at, 1);
    CHECK(commit_all(s, 1, 35, r) == 0);
    for (int i = 0; i < GC_N; i++)
        CHECK_MSG(r[i].rc == RCD_ENOSPACE && r[i].version == 1 &&
                      strstr(r[i].msg, strerror(ENOSPC)),
                  "%s", r[i].msg);
    atomic_store(&g_syncfs_errno, EIO);
    CHECK(check_all(s, 1, 10) == GC_N);
    store_close(s);
    /* after reopen, the previous versions stand; the group goes on from them */
    atomic_store(&g_syncfs_fail_at, 0);
    s = open_gc_store(dir, false);
    store_session_t rec = {0};
    CHECK(store_get(s, "lead", &rec) == 0 && rec.version == 4);
    store_session_clear(&rec);
    CHECK(check_all(s, 1, 10) == GC_N);
    CHECK(commit_all(s, 1, 40, r) == GC_N && check_all(s, 2, 40) == GC_N);
    store_close(s);

    /* --no-group-commit: the same batch fsyncs each file on its own, syncfs is never called */
    s = open_gc_store(dir, true);
    atomic_store(&g_syncfs_fail_at, 1);
    CHECK(commit_all(s, 2, 50, r) == GC_N);
    CHECK(atomic_load(&g_syncfs_calls) == 0);
    store_close(s);
    s = open_gc_store(dir, false);
    CHECK(check_all(s, 3, 50) == GC_N);
    store_close(s);
    ckpt__syncfs = syncfs;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    uv_loop_init(&g_loop);
    RUN(test_memory);
    RUN(test_disk);
    RUN(test_variable_size);
    RUN(test_sections);
    RUN(test_expiry);
    RUN(test_dir_too_long);
    RUN(test_group_commit);
    uv_loop_close(&g_loop);
    return rcd_test_summary();
}
