/* The intrusive LRU list: order, touch, unlink at every position, membership. */
#include "common/rcd_lru.h"
#include "tests/support/rcd_test.h"

typedef struct {
    int id;
    rcd_lru_node_t lru;
} item_t;

/* The ids from most to least recently used, checked against the backward walk too. */
static int order_is(const rcd_lru_t *l, const int *want, size_t n)
{
    size_t i = 0;
    for (const rcd_lru_node_t *x = l->head; x; x = x->next, i++)
        if (i >= n || RCD_CONTAINER_OF(x, item_t, lru)->id != want[i]) return 0;
    if (i != n || l->n != n) return 0;
    for (const rcd_lru_node_t *x = l->tail; x; x = x->prev)
        if (RCD_CONTAINER_OF(x, item_t, lru)->id != want[--i]) return 0;
    return i == 0;
}

static void test_lru(void)
{
    rcd_lru_t l = {0};
    item_t it[4] = {{0, {0}}, {1, {0}}, {2, {0}}, {3, {0}}};
    CHECK(rcd_lru_oldest(&l) == NULL && order_is(&l, NULL, 0));
    CHECK(!rcd_lru_linked(&l, &it[0].lru));
    rcd_lru_push(&l, &it[0].lru);
    CHECK(rcd_lru_linked(&l, &it[0].lru)); /* alone: both links NULL, yet on the list */
    for (int i = 1; i < 4; i++)
        rcd_lru_push(&l, &it[i].lru);
    CHECK(order_is(&l, (int[]){3, 2, 1, 0}, 4));
    CHECK(RCD_CONTAINER_OF(rcd_lru_oldest(&l), item_t, lru) == &it[0]);
    rcd_lru_touch(&l, &it[1].lru); /* middle */
    CHECK(order_is(&l, (int[]){1, 3, 2, 0}, 4));
    rcd_lru_touch(&l, &it[0].lru); /* tail */
    CHECK(order_is(&l, (int[]){0, 1, 3, 2}, 4));
    rcd_lru_touch(&l, &it[0].lru); /* head: no change */
    CHECK(order_is(&l, (int[]){0, 1, 3, 2}, 4));
    rcd_lru_unlink(&l, &it[1].lru); /* middle */
    CHECK(order_is(&l, (int[]){0, 3, 2}, 3) && !rcd_lru_linked(&l, &it[1].lru));
    rcd_lru_unlink(&l, &it[0].lru); /* head */
    CHECK(order_is(&l, (int[]){3, 2}, 2));
    rcd_lru_unlink(&l, &it[2].lru); /* tail */
    CHECK(order_is(&l, (int[]){3}, 1) && rcd_lru_oldest(&l) == &it[3].lru);
    rcd_lru_unlink(&l, &it[3].lru); /* last */
    CHECK(order_is(&l, NULL, 0) && !l.head && !l.tail);
    rcd_lru_push(&l, &it[2].lru); /* reusable after unlink */
    CHECK(order_is(&l, (int[]){2}, 1));
}

int main(int argc, char **argv)
{
    rcd_test_init(argc, argv);
    RUN(test_lru);
    return rcd_test_summary();
}
