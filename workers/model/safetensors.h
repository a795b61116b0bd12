/* Read-only access to Hugging Face safetensors checkpoints (one file or an index.json with
 * shards): every header byte is validated before a tensor is handed out; data stays mmapped. */
#ifndef WRK_SAFETENSORS_H
#define WRK_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* The integer dtypes are read only for pre-quantized checkpoints (workers/model/prequant.c);
 * every other tensor a family takes must be F32/F16/BF16 (wrk_take_tensor refuses the rest). */
typedef enum wrk_dtype {
    WRK_DT_F32 = 0,
    WRK_DT_F16 = 1,
    WRK_DT_BF16 = 2,
    WRK_DT_I8 = 3,
    WRK_DT_I32 = 4,
    WRK_DT_I64 = 5
} wrk_dtype_t;

size_t wrk_dtype_size(wrk_dtype_t dt);      /* 4, 2, 2, 1, 4, 8; 0 outside the enum */
const char *wrk_dtype_name(wrk_dtype_t dt); /* "F32", "F16", "BF16", "I8", "I32", "I64"; "?" */

#define WRK_ST_MAX_DIMS 8
/* Header length cap: real checkpoints have headers of a few hundred kB. */
#define WRK_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct wrk_st_tensor {
    const char *name; /* owned by the set */
    const char *file; /* path of the file holding it, owned by the set (for messages) */
    wrk_dtype_t dtype;
    int ndim;
    int64_t shape[WRK_ST_MAX_DIMS];
    int64_t numel;    /* 1 for a scalar (ndim 0), 0 if any dim is 0 */
    const void *data; /* points into the mmapped file, owned by the set; may be unaligned */
    size_t nbytes;    /* numel * wrk_dtype_size(dtype) */
} wrk_st_tensor_t;

typedef struct wrk_st_set wrk_st_set_t;

/* Error codes of the openers (err always gets a message naming the file, and the tensor
 * where one is involved):
 *   RCD_ENOTFOUND    no model.safetensors / index.json in dir, or a shard file missing
 *   RCD_EIO          open/read/mmap failed
 *   RCD_EFORMAT      anything malformed: truncated file, bad JSON, bad field, overlap,
 *                    duplicate or empty name, weight_map and shards disagree, shard path
 *                    escaping the directory
 *   RCD_ETOOBIG      header (or index.json) larger than WRK_ST_MAX_HEADER
 *   RCD_ERANGE       a number above 2^53 - 1, or shape whose byte size overflows
 *   RCD_EUNSUPPORTED dtype other than F32/F16/BF16/I8/I32/I64, or more than WRK_ST_MAX_DIMS dims
 *   RCD_ENOMEM       allocation failed
 *   RCD_EINVAL       NULL arguments */

/* Opens a checkpoint directory: dir/model.safetensors if present, else
 * dir/model.safetensors.index.json with its shards (weight_map: tensor name -> shard file,
 * a path relative to dir). Every tensor of every shard must be listed in weight_map under
 * that shard, and every weight_map entry must exist. */
int wrk_st_open_dir(const char *dir, wrk_st_set_t **out, char *err, size_t errlen);
/* Opens one .safetensors file (mmapped read-only). */
int wrk_st_open_file(const char *path, wrk_st_set_t **out, char *err, size_t errlen);
/* Parses a whole safetensors file image held in memory (not copied: buf must outlive the
 * set); used by the fuzz target and tests. fname is used in messages. */
int wrk_st_open_mem(const void *buf, size_t len, const char *fname, wrk_st_set_t **out, char *err,
                    size_t errlen);
void wrk_st_close(wrk_st_set_t *set); /* NULL-safe */

/* Tensors are kept sorted by name (strcmp order); i < wrk_st_count(set). */
size_t wrk_st_count(const wrk_st_set_t *set);
const wrk_st_tensor_t *wrk_st_at(const wrk_st_set_t *set, size_t i);
/* O(log n); NULL if absent. */
const wrk_st_tensor_t *wrk_st_find(const wrk_st_set_t *set, const char *name);
/* Marks a tensor as used by the model loader; returns it, or NULL if absent. */
const wrk_st_tensor_t *wrk_st_take(wrk_st_set_t *set, const char *name);
/* First tensor (in name order) never taken, for "unexpected tensor" errors, or NULL. */
const wrk_st_tensor_t *wrk_st_first_unused(const wrk_st_set_t *set);
/* Number of tensors never taken. */
size_t wrk_st_unused_count(const wrk_st_set_t *set);
/* Metadata string from the "__metadata__" object of the first file (for a sharded
 * checkpoint: the first shard in name order), or NULL. Owned by the set. */
const char *wrk_st_metadata(const wrk_st_set_t *set, const char *key);

/* Half conversions. bf16->f32 is exact (a shift); f32->bf16 rounds to nearest even like torch
 * (NaN becomes the quiet NaN 0x7FC0, overflow becomes inf). f16 both ways is IEEE binary16
 * with round-to-nearest-even, subnormals, inf; NaN stays NaN (quiet, sign kept). */
float wrk_bf16_to_f32(uint16_t h);
uint16_t wrk_f32_to_bf16(float f);
float wrk_f16_to_f32(uint16_t h);
uint16_t wrk_f32_to_f16(float f);

#endif
