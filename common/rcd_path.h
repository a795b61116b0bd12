/* recurd's one way to build a file path: a checked join and a checked format. A path that
 * would not fit is an error (RCD_ERANGE), never a silently shortened name that opens,
 * renames or deletes some other file. */
#ifndef RCD_PATH_H
#define RCD_PATH_H

#include <stddef.h>

/* Bytes of the longest path, NUL included (Linux PATH_MAX): the size of a path buffer. */
#define RCD_PATH_MAX 4096

/* Writes dir + "/" + name into dst[cap] (cap: the buffer's size, NUL included). Slashes at
 * the end of dir and at the start of name collapse into one separator, except that a dir
 * of only slashes stays "/" ("/" + "a" -> "/a"). An empty dir yields name unchanged; an
 * empty name, or one of only slashes, yields dir unchanged. Returns 0, or RCD_ERANGE when
 * the result does not fit in cap or is RCD_PATH_MAX bytes or longer (dst is then ""), or
 * RCD_EINVAL for a NULL argument or cap 0. */
int rcd_path_join(char *dst, size_t cap, const char *dir, const char *name);

/* snprintf into dst[cap] with the same rule: 0, or RCD_ERANGE (dst "") when the result does
 * not fit in cap or is RCD_PATH_MAX bytes or longer, RCD_EINVAL for a NULL dst or cap 0. */
int rcd_path_fmt(char *dst, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
