/* libFuzzer target for Redis replies, the bytes the shared tier's server (or whoever answers on
 * its port) sends the store: any input goes through hiredis's redisReader, as the connection
 * feeds it, once whole and once in small pieces (the replies must come out the same), and each
 * reply through the store's interpretation for every command (rds__reply) and, for a GET's bulk
 * string, the checks a shared-tier checkpoint must pass before it is used (store__shared_check,
 * against the model of the ckpt seeds: fingerprint 0x1122334455667788, 128 state bytes, 64 KV
 * bytes per position). Nothing may crash, leak or disagree. */
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/rcd_error.h"
#include "statestore/store_int.h"
#include "statestore/store_redis.h"

#define FZ_REQUIRE(c)                                                                              \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

#define FZ_MAX_REPLIES 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const redisReply *a, const redisReply *b)
{
    if (a->type != b->type || a->integer != b->integer || a->len != b->len ||
        a->elements != b->elements)
        return false;
    if (a->len && memcmp(a->str, b->str, a->len) != 0) return false;
    for (size_t i = 0; i < a->elements; i++)
        if (!same(a->element[i], b->element[i])) return false;
    return true;
}

/* What the store makes of one reply, for each command it could be answering. */
static void interpret(const redisReply *rep)
{
    static const char *const ids[] = {"fork-2", "chat.1:x-y"};
    for (int k = RDS_OP_GET; k <= RDS_OP_EVAL; k++) {
        const char *d;
        size_t n;
        char msg[400];
        int rc = rds__reply((rds_op_kind_t)k, rep, &d, &n, msg, sizeof(msg));
        FZ_REQUIRE(rc == 0 || rc == RCD_EIO || rc == RCD_EPRECONDITION);
        FZ_REQUIRE(rc == 0 ? msg[0] == 0 : msg[0] != 0);
        FZ_REQUIRE(rc != RCD_EPRECONDITION || rep->type == REDIS_REPLY_ERROR);
        if (k == RDS_OP_GET && rc == 0) {
            FZ_REQUIRE(d || rep->type == REDIS_REPLY_NIL);
            FZ_REQUIRE(!d || n == rep->len);
        }
        if (k != RDS_OP_GET || rc || !d) continue;
        for (int i = 0; i < 2; i++) {
            ckpt_hdr_t h = {0};
            int64_t hl;
            char why[400] = "";
            rc = store__shared_check(ids[i], 0x1122334455667788ull, 128, 64, d, n, &h, &hl, why,
                                     sizeof(why));
            FZ_REQUIRE(rc == 0 || rc == RCD_ECORRUPT || rc == RCD_EMISMATCH);
            FZ_REQUIRE(rc ? why[0] != 0
                          : (hl > 0 && (uint64_t)n == (uint64_t)hl + h.payload_bytes &&
                             !strcmp(h.id, ids[i])));
            ckpt_hdr_free(&h);
        }
    }
}

/* Feeds data in pieces of `step` bytes (0: whole); returns the replies read, up to the max. */
static int parse(const uint8_t *data, size_t size, size_t step, redisReply **out, bool *err)
{
    redisReader *r = rds__reader_new(); /* the connection's parser */
    FZ_REQUIRE(r);
    int n = 0;
    *err = false;
    for (size_t off = 0; off < size && !*err && n < FZ_MAX_REPLIES;) {
        size_t k = step && size - off > step ? step : size - off;
        FZ_REQUIRE(redisReaderFeed(r, (const char *)data + off, k) == REDIS_OK);
        off += k;
        while (n < FZ_MAX_REPLIES) {
            void *rep = NULL;
            if (redisReaderGetReply(r, &rep) != REDIS_OK) {
                *err = true;
                break;
            }
            if (!rep) break;
            out[n++] = rep;
        }
    }
    redisReaderFree(r);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static redisReply *a[FZ_MAX_REPLIES], *b[FZ_MAX_REPLIES];
    bool ea, eb;
    int na = parse(data, size, 0, a, &ea);
    int nb = parse(data, size, 1 + size % 13, b, &eb);
    /* Pieces change nothing: the same replies, the same protocol error (or none) after them. */
    if (na < FZ_MAX_REPLIES && nb < FZ_MAX_REPLIES) FZ_REQUIRE(na == nb && ea == eb);
    for (int i = 0; i < na && i < nb; i++)
        FZ_REQUIRE(same(a[i], b[i]));
    for (int i = 0; i < na; i++)
        interpret(a[i]);
    for (int i = 0; i < na; i++)
        freeReplyObject(a[i]);
    for (int i = 0; i < nb; i++)
        freeReplyObject(b[i]);
    return 0;
}
