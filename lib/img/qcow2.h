/*
 * lib/img/qcow2.h — internals shared by the qcow2 driver's files (qcow2.c: header, open, create,
 * resize; qcow2-io.c: cluster mapping and guest I/O; qcow2-refcount.c: allocation; qcow2-cache.c;
 * qcow2-snapshot.c; qcow2-check.c; qcow2-compress.c).
 *
 * The idea: every metadata change is written through to the file at the moment it is made (in
 * the order refcount, data, L2 entry), so the in-memory caches are always clean, evicting is
 * free, and a crash or an ENOSPC can only ever leave leaked clusters behind, never a cluster
 * referenced twice. One mutex (img->lock) guards all metadata; guest data moves outside it.
 */
#ifndef VESSEL_IMG_QCOW2_H
#define VESSEL_IMG_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "img/driver.h"

#define QCOW2_MAGIC              0x514649fbu
#define QCOW2_MIN_CLUSTER_BITS   9
#define QCOW2_MAX_CLUSTER_BITS   21
#define QCOW2_MAX_L1_BYTES       (32u << 20) /* qemu's limit, so images stay interchangeable */
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)  /* likewise */
#define QCOW2_MAX_SNAPSHOTS      65536
#define QCOW2_MAX_SNAPSHOT_TABLE (64u << 20) /* bytes of snapshot table we are willing to parse */
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_BACKING_NAME   1023

/* incompatible features */
#define QCOW2_INCOMPAT_DIRTY       (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN                                                                       \
    (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE |                    \
     QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

/* header extensions */
#define QCOW2_EXT_END            0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE  0x6803f857u
#define QCOW2_EXT_BITMAPS        0x23852875u
#define QCOW2_EXT_CRYPTO         0x0537be77u
#define QCOW2_EXT_DATA_FILE      0x44415441u

/* table entries */
#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       1ull
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull /* L1 and standard L2 entries */
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* What a guest cluster (or, with extended L2 entries, subcluster) currently is. */
enum qcow2_ctype {
    QCOW2_UNALLOCATED,
    QCOW2_ZERO_PLAIN,
    QCOW2_ZERO_ALLOC,
    QCOW2_NORMAL,
    QCOW2_COMPRESSED,
};

/* Kinds of metadata, for the overlap check before every write. */
enum qcow2_meta_kind {
    QCOW2_META_HEADER = 1 << 0,
    QCOW2_META_ACTIVE_L1 = 1 << 1,
    QCOW2_META_ACTIVE_L2 = 1 << 2,
    QCOW2_META_REFTABLE = 1 << 3,
    QCOW2_META_REFBLOCK = 1 << 4,
    QCOW2_META_SNAPSHOT_TABLE = 1 << 5,
    QCOW2_META_INACTIVE_L1 = 1 << 6,
};

/* A bounded cache of cluster-sized tables (L2 tables or refcount blocks), held exactly as on
 * disk. Always clean: writers update the cached copy and the file together. */
struct qcow2_cache_slot {
    uint64_t offset; /* 0 = empty */
    uint8_t *data;
    int32_t next; /* hash chain */
    uint8_t referenced;
};

struct qcow2_cache {
    struct qcow2_cache_slot *slots;
    size_t nslots;
    size_t used;
    int32_t *buckets;
    size_t nbuckets;
    size_t hand;
    uint32_t table_size;
    uint64_t hits, misses;
};

/* A hash set of cluster indices with a small value per entry (open addressing). */
struct qcow2_set {
    uint64_t *keys; /* cluster index + 1; 0 = empty */
    uint8_t *vals;
    size_t cap; /* power of two */
    size_t count;
};

struct qcow2_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    char *id;
    char *name;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;
    bool has_disk_size;
    uint64_t icount;
    bool has_icount;
    uint32_t unknown_extra_size; /* extra data beyond what we know, preserved */
    uint8_t *unknown_extra;
};

struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

/* A guest cluster range being allocated by some thread, whose L2 entries are not written yet. */
struct qcow2_inflight_alloc {
    uint64_t first;
    uint64_t count;
    bool used;
};

#define QCOW2_MAX_INFLIGHT_ALLOCS 64

struct qcow2_state {
    struct img *img;
    struct img *file;

    /* header */
    uint32_t version;
    uint32_t cluster_bits;
    uint32_t cluster_size;
    uint64_t incompat;
    uint64_t compat;
    uint64_t autoclear;
    uint32_t refcount_order;
    uint32_t refcount_bits;
    uint64_t refcount_max;
    uint32_t header_length;
    uint8_t *header_tail; /* unknown additional header fields past byte 112, preserved */
    uint32_t header_tail_len;
    int compression_type;
    uint32_t nb_exts;
    struct qcow2_ext *exts;        /* unknown header extensions, preserved */
    char feature_names[3][64][47]; /* from the feature name table, for messages */
    /* persistent dirty bitmaps (extension kept as is; we only mark them in use and count their
     * clusters in check) */
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_offset;
    uint64_t bitmap_dir_size;

    /* geometry */
    bool extended_l2;
    uint32_t l2_entry_size; /* 8 or 16 bytes */
    uint32_t l2_bits;       /* log2(entries per L2 table) */
    uint32_t l2_entries;
    uint32_t subcluster_bits;
    uint32_t subcluster_size;
    uint32_t csize_shift; /* compressed descriptor layout */
    uint64_t csize_mask;
    uint64_t cluster_offset_mask;
    uint32_t rb_bits; /* log2(refcount entries per refcount block) */
    uint64_t rb_entries;

    /* active L1, host byte order */
    uint64_t *l1;
    uint32_t l1_size;
    uint64_t l1_offset;

    /* refcount table, host byte order */
    uint64_t *reftable;
    uint64_t reftable_size; /* entries */
    uint64_t reftable_offset;
    uint32_t reftable_clusters;
    bool reftable_moving; /* being relocated: entry changes stay in memory for now */

    /* snapshots */
    struct qcow2_snapshot *snapshots;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size; /* bytes of the on-disk table */

    struct qcow2_cache l2_cache;
    struct qcow2_cache rb_cache;
    struct qcow2_set meta;       /* metadata clusters -> enum qcow2_meta_kind bits */
    struct qcow2_set quarantine; /* freed while guest I/O was in flight: not reusable yet */

    uint64_t free_cluster_index; /* no free cluster below this */
    uint64_t fresh_start;        /* clusters at or beyond this offset were never written */
    uint64_t file_size_hint;     /* current notion of the container's size */
    uint64_t free_byte_offset;   /* tail of the last cluster used for compressed data, or 0 */
    uint32_t *check_refs;        /* during repair: clusters the check saw referenced */
    uint64_t check_refs_count;

    /* concurrency */
    int inflight_io; /* guest data transfers running outside the lock */
    struct qcow2_inflight_alloc allocs[QCOW2_MAX_INFLIGHT_ALLOCS];
    pthread_cond_t alloc_done;

    bool writable;
    bool corrupt;
    bool dirty_set_by_us;
    bool lazy_refcounts;
};

/* ---- qcow2.c ---- */
int qcow2_file_pread(struct qcow2_state *s, void *buf, uint64_t off, size_t len);
/* Write to the container after an overlap check against all metadata but ALLOWED kinds. */
int qcow2_file_pwrite(struct qcow2_state *s, const void *buf, uint64_t off, size_t len,
                      int allowed);
int qcow2_write_header(struct qcow2_state *s);
int qcow2_write_header_l1(struct qcow2_state *s);
int qcow2_write_header_reftable(struct qcow2_state *s);
int qcow2_write_header_snapshots(struct qcow2_state *s);
int qcow2_write_header_size(struct qcow2_state *s);
int qcow2_write_incompat(struct qcow2_state *s);
int qcow2_mark_corrupt(struct qcow2_state *s);
int qcow2_mark_dirty(struct qcow2_state *s);
uint64_t qcow2_l1_size_for(const struct qcow2_state *s, uint64_t virtual_size);
int qcow2_l1_grow(struct qcow2_state *s, uint64_t min_size);
int qcow2_l1_write_entries(struct qcow2_state *s, uint32_t first, uint32_t count);
int qcow2_truncate_internal(struct img *img, uint64_t size, int flags, const char *prealloc);

/* ---- qcow2-cache.c ---- */
int qcow2_cache_init(struct qcow2_cache *c, uint32_t table_size, size_t nslots);
void qcow2_cache_free(struct qcow2_cache *c);
uint8_t *qcow2_cache_find(struct qcow2_cache *c, uint64_t offset);
/* Slot for OFFSET (evicting another if needed), contents undefined; caller fills it. */
uint8_t *qcow2_cache_insert(struct qcow2_cache *c, uint64_t offset);
void qcow2_cache_drop(struct qcow2_cache *c, uint64_t offset);
void qcow2_cache_clear(struct qcow2_cache *c);

int qcow2_set_init(struct qcow2_set *set);
void qcow2_set_free(struct qcow2_set *set);
void qcow2_set_clear(struct qcow2_set *set);
int qcow2_set_add(struct qcow2_set *set, uint64_t key, uint8_t bits);
uint8_t qcow2_set_get(const struct qcow2_set *set, uint64_t key);
void qcow2_set_remove_bits(struct qcow2_set *set, uint64_t key, uint8_t bits);

/* ---- qcow2-refcount.c ---- */
int qcow2_refcount_get(struct qcow2_state *s, uint64_t cluster, uint64_t *rc);
int qcow2_refcount_set(struct qcow2_state *s, uint64_t cluster, uint64_t value);
/* Check repair: forget refcount block R (the table entry becomes 0, written through). */
int qcow2_reftable_drop(struct qcow2_state *s, uint64_t r);
/* Add DELTA to the refcount of each cluster in [offset, offset+len) (byte range, whole clusters
 * touched). A count reaching zero frees the cluster. */
int qcow2_refcount_update_range(struct qcow2_state *s, uint64_t offset, uint64_t len,
                                int64_t delta);
/* Apply DELTA once per element of a sorted list of cluster indices (duplicates count twice). */
int qcow2_refcount_update_sorted(struct qcow2_state *s, const uint64_t *clusters, size_t n,
                                 int64_t delta);
/* Allocate COUNT contiguous clusters with refcount 1; *offset is the first one's. */
int qcow2_alloc_clusters(struct qcow2_state *s, uint64_t count, uint64_t *offset);
/* Allocate SIZE bytes for compressed data, possibly sharing a cluster with earlier data. */
int qcow2_alloc_bytes(struct qcow2_state *s, uint64_t size, uint64_t *offset);
int qcow2_free_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len);
/* Drop the reference that an L2 entry holds on its host cluster(s). */
int qcow2_release_l2_entry(struct qcow2_state *s, uint64_t entry);
void qcow2_compressed_range(const struct qcow2_state *s, uint64_t entry, uint64_t *coffset,
                            uint64_t *csize);
int qcow2_refcount_load_block(struct qcow2_state *s, uint64_t block_offset, uint8_t **out);
uint64_t qcow2_refcount_block_get(const struct qcow2_state *s, const uint8_t *block,
                                  uint64_t index);
void qcow2_refcount_block_put(const struct qcow2_state *s, uint8_t *block, uint64_t index,
                              uint64_t value);
int qcow2_meta_rebuild(struct qcow2_state *s);
int qcow2_check_overlap(struct qcow2_state *s, uint64_t offset, uint64_t len, int allowed);
void qcow2_io_begin(struct qcow2_state *s);
void qcow2_io_end(struct qcow2_state *s);
/* Highest cluster index with a nonzero refcount, +1 (0 when none). */
int qcow2_refcount_end(struct qcow2_state *s, uint64_t *end);

/* ---- qcow2-io.c ---- */
int qcow2_pread(struct img *img, void *buf, uint64_t offset, size_t len);
int qcow2_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len);
int qcow2_pwrite_compressed(struct img *img, const void *buf, uint64_t offset, size_t len);
int qcow2_discard(struct img *img, uint64_t offset, uint64_t len);
int qcow2_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags);
int qcow2_block_status(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                       uint64_t *host_offset);
int qcow2_make_empty(struct img *img);
int qcow2_l2_load(struct qcow2_state *s, uint64_t l2_offset, uint8_t **out);
uint64_t qcow2_l2_get(const struct qcow2_state *s, const uint8_t *table, uint32_t index,
                      uint64_t *bitmap);
void qcow2_l2_put(const struct qcow2_state *s, uint8_t *table, uint32_t index, uint64_t entry,
                  uint64_t bitmap);
int qcow2_l2_write(struct qcow2_state *s, uint64_t l2_offset, const uint8_t *table, uint32_t first,
                   uint32_t count);
enum qcow2_ctype qcow2_entry_type(const struct qcow2_state *s, uint64_t entry);
/* Allocate data clusters for guest range [offset, offset+len) without writing data. */
int qcow2_preallocate(struct qcow2_state *s, uint64_t offset, uint64_t len);
/* Internal writes that may reach beyond img->size (within the last cluster). */
int qcow2_zero_range(struct img *img, uint64_t offset, uint64_t len);
/* Change the L2 entries of whole clusters in [offset, offset+len): TO_ZERO makes them read as
 * zeros (keeping the host cluster unless UNMAP), FULL makes them unallocated, neither means
 * "discard" (unallocated, or zero when a backing file would shine through on v3). */
int qcow2_discard_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len, bool to_zero,
                           bool unmap, bool full);

/* ---- qcow2-compress.c ---- */
/* Compress IN (one cluster) into OUT (capacity out_len): bytes used, or -ENOSPC when it doesn't
 * shrink, or another negative errno. */
ssize_t qcow2_compress(int type, void *out, size_t out_len, const void *in, size_t in_len);
int qcow2_decompress(int type, void *out, size_t out_len, const void *in, size_t in_len);

/* ---- qcow2-snapshot.c ---- */
int qcow2_snapshots_read(struct qcow2_state *s);
void qcow2_snapshots_free(struct qcow2_snapshot *sn, uint32_t count);
int qcow2_snapshot_create(struct img *img, const char *name);
int qcow2_snapshot_list(struct img *img, struct img_snapshot **list, size_t *count);
int qcow2_snapshot_apply(struct img *img, const char *name);
int qcow2_snapshot_delete(struct img *img, const char *name);
/* Every cluster an L1 table references (L2 tables and data, compressed spans per cluster),
 * sorted, duplicates kept. */
int qcow2_l1_collect_refs(struct qcow2_state *s, const uint64_t *l1, uint32_t l1_size,
                          uint64_t **out, size_t *count);
/* Set or clear OFLAG_COPIED in the active L1/L2 tables from the refcounts. */
int qcow2_update_copied_flags(struct qcow2_state *s);

/* Visit every cluster the persistent bitmaps use (directory, tables, data). */
int qcow2_bitmaps_walk(struct qcow2_state *s, void (*visit)(void *ctx, uint64_t off, uint64_t len),
                       void *ctx);

/* ---- qcow2-check.c ---- */
int qcow2_check(struct img *img, struct img_check *result, int fix);
int qcow2_check_repair_all(struct qcow2_state *s);

/* byte order */
static inline uint64_t qcow2_be64(const uint8_t *p)
{
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}
static inline uint32_t qcow2_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t qcow2_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline void qcow2_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}
static inline void qcow2_put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}
static inline void qcow2_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

#endif
