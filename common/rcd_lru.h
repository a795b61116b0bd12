/* recurd's one LRU list: intrusive and doubly linked, NULL-terminated at both ends. An entry
 * embeds an rcd_lru_node_t and is found again with RCD_CONTAINER_OF; the list allocates
 * nothing. Used by the store's host cache and the prefix cache; their hash tables stay
 * their own (the keys differ in kind). Not thread-safe: the owner serializes. */
#ifndef RCD_LRU_H
#define RCD_LRU_H

#include <stdbool.h>
#include <stddef.h>

#define RCD_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

typedef struct rcd_lru_node {
    struct rcd_lru_node *prev; /* towards the most recently used */
    struct rcd_lru_node *next; /* towards the least recently used */
} rcd_lru_node_t;

typedef struct rcd_lru {
    rcd_lru_node_t *head; /* most recently used, or NULL */
    rcd_lru_node_t *tail; /* least recently used: the next to evict, or NULL */
    size_t n;
} rcd_lru_t;

/* Whether n is on l (a node off every list has both links NULL). */
static inline bool rcd_lru_linked(const rcd_lru_t *l, const rcd_lru_node_t *n)
{
    return n->prev || n->next || l->head == n;
}

/* Makes n, which is on no list, the most recently used. */
static inline void rcd_lru_push(rcd_lru_t *l, rcd_lru_node_t *n)
{
    n->prev = NULL;
    n->next = l->head;
    if (l->head) l->head->prev = n;
    l->head = n;
    if (!l->tail) l->tail = n;
    l->n++;
}

/* Takes n, which is on l, off it. */
static inline void rcd_lru_unlink(rcd_lru_t *l, rcd_lru_node_t *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        l->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        l->tail = n->prev;
    n->prev = n->next = NULL;
    l->n--;
}

/* Marks n, which is on l, as just used. */
static inline void rcd_lru_touch(rcd_lru_t *l, rcd_lru_node_t *n)
{
    if (l->head == n) return;
    rcd_lru_unlink(l, n);
    rcd_lru_push(l, n);
}

/* The least recently used node, or NULL when l is empty. */
static inline rcd_lru_node_t *rcd_lru_oldest(const rcd_lru_t *l)
{
    return l->tail;
}

#endif
