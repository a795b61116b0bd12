/* daemon: the protobuf wire walk behind dmn_wire_scan. It runs after protobuf_c_message_unpack
 * accepted the same bytes, yet checks every bound itself: no request byte reaches an assert. */
#include "daemon/dmn_wire.h"

#include <stddef.h>
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

static size_t put_varint(uint64_t v, uint8_t *out)
{
    size_t n = 0;
    do {
        uint8_t b = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (out) out[n] = (uint8_t)(b | (v ? 0x80 : 0));
        n++;
    } while (v);
    return n;
}

size_t dmn_wire_pack_text(const ProtobufCMessage *msg, size_t text_len, uint8_t *out)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, "text");
    /* a shallow copy with `text` emptied; the replies are a few hundred bytes */
    _Alignas(max_align_t) unsigned char copy[1024];
    if (!text_len || !f || f->type != PROTOBUF_C_TYPE_STRING ||
        f->label == PROTOBUF_C_LABEL_REPEATED || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
        d->sizeof_message > sizeof(copy))
        return out ? protobuf_c_message_pack(msg, out) : protobuf_c_message_get_packed_size(msg);
    memcpy(copy, msg, d->sizeof_message);
    const char *text = *(char *const *)(copy + f->offset);
    *(const char **)(copy + f->offset) = "";
    const ProtobufCMessage *rest = (const ProtobufCMessage *)(const void *)copy;
    size_t n = put_varint((uint64_t)f->id << 3 | 2, out);
    n += put_varint(text_len, out ? out + n : NULL);
    if (out) memcpy(out + n, text, text_len);
    n += text_len;
    return n + (out ? protobuf_c_message_pack(rest, out + n)
                    : protobuf_c_message_get_packed_size(rest));
}
