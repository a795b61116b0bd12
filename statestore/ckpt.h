/* statestore (private): the checkpoint file format and its disk operations. One file holds one
 * version of one session: a self-describing header, then the state payload.
 *
 *   offset  field (little-endian)
 *   0       magic "RCDCKPT\0"
 *   8       u32 format version (1)          12  u32 header_bytes (all bytes before payload)
 *   16      u64 model fingerprint           24  u64 session version
 *   32      u64 token count                 40  i64 created_ms     48  i64 updated_ms
 *   56      u64 payload_bytes               64  u64 payload XXH3-64
 *   72      u32 dtype (1 = f32)             76  u32 n_tensors
 *   80      u32 id_len   84 u32 parent_len  88  u32 n_meta         92  u32 meta_bytes
 *   96      id, parent id (no NULs), n_tensors x 96-byte tensor records
 *           (name[48] NUL-padded, u64 offset, u64 bytes, u32 ndim, u32 0, i64 shape[3]),
 *           metadata as n_meta pairs of "key\0value\0"
 *   header_bytes - 8: u64 XXH3-64 of every header byte before it
 *   header_bytes: payload (payload_bytes)
 *
 * The payload is the model's state blob. Fixed-size models: always state_bytes. Models with a
 * KV cache (Granite 4.0-H): state_bytes + P x kv_bytes_per_token, P the positions held (the
 * fixed part's "kv.n_tokens" tensor); the tensor table then also describes the tail as
 * "kv.k.<i>" / "kv.v.<i>" records [P][kv_width] per attention layer i, so the file stays
 * self-describing. The header layout is unchanged (format 1): a reader built before variable
 * payloads refuses such a file by its payload size, never misreads it.
 *
 * A file is valid only if its size is exactly header_bytes + payload_bytes and both hashes
 * match: a torn or truncated write is never mistaken for a checkpoint. Files live in
 * dir/s_<session id>/<version, 20 digits>.ckpt.
 *
 * Session owner and TTL ride in the metadata block under reserved keys (CKPT_KEY_OWNER,
 * CKPT_KEY_TTL), written only when set, so format 1 is unchanged: a file without them (every
 * file written before) has no owner and follows the store's default TTL, and a reader that
 * predates them sees two more metadata pairs. They count against the same limits as the
 * caller's metadata (STORE_META_MAX entries, STORE_META_BYTES), so an older reader never
 * refuses a newer file. ckpt_encode adds them from ckpt_hdr_t.owner/ttl_s; ckpt_parse takes
 * them out of `meta` again (a duplicate or a malformed value is RCD_ECORRUPT).
 *
 * Extension sections (ckpt_ext.h): a payload may end with a region of named sections after
 * the state (the session's token history, "hist.tokens"). The tensor table then records the
 * region as CKPT_EXT_RECORD ("recurd.ext", offset = the state's length, ending exactly at the
 * payload's end) and each section under its name ([n] elements), so the header alone gives
 * the state's length (payload_bytes - ext_bytes, which must satisfy ckpt_payload_ok) and a
 * loaded payload must split (ckpt_ext_split) into exactly that: ckpt_payload_check. A
 * payload without sections has no such record: the file is byte for byte the format from
 * before sections, and a reader from before refuses a sectioned file by its payload size. */
#ifndef RCD_CKPT_H
#define RCD_CKPT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/rcd_path.h"
#include "statestore/ckpt_ext.h"
#include "statestore/store.h"

#define CKPT_MAGIC "RCDCKPT"
#define CKPT_FORMAT 1
#define CKPT_FIXED 96
#define CKPT_TENSOR_REC 96
#define CKPT_DTYPE_F32 1
#define CKPT_MAX_TENSORS 65536
#define CKPT_MAX_HEADER                                                                            \
    (CKPT_FIXED + 2 * STORE_SID_MAX + CKPT_MAX_TENSORS * CKPT_TENSOR_REC + STORE_META_BYTES + 8)
#define CKPT_KEY_OWNER "recurd.owner" /* value: the owner, 1..STORE_OWNER_MAX bytes */
#define CKPT_KEY_TTL "recurd.ttl_s"   /* value: decimal seconds, 1..UINT32_MAX */
#define CKPT_KEY_PREFIX "recurd."     /* reserved: refused in callers' metadata */

/* A parsed header. Pointers are owned by the header (ckpt_hdr_free). */
typedef struct ckpt_hdr {
    uint64_t fingerprint, version, n_tokens;
    int64_t created_ms, updated_ms;
    uint64_t payload_bytes, payload_hash;
    uint32_t dtype;
    char id[STORE_SID_MAX + 1], parent[STORE_SID_MAX + 1];
    int n_tensors;
    store_tensor_t *tensors;
    int n_meta;
    store_meta_t *meta; /* entries followed by their strings, one block; no reserved keys */
    char owner[STORE_OWNER_MAX + 1]; /* "": none */
    uint32_t ttl_s;                  /* the session's own idle TTL; 0: not recorded */
    uint64_t ext_bytes; /* parsed: bytes of the payload's extension sections (the tensor
                         * table's CKPT_EXT_RECORD, ckpt_ext.h); 0: none */
} ckpt_hdr_t;

/* Serializes h (payload_hash and payload_bytes as given) into a malloc'd buffer. */
int ckpt_encode(const ckpt_hdr_t *h, uint8_t **out, size_t *len);
/* header_bytes announced by a buffer's first CKPT_FIXED bytes, or a negative code. */
int64_t ckpt_header_len(const uint8_t *buf, size_t len, char *err, size_t errlen);
/* Parses and verifies a whole header (len >= its header_bytes). RCD_ECORRUPT with a message
 * for anything wrong; never reads past len. */
int ckpt_parse(const uint8_t *buf, size_t len, ckpt_hdr_t *out, char *err, size_t errlen);
void ckpt_hdr_free(ckpt_hdr_t *h);
/* Packs metadata into one block (entries then strings); RCD_EINVAL / RCD_ETOOBIG. */
int ckpt_meta_pack(const store_meta_t *meta, int n_meta, store_meta_t **out);
/* Whether a new session's metadata, owner and TTL fit one checkpoint: RCD_EINVAL (an empty
 * or reserved key, a bad owner), RCD_ETOOBIG (over STORE_META_MAX entries or STORE_META_BYTES,
 * the owner and TTL pairs included). */
int ckpt_meta_check(const store_meta_t *meta, int n_meta, const char *owner, uint32_t ttl_s);
/* Whether an owner string is acceptable: 1..STORE_OWNER_MAX bytes, none below 0x20 or 0x7f. */
bool ckpt_owner_ok(const char *owner, size_t len);

/* ---- disk operations: blocking, for the store's I/O jobs and its startup scan ---------- */

/* Writes dir/s_<id>/<version>.ckpt crash-safely (temp file, fsync, rename, fsync of the
 * session directory; the session directory is created and dir fsynced if new), then removes
 * versions older than the newest `keep`. */
int ckpt_write(const char *dir, const ckpt_hdr_t *h, const void *payload, int keep, char *err,
               size_t errlen);
/* The steps of ckpt_write, for a group commit that makes many checkpoints durable with shared
 * flushes: ckpt_stage writes the temp file (sync: fsync it, and the state dir if the session
 * directory is new), ckpt_publish renames it into place, ckpt_unstage undoes either (removes
 * the temp or the renamed file, and the session directory if stage created it and it is
 * empty), ckpt_prune drops versions beyond the newest `keep` (only once the new one is
 * durable). A staged file that never gets renamed is a .tmp: removed at the next scan. */
/* The longest tail a checkpoint path adds to the state dir: "/s_<id>/<20 digits>.ckpt" and
 * ".<u32>.tmp" (longer than ".corrupt" and than a ".trash-<pid>-<n>" entry). */
#define CKPT_PATH_TAIL_MAX (3 + STORE_SID_MAX + 1 + 25 + 15)
typedef struct ckpt_staged {
    char sdir[RCD_PATH_MAX], final[RCD_PATH_MAX], tmp[RCD_PATH_MAX]; /* tmp: "" once gone */
    bool new_dir, published;
} ckpt_staged_t;
int ckpt_stage(const char *dir, const ckpt_hdr_t *h, const void *payload, bool sync,
               ckpt_staged_t *st, char *err, size_t errlen);
int ckpt_publish(ckpt_staged_t *st, char *err, size_t errlen);
void ckpt_unstage(ckpt_staged_t *st);
void ckpt_prune(const char *dir, const char *id, int keep);
/* syncfs(2), called through this pointer so that tests can make a group flush fail. Since
 * Linux 5.8 syncfs reports writeback errors of the filesystem since fd was opened. */
extern int (*ckpt__syncfs)(int fd);
/* Reads and verifies version `version` of session `id`. payload: state_bytes, or NULL to
 * read and check the header and file size only. RCD_ENOTFOUND (no file), RCD_ECORRUPT (bad
 * hashes, size, fields), RCD_EMISMATCH (another model's fingerprint: h is filled). */
int ckpt_read(const char *dir, const char *id, uint64_t version, uint64_t fingerprint,
              size_t state_bytes, ckpt_hdr_t *h, void *payload, char *err, size_t errlen);
/* ckpt_read for models with a variable-size state (a KV cache): a valid payload is
 * state_bytes + n * kv_bpt bytes (n >= 0; kv_bpt 0: exactly state_bytes). payload: NULL, or
 * a buffer of cap bytes (a larger payload is RCD_ECORRUPT). ckpt_read is this with kv_bpt 0
 * and cap state_bytes. */
int ckpt_read_v(const char *dir, const char *id, uint64_t version, uint64_t fingerprint,
                size_t state_bytes, size_t kv_bpt, ckpt_hdr_t *h, void *payload, size_t cap,
                char *err, size_t errlen);
/* Whether payload_bytes is a valid state size under that rule (0: no state). Sections come on
 * top: ckpt_hdr_payload_ok. */
bool ckpt_payload_ok(uint64_t payload_bytes, size_t state_bytes, size_t kv_bpt);
/* Whether a header's payload_bytes, less its ext_bytes, is a valid state size (0: no state). */
bool ckpt_hdr_payload_ok(const ckpt_hdr_t *h, size_t state_bytes, size_t kv_bpt);
/* Checks a payload (h->payload_bytes bytes, hash already verified) against its header: its
 * sections split (ckpt_ext_split) into exactly h->ext_bytes. RCD_ECORRUPT with a message. */
int ckpt_payload_check(const ckpt_hdr_t *h, const void *payload, size_t state_bytes, size_t kv_bpt,
                       char *err, size_t errlen);
/* Renames a version to *.corrupt (kept for inspection, never loaded). */
int ckpt_quarantine(const char *dir, const char *id, uint64_t version);
/* Newest version < below whose header and size check out (payload not read); the ones that
 * fail are quarantined (counted in *n_quarantined, reported through warn). RCD_ENOTFOUND if
 * none; a foreign newest version returns RCD_EMISMATCH with h filled. */
int ckpt_latest(const char *dir, const char *id, uint64_t below, uint64_t fingerprint,
                size_t state_bytes, ckpt_hdr_t *h, size_t *n_quarantined,
                void (*warn)(void *u, const char *id, const char *msg), void *warn_user);
int ckpt_latest_v(const char *dir, const char *id, uint64_t below, uint64_t fingerprint,
                  size_t state_bytes, size_t kv_bpt, ckpt_hdr_t *h, size_t *n_quarantined,
                  void (*warn)(void *u, const char *id, const char *msg), void *warn_user);
/* Removes a session's directory: renamed to a .trash name first (atomic, fsynced), then its
 * files are unlinked. */
int ckpt_remove_session(const char *dir, const char *id, char *err, size_t errlen);

#endif
