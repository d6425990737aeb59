/*
 * lib/img/qcow2-cache.c — the qcow2 driver's table cache (L2 tables, refcount blocks) and a small
 * hash set of cluster indices (metadata map for overlap checks, quarantined clusters).
 *
 * The idea: the cache never holds dirty data (writers update file and cache together), so
 * eviction is just forgetting a slot; a clock hand picks the victim, a hash finds a table in O(1).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "img/qcow2.h"

static size_t cache_hash(const struct qcow2_cache *c, uint64_t offset)
{
    uint64_t h = (offset >> 9) * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 32) & (c->nbuckets - 1);
}

int qcow2_cache_init(struct qcow2_cache *c, uint32_t table_size, size_t nslots)
{
    memset(c, 0, sizeof(*c));
    if (nslots < 4)
        nslots = 4;
    c->table_size = table_size;
    c->nslots = nslots;
    c->nbuckets = 1;
    while (c->nbuckets < nslots * 2)
        c->nbuckets <<= 1;
    c->slots = vs_calloc(nslots, sizeof(*c->slots));
    c->buckets = vs_malloc(c->nbuckets * sizeof(*c->buckets));
    if (!c->slots || !c->buckets) {
        qcow2_cache_free(c);
        return -ENOMEM;
    }
    for (size_t i = 0; i < c->nbuckets; i++)
        c->buckets[i] = -1;
    return 0;
}

void qcow2_cache_free(struct qcow2_cache *c)
{
    if (c->slots)
        for (size_t i = 0; i < c->nslots; i++)
            free(c->slots[i].data);
    free(c->slots);
    free(c->buckets);
    memset(c, 0, sizeof(*c));
}

static int32_t cache_lookup(struct qcow2_cache *c, uint64_t offset)
{
    for (int32_t i = c->buckets[cache_hash(c, offset)]; i >= 0; i = c->slots[i].next)
        if (c->slots[i].offset == offset)
            return i;
    return -1;
}

uint8_t *qcow2_cache_find(struct qcow2_cache *c, uint64_t offset)
{
    int32_t i = cache_lookup(c, offset);
    if (i < 0) {
        c->misses++;
        return NULL;
    }
    c->hits++;
    c->slots[i].referenced = 1;
    return c->slots[i].data;
}

static void cache_unlink(struct qcow2_cache *c, int32_t idx)
{
    int32_t *p = &c->buckets[cache_hash(c, c->slots[idx].offset)];
    while (*p >= 0 && *p != idx)
        p = &c->slots[*p].next;
    if (*p == idx)
        *p = c->slots[idx].next;
    c->slots[idx].offset = 0;
    c->slots[idx].next = -1;
    c->used--;
}

uint8_t *qcow2_cache_insert(struct qcow2_cache *c, uint64_t offset)
{
    int32_t idx = cache_lookup(c, offset);
    if (idx >= 0) {
        c->slots[idx].referenced = 1;
        return c->slots[idx].data;
    }
    if (c->used < c->nslots) {
        for (size_t i = 0; i < c->nslots; i++)
            if (c->slots[(c->hand + i) % c->nslots].offset == 0) {
                idx = (int32_t)((c->hand + i) % c->nslots);
                break;
            }
    }
    while (idx < 0) {
        struct qcow2_cache_slot *sl = &c->slots[c->hand];
        if (sl->referenced) {
            sl->referenced = 0;
        } else {
            idx = (int32_t)c->hand;
            cache_unlink(c, idx);
        }
        c->hand = (c->hand + 1) % c->nslots;
    }
    struct qcow2_cache_slot *sl = &c->slots[idx];
    if (!sl->data) {
        sl->data = vs_aligned_alloc(4096, c->table_size);
        if (!sl->data)
            return NULL;
    }
    sl->offset = offset;
    sl->referenced = 1;
    size_t b = cache_hash(c, offset);
    sl->next = c->buckets[b];
    c->buckets[b] = idx;
    c->used++;
    return sl->data;
}

void qcow2_cache_drop(struct qcow2_cache *c, uint64_t offset)
{
    int32_t idx = cache_lookup(c, offset);
    if (idx >= 0)
        cache_unlink(c, idx);
}

void qcow2_cache_clear(struct qcow2_cache *c)
{
    for (size_t i = 0; i < c->nslots; i++) {
        c->slots[i].offset = 0;
        c->slots[i].next = -1;
    }
    for (size_t i = 0; i < c->nbuckets; i++)
        c->buckets[i] = -1;
    c->used = 0;
}

/* ---- hash set ---- */

static size_t set_slot(const struct qcow2_set *set, uint64_t key)
{
    return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & (set->cap - 1);
}

int qcow2_set_init(struct qcow2_set *set)
{
    memset(set, 0, sizeof(*set));
    set->cap = 64;
    set->keys = vs_calloc(set->cap, sizeof(*set->keys));
    set->vals = vs_calloc(set->cap, 1);
    if (!set->keys || !set->vals) {
        qcow2_set_free(set);
        return -ENOMEM;
    }
    return 0;
}

void qcow2_set_free(struct qcow2_set *set)
{
    free(set->keys);
    free(set->vals);
    memset(set, 0, sizeof(*set));
}

void qcow2_set_clear(struct qcow2_set *set)
{
    if (set->count) {
        memset(set->keys, 0, set->cap * sizeof(*set->keys));
        memset(set->vals, 0, set->cap);
    }
    set->count = 0;
}

static int set_grow(struct qcow2_set *set)
{
    struct qcow2_set n = {0};
    n.cap = set->cap * 2;
    n.keys = vs_calloc(n.cap, sizeof(*n.keys));
    n.vals = vs_calloc(n.cap, 1);
    if (!n.keys || !n.vals) {
        free(n.keys);
        free(n.vals);
        return -ENOMEM;
    }
    for (size_t i = 0; i < set->cap; i++) {
        if (!set->keys[i])
            continue;
        size_t j = set_slot(&n, set->keys[i]);
        while (n.keys[j])
            j = (j + 1) & (n.cap - 1);
        n.keys[j] = set->keys[i];
        n.vals[j] = set->vals[i];
        n.count++;
    }
    free(set->keys);
    free(set->vals);
    *set = n;
    return 0;
}

int qcow2_set_add(struct qcow2_set *set, uint64_t key, uint8_t bits)
{
    key++;
    if ((set->count + 1) * 2 > set->cap) {
        int rc = set_grow(set);
        if (rc)
            return rc;
    }
    size_t j = set_slot(set, key);
    while (set->keys[j] && set->keys[j] != key)
        j = (j + 1) & (set->cap - 1);
    if (!set->keys[j]) {
        set->keys[j] = key;
        set->count++;
    }
    set->vals[j] |= bits;
    return 0;
}

uint8_t qcow2_set_get(const struct qcow2_set *set, uint64_t key)
{
    if (!set->count)
        return 0;
    key++;
    size_t j = set_slot(set, key);
    while (set->keys[j]) {
        if (set->keys[j] == key)
            return set->vals[j];
        j = (j + 1) & (set->cap - 1);
    }
    return 0;
}

void qcow2_set_remove_bits(struct qcow2_set *set, uint64_t key, uint8_t bits)
{
    if (!set->count)
        return;
    key++;
    size_t j = set_slot(set, key);
    while (set->keys[j] && set->keys[j] != key)
        j = (j + 1) & (set->cap - 1);
    if (!set->keys[j])
        return;
    set->vals[j] &= (uint8_t)~bits;
    if (set->vals[j])
        return;
    /* backward-shift deletion keeps probe chains intact without tombstones */
    set->keys[j] = 0;
    set->count--;
    size_t i = j;
    for (;;) {
        i = (i + 1) & (set->cap - 1);
        if (!set->keys[i])
            break;
        size_t home = set_slot(set, set->keys[i]);
        /* move keys[i] to the hole at j if its home is not within (j, i] */
        bool between = (j < i) ? (home > j && home <= i) : (home > j || home <= i);
        if (!between) {
            set->keys[j] = set->keys[i];
            set->vals[j] = set->vals[i];
            set->keys[i] = 0;
            set->vals[i] = 0;
            j = i;
        }
    }
}
