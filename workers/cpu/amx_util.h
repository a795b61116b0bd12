/* workers/cpu: what the two AMX kernels (kernels_amx.c: bf16, kernels_q_amx.c: int8) share —
 * the tile configuration's memory layout and the request for the tile state. */
#ifndef RCD_WORKERS_CPU_AMX_UTIL_H
#define RCD_WORKERS_CPU_AMX_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* LDTILECFG's 64-byte operand, palette 1: rows and bytes per row of tiles 0..15. */
typedef struct wrk_amx_cfg {
    uint8_t palette, start_row, rsvd[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) wrk_amx_cfg_t;

/* A zeroed palette-1 configuration (every tile unused until its rows and colsb are set). */
static inline void wrk_amx_cfg_init(wrk_amx_cfg_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->palette = 1;
}

/* Linux hands out the AMX tile state only on request (ARCH_REQ_XCOMP_PERM, 5.16+); the grant
 * is per process, so both kernels may ask. NULL when granted, else why not. */
static inline const char *wrk_amx_request(void)
{
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0)
        return NULL;
    return errno == ENOSPC ? "the kernel refused AMX state (a signal stack is too small)"
                           : "the kernel does not grant AMX state (Linux 5.16 or later)";
}

#endif
