/* daemon: checks a request's string fields by their wire length, which protobuf-c's char *
 * loses. A NUL byte inside an id, owner or metadata string would cut it short everywhere it is
 * read as a C string ("a\0zz" would name session "a"), so such requests are refused; the
 * prompt text keeps its NUL bytes and its real length. */
#ifndef DMN_WIRE_H
#define DMN_WIRE_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dmn_wire {
    /* The first string field that holds a NUL byte, as a path ("metadata.key",
     * "sampling.stop"); "" when none does. Fields named `text` may hold NUL bytes. */
    char bad[96];
    size_t text_len; /* the real length of the top-level `text` field (the last one sent); 0 */
} dmn_wire_t;

/* Walks buf as a message of type d (recursing into the sub-messages d knows) and fills out.
 * Returns 0, or RCD_EINVAL when buf is not well-formed protobuf wire data. */
int dmn_wire_scan(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len,
                  dmn_wire_t *out);

/* Packs a reply like protobuf_c_message_pack, except that its string field named `text`
 * (DetokenizeResponse, GenerateResponse) is written as text_len bytes, NUL bytes included:
 * protobuf-c packs strings by strlen and would cut the text at its first NUL. The field is
 * written by hand, then the rest of the message by protobuf-c with that field empty; `text`
 * is field 1 of both replies, so the bytes stay in field order. Messages without such a field
 * (or text_len 0) are packed as protobuf-c packs them. out NULL: returns the size only; else
 * writes that many bytes to out. */
size_t dmn_wire_pack_text(const ProtobufCMessage *msg, size_t text_len, uint8_t *out);

#endif
