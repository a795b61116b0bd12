/* daemon: the protobuf wire walk behind dmn_wire_scan. It runs after protobuf_c_message_unpack
 * accepted the same bytes, yet checks every bound itself: no request byte reaches an assert. */
#include "daemon/dmn_wire.h"

#include <stdio.h>
#include <string.h>

#include "common/rcd_error.h"

#define WIRE_MAX_DEPTH 16 /* the request messages nest 2 deep; a cap keeps the stack bounded */

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return RCD_EINVAL;
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return RCD_EINVAL;
}

static int walk(const ProtobufCMessageDescriptor *d, const uint8_t *p, const uint8_t *end,
                const char *path, int depth, dmn_wire_t *out)
{
    if (depth > WIRE_MAX_DEPTH) return RCD_EINVAL;
    while (p < end) {
        uint64_t tag, n;
        if (read_varint(&p, end, &tag) || tag >> 3 == 0 || tag >> 3 > UINT32_MAX) return RCD_EINVAL;
        switch (tag & 7) {
        case 0:
            if (read_varint(&p, end, &n)) return RCD_EINVAL;
            continue;
        case 1:
            n = 8;
            break;
        case 5:
            n = 4;
            break;
        case 2:
            if (read_varint(&p, end, &n)) return RCD_EINVAL;
            break;
        default: /* groups: proto3 has none, and protobuf-c refuses them */
            return RCD_EINVAL;
        }
        if (n > (uint64_t)(end - p)) return RCD_EINVAL;
        const ProtobufCFieldDescriptor *f =
            (tag & 7) == 2 ? protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3))
                           : NULL;
        if (f && (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)) {
            char sub[sizeof(out->bad)];
            snprintf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "", f->name);
            if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                int rc = walk(f->descriptor, p, p + n, sub, depth + 1, out);
                if (rc) return rc;
            } else if (strcmp(f->name, "text") == 0) {
                if (depth == 0) out->text_len = (size_t)n;
            } else if (!out->bad[0] && memchr(p, 0, (size_t)n)) {
                snprintf(out->bad, sizeof(out->bad), "%s", sub);
            }
        }
        p += n;
    }
    return 0;
}

int dmn_wire_scan(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len,
                  dmn_wire_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!len) return 0;
    if (!buf) return RCD_EINVAL;
    return walk(d, buf, buf + len, "", 0, out);
}
