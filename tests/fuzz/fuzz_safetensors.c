/* libFuzzer target for the safetensors header parser: any byte string must either be rejected
 * with an error code and a message, or yield tensors whose every byte lies inside the input. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/rcd_error.h"
#include "workers/model/safetensors.h"

/* A broken invariant is a bug in the parser, not in the input: crash so libFuzzer keeps it. */
#define FZ_REQUIRE(c)                                                                              \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

static volatile uint8_t g_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256] = "";
    wrk_st_set_t *set = NULL;
    int rc = wrk_st_open_mem(data, size, "fuzz.safetensors", &set, err, sizeof err);
    if (rc != 0) {
        FZ_REQUIRE(rc < 0 && set == NULL);
        FZ_REQUIRE(err[0] != '\0' && strstr(err, "fuzz.safetensors") != NULL);
        for (const unsigned char *c = (const unsigned char *)err; *c; c++)
            FZ_REQUIRE(*c >= 0x20 && *c != 0x7F); /* messages carry no control bytes */
        return 0;
    }
    FZ_REQUIRE(set != NULL);
    size_t n = wrk_st_count(set);
    const uint8_t *lo = data, *hi = data + size;
    for (size_t i = 0; i < n; i++) {
        const wrk_st_tensor_t *t = wrk_st_at(set, i);
        FZ_REQUIRE(t && t->name && t->name[0] && t->file);
        FZ_REQUIRE(t->ndim >= 0 && t->ndim <= WRK_ST_MAX_DIMS && t->numel >= 0);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            FZ_REQUIRE(t->shape[d] >= 0);
            numel *= t->shape[d]; /* cannot overflow: the parser checked the product */
        }
        FZ_REQUIRE(numel == t->numel);
        FZ_REQUIRE(t->nbytes == (size_t)t->numel * wrk_dtype_size(t->dtype));
        const uint8_t *p = t->data;
        FZ_REQUIRE(p >= lo + 8 && p <= hi && t->nbytes <= (size_t)(hi - p));
        uint8_t acc = 0;
        for (size_t b = 0; b < t->nbytes; b++)
            acc ^= p[b];
        g_sink = acc;
        /* Sorted, unique names; lookup finds each tensor itself. */
        if (i > 0) FZ_REQUIRE(strcmp(wrk_st_at(set, i - 1)->name, t->name) < 0);
        FZ_REQUIRE(wrk_st_find(set, t->name) == t);
        /* The half conversions must round-trip whatever bits the tensor holds. */
        if ((t->dtype == WRK_DT_F16 || t->dtype == WRK_DT_BF16) && t->nbytes >= 2) {
            uint16_t h;
            memcpy(&h, p, 2);
            float f = t->dtype == WRK_DT_F16 ? wrk_f16_to_f32(h) : wrk_bf16_to_f32(h);
            uint16_t back = t->dtype == WRK_DT_F16 ? wrk_f32_to_f16(f) : wrk_f32_to_bf16(f);
            FZ_REQUIRE(f != f || back == h);
        }
    }
    FZ_REQUIRE(wrk_st_at(set, n) == NULL);
    if (n) {
        FZ_REQUIRE(wrk_st_first_unused(set) == wrk_st_at(set, 0));
        for (size_t i = 0; i < n; i++)
            wrk_st_take(set, wrk_st_at(set, i)->name);
    }
    FZ_REQUIRE(wrk_st_first_unused(set) == NULL && wrk_st_unused_count(set) == 0);
    const char *v = wrk_st_metadata(set, "format");
    if (v) g_sink = (uint8_t)strlen(v);
    wrk_st_close(set);
    return 0;
}
