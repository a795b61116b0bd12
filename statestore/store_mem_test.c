/* Unit tests of the in-memory session store. */
#include "statestore/store.h"
#include "tests/rcd_test.h"

#include <string.h>

static void test_lifecycle(void)
{
    store_opts_t o = {.state_bytes = 16, .max_sessions = 3};
    store_t *s = NULL;
    CHECK(store_mem_open(&o, &s, NULL, 0) == 0);
    store_meta_t md[2] = {{"user", "ann"}, {"topic", "x"}};
    store_session_t r = {0};
    CHECK(store_create(s, "a", md, 2, 100, &r) == 0);
    CHECK(r.version == 0 && !r.has_state && r.n_meta == 2);
    CHECK(r.meta && strcmp(r.meta[1].value, "x") == 0);
    store_session_clear(&r);
    CHECK(store_create(s, "a", NULL, 0, 100, NULL) == RCD_EEXISTS);
    CHECK(store_create(s, "bad id", NULL, 0, 100, NULL) == RCD_EINVAL);
    CHECK(store_create(s, "", NULL, 0, 100, NULL) == RCD_EINVAL);
    unsigned char st[16], back[16];
    memset(st, 7, sizeof(st));
    uint64_t v = 99;
    CHECK(store_read_state(s, "a", &v, back) == RCD_EAGAIN && v == 0);
    CHECK(store_commit(s, "a", 1, st, 5, 200, &v) == RCD_EMISMATCH);
    CHECK(store_commit(s, "a", 0, st, 5, 200, &v) == 0 && v == 1);
    CHECK(store_read_state(s, "a", &v, back) == 0 && v == 1 && memcmp(st, back, 16) == 0);
    CHECK(store_fork(s, "a", "b", NULL, 0, 300, &r) == 0);
    CHECK(r.version == 1 && r.n_tokens == 5 && r.has_state && strcmp(r.parent_id, "a") == 0);
    CHECK(r.n_meta == 2);
    store_session_clear(&r);
    memset(st, 9, sizeof(st));
    CHECK(store_commit(s, "b", 1, st, 3, 400, &v) == 0 && v == 2);
    CHECK(store_read_state(s, "a", &v, back) == 0 && back[0] == 7); /* fork is a copy */
    CHECK(store_get(s, "b", &r) == 0 && r.n_tokens == 8 && r.updated_ms == 400);
    store_session_clear(&r);
    CHECK(store_fork(s, "zz", "c", NULL, 0, 1, NULL) == RCD_ENOTFOUND);
    CHECK(store_create(s, "c", NULL, 0, 1, NULL) == 0);
    CHECK(store_create(s, "d", NULL, 0, 1, NULL) == RCD_ETOOBIG);
    CHECK(store_count(s) == 3);
    CHECK(store_delete(s, "a") == 0);
    CHECK(store_delete(s, "a") == RCD_ENOTFOUND);
    CHECK(store_get(s, "a", NULL) == RCD_ENOTFOUND);
    CHECK(store_count(s) == 2);
    store_close(s);
}

static void test_many(void)
{
    store_opts_t o = {.state_bytes = 8, .max_sessions = 5000};
    store_t *s = NULL;
    CHECK(store_mem_open(&o, &s, NULL, 0) == 0);
    char id[32];
    int bad = 0;
    for (int i = 0; i < 4000; i++) {
        snprintf(id, sizeof(id), "s%d", i);
        bad += store_create(s, id, NULL, 0, i, NULL) != 0;
    }
    for (int i = 0; i < 4000; i += 2) {
        snprintf(id, sizeof(id), "s%d", i);
        bad += store_delete(s, id) != 0;
    }
    CHECK(bad == 0);
    CHECK(store_count(s) == 2000);
    CHECK(store_get(s, "s3", NULL) == 0 && store_get(s, "s4", NULL) == RCD_ENOTFOUND);
    store_close(s);
}

int main(void)
{
    RUN(test_lifecycle);
    RUN(test_many);
    return rcd_test_summary();
}
