/*
 * blk.c — the virtio-blk workload: capacity and identity, SHA-256 of sector ranges the host can
 * recompute, sequential and 4 KiB random read/write throughput with every byte verified, flush,
 * write-zeroes and discard, and a final SHA-256 of the region written.
 *
 * The idea: what is written is a pure function of (sector, generation), so any read can be
 * checked without keeping a copy, and a random pass only needs one bit per 4 KiB block to know
 * which generation a block holds. The request engine keeps `qd` requests in flight and kicks once
 * per polling round.
 */
#include "probe.h"

#define VIRTIO_BLK_F_SIZE_MAX     (1ull << 1)
#define VIRTIO_BLK_F_SEG_MAX      (1ull << 2)
#define VIRTIO_BLK_F_RO           (1ull << 5)
#define VIRTIO_BLK_F_BLK_SIZE     (1ull << 6)
#define VIRTIO_BLK_F_FLUSH        (1ull << 9)
#define VIRTIO_BLK_F_DISCARD      (1ull << 13)
#define VIRTIO_BLK_F_WRITE_ZEROES (1ull << 14)

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define SECTOR   512ull
#define MAX_QD   64
#define MAX_SEGS 32

struct blk_req_hdr {
    u32 type, reserved;
    u64 sector;
};

struct blk_slot {
    struct blk_req_hdr hdr;
    u8 status;
    u8 pad[7];
    u64 sector;
    u32 len;
    u8 *data;
};

struct blk {
    struct virtio_dev dev;
    struct virtqueue vq;
    u64 capacity; /* sectors */
    bool readonly;
    u32 size_max; /* bytes per data descriptor */
    u32 seg_max;  /* data descriptors per request */
    u32 qd;
    struct blk_slot *slots;
    u64 errors;
};

static const char *blk_param(struct blk *b, const char *key, char *buf, size_t size,
                             const char *def)
{
    snprint(buf, size, "probe.%s.%s", b->dev.name, key);
    const char *v = param_str(buf, NULL);
    if (v)
        return v;
    snprint(buf, size, "probe.blk.%s", key);
    return param_str(buf, def);
}

static u64 blk_param_u64(struct blk *b, const char *key, u64 def)
{
    char name[64];
    const char *v = blk_param(b, key, name, sizeof(name), NULL);
    u64 out;
    return v && parse_u64(v, NULL, &out) ? out : def;
}

/* Queue one request on slot `s`; data may be NULL for flush. */
static int blk_submit(struct blk *b, int s, u32 type, u64 sector, u8 *data, u32 len)
{
    struct blk_slot *slot = &b->slots[s];
    struct vbuf bufs[MAX_SEGS + 2];
    int n = 0;
    slot->hdr.type = type;
    slot->hdr.reserved = 0;
    slot->hdr.sector = sector;
    slot->status = 0xff;
    slot->sector = sector;
    slot->len = len;
    bufs[n++] = (struct vbuf){(u64)&slot->hdr, sizeof(slot->hdr), false};
    bool dev_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
    for (u32 off = 0; off < len && n < MAX_SEGS + 1;) {
        u32 chunk = len - off < b->size_max ? len - off : b->size_max;
        bufs[n++] = (struct vbuf){(u64)data + off, chunk, dev_writes};
        off += chunk;
    }
    bufs[n++] = (struct vbuf){(u64)&slot->status, 1, true};
    return vq_add(&b->vq, bufs, n, (u64)s) < 0 ? -1 : 0;
}

/* One request, synchronously. */
static int blk_io(struct blk *b, u32 type, u64 sector, void *data, u32 len)
{
    if (blk_submit(b, 0, type, sector, data, len) < 0)
        return test_error("%s: cannot queue a request", b->dev.name);
    vq_kick(&b->vq);
    u64 token;
    if (vq_wait(&b->vq, &token, NULL, 30000000) < 0)
        return test_error("%s: request type %u sector %llu timed out", b->dev.name, type,
                          (unsigned long long)sector);
    if (b->slots[0].status != 0)
        return -(int)b->slots[0].status - 1;
    return 0;
}

/* The pattern: each 8-byte word is a function of its sector, its index and a generation. */
static void pattern_fill(u8 *buf, u64 sector, u64 nsectors, u64 gen)
{
    u64 *w = (u64 *)buf;
    for (u64 s = 0; s < nsectors; s++)
        for (u64 i = 0; i < SECTOR / 8; i++)
            *w++ = mix64(((sector + s) << 6 | i) ^ (gen << 56));
}

static bool pattern_check(const u8 *buf, u64 sector, u64 nsectors, u64 gen)
{
    const u64 *w = (const u64 *)buf;
    for (u64 s = 0; s < nsectors; s++)
        for (u64 i = 0; i < SECTOR / 8; i++)
            if (*w++ != mix64(((sector + s) << 6 | i) ^ (gen << 56)))
                return false;
    return true;
}

/* ---- the streaming engine ---------------------------------------------------------------- */

struct stream {
    u32 type;
    u64 count;   /* requests */
    u32 sectors; /* per request */
    u64 (*next_sector)(struct stream *st, u64 i);
    /* called with a slot's buffer before a write / after a read; false = verification failed */
    void (*prepare)(struct stream *st, u8 *buf, u64 sector, u32 sectors);
    bool (*check)(struct stream *st, const u8 *buf, u64 sector, u32 sectors);
    u64 base, span; /* region, sectors */
    u64 seed;
    u8 *bitmap; /* 4 KiB blocks holding generation 2 */
    u64 gen;
    u64 bad_sector;
    bool bad;
};

static int blk_stream(struct blk *b, struct stream *st, u64 *cycles)
{
    u64 issued = 0, done = 0;
    u64 t0 = rdtsc();
    u64 deadline_us = 60000000;
    u64 last_progress = t0;
    while (done < st->count) {
        for (u32 s = 0; s < b->qd && issued < st->count; s++) {
            if (b->slots[s].len) /* busy */
                continue;
            u64 sector = st->next_sector(st, issued);
            if (st->prepare)
                st->prepare(st, b->slots[s].data, sector, st->sectors);
            if (blk_submit(b, (int)s, st->type, sector, b->slots[s].data,
                           st->sectors * (u32)SECTOR) < 0)
                break;
            issued++;
        }
        vq_kick(&b->vq);
        u64 token;
        bool progressed = false;
        while (vq_get(&b->vq, &token, NULL)) {
            struct blk_slot *slot = &b->slots[token];
            progressed = true;
            if (slot->status != 0) {
                b->errors++;
                slot->len = 0;
                return test_error("%s: request type %u sector %llu failed with status %u",
                                  b->dev.name, st->type, (unsigned long long)slot->sector,
                                  slot->status);
            }
            if (st->check && !st->check(st, slot->data, slot->sector, st->sectors) && !st->bad) {
                st->bad = true;
                st->bad_sector = slot->sector;
            }
            slot->len = 0;
            done++;
        }
        u64 now = rdtsc();
        if (progressed)
            last_progress = now;
        else if (now - last_progress > us_to_cycles(deadline_us))
            return test_error("%s: no completion for 60 s (%llu of %llu done)", b->dev.name,
                              (unsigned long long)done, (unsigned long long)st->count);
        else
            cpu_relax();
    }
    *cycles = rdtsc() - t0;
    return 0;
}

static u64 next_sequential(struct stream *st, u64 i)
{
    return st->base + i * st->sectors;
}

static u64 next_random(struct stream *st, u64 i)
{
    (void)i;
    u64 blocks = st->span / 8;
    return st->base + (rand64(&st->seed) % blocks) * 8;
}

static void prepare_gen(struct stream *st, u8 *buf, u64 sector, u32 sectors)
{
    pattern_fill(buf, sector, sectors, st->gen);
    if (st->bitmap) {
        u64 block = (sector - st->base) / 8;
        st->bitmap[block / 8] |= (u8)(1u << (block % 8));
    }
}

static bool check_gen(struct stream *st, const u8 *buf, u64 sector, u32 sectors)
{
    if (!st->bitmap)
        return pattern_check(buf, sector, sectors, st->gen);
    for (u32 s = 0; s < sectors; s += 8) {
        u64 block = (sector + s - st->base) / 8;
        u64 gen = st->bitmap[block / 8] & (1u << (block % 8)) ? 2 : 1;
        if (!pattern_check(buf + s * SECTOR, sector + s, 8, gen))
            return false;
    }
    return true;
}

static void report_rate(struct blk *b, const char *what, u64 bytes, u64 ops, u64 cycles)
{
    char key[64];
    snprint(key, sizeof(key), "%s_us", what);
    result(b->dev.name, key, "%llu", (unsigned long long)cycles_to_us(cycles));
    if (!tsc_khz || !cycles)
        return;
    if (ops) {
        snprint(key, sizeof(key), "%s_iops", what);
        result(b->dev.name, key, "%llu", (unsigned long long)(ops * tsc_khz * 1000 / cycles));
    } else {
        snprint(key, sizeof(key), "%s_kib_per_s", what);
        result(b->dev.name, key, "%llu",
               (unsigned long long)((bytes / 1024) * tsc_khz * 1000 / cycles));
    }
}

/* SHA-256 of sectors [start, end), read in order with one request at a time in flight per
 * slot; the stream engine completes out of order, so read sequentially with qd 1 here. */
static int blk_sha(struct blk *b, u64 start, u64 end, char hex[65])
{
    struct sha256 sha;
    sha256_init(&sha);
    u32 per = b->size_max * b->seg_max / SECTOR;
    if (per > 256)
        per = 256;
    u8 *buf = b->slots[0].data;
    for (u64 s = start; s < end;) {
        u32 n = end - s < per ? (u32)(end - s) : per;
        if (blk_io(b, VIRTIO_BLK_T_IN, s, buf, n * (u32)SECTOR) != 0)
            return test_error("%s: read of sector %llu failed", b->dev.name, (unsigned long long)s);
        sha256_update(&sha, buf, n * SECTOR);
        s += n;
    }
    b->slots[0].len = 0;
    sha256_final(&sha, hex);
    return 0;
}

static int blk_checksums(struct blk *b)
{
    char name[64];
    const char *spec = blk_param(b, "checksum", name, sizeof(name), NULL);
    int rc = 0;
    while (spec && *spec) {
        u64 start, end;
        const char *p;
        if (!parse_u64(spec, &p, &start) || *p != '-' || !parse_u64(p + 1, &p, &end) ||
            end <= start)
            return test_error("%s: probe.blk.checksum wants START-END sectors, got '%s'",
                              b->dev.name, spec);
        if (end > b->capacity)
            end = b->capacity;
        char hex[65], key[64];
        if (blk_sha(b, start, end, hex) == 0) {
            snprint(key, sizeof(key), "checksum.%llu-%llu", (unsigned long long)start,
                    (unsigned long long)end);
            result(b->dev.name, key, "%s", hex);
        } else {
            rc = -1;
        }
        spec = *p == ',' ? p + 1 : p;
        if (*p && *p != ',')
            break;
    }
    return rc;
}

static int blk_workload(struct blk *b)
{
    u64 region_bytes = blk_param_u64(b, "size", 8ull << 20);
    u64 base = blk_param_u64(b, "offset", 0);
    u32 bs = (u32)blk_param_u64(b, "bs", 128 * 1024);
    u64 rand_ops = blk_param_u64(b, "rand_ops", 2000);
    bool write = blk_param_u64(b, "write", 1) && !b->readonly;
    u32 max_bs = b->size_max * b->seg_max;
    if (bs > max_bs)
        bs = max_bs & ~(u32)4095;
    if (bs < 4096)
        bs = 4096;
    if (base >= b->capacity)
        return test_error("%s: probe.blk.offset %llu beyond capacity %llu", b->dev.name,
                          (unsigned long long)base, (unsigned long long)b->capacity);
    u64 span = region_bytes / SECTOR;
    if (span > b->capacity - base)
        span = b->capacity - base;
    span -= span % (bs / SECTOR);
    if (span < 256)
        return test_error("%s: test region too small (%llu sectors)", b->dev.name,
                          (unsigned long long)span);
    result(b->dev.name, "region", "%llu-%llu", (unsigned long long)base,
           (unsigned long long)(base + span));
    result(b->dev.name, "bs", "%u", bs);
    result(b->dev.name, "qd", "%u", b->qd);

    struct stream st = {.sectors = bs / (u32)SECTOR, .base = base, .span = span, .gen = 1};
    st.count = span / st.sectors;
    st.next_sector = next_sequential;
    u64 cycles;
    if (write) {
        st.type = VIRTIO_BLK_T_OUT;
        st.prepare = prepare_gen;
        if (blk_stream(b, &st, &cycles) < 0)
            return -1;
        report_rate(b, "seq_write", span * SECTOR, 0, cycles);
        if (b->dev.features & VIRTIO_BLK_F_FLUSH) {
            u64 t0 = rdtsc();
            if (blk_io(b, VIRTIO_BLK_T_FLUSH, 0, NULL, 0) != 0)
                return test_error("%s: flush failed", b->dev.name);
            b->slots[0].len = 0;
            result(b->dev.name, "flush_us", "%llu", (unsigned long long)cycles_to_us(rdtsc() - t0));
        }
    }
    /* Reads are timed without the pattern check, which costs the probe more CPU per byte than
     * the device spends reading it; a second pass over the same blocks then checks every byte. */
    st.type = VIRTIO_BLK_T_IN;
    st.prepare = NULL;
    st.check = NULL;
    if (blk_stream(b, &st, &cycles) < 0)
        return -1;
    report_rate(b, "seq_read", span * SECTOR, 0, cycles);
    if (write) {
        st.check = check_gen;
        if (blk_stream(b, &st, &cycles) < 0)
            return -1;
        report_rate(b, "seq_read_checked", span * SECTOR, 0, cycles);
    }
    if (st.bad)
        return test_error("%s: sequential read-back mismatch near sector %llu", b->dev.name,
                          (unsigned long long)st.bad_sector);
    if (write)
        result(b->dev.name, "seq_verify", "ok");

    /* 4 KiB random: writes of generation 2 tracked per block, then verified random reads. */
    struct stream r = {.sectors = 8, .base = base, .span = span, .count = rand_ops};
    r.next_sector = next_random;
    r.seed = 0x9e3779b97f4a7c15ull;
    r.bitmap = alloc_pages(span / 64 + 1);
    if (!r.bitmap)
        return test_error("%s: out of memory for the block bitmap", b->dev.name);
    if (write && rand_ops) {
        r.type = VIRTIO_BLK_T_OUT;
        r.gen = 2;
        r.prepare = prepare_gen;
        if (blk_stream(b, &r, &cycles) < 0)
            return -1;
        report_rate(b, "rand_write", 0, rand_ops, cycles);
    }
    if (rand_ops) {
        r.type = VIRTIO_BLK_T_IN;
        r.prepare = NULL;
        r.check = NULL;
        r.seed = 0x2545f4914f6cdd1dull;
        if (blk_stream(b, &r, &cycles) < 0)
            return -1;
        report_rate(b, "rand_read", 0, rand_ops, cycles);
        if (write) { /* the same blocks again, every byte checked */
            r.check = check_gen;
            r.seed = 0x2545f4914f6cdd1dull;
            if (blk_stream(b, &r, &cycles) < 0)
                return -1;
            report_rate(b, "rand_read_checked", 0, rand_ops, cycles);
        }
        if (r.bad)
            return test_error("%s: random read-back mismatch at sector %llu", b->dev.name,
                              (unsigned long long)r.bad_sector);
        if (write)
            result(b->dev.name, "rand_verify", "ok");
    }

    /* Write-zeroes over the last 64 KiB, discard the 64 KiB before it (contents after a discard
     * are the device's choice; the final checksum records whatever it chose). */
    if (write && (b->dev.features & VIRTIO_BLK_F_WRITE_ZEROES)) {
        struct {
            u64 sector;
            u32 num_sectors, flags;
        } *seg = (void *)b->slots[1].data;
        seg->sector = base + span - 128;
        seg->num_sectors = 128;
        seg->flags = 0;
        int rc = blk_io(b, VIRTIO_BLK_T_WRITE_ZEROES, 0, seg, sizeof(*seg));
        b->slots[0].len = 0;
        u8 *buf = b->slots[2].data;
        if (rc == 0 && blk_io(b, VIRTIO_BLK_T_IN, base + span - 128, buf, 65536) == 0) {
            bool zero = true;
            for (u32 i = 0; i < 65536; i++)
                zero &= buf[i] == 0;
            result(b->dev.name, "write_zeroes", "%s", zero ? "ok" : "not-zero");
            if (!zero)
                test_error("%s: write-zeroes left non-zero bytes", b->dev.name);
        } else {
            result(b->dev.name, "write_zeroes", "error");
            test_error("%s: write-zeroes failed", b->dev.name);
        }
        b->slots[0].len = 0;
    }
    if (write && (b->dev.features & VIRTIO_BLK_F_DISCARD)) {
        struct {
            u64 sector;
            u32 num_sectors, flags;
        } *seg = (void *)b->slots[1].data;
        seg->sector = base + span - 256;
        seg->num_sectors = 128;
        seg->flags = 0;
        int rc = blk_io(b, VIRTIO_BLK_T_DISCARD, 0, seg, sizeof(*seg));
        b->slots[0].len = 0;
        result(b->dev.name, "discard", "%s", rc == 0 ? "ok" : "error");
        if (rc)
            test_error("%s: discard failed", b->dev.name);
    }
    if (write && (b->dev.features & VIRTIO_BLK_F_FLUSH)) {
        blk_io(b, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
        b->slots[0].len = 0;
    }

    char hex[65], key[64];
    if (blk_sha(b, base, base + span, hex) < 0)
        return -1;
    snprint(key, sizeof(key), "region.%llu-%llu", (unsigned long long)base,
            (unsigned long long)(base + span));
    result(b->dev.name, key, "%s", hex);
    return 0;
}

/* Disk NTH: set it up, report it, run the probe.blk.checksum reads and (unless SUMS_ONLY) the
 * workload, reset it. 1 when there is no such disk. */
static int blk_one(int nth, bool sums_only)
{
    struct blk *b = alloc_pages(sizeof(*b));
    if (!b)
        return test_error("blk: out of memory");
    if (virtio_find(2, nth, &b->dev) < 0)
        return 1; /* no such device */
    u64 f =
        virtio_negotiate(&b->dev, VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO |
                                      VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH |
                                      VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES);
    if (!f)
        return test_error("%s: feature negotiation failed", b->dev.name);
    b->capacity = virtio_cfg64(&b->dev, 0);
    b->readonly = f & VIRTIO_BLK_F_RO;
    b->size_max = f & VIRTIO_BLK_F_SIZE_MAX ? virtio_cfg32(&b->dev, 8) : 1u << 20;
    b->seg_max = f & VIRTIO_BLK_F_SEG_MAX ? virtio_cfg32(&b->dev, 12) : MAX_SEGS;
    if (b->size_max < 4096 || b->size_max > (1u << 20))
        b->size_max = b->size_max < 4096 ? 4096 : 1u << 20;
    b->size_max &= ~4095u;
    if (b->seg_max == 0 || b->seg_max > MAX_SEGS)
        b->seg_max = MAX_SEGS;
    if (virtio_queue_setup(&b->dev, &b->vq, 0, 256) < 0)
        return test_error("%s: queue 0 setup failed", b->dev.name);
    virtio_driver_ok(&b->dev);

    u32 bs = (u32)blk_param_u64(b, "bs", 128 * 1024);
    u32 buf_size = bs > 65536 ? bs : 65536;
    if (buf_size > b->size_max * b->seg_max)
        buf_size = b->size_max * b->seg_max;
    if (buf_size < 65536)
        buf_size = 65536;
    /* As deep as asked, as long as every request's descriptor chain fits in the ring. */
    u32 descs_per_req = (buf_size + b->size_max - 1) / b->size_max + 2;
    b->qd = (u32)blk_param_u64(b, "qd", 32);
    if (b->qd < 1)
        b->qd = 1;
    if (b->qd > MAX_QD)
        b->qd = MAX_QD;
    while (b->qd > 1 && b->qd * descs_per_req > b->vq.size)
        b->qd--;
    b->slots = alloc_pages(sizeof(struct blk_slot) * b->qd);
    if (!b->slots)
        return test_error("%s: out of memory", b->dev.name);
    for (u32 i = 0; i < b->qd; i++)
        if (!(b->slots[i].data = alloc_pages(buf_size)))
            return test_error("%s: out of memory for %u buffers of %u bytes", b->dev.name, b->qd,
                              buf_size);

    result(b->dev.name, "capacity_sectors", "%llu", (unsigned long long)b->capacity);
    result(b->dev.name, "readonly", "%d", b->readonly ? 1 : 0);
    result(b->dev.name, "features", "0x%llx", (unsigned long long)f);
    char *id = (char *)b->slots[1].data;
    memset(id, 0, 21);
    if (blk_io(b, VIRTIO_BLK_T_GET_ID, 0, id, 20) == 0 && id[0])
        result(b->dev.name, "serial", "%s", id);
    b->slots[0].len = 0;

    int rc = blk_checksums(b);
    if (!sums_only && blk_workload(b) < 0)
        rc = -1;
    virtio_reset(&b->dev);
    return rc;
}

int blk_checksums_again(void)
{
    int rc = 0;
    for (int nth = 0; nth < 8; nth++) {
        int r = blk_one(nth, true);
        if (r == 1)
            break;
        if (r < 0)
            rc = -1;
    }
    return rc;
}

int test_blk(void)
{
    int found = 0, rc = 0;
    for (int nth = 0; nth < 8; nth++) {
        int r = blk_one(nth, false);
        if (r == 1)
            break;
        found++;
        if (r < 0)
            rc = -1;
    }
    result(NULL, "blk.devices", "%d", found);
    if (!found && param_str("probe.tests", NULL))
        return test_error("blk: no virtio-blk device");
    return rc;
}
