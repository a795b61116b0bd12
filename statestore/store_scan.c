/* statestore: opening a store (the state dir, its lock, the startup scan that rebuilds the
 * index from the newest good checkpoint of every session) and closing it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/rcd_path.h"
#include "statestore/store_int.h"

static int mkdirs(const char *path)
{
    char tmp[RCD_PATH_MAX];
    if (rcd_path_fmt(tmp, sizeof(tmp), "%s", path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static void remove_tree1(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
    rmdir(path);
}

static void warn(store_t *s, const char *id, const char *msg)
{
    if (s->warn_cb) s->warn_cb(s->warn_user, id, msg);
}

static int scan(store_t *s, char *err, size_t errlen)
{
    DIR *d = opendir(s->dir);
    if (!d) return rcd_fail(RCD_EIO, err, errlen, "open %s: %s", s->dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        const char *name = e->d_name;
        char path[RCD_PATH_MAX];
        if (!strncmp(name, ".trash-", 7)) { /* a delete that was cut short */
            if (rcd_path_join(path, sizeof(path), s->dir, name) == 0) remove_tree1(path);
            continue;
        }
        if (strncmp(name, "s_", 2) != 0) continue;
        const char *id = name + 2;
        if (store_check_sid(id)) {
            warn(s, NULL, "state dir entry with an invalid session id skipped");
            continue;
        }
        ckpt_hdr_t h;
        int r = ckpt_latest_v(s->dir, id, UINT64_MAX, s->fingerprint, s->state_bytes, s->kv_bpt, &h,
                              &s->st.quarantined, s->warn_cb, s->warn_user);
        if (r == RCD_ENOTFOUND) {
            warn(s, id, "session directory holds no valid checkpoint: skipped");
            continue;
        }
        if (r && r != RCD_EMISMATCH) {
            warn(s, id, "cannot read session checkpoints: skipped");
            continue;
        }
        sess_t *x;
        r = store__insert(s, &h, &x);
        ckpt_hdr_free(&h);
        if (r == RCD_ENOMEM) {
            rc = rcd_fail(r, err, errlen, "out of memory scanning %s", s->dir);
            break;
        }
        if (r == 0 && x->rec.foreign) {
            s->st.foreign++;
            s->st.foreign_fingerprint = x->rec.fingerprint;
        }
    }
    closedir(d);
    return rc;
}

int store_open(const store_opts_t *opts, store_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!opts || opts->state_bytes == 0 || !opts->loop)
        return rcd_fail(RCD_EINVAL, err, errlen, "store: state_bytes and loop are required");
    if (opts->n_tensors < 0 || opts->n_tensors > CKPT_MAX_TENSORS ||
        (opts->n_tensors && !opts->tensors))
        return rcd_fail(RCD_EINVAL, err, errlen, "store: bad tensor table");
    store_t *s = calloc(1, sizeof(*s));
    int rc = 0;
    if (!s) return rcd_fail(RCD_ENOMEM, err, errlen, "store: out of memory");
    s->loop = opts->loop;
    s->lock_fd = -1;
    s->state_bytes = opts->state_bytes;
    s->kv_bpt = opts->kv_bytes_per_token;
    s->n_kv_layers = opts->n_kv_layers > 0 ? opts->n_kv_layers : 0;
    s->kv_width = opts->kv_width > 0 ? opts->kv_width : 0;
    if (s->kv_bpt && (size_t)s->n_kv_layers * 2 * (size_t)s->kv_width * sizeof(float) != s->kv_bpt)
        s->n_kv_layers = 0; /* no consistent description of the tail: sizes still checked */
    s->fingerprint = opts->fingerprint;
    s->max_sessions = opts->max_sessions ? opts->max_sessions : 1024;
    s->keep = opts->keep_versions > 0 ? opts->keep_versions : 2;
    s->group_commit = !opts->no_group_commit;
    s->cache_budget = opts->cache_bytes;
    s->warn_cb = opts->warn_cb;
    s->warn_user = opts->warn_user;
    s->default_ttl_s = opts->default_ttl_s;
    s->n_buckets = 1024;
    s->buckets = calloc(s->n_buckets, sizeof(*s->buckets));
    if (opts->n_tensors) {
        s->tensors = malloc(sizeof(*s->tensors) * (size_t)opts->n_tensors);
        if (s->tensors)
            memcpy(s->tensors, opts->tensors, sizeof(*s->tensors) * (size_t)opts->n_tensors);
        s->n_tensors = opts->n_tensors;
    }
    if (!s->buckets || (opts->n_tensors && !s->tensors)) {
        rc = rcd_fail(RCD_ENOMEM, err, errlen, "store: out of memory");
        goto fail;
    }
    if (opts->dir && opts->dir[0]) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        /* every checkpoint path under it must fit (ckpt.c checks each one too) */
        size_t l = strlen(opts->dir);
        if (l + CKPT_PATH_TAIL_MAX >= RCD_PATH_MAX) {
            rc = rcd_fail(RCD_EINVAL, err, errlen,
                          "store: state dir path too long (%zu bytes; at most %d)", l,
                          RCD_PATH_MAX - 1 - CKPT_PATH_TAIL_MAX);
            goto fail;
        }
        if (!(s->dir = strdup(opts->dir))) {
            rc = rcd_fail(RCD_ENOMEM, err, errlen, "store: out of memory");
            goto fail;
        }
        if (mkdirs(s->dir) != 0) {
            rc = rcd_fail(RCD_EIO, err, errlen, "state dir %s: %s", s->dir, strerror(errno));
            goto fail;
        }
        char lock[RCD_PATH_MAX];
        rcd_path_join(lock, sizeof(lock), s->dir, "LOCK"); /* fits: checked above */
        s->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (s->lock_fd < 0) {
            rc = rcd_fail(RCD_EIO, err, errlen, "state dir %s: %s", lock, strerror(errno));
            goto fail;
        }
        if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            rc = rcd_fail(RCD_EBUSY, err, errlen,
                          "state dir %s is locked by another process (a second recurd?)", s->dir);
            goto fail;
        }
        if ((rc = scan(s, err, errlen))) goto fail;
        if (opts->redis && opts->redis[0]) {
            const char *p = opts->redis_opts.prefix;
            if (!p || !p[0]) p = STORE_REDIS_PREFIX_DEFAULT;
            size_t pl = strlen(p);
            if (pl > STORE_REDIS_PREFIX_MAX || strspn(p, STORE_REDIS_PREFIX_CHARS) != pl) {
                rc = rcd_fail(RCD_EINVAL, err, errlen,
                              "redis key prefix '%s': 1 to %d of A-Z a-z 0-9 : _ - . { } /", p,
                              STORE_REDIS_PREFIX_MAX);
                goto fail;
            }
            memcpy(s->rds_prefix, p, pl + 1);
            rds_log_t log = {.cb = s->warn_cb, .user = s->warn_user};
            if ((rc =
                     rds_open(s->loop, opts->redis, &opts->redis_opts, &log, &s->rds, err, errlen)))
                goto fail;
            s->authority = opts->redis_authority;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        s->st.scan_ms =
            (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    }
    *out = s;
    return 0;
fail:
    store_close(s);
    return rc;
}

void store_close(store_t *s)
{
    if (!s) return;
    rds_close(s->rds); /* before the index: outstanding replies still find it */
    s->rds = NULL;
    /* Jobs still queued here mean the loop stopped early; their callers are gone. */
    for (job_t *j = s->q_head; j;) {
        job_t *next = j->next;
        store__job_free(j);
        j = next;
    }
    for (size_t b = 0; s->buckets && b < s->n_buckets; b++) {
        sess_t *x = s->buckets[b];
        while (x) {
            sess_t *next = x->next;
            store__sess_free(s, x);
            x = next;
        }
    }
    if (s->lock_fd >= 0) close(s->lock_fd); /* releases the flock */
    free(s->buckets);
    free(s->tensors);
    free(s->dir);
    free(s);
}
