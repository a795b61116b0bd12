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

/* Reply text is packed at its real length: a NUL byte (a byte-fallback token for 0x00) stays. */
static void test_pack_text(void)
{
    uint8_t buf[256];
    dmn_wire_t w;
    Recurd__V1__DetokenizeResponse d = RECURD__V1__DETOKENIZE_RESPONSE__INIT;
    d.text = "a\0b";
    size_t n = dmn_wire_pack_text(&d.base, 3, NULL);
    CHECK(n == 5 && dmn_wire_pack_text(&d.base, 3, buf) == 5);
    CHECK(memcmp(buf, "\x0a\x03" "a\0b", 5) == 0);
    /* GenerateResponse: text first, then the other fields as protobuf-c packs them */
    Recurd__V1__GenerateResponse g = RECURD__V1__GENERATE_RESPONSE__INIT;
    int32_t ids[2] = {189, 7};
    static const char nul[] = "\0";
    g.text = (char *)nul;
    g.n_token_ids = 2;
    g.token_ids = ids;
    g.request_id = "r1";
    n = dmn_wire_pack_text(&g.base, 1, buf);
    CHECK(n == dmn_wire_pack_text(&g.base, 1, NULL));
    CHECK(dmn_wire_scan(&recurd__v1__generate_response__descriptor, buf, n, &w) == 0);
    CHECK(w.text_len == 1 && buf[0] == 0x0a && buf[1] == 1 && buf[2] == 0);
    Recurd__V1__GenerateResponse *u = recurd__v1__generate_response__unpack(NULL, n, buf);
    CHECK(u && u->n_token_ids == 2 && u->token_ids[0] == 189 && strcmp(u->request_id, "r1") == 0);
    recurd__v1__generate_response__free_unpacked(u, NULL);
    CHECK(g.text == nul); /* the message itself is untouched */
    /* text_len 0, or no text field: protobuf-c's own packing */
    g.text = "";
    CHECK(dmn_wire_pack_text(&g.base, 0, buf) == recurd__v1__generate_response__pack(&g, buf + 128));
    CHECK(memcmp(buf, buf + 128, recurd__v1__generate_response__get_packed_size(&g)) == 0);
    Recurd__V1__Session s = RECURD__V1__SESSION__INIT;
    s.session_id = "s1";
    CHECK(dmn_wire_pack_text(&s.base, 7, NULL) == recurd__v1__session__get_packed_size(&s));
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_ids);
    RUN(test_nested);
    RUN(test_text);
    RUN(test_malformed);
    RUN(test_pack_text);
    return rcd_test_summary();
}
