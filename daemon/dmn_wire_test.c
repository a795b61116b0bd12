/* Unit tests of dmn_wire_scan: a NUL byte in an id, owner, metadata or stop string is found
 * (with its field path) where protobuf-c's unpack cuts the string short; text keeps its real
 * length; malformed wire data is refused. Inputs are hand-encoded: protobuf-c packs strings
 * with strlen and cannot write a NUL byte into one. */
#include "daemon/dmn_wire.h"
#include "tests/support/rcd_test.h"

#include <string.h>

#include "common/rcd_error.h"
#include "recurd/v1/inference.pb-c.h"

#define SCAN(desc, bytes, w)                                                                       \
    dmn_wire_scan(&(desc), (const uint8_t *)(bytes), sizeof(bytes) - 1, (w))

static void test_ids(void)
{
    dmn_wire_t w;
    /* GetSessionRequest{session_id: "a\0zz"}: protobuf-c reads "a" */
    static const char get[] = "\x0a\x04"
                              "a\0zz";
    Recurd__V1__GetSessionRequest *g =
        recurd__v1__get_session_request__unpack(NULL, sizeof(get) - 1, (const uint8_t *)get);
    CHECK(g && strcmp(g->session_id, "a") == 0);
    recurd__v1__get_session_request__free_unpacked(g, NULL);
    CHECK(SCAN(recurd__v1__get_session_request__descriptor, get, &w) == 0);
    CHECK(strcmp(w.bad, "session_id") == 0);
    /* the same id without the NUL passes */
    CHECK(SCAN(recurd__v1__get_session_request__descriptor,
               "\x0a\x03"
               "azz",
               &w) == 0);
    CHECK(w.bad[0] == 0 && w.text_len == 0);
    /* ForkSessionRequest: new_session_id "\0", owner "bob\0evil" (the first one is named) */
    CHECK(SCAN(recurd__v1__fork_session_request__descriptor,
               "\x0a\x01s"
               "\x12\x01\0"
               "\x22\x08"
               "bob\0evil",
               &w) == 0);
    CHECK(strcmp(w.bad, "new_session_id") == 0);
    CHECK(SCAN(recurd__v1__create_session_request__descriptor,
               "\x22\x08"
               "bob\0evil",
               &w) == 0);
    CHECK(strcmp(w.bad, "owner") == 0);
    /* a second occurrence of a field (the last one wins in protobuf-c) is checked too */
    CHECK(SCAN(recurd__v1__delete_session_request__descriptor, "\x0a\x01x\x0a\x02x\0", &w) == 0);
    CHECK(strcmp(w.bad, "session_id") == 0);
}

static void test_nested(void)
{
    dmn_wire_t w;
    /* CreateSessionRequest{metadata: [{key: "k", value: "v"}, {key: "k\0x", value: "v"}]} */
    CHECK(SCAN(recurd__v1__create_session_request__descriptor,
               "\x1a\x06\x0a\x01k\x12\x01v"
               "\x1a\x08\x0a\x03k\0x\x12\x01v",
               &w) == 0);
    CHECK(strcmp(w.bad, "metadata.key") == 0);
    CHECK(SCAN(recurd__v1__create_session_request__descriptor, "\x1a\x07\x0a\x01k\x12\x02v\0",
               &w) == 0);
    CHECK(strcmp(w.bad, "metadata.value") == 0);
    /* GenerateRequest{sampling: {stop: ["a\0"]}} */
    CHECK(SCAN(recurd__v1__generate_request__descriptor,
               "\x2a\x04\x52\x02"
               "a\0",
               &w) == 0);
    CHECK(strcmp(w.bad, "sampling.stop") == 0);
    /* an unknown field may hold anything: the daemon never reads it */
    CHECK(SCAN(recurd__v1__get_session_request__descriptor,
               "\xa2\x06\x02x\0"
               "\x0a\x01s",
               &w) == 0);
    CHECK(w.bad[0] == 0);
}

static void test_text(void)
{
    dmn_wire_t w;
    /* TokenizeRequest{text: "ab\0cd"}: 5 bytes, not refused */
    CHECK(SCAN(recurd__v1__tokenize_request__descriptor,
               "\x12\x05"
               "ab\0cd",
               &w) == 0);
    CHECK(w.bad[0] == 0 && w.text_len == 5);
    /* GenerateRequest{session_id: "s", text: "\0"}: the last text counts */
    CHECK(SCAN(recurd__v1__generate_request__descriptor,
               "\x12\x01s"
               "\x1a\x03xyz"
               "\x1a\x01\0",
               &w) == 0);
    CHECK(w.bad[0] == 0 && w.text_len == 1);
    CHECK(SCAN(recurd__v1__generate_request__descriptor, "\x12\x01s", &w) == 0);
    CHECK(w.text_len == 0);
}

static void test_malformed(void)
{
    dmn_wire_t w;
    const ProtobufCMessageDescriptor *d = &recurd__v1__generate_request__descriptor;
    CHECK(dmn_wire_scan(d, NULL, 0, &w) == 0);
    CHECK(SCAN(*d,
               "\x12\x05"
               "ab",
               &w) == RCD_EINVAL);             /* length past the end */
    CHECK(SCAN(*d, "\x12", &w) == RCD_EINVAL); /* tag without length */
    CHECK(SCAN(*d, "\x40\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", &w) == RCD_EINVAL);
    CHECK(SCAN(*d, "\x00\x01", &w) == RCD_EINVAL);         /* field number 0 */
    CHECK(SCAN(*d, "\x0b\x0c", &w) == RCD_EINVAL);         /* a group */
    CHECK(SCAN(*d, "\x2a\x02\x52\x05", &w) == RCD_EINVAL); /* inner length too long */
    CHECK(SCAN(*d,
               "\x31\x01\x02\x03\x04\x05\x06\x07\x08"
               "\x3d\x01\x02\x03\x04",
               &w) == 0);
    CHECK(SCAN(*d, "\x31\x01\x02", &w) == RCD_EINVAL); /* short fixed64 */
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_ids);
    RUN(test_nested);
    RUN(test_text);
    RUN(test_malformed);
    return rcd_test_summary();
}
