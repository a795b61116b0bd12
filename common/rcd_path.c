/* The checked path join and format (see rcd_path.h). */
#include "common/rcd_path.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/rcd_error.h"

/* The longest result dst may take: cap, and never a path the kernel would refuse. */
static size_t limit(size_t cap)
{
    return cap < RCD_PATH_MAX ? cap : RCD_PATH_MAX;
}

/* Copies src[0..n) and a NUL into dst, if that fits. */
static int put(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= limit(cap)) return RCD_ERANGE;
    memcpy(dst, src, n);
    dst[n] = 0;
    return 0;
}

int rcd_path_join(char *dst, size_t cap, const char *dir, const char *name)
{
    if (!dst || !cap) return RCD_EINVAL;
    dst[0] = 0;
    if (!dir || !name) return RCD_EINVAL;
    while (name[0] == '/' && dir[0])
        name++;
    size_t ld = strlen(dir), ln = strlen(name);
    if (!ld || !ln) return ld ? put(dst, cap, dir, ld) : put(dst, cap, name, ln);
    while (ld > 1 && dir[ld - 1] == '/')
        ld--;
    size_t sep = dir[ld - 1] == '/' ? 0 : 1; /* dir "/": its slash is the separator */
    if (ld + sep + ln >= limit(cap)) return RCD_ERANGE;
    memcpy(dst, dir, ld);
    if (sep) dst[ld] = '/';
    memcpy(dst + ld + sep, name, ln + 1);
    return 0;
}

int rcd_path_fmt(char *dst, size_t cap, const char *fmt, ...)
{
    if (!dst || !cap) return RCD_EINVAL;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= limit(cap)) {
        dst[0] = 0;
        return RCD_ERANGE;
    }
    return 0;
}
