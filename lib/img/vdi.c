/*
 * lib/img/vdi.c — VirtualBox's Virtual Disk Image format (header version 1.1): static
 * (preallocated) and dynamic images.
 *
 * A 512-byte header, then a block map of 32-bit little-endian entries, then the data blocks
 * (1 MiB by default). Entry N of the map is the *physical index* of guest block N: its data sits
 * at offset_data + index * block_size. Physical indices are dense, 0 .. blocks_allocated-1, so
 * the next block always goes to index blocks_allocated.
 *
 * The one idea, as in the VHD driver: an index is reserved under the lock, the block is filled
 * outside it, and only then is the map entry published — concurrent writers of different blocks
 * never wait for each other's data. Compaction keeps the indices dense by moving the highest
 * blocks into the slots zero blocks leave free, as VirtualBox's own compaction does.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "img/driver.h"
#include "img/vhd-common.h"

#define VDI_SIGNATURE     0xbeda107fu
#define VDI_VERSION_1_1   0x00010001u
#define VDI_TYPE_DYNAMIC  1
#define VDI_TYPE_STATIC   2
#define VDI_UNALLOCATED   0xffffffffu
#define VDI_ZERO          0xfffffffeu /* discarded: reads as zeros */
#define VDI_HEADER_SIZE   512u
#define VDI_SECTOR        512u
#define VDI_BLOCK_DEFAULT (1u << 20)
#define VDI_BLOCK_MAX     (256u << 20)
#define VDI_DISK_MAX      ((uint64_t)0x1fffff80u * VDI_BLOCK_DEFAULT) /* qemu's bound */
#define VDI_TEXT          "<<< vessel Virtual Disk Image >>>\n"

/* header field offsets (little-endian) */
#define V_SIGNATURE   64
#define V_VERSION     68
#define V_HEADER_SIZE 72
#define V_TYPE        76
#define V_FLAGS       80
#define V_OFFSET_BMAP 340
#define V_OFFSET_DATA 344
#define V_CYLINDERS   348
#define V_SECTOR_SIZE 360
#define V_DISK_SIZE   368
#define V_BLOCK_SIZE  376
#define V_BLOCK_EXTRA 380
#define V_BLOCKS      384
#define V_ALLOCATED   388
#define V_UUID_IMAGE  392
#define V_UUID_SNAP   408
#define V_UUID_LINK   424
#define V_UUID_PARENT 440

struct vdi_state {
    uint8_t header[VDI_HEADER_SIZE];
    uint32_t type;
    uint64_t offset_bmap;
    uint64_t offset_data;
    uint32_t block_size;
    uint32_t blocks;    /* entries in the map */
    uint32_t allocated; /* physical blocks in use (the next index) */
    uint32_t *bmap;     /* host order; read with atomics, changed under img->lock */
    uint8_t *pending;   /* per entry: being allocated */
    uint64_t file_end;  /* at least offset_data + allocated * block_size once published */
    bool tail_clean;    /* fresh blocks start as holes */
    pthread_cond_t allocated_cond;
    struct vhd_extent_cache holes; /* container extents, for block status */
};

static uint32_t le32_at(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}
static uint64_t le64_at(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}
static void le32_put(uint8_t *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, 4);
}
static void le64_put(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, 8);
}

static bool vdi_is_allocated(uint32_t e)
{
    return e < VDI_ZERO;
}

static uint32_t bmap_get(struct vdi_state *s, uint32_t i)
{
    return __atomic_load_n(&s->bmap[i], __ATOMIC_ACQUIRE);
}

static void bmap_set(struct vdi_state *s, uint32_t i, uint32_t v)
{
    __atomic_store_n(&s->bmap[i], v, __ATOMIC_RELEASE);
}

static int vdi_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return len >= VDI_HEADER_SIZE && le32_at(buf + V_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

static void vdi_free_state(struct vdi_state *s)
{
    if (!s)
        return;
    free(s->bmap);
    free(s->pending);
    pthread_cond_destroy(&s->allocated_cond);
    vhd_extent_cache_destroy(&s->holes);
    free(s);
}

static bool vdi_uuid_null(const uint8_t *u)
{
    return vs_buffer_is_zero(u, 16);
}

static int vdi_open(struct img *img)
{
    struct vdi_state *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_cond_init(&s->allocated_cond, NULL);
    vhd_extent_cache_init(&s->holes);
    img->state = s;
    bool tolerant = img->flags & IMG_OPEN_CHECK;
    int rc;
    int64_t file_size = img_file_size(img->file);
    if (file_size < 0) {
        rc = (int)file_size;
        goto fail;
    }
    if (file_size < VDI_HEADER_SIZE) {
        rc = img_error(img, -EINVAL, "file of %" PRId64 " bytes is too small for a VDI header",
                       file_size);
        goto fail;
    }
    uint8_t *h = s->header;
    rc = img_file_pread(img, h, 0, VDI_HEADER_SIZE);
    if (rc)
        goto fail;
    if (le32_at(h + V_SIGNATURE) != VDI_SIGNATURE) {
        rc = img_error(img, -EINVAL, "signature 0x%08x is not a VDI image's (0x%08x)",
                       le32_at(h + V_SIGNATURE), VDI_SIGNATURE);
        goto fail;
    }
    uint32_t version = le32_at(h + V_VERSION);
    if (version != VDI_VERSION_1_1) {
        rc = img_error(img, -ENOTSUP, "header version %u.%u is not supported (1.1)", version >> 16,
                       version & 0xffff);
        goto fail;
    }
    uint32_t hsize = le32_at(h + V_HEADER_SIZE);
    if (hsize < V_UUID_PARENT + 16 - V_HEADER_SIZE || hsize > VDI_HEADER_SIZE - V_HEADER_SIZE) {
        rc = img_error(img, -EINVAL, "header size %u out of range (384 to 440)", hsize);
        goto fail;
    }
    s->type = le32_at(h + V_TYPE);
    if (s->type != VDI_TYPE_DYNAMIC && s->type != VDI_TYPE_STATIC) {
        rc = img_error(img, -ENOTSUP, "image type %u is not supported (1 dynamic, 2 static)",
                       s->type);
        goto fail;
    }
    if (!vdi_uuid_null(h + V_UUID_LINK) || !vdi_uuid_null(h + V_UUID_PARENT)) {
        rc = img_error(img, -ENOTSUP,
                       "parent uuid is set: differencing (snapshot) VDI images are not supported");
        goto fail;
    }
    if (le32_at(h + V_SECTOR_SIZE) != VDI_SECTOR) {
        rc = img_error(img, -ENOTSUP, "sector size %u is not supported (512)",
                       le32_at(h + V_SECTOR_SIZE));
        goto fail;
    }
    s->block_size = le32_at(h + V_BLOCK_SIZE);
    if (s->block_size < VDI_SECTOR || s->block_size > VDI_BLOCK_MAX ||
        (s->block_size & (s->block_size - 1))) {
        rc = img_error(img, -EINVAL, "block size %u is not a power of two from 512 to 256 MiB",
                       s->block_size);
        goto fail;
    }
    if (le32_at(h + V_BLOCK_EXTRA) != 0) {
        rc = img_error(img, -ENOTSUP, "block extra data (%u bytes) is not supported",
                       le32_at(h + V_BLOCK_EXTRA));
        goto fail;
    }
    s->offset_bmap = le32_at(h + V_OFFSET_BMAP);
    s->offset_data = le32_at(h + V_OFFSET_DATA);
    s->blocks = le32_at(h + V_BLOCKS);
    s->allocated = le32_at(h + V_ALLOCATED);
    uint64_t bmap_bytes = (uint64_t)s->blocks * 4;
    if (s->offset_bmap % VDI_SECTOR || s->offset_bmap < V_HEADER_SIZE + hsize) {
        rc = img_error(img, -EINVAL,
                       "block map offset %" PRIu64 " is unaligned or inside the "
                       "header",
                       s->offset_bmap);
        goto fail;
    }
    if (s->offset_bmap > (uint64_t)file_size || bmap_bytes > (uint64_t)file_size - s->offset_bmap) {
        rc =
            img_error(img, -EINVAL,
                      "block map of %u entries at offset %" PRIu64 " is beyond the end of the file",
                      s->blocks, s->offset_bmap);
        goto fail;
    }
    if (s->offset_data % VDI_SECTOR || s->offset_data < s->offset_bmap + bmap_bytes) {
        rc = img_error(img, -EINVAL,
                       "data offset %" PRIu64 " is unaligned or overlaps the block "
                       "map",
                       s->offset_data);
        goto fail;
    }
    uint64_t disk = le64_at(h + V_DISK_SIZE);
    disk = VS_ALIGN_UP(disk, VDI_SECTOR); /* VBoxManage convertfromraw writes odd sizes */
    if (disk > (uint64_t)s->blocks * s->block_size) {
        rc = img_error(img, -EINVAL,
                       "disk size %" PRIu64 " exceeds what its %u blocks of %u "
                       "bytes hold",
                       disk, s->blocks, s->block_size);
        goto fail;
    }
    if (disk > VDI_DISK_MAX) {
        rc = img_error(img, -EFBIG, "disk size %" PRIu64 " is beyond the VDI limit", disk);
        goto fail;
    }
    if (s->allocated > s->blocks && !tolerant) {
        rc = img_error(img, -EINVAL, "allocated block count %u exceeds the %u blocks of the map",
                       s->allocated, s->blocks);
        goto fail;
    }
    img->size = disk;
    img->cluster_size = s->block_size;
    img->write_unit = 512; /* a fresh block is allocated sparse: its unwritten parts read zeros */
    s->bmap = vs_malloc(VS_MAX(bmap_bytes, 4));
    s->pending = vs_calloc(VS_MAX(s->blocks, 1), 1);
    if (!s->bmap || !s->pending) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = img_file_pread(img, s->bmap, s->offset_bmap, bmap_bytes);
    if (rc)
        goto fail;
    uint8_t *seen = tolerant ? NULL : vs_calloc(VS_MAX(s->allocated, 1) / 8 + 1, 1);
    if (!tolerant && !seen) {
        rc = -ENOMEM;
        goto fail;
    }
    for (uint32_t i = 0; i < s->blocks; i++) {
        s->bmap[i] = le32toh(s->bmap[i]);
        uint32_t e = s->bmap[i];
        if (tolerant || !vdi_is_allocated(e))
            continue;
        if (e >= s->allocated) {
            rc = img_error(img, -EINVAL,
                           "block map entry %u: physical block %u is beyond the %u "
                           "allocated",
                           i, e, s->allocated);
            break;
        }
        if (seen[e / 8] & (1u << (e % 8))) {
            rc = img_error(img, -EINVAL, "block map entry %u: physical block %u is used twice", i,
                           e);
            break;
        }
        seen[e / 8] |= (uint8_t)(1u << (e % 8));
    }
    free(seen);
    if (rc)
        goto fail;
    uint64_t used_end = s->offset_data + (uint64_t)s->allocated * s->block_size;
    s->file_end = (uint64_t)file_size;
    s->tail_clean = (uint64_t)file_size <= used_end;
    return 0;
fail:
    vdi_free_state(s);
    img->state = NULL;
    return rc;
}

static void vdi_close(struct img *img)
{
    vdi_free_state(img->state);
    img->state = NULL;
}

static int vdi_pread(struct img *img, void *buf, uint64_t offset, size_t len)
{
    struct vdi_state *s = img->state;
    uint8_t *p = buf;
    while (len) {
        uint32_t i = (uint32_t)(offset / s->block_size);
        uint64_t in = offset % s->block_size;
        size_t n = (size_t)VS_MIN((uint64_t)len, s->block_size - in);
        uint32_t e = bmap_get(s, i);
        if (!vdi_is_allocated(e)) {
            memset(p, 0, n);
        } else {
            int rc = img_file_pread(img, p, s->offset_data + (uint64_t)e * s->block_size + in, n);
            if (rc)
                return rc;
        }
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}

static int vdi_write_header(struct img *img)
{
    struct vdi_state *s = img->state;
    le32_put(s->header + V_ALLOCATED, s->allocated);
    return img_file_pwrite(img, s->header, 0, VDI_HEADER_SIZE);
}

static int vdi_write_bmap_sector(struct img *img, uint32_t i)
{
    struct vdi_state *s = img->state;
    uint32_t first = i / 128 * 128, n = VS_MIN(128u, s->blocks - first);
    uint32_t buf[128];
    for (uint32_t k = 0; k < n; k++)
        buf[k] = htole32(bmap_get(s, first + k));
    return img_file_pwrite(img, buf, s->offset_bmap + (uint64_t)first * 4, n * 4);
}

static int vdi_write_bmap(struct img *img)
{
    struct vdi_state *s = img->state;
    for (uint32_t i = 0; i < s->blocks; i += 128) {
        int rc = vdi_write_bmap_sector(img, i);
        if (rc)
            return rc;
    }
    return 0;
}

static int vdi_write_block(struct img *img, const uint8_t *buf, uint64_t offset, size_t len)
{
    struct vdi_state *s = img->state;
    uint32_t i = (uint32_t)(offset / s->block_size);
    uint64_t in = offset % s->block_size;
    uint32_t e = bmap_get(s, i);
    if (vdi_is_allocated(e))
        return img_file_pwrite(img, buf, s->offset_data + (uint64_t)e * s->block_size + in, len);
    /* reserve a physical index */
    pthread_mutex_lock(&img->lock);
    while (s->pending[i])
        pthread_cond_wait(&s->allocated_cond, &img->lock);
    e = bmap_get(s, i);
    if (vdi_is_allocated(e)) {
        pthread_mutex_unlock(&img->lock);
        return img_file_pwrite(img, buf, s->offset_data + (uint64_t)e * s->block_size + in, len);
    }
    if (s->allocated >= s->blocks) {
        pthread_mutex_unlock(&img->lock);
        return img_error(img, -EIO, "no free physical block (allocated count %u of %u)",
                         s->allocated, s->blocks);
    }
    uint32_t idx = s->allocated++;
    s->pending[i] = 1;
    bool clean = s->tail_clean;
    pthread_mutex_unlock(&img->lock);

    uint64_t block = s->offset_data + (uint64_t)idx * s->block_size;
    int rc;
    if (clean) {
        rc = vhd_write_nonzero(img->file, buf, block + in, len);
    } else {
        /* the space may hold stale bytes: write the whole block */
        uint8_t *full = vs_calloc(1, s->block_size);
        rc = full ? 0 : -ENOMEM;
        if (full) {
            memcpy(full + in, buf, len);
            rc = img_file_pwrite(img, full, block, s->block_size);
            free(full);
        }
    }
    /* a partly written block still needs its full length in the file */
    if (!rc && clean)
        rc = vhd_cover_block_end(img->file, block, s->block_size, buf, in, len);
    pthread_mutex_lock(&img->lock);
    if (!rc && s->file_end < block + s->block_size)
        s->file_end = block + s->block_size;
    if (!rc) {
        bmap_set(s, i, idx);
        rc = vdi_write_bmap_sector(img, i);
        if (!rc)
            rc = vdi_write_header(img);
    }
    s->pending[i] = 0;
    pthread_cond_broadcast(&s->allocated_cond);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

static int vdi_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    struct vdi_state *s = img->state;
    return vhd_pwrite_split(img, &s->holes, s->block_size, buf, offset, len, vdi_write_block);
}

static int vdi_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags)
{
    struct vdi_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    while (len) {
        uint32_t i = (uint32_t)(offset / s->block_size);
        uint64_t in = offset % s->block_size;
        uint64_t n = VS_MIN(len, s->block_size - in);
        uint32_t e = bmap_get(s, i);
        if (vdi_is_allocated(e)) {
            int rc = img->file->drv->write_zeroes(
                img->file, s->offset_data + (uint64_t)e * s->block_size + in, n, flags);
            if (rc)
                return rc;
        }
        offset += n;
        len -= n;
    }
    return 0;
}

static int vdi_discard(struct img *img, uint64_t offset, uint64_t len)
{
    return vdi_write_zeroes(img, offset, len, IMG_ZERO_MAY_UNMAP);
}

static int vdi_flush(struct img *img)
{
    return img->file->drv->flush(img->file);
}

static int vdi_block_status(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                            uint64_t *host_offset)
{
    struct vdi_state *s = img->state;
    uint32_t i = (uint32_t)(offset / s->block_size);
    uint64_t in = offset % s->block_size;
    uint32_t e = bmap_get(s, i);
    uint64_t n = VS_MIN(len, s->block_size - in);
    *host_offset = UINT64_MAX;
    if (vdi_is_allocated(e)) {
        *host_offset = s->offset_data + (uint64_t)e * s->block_size + in;
        return vhd_file_status(img->file, &s->holes, *host_offset, n, pnum);
    }
    while (n < len) {
        uint32_t f = bmap_get(s, (uint32_t)((offset + n) / s->block_size));
        if (f != e)
            break;
        n += VS_MIN(len - n, (uint64_t)s->block_size);
    }
    *pnum = n;
    return e == VDI_ZERO ? IMG_DS_ZERO : IMG_DS_UNALLOCATED;
}

/* ---- create ---------------------------------------------------------------------------------- */

static int vdi_create(const struct img_create_params *params, struct vs_opts *opts)
{
    bool is_static = false;
    int rc = vs_opts_take_bool(opts, "static", &is_static);
    if (rc)
        return rc;
    const char *prealloc = vs_opts_take(opts, "preallocation");
    if (prealloc && !strcmp(prealloc, "metadata"))
        is_static = true;
    else if (prealloc && strcmp(prealloc, "off"))
        return vs_error(-EINVAL, "%s: preallocation '%s' is not supported for VDI (off, metadata)",
                        params->filename, prealloc);
    if (params->backing_file && params->backing_file[0])
        return vs_error(-ENOTSUP, "%s: VDI images cannot have a backing file", params->filename);
    uint64_t size = VS_ALIGN_UP(params->size, VDI_SECTOR);
    if (size > VDI_DISK_MAX)
        return vs_error(-EFBIG, "%s: disk size %" PRIu64 " is beyond the VDI limit",
                        params->filename, size);
    uint32_t blocks = (uint32_t)VS_DIV_ROUND_UP(size, VDI_BLOCK_DEFAULT);
    uint64_t bmap_bytes = VS_ALIGN_UP((uint64_t)blocks * 4, VDI_SECTOR);
    uint8_t h[VDI_HEADER_SIZE] = {0};
    memcpy(h, VDI_TEXT, sizeof(VDI_TEXT) - 1);
    le32_put(h + V_SIGNATURE, VDI_SIGNATURE);
    le32_put(h + V_VERSION, VDI_VERSION_1_1);
    le32_put(h + V_HEADER_SIZE, 0x180);
    le32_put(h + V_TYPE, is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC);
    le32_put(h + V_OFFSET_BMAP, VDI_HEADER_SIZE);
    le32_put(h + V_OFFSET_DATA, (uint32_t)(VDI_HEADER_SIZE + bmap_bytes));
    le32_put(h + V_SECTOR_SIZE, VDI_SECTOR);
    le64_put(h + V_DISK_SIZE, size);
    le32_put(h + V_BLOCK_SIZE, VDI_BLOCK_DEFAULT);
    le32_put(h + V_BLOCKS, blocks);
    le32_put(h + V_ALLOCATED, is_static ? blocks : 0);
    vhd_guid_generate(h + V_UUID_IMAGE);
    vhd_guid_generate(h + V_UUID_SNAP);
    uint32_t *bmap = vs_malloc(VS_MAX(bmap_bytes, 4));
    if (!bmap)
        return -ENOMEM;
    memset(bmap, 0, bmap_bytes);
    for (uint32_t i = 0; i < blocks; i++)
        bmap[i] = htole32(is_static ? i : VDI_UNALLOCATED);
    struct img *file;
    rc = img_file_open(&file, params->filename, IMG_OPEN_RDWR, true);
    if (rc) {
        free(bmap);
        return rc;
    }
    rc = file->drv->pwrite(file, h, 0, VDI_HEADER_SIZE);
    if (!rc && bmap_bytes)
        rc = file->drv->pwrite(file, bmap, VDI_HEADER_SIZE, bmap_bytes);
    if (!rc && is_static)
        rc = img_file_truncate(file,
                               VDI_HEADER_SIZE + bmap_bytes + (uint64_t)blocks * VDI_BLOCK_DEFAULT);
    if (!rc)
        rc = file->drv->flush(file);
    img_close(file);
    free(bmap);
    return rc;
}

/* ---- resize ---------------------------------------------------------------------------------- */

static int vdi_truncate(struct img *img, uint64_t size, int flags, const char *prealloc)
{
    struct vdi_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (prealloc && strcmp(prealloc, "off"))
        return img_error(img, -ENOTSUP, "preallocation '%s' is not supported for VDI", prealloc);
    size = VS_ALIGN_UP(size, VDI_SECTOR);
    uint64_t need = VS_DIV_ROUND_UP(size, s->block_size);
    if (s->type == VDI_TYPE_STATIC && need != s->blocks)
        return img_error(img, -ENOTSUP,
                         "a static VDI image cannot change its block count "
                         "(convert it instead)");
    pthread_mutex_lock(&img->lock);
    int rc = 0;
    if (need > s->blocks) {
        uint64_t room = (s->offset_data - s->offset_bmap) / 4;
        if (need > room) {
            pthread_mutex_unlock(&img->lock);
            return img_error(img, -ENOTSUP,
                             "cannot grow to %" PRIu64 " bytes: the block map has room for %" PRIu64
                             " blocks of %u bytes, %" PRIu64 " are needed (convert the "
                             "image instead)",
                             size, room, s->block_size, need);
        }
        uint32_t *bmap = realloc(s->bmap, need * 4);
        uint8_t *pending = bmap ? realloc(s->pending, need) : NULL;
        if (bmap)
            s->bmap = bmap;
        if (!bmap || !pending) {
            pthread_mutex_unlock(&img->lock);
            return -ENOMEM;
        }
        s->pending = pending;
        for (uint64_t i = s->blocks; i < need; i++) {
            s->bmap[i] = VDI_UNALLOCATED;
            s->pending[i] = 0;
        }
        s->blocks = (uint32_t)need;
        rc = vdi_write_bmap(img);
    } else if (need < s->blocks) {
        /* shrinking: the map keeps its entries, those past the end are dropped */
        for (uint64_t i = need; i < s->blocks; i++)
            bmap_set(s, (uint32_t)i, VDI_UNALLOCATED);
        rc = vdi_write_bmap(img);
    }
    if (!rc) {
        le32_put(s->header + V_BLOCKS, s->blocks);
        le64_put(s->header + V_DISK_SIZE, size);
        rc = vdi_write_header(img);
    }
    if (!rc)
        img->size = size;
    pthread_mutex_unlock(&img->lock);
    return rc;
}

/* ---- compact --------------------------------------------------------------------------------- */

/* Free zero blocks, then move the blocks with the highest physical indices into the freed slots
 * so the indices stay dense, and cut the file after the last one. */
static int vdi_compact(struct img *img, struct img_compact *result)
{
    struct vdi_state *s = img->state;
    vhd_extent_cache_reset(&s->holes);
    if (s->type == VDI_TYPE_STATIC)
        return img_error(img, -ENOTSUP, "a static VDI image has no blocks to reclaim");
    uint8_t *buf = vs_malloc(s->block_size);
    uint32_t *owner = vs_malloc((size_t)VS_MAX(s->allocated, 1) * 4);
    if (!buf || !owner) {
        free(buf);
        free(owner);
        return -ENOMEM;
    }
    pthread_mutex_lock(&img->lock);
    int rc = 0;
    for (uint32_t k = 0; k < s->allocated; k++)
        owner[k] = VDI_UNALLOCATED;
    for (uint32_t i = 0; !rc && i < s->blocks; i++) {
        uint32_t e = s->bmap[i];
        if (!vdi_is_allocated(e))
            continue;
        rc = img_file_pread(img, buf, s->offset_data + (uint64_t)e * s->block_size, s->block_size);
        if (rc)
            break;
        if (vs_buffer_is_zero(buf, s->block_size)) {
            s->bmap[i] = VDI_UNALLOCATED;
            result->blocks_freed++;
        } else {
            owner[e] = i;
        }
    }
    /* fill holes from the top */
    uint32_t lo = 0, hi = s->allocated;
    while (!rc) {
        while (lo < hi && owner[lo] != VDI_UNALLOCATED)
            lo++;
        while (hi > lo && owner[hi - 1] == VDI_UNALLOCATED)
            hi--;
        if (lo >= hi)
            break;
        uint32_t from = hi - 1, guest = owner[from];
        rc = img_file_pread(img, buf, s->offset_data + (uint64_t)from * s->block_size,
                            s->block_size);
        if (!rc)
            rc = img_file_pwrite(img, buf, s->offset_data + (uint64_t)lo * s->block_size,
                                 s->block_size);
        if (rc)
            break;
        s->bmap[guest] = lo;
        owner[lo] = guest;
        owner[from] = VDI_UNALLOCATED;
    }
    if (!rc)
        rc = img->file->drv->flush(img->file);
    if (!rc) {
        s->allocated = hi;
        rc = vdi_write_bmap(img);
    }
    if (!rc)
        rc = vdi_write_header(img);
    uint64_t end = s->offset_data + (uint64_t)s->allocated * s->block_size;
    if (!rc)
        rc = img_file_truncate(img->file, end);
    if (!rc) {
        s->file_end = end;
        s->tail_clean = true;
        rc = img->file->drv->flush(img->file);
    }
    pthread_mutex_unlock(&img->lock);
    free(buf);
    free(owner);
    return rc;
}

/* ---- check ----------------------------------------------------------------------------------- */

static int vdi_check(struct img *img, struct img_check *r, int fix)
{
    struct vdi_state *s = img->state;
    int64_t file_size = img_file_size(img->file);
    if (file_size < 0)
        return (int)file_size;
    uint32_t *user = vs_malloc((size_t)VS_MAX(s->blocks, 1) * 4);
    if (!user)
        return -ENOMEM;
    for (uint32_t k = 0; k < s->blocks; k++)
        user[k] = VDI_UNALLOCATED;
    uint32_t count = 0;
    uint64_t max_end = s->offset_data;
    r->total_clusters = s->blocks;
    for (uint32_t i = 0; i < s->blocks; i++) {
        uint32_t e = s->bmap[i];
        if (!vdi_is_allocated(e))
            continue;
        count++;
        if (e >= s->blocks) {
            r->corruptions++;
            vhd_check_report(r,
                             "block map entry %u: physical block %u is beyond the %u of the image",
                             i, e, s->blocks);
            continue;
        }
        if (user[e] != VDI_UNALLOCATED) {
            r->corruptions++;
            vhd_check_report(r, "block map entries %u and %u both use physical block %u", user[e],
                             i, e);
            continue;
        }
        user[e] = i;
        max_end = VS_MAX(max_end, s->offset_data + ((uint64_t)e + 1) * s->block_size);
        if (i && vdi_is_allocated(s->bmap[i - 1]) && s->bmap[i - 1] + 1 != e)
            r->fragmented_clusters++;
    }
    r->allocated_clusters = count;
    if (count != s->allocated) {
        r->corruptions++;
        vhd_check_report(r, "header says %u blocks are allocated, the block map uses %u",
                         s->allocated, count);
    }
    for (uint32_t k = 0; k < VS_MIN(s->allocated, s->blocks); k++)
        if (user[k] == VDI_UNALLOCATED && count == s->allocated) {
            r->leaks++;
            vhd_check_report(r, "physical block %u is used by no guest block", k);
        }
    if (max_end > (uint64_t)file_size) {
        r->corruptions++;
        vhd_check_report(
            r, "blocks reach offset %" PRIu64 ", beyond the end of the file (%" PRId64 " bytes)",
            max_end, file_size);
    }
    r->image_end_offset = s->offset_data + (uint64_t)s->allocated * s->block_size;
    free(user);
    return 0;
}

static int vdi_measure(struct vs_opts *opts, struct img *source, uint64_t size, uint64_t *required,
                       uint64_t *fully_allocated)
{
    bool is_static = false;
    int rc = vs_opts_take_bool(opts, "static", &is_static);
    if (rc)
        return rc;
    vs_opts_take(opts, "preallocation");
    if (source)
        size = img_size(source);
    uint64_t blocks = VS_DIV_ROUND_UP(size, VDI_BLOCK_DEFAULT);
    uint64_t meta = VDI_HEADER_SIZE + VS_ALIGN_UP(blocks * 4, VDI_SECTOR);
    uint64_t used = 0;
    if (source && (rc = vhd_count_data_blocks(source, size, VDI_BLOCK_DEFAULT, &used)))
        return rc;
    *fully_allocated = meta + blocks * VDI_BLOCK_DEFAULT;
    *required = is_static ? *fully_allocated : meta + used * VDI_BLOCK_DEFAULT;
    return 0;
}

const struct img_driver img_driver_vdi = {
    .name = "vdi",
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .create = vdi_create,
    .pread = vdi_pread,
    .pwrite = vdi_pwrite,
    .flush = vdi_flush,
    .discard = vdi_discard,
    .write_zeroes = vdi_write_zeroes,
    .block_status = vdi_block_status,
    .truncate = vdi_truncate,
    .check = vdi_check,
    .compact = vdi_compact,
    .measure = vdi_measure,
};
