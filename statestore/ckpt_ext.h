/* statestore: checkpoint extension sections — named byte strings a session keeps beside its
 * model state (the token history for n-gram drafts, "hist.tokens"; a draft model's state),
 * stored after the state in the same payload, so that everything that moves a payload (the
 * host cache, fork, the disk tier, the Redis tier) moves them too. Pure code: no I/O, no
 * allocation; the engine (which splits a loaded blob and appends the sections at commit) and
 * the store (which checks a blob and describes it in the checkpoint's tensor table) share it.
 *
 *   payload = state | section data ... | directory | trailer
 *
 *   state       the model's state blob (state_bytes, + P x kv_bytes_per_token with a KV cache)
 *   data        each section's bytes in directory order, each zero-padded to a multiple of 8
 *   directory   n records of CKPT_EXT_DIRREC = 48 bytes: name[24] (1..CKPT_EXT_NAME_MAX bytes
 *               of [a-z0-9._-], NUL-padded), u64 offset (from the start of the region), u64
 *               bytes, u32 element bytes (1, 2, 4 or 8; the section's bytes are a multiple of
 *               it), u32 0
 *   trailer     CKPT_EXT_TRAILER = 24 bytes: u32 n (1..CKPT_EXT_MAX), u32 version (1), u64
 *               region bytes (data + directory + trailer), magic "RCDEXT1\0"
 *
 * All little-endian. A payload with no sections has no region at all: it is the state alone,
 * byte for byte the format from before sections. A region is recognized by its trailing magic
 * (a state never ends with those 8 bytes in practice: as f32 they are a denormal pair) and is
 * then checked whole: every length against the real sizes, offsets contiguous, padding zero,
 * names valid and distinct, and the state part left over must have a valid state size
 * (ckpt_payload_ok). Anything else is RCD_ECORRUPT with a message. The checkpoint's tensor
 * table describes the region as "recurd.ext" and each section under its own name (ckpt.h). */
#ifndef RCD_CKPT_EXT_H
#define RCD_CKPT_EXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CKPT_EXT_MAGIC "RCDEXT1" /* with its NUL: 8 bytes */
#define CKPT_EXT_VERSION 1
#define CKPT_EXT_MAX 8       /* sections in one payload */
#define CKPT_EXT_NAME_MAX 23 /* bytes of a section name */
#define CKPT_EXT_DIRREC 48
#define CKPT_EXT_TRAILER 24
#define CKPT_EXT_RECORD "recurd.ext" /* the tensor-table record of the whole region */
#define CKPT_EXT_HIST "hist.tokens"  /* the session's token history: int32 token ids, oldest first */

/* One section: a name and its bytes (borrowed: a view into a blob, or the caller's data). */
typedef struct ckpt_ext_sec {
    char name[CKPT_EXT_NAME_MAX + 1];
    const void *data;
    uint64_t bytes;
    uint32_t elem; /* bytes per element: 1, 2, 4 or 8 */
} ckpt_ext_sec_t;

/* A payload's sections (n 0: none). */
typedef struct ckpt_ext {
    int n;
    ckpt_ext_sec_t sec[CKPT_EXT_MAX];
    uint64_t region_bytes; /* 0 without sections */
} ckpt_ext_t;

/* Whether `name` is a valid section name. */
bool ckpt_ext_name_ok(const char *name);
/* Splits a payload of len bytes into its state part (*state_len bytes at the start) and its
 * sections (views into blob). The state part must satisfy ckpt_payload_ok(state_bytes,
 * kv_bpt); len 0 is the empty payload. RCD_ECORRUPT with a message for anything malformed;
 * never reads outside [blob, blob + len). */
int ckpt_ext_split(const void *blob, size_t len, size_t state_bytes, size_t kv_bpt,
                   size_t *state_len, ckpt_ext_t *ext, char *err, size_t errlen);
/* Bytes a region holding these sections takes (0 for n 0; SIZE_MAX for bad arguments: a bad
 * name or element size, a duplicate, n over CKPT_EXT_MAX). */
size_t ckpt_ext_size(const ckpt_ext_sec_t *secs, int n);
/* Writes the region for secs[0, n) at dst (cap bytes) and returns its size in *written (0 for
 * n 0: nothing is written). RCD_EINVAL for bad sections, RCD_ETOOBIG when cap is too small. */
int ckpt_ext_write(void *dst, size_t cap, const ckpt_ext_sec_t *secs, int n, size_t *written);
/* The section named `name`, or NULL. */
const ckpt_ext_sec_t *ckpt_ext_find(const ckpt_ext_t *ext, const char *name);

#endif
