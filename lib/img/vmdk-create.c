/*
 * lib/img/vmdk-create.c — creating VMDK images of every subformat vessel writes
 * (monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat)
 * and measuring what one would need.
 *
 * The idea: every subformat is one descriptor text plus N extents of two kinds — an empty sparse
 * extent (header, redundant and primary grain directories with their tables preallocated as
 * VMware lays them out, or for a stream just header + trailing footer) or a flat file of holes.
 * Split subformats are the same extents cut at VMware's 2047 MiB, named NAME-s001.vmdk /
 * NAME-f001.vmdk, and the geometry comes from the size and adapter per the rule VMware uses.
 */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "img/vmdk.h"

#define VMDK_CREATE_GRAIN  128u       /* sectors: 64 KiB grains */
#define VMDK_SPLIT_SECTORS 4192256ull /* 2047 MiB, what VMware writes for twoGbMaxExtent* */
#define VMDK_DESC_SECTORS  20u        /* embedded descriptor space, as VMware and qemu reserve */

struct vmdk_layout {
    uint64_t capacity; /* sectors */
    uint64_t gt_count, gd_sect, gt_sect;
    uint64_t desc_sectors;
    uint64_t rgd, gd;  /* sectors */
    uint64_t overhead; /* sectors */
};

static void vmdk_layout(struct vmdk_layout *l, uint64_t size, bool stream, uint64_t desc_sectors)
{
    memset(l, 0, sizeof(*l));
    l->capacity = VS_DIV_ROUND_UP(size, VMDK_SECTOR);
    uint64_t grains = VS_DIV_ROUND_UP(l->capacity, VMDK_CREATE_GRAIN);
    l->gt_count = VS_DIV_ROUND_UP(grains, VMDK_GTES_MAX);
    l->gd_sect = VS_DIV_ROUND_UP(l->gt_count * 4, VMDK_SECTOR);
    l->gt_sect = VMDK_GTES_MAX * 4 / VMDK_SECTOR;
    l->desc_sectors = desc_sectors;
    uint64_t p = 1 + desc_sectors;
    if (!stream) {
        l->rgd = p;
        p += l->gd_sect + l->gt_count * l->gt_sect;
        l->gd = p;
        p += l->gd_sect + l->gt_count * l->gt_sect;
    }
    l->overhead = VS_ALIGN_UP(p, VMDK_CREATE_GRAIN);
}

int vmdk_sparse_init(struct img *file, uint64_t size, bool stream, bool zeroed_grain,
                     uint64_t desc_sectors, const char *desc)
{
    struct vmdk_layout l;
    vmdk_layout(&l, size, stream, desc_sectors);
    struct vmdk_header h = {
        .version = stream         ? 3
                   : zeroed_grain ? 2
                                  : 1,
        .flags = VMDK4_FLAG_NL_DETECT |
                 (stream ? VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER : VMDK4_FLAG_RGD) |
                 (zeroed_grain ? VMDK4_FLAG_ZERO_GRAIN : 0),
        .capacity = l.capacity,
        .grain_sectors = VMDK_CREATE_GRAIN,
        .desc_offset = desc_sectors ? 1 : 0,
        .desc_size = desc_sectors,
        .gtes_per_gt = VMDK_GTES_MAX,
        .rgd_offset = l.rgd,
        .gd_offset = stream ? VMDK_GD_AT_END : l.gd,
        .overhead = l.overhead,
        .compress_algorithm = stream ? 1 : 0,
    };
    uint64_t head_bytes = (1 + desc_sectors) * VMDK_SECTOR;
    uint8_t *head = vs_calloc(1, head_bytes);
    if (!head)
        return -ENOMEM;
    vmdk_header_encode(&h, head);
    if (desc)
        memcpy(head + VMDK_SECTOR, desc, strlen(desc));
    int rc = img_file_truncate(file, 0);
    if (!rc)
        rc = file->drv->pwrite(file, head, 0, head_bytes);
    free(head);
    if (rc)
        return rc;
    if (!stream) {
        /* both directories point at their (zeroed) tables, laid out right after them */
        uint8_t *gd = vs_calloc(l.gd_sect, VMDK_SECTOR);
        if (!gd)
            return -ENOMEM;
        for (int copy = 0; copy < 2 && !rc; copy++) {
            uint64_t dir = copy ? l.gd : l.rgd;
            for (uint64_t i = 0; i < l.gt_count; i++)
                vmdk_put32(gd + 4 * i, (uint32_t)(dir + l.gd_sect + i * l.gt_sect));
            rc = file->drv->pwrite(file, gd, dir * VMDK_SECTOR, l.gd_sect * VMDK_SECTOR);
        }
        free(gd);
        if (!rc)
            rc = img_file_truncate(file, l.overhead * VMDK_SECTOR);
        return rc;
    }
    /* a stream: grains would start at the overhead; for now, an empty directory and the footer */
    uint64_t tail_bytes = (1 + l.gd_sect + 3) * VMDK_SECTOR;
    uint8_t *tail = vs_calloc(1, tail_bytes);
    if (!tail)
        return -ENOMEM;
    vmdk_put64(tail, l.gd_sect);
    vmdk_put32(tail + 12, VMDK_MARKER_GD);
    uint8_t *footer_marker = tail + (1 + l.gd_sect) * VMDK_SECTOR;
    vmdk_put64(footer_marker, 1);
    vmdk_put32(footer_marker + 12, VMDK_MARKER_FOOTER);
    h.gd_offset = l.overhead + 1;
    vmdk_header_encode(&h, footer_marker + VMDK_SECTOR);
    rc = file->drv->pwrite(file, tail, l.overhead * VMDK_SECTOR, tail_bytes);
    free(tail);
    if (!rc)
        rc = img_file_truncate(file, l.overhead * VMDK_SECTOR + tail_bytes);
    return rc;
}

/* ---- options ----------------------------------------------------------------------------------
 */

enum vmdk_subformat {
    VMDK_SUB_MONOLITHIC_SPARSE,
    VMDK_SUB_MONOLITHIC_FLAT,
    VMDK_SUB_TWOGB_SPARSE,
    VMDK_SUB_TWOGB_FLAT,
    VMDK_SUB_STREAM,
};

static const char *const vmdk_subformat_names[] = {
    "monolithicSparse",   "monolithicFlat",  "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat", "streamOptimized",
};

struct vmdk_create_opts {
    enum vmdk_subformat sub;
    const char *adapter;
    const char *hwversion;
    const char *toolsversion;
    bool zeroed_grain;
    const char *backing;
    const char *backing_fmt;
};

static int vmdk_parse_opts(struct vs_opts *opts, const char *who, struct vmdk_create_opts *o)
{
    memset(o, 0, sizeof(*o));
    const char *sub = vs_opts_take(opts, "subformat");
    o->sub = VMDK_SUB_MONOLITHIC_SPARSE;
    if (sub) {
        size_t i = 0;
        while (i < VS_ARRAY_SIZE(vmdk_subformat_names) && strcmp(sub, vmdk_subformat_names[i]))
            i++;
        if (i == VS_ARRAY_SIZE(vmdk_subformat_names))
            return vs_error(-EINVAL,
                            "%s: subformat '%s' unknown (monolithicSparse, monolithicFlat, "
                            "twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized)",
                            who, sub);
        o->sub = (enum vmdk_subformat)i;
    }
    const char *adapter = vs_opts_take(opts, "adapter_type");
    o->adapter = "ide";
    if (adapter && !(o->adapter = vmdk_adapter_check(adapter)))
        return vs_error(-EINVAL,
                        "%s: adapter_type '%s' unknown (ide, buslogic, lsilogic, legacyESX)", who,
                        adapter);
    o->hwversion = vs_opts_take(opts, "hwversion");
    if (o->hwversion && !strcmp(o->hwversion, "undefined"))
        o->hwversion = NULL;
    if (o->hwversion &&
        (!o->hwversion[0] || strspn(o->hwversion, "0123456789") != strlen(o->hwversion)))
        return vs_error(-EINVAL, "%s: hwversion '%s' is not a number", who, o->hwversion);
    bool compat6 = false;
    int rc = vs_opts_take_bool(opts, "compat6", &compat6);
    if (rc)
        return rc;
    if (compat6 && o->hwversion)
        return vs_error(-EINVAL, "%s: compat6 cannot be combined with hwversion", who);
    if (compat6)
        o->hwversion = "6";
    if (!o->hwversion)
        o->hwversion = "4";
    o->toolsversion = vs_opts_take(opts, "toolsversion");
    if (!o->toolsversion)
        o->toolsversion = "2147483647";
    if (strchr(o->toolsversion, '"') || strchr(o->toolsversion, '\n'))
        return vs_error(-EINVAL, "%s: toolsversion '%s' invalid", who, o->toolsversion);
    rc = vs_opts_take_bool(opts, "zeroed_grain", &o->zeroed_grain);
    if (rc)
        return rc;
    o->backing = vs_opts_take(opts, "backing_file");
    o->backing_fmt = vs_opts_take(opts, "backing_fmt");
    return 0;
}

/* Heads/sectors per track per the rule VMware applies (seed 002, table 22.1): SCSI adapters get
 * 64/32 up to 1 GB, 128/32 up to 2 GB, 255/63 above; IDE disks keep ATA's 16 heads x 63 sectors
 * (the seed's own IDE descriptor, and the most an ATA CHS address can name). */
static void vmdk_geometry(uint64_t size, const char *adapter, uint64_t *cyl, uint32_t *heads,
                          uint32_t *sectors)
{
    bool ide = !strcmp(adapter, "ide");
    if (ide) {
        *heads = 16;
        *sectors = 63;
    } else if (size <= (1ull << 30)) {
        *heads = 64;
        *sectors = 32;
    } else if (size <= (2ull << 30)) {
        *heads = 128;
        *sectors = 32;
    } else {
        *heads = 255;
        *sectors = 63;
    }
    uint64_t bytes = size > VMDK_SECTOR ? size - VMDK_SECTOR : 0;
    *cyl = bytes / ((uint64_t)*heads * *sectors * VMDK_SECTOR);
    if (ide && *cyl > 16383)
        *cyl = 16383;
}

/* ---- create ---------------------------------------------------------------------------------- */

static uint32_t vmdk_new_cid(void)
{
    uint32_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
        v = (uint32_t)vs_now_ns();
    return v == 0xffffffffu ? 0xfffffffeu : v;
}

/* The backing file's CID (ffffffff when it is not a VMDK or cannot be opened). */
uint32_t vmdk_parent_cid(const char *image, const char *backing)
{
    char *path;
    if (backing[0] == '/' || !strchr(image, '/')) {
        path = vs_strdup(backing);
    } else {
        char *copy = vs_strdup(image);
        path = copy ? vs_asprintf("%s/%s", dirname(copy), backing) : NULL;
        free(copy);
    }
    uint32_t cid = 0xffffffffu;
    struct img *b = NULL;
    if (path && img_open(&b, path, NULL, IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
        if (b->drv == &img_driver_vmdk) {
            struct vmdk_state *s = b->state;
            if (s->desc.has_cid)
                cid = s->desc.cid;
        }
        img_close(b);
    }
    vs_error_clear();
    free(path);
    return cid;
}

struct vmdk_name {
    char *dir;    /* "" or "path/" */
    char *prefix; /* "disk" */
    char *suffix; /* ".vmdk" or "" */
};

static int vmdk_split_name(const char *filename, struct vmdk_name *n)
{
    const char *slash = strrchr(filename, '/');
    const char *base = slash ? slash + 1 : filename;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base)
        dot = base + strlen(base);
    n->dir = vs_asprintf("%.*s", (int)(base - filename), filename);
    n->prefix = vs_asprintf("%.*s", (int)(dot - base), base);
    n->suffix = vs_strdup(dot);
    if (!n->dir || !n->prefix || !n->suffix)
        return -ENOMEM;
    return 0;
}

static void vmdk_name_free(struct vmdk_name *n)
{
    free(n->dir);
    free(n->prefix);
    free(n->suffix);
}

int vmdk_create(const struct img_create_params *p, struct vs_opts *opts)
{
    struct vmdk_create_opts o;
    int rc = vmdk_parse_opts(opts, p->filename, &o);
    if (rc)
        return rc;
    const char *backing = p->backing_file ? p->backing_file : o.backing;
    const char *backing_fmt = p->backing_format ? p->backing_format : o.backing_fmt;
    if (backing && !backing[0])
        backing = NULL;
    bool flat = o.sub == VMDK_SUB_MONOLITHIC_FLAT || o.sub == VMDK_SUB_TWOGB_FLAT;
    bool split = o.sub == VMDK_SUB_TWOGB_SPARSE || o.sub == VMDK_SUB_TWOGB_FLAT;
    bool stream = o.sub == VMDK_SUB_STREAM;
    if (backing && backing_fmt && strcmp(backing_fmt, "vmdk"))
        return vs_error(-EINVAL, "%s: a VMDK's parent (backing file) must be a VMDK, not %s",
                        p->filename, backing_fmt);
    if (backing && flat)
        return vs_error(-ENOTSUP, "%s: flat subformats cannot have a backing file", p->filename);
    if (backing && strchr(backing, '"'))
        return vs_error(-EINVAL, "%s: backing file name cannot contain '\"'", p->filename);
    if (flat && o.zeroed_grain)
        return vs_error(-ENOTSUP, "%s: flat subformats have no grains to zero (zeroed_grain)",
                        p->filename);
    uint64_t size = VS_ALIGN_UP(p->size, VMDK_SECTOR);
    if (size == 0)
        return vs_error(-EINVAL, "%s: a VMDK needs a size of at least 512 bytes", p->filename);
    if (size / VMDK_SECTOR / VMDK_CREATE_GRAIN / VMDK_GTES_MAX >= VMDK_GD_MAX_ENTRIES ||
        size > (UINT64_MAX >> 10))
        return vs_error(-EFBIG, "%s: size %llu is too large for a VMDK", p->filename,
                        (unsigned long long)size);
    if (!split && !flat && size / VMDK_SECTOR > UINT32_MAX)
        return vs_error(-EFBIG,
                        "%s: a monolithic sparse VMDK holds at most 2 TiB; use "
                        "subformat=twoGbMaxExtentSparse",
                        p->filename);

    struct vmdk_name name = {0};
    char *extents = NULL, *desc = NULL;
    rc = vmdk_split_name(p->filename, &name);
    if (rc)
        goto out;
    uint32_t parent_cid = backing ? vmdk_parent_cid(p->filename, backing) : 0xffffffffu;
    uint64_t cyl;
    uint32_t heads, sectors;
    vmdk_geometry(size, o.adapter, &cyl, &heads, &sectors);

    /* the extent lines, creating split/flat extent files as we go */
    extents = vs_strdup("");
    uint64_t per = split ? VMDK_SPLIT_SECTORS * VMDK_SECTOR : size;
    unsigned idx = 1;
    for (uint64_t done = 0; !rc && done < size; done += per, idx++) {
        uint64_t n = VS_MIN(per, size - done);
        char *fname;
        if (!flat && !split)
            fname = vs_asprintf("%s%s", name.prefix, name.suffix);
        else if (split)
            fname = vs_asprintf("%s-%c%03u%s", name.prefix, flat ? 'f' : 's', idx, name.suffix);
        else
            fname = vs_asprintf("%s-flat%s", name.prefix, name.suffix);
        char *line = fname ? vs_asprintf("%sRW %llu %s \"%s\"%s\n", extents,
                                         (unsigned long long)(n / VMDK_SECTOR),
                                         flat ? "FLAT" : "SPARSE", fname, flat ? " 0" : "")
                           : NULL;
        if (!line) {
            free(fname);
            rc = -ENOMEM;
            break;
        }
        free(extents);
        extents = line;
        if (flat || split) {
            char *path = vs_asprintf("%s%s", name.dir, fname);
            struct img *f = NULL;
            rc = path ? img_file_open(&f, path, IMG_OPEN_RDWR, true) : -ENOMEM;
            if (!rc) {
                rc = flat ? img_file_truncate(f, n)
                          : vmdk_sparse_init(f, n, false, o.zeroed_grain, 0, NULL);
                img_close(f);
            }
            free(path);
        }
        free(fname);
    }
    if (rc)
        goto out;
    char *hint = backing ? vs_asprintf("parentFileNameHint=\"%s\"\n", backing) : vs_strdup("");
    desc = hint ? vs_asprintf("# Disk DescriptorFile\n"
                              "version=1\n"
                              "CID=%08x\n"
                              "parentCID=%08x\n"
                              "createType=\"%s\"\n"
                              "%s"
                              "\n"
                              "# Extent description\n"
                              "%s"
                              "\n"
                              "# The Disk Data Base\n"
                              "#DDB\n"
                              "\n"
                              "ddb.virtualHWVersion = \"%s\"\n"
                              "ddb.geometry.cylinders = \"%llu\"\n"
                              "ddb.geometry.heads = \"%u\"\n"
                              "ddb.geometry.sectors = \"%u\"\n"
                              "ddb.adapterType = \"%s\"\n"
                              "ddb.toolsVersion = \"%s\"\n",
                              vmdk_new_cid(), parent_cid, vmdk_subformat_names[o.sub], hint,
                              extents, o.hwversion, (unsigned long long)cyl, heads, sectors,
                              o.adapter, o.toolsversion)
                : NULL;
    free(hint);
    if (!desc) {
        rc = -ENOMEM;
        goto out;
    }
    struct img *file;
    rc = img_file_open(&file, p->filename, IMG_OPEN_RDWR, true);
    if (rc)
        goto out;
    size_t dlen = strlen(desc);
    if (!flat && !split) {
        uint64_t dsect = VS_MAX(VMDK_DESC_SECTORS, VS_DIV_ROUND_UP(dlen + 1, VMDK_SECTOR));
        rc = vmdk_sparse_init(file, size, stream, o.zeroed_grain, dsect, desc);
    } else {
        rc = file->drv->pwrite(file, desc, 0, dlen);
        if (!rc)
            rc = img_file_truncate(file, dlen);
    }
    if (!rc)
        rc = file->drv->flush(file);
    img_close(file);
out:
    free(desc);
    free(extents);
    vmdk_name_free(&name);
    return rc;
}

/* ---- measure --------------------------------------------------------------------------------- */

int vmdk_measure(struct vs_opts *opts, struct img *source, uint64_t size, uint64_t *required,
                 uint64_t *fully_allocated)
{
    struct vmdk_create_opts o;
    int rc = vmdk_parse_opts(opts, "measure", &o);
    if (rc)
        return rc;
    if (source)
        size = img_size(source);
    size = VS_ALIGN_UP(size, VMDK_SECTOR);
    bool flat = o.sub == VMDK_SUB_MONOLITHIC_FLAT || o.sub == VMDK_SUB_TWOGB_FLAT;
    bool stream = o.sub == VMDK_SUB_STREAM;
    uint64_t gb = VMDK_CREATE_GRAIN * VMDK_SECTOR;
    uint64_t data = 0;
    if (source) {
        /* grains holding anything but zeros */
        uint64_t last_grain = UINT64_MAX;
        for (uint64_t off = 0; off < img_size(source);) {
            struct img_extent ext;
            rc = img_block_status(source, off, img_size(source) - off, &ext);
            if (rc)
                return rc;
            if (!(ext.flags & IMG_STATUS_ZERO)) {
                uint64_t first = off / gb, last = (off + ext.length - 1) / gb;
                data += (last - first + 1) * gb;
                if (first == last_grain)
                    data -= gb;
                last_grain = last;
            }
            off += ext.length;
        }
    } else {
        data = 0;
    }
    uint64_t per = (o.sub == VMDK_SUB_TWOGB_SPARSE) ? VMDK_SPLIT_SECTORS * VMDK_SECTOR : size;
    uint64_t meta = 0;
    if (!flat) {
        for (uint64_t done = 0; done < size; done += per) {
            struct vmdk_layout l;
            vmdk_layout(&l, VS_MIN(per, size - done), stream,
                        o.sub == VMDK_SUB_TWOGB_SPARSE ? 0 : VMDK_DESC_SECTORS);
            meta += l.overhead * VMDK_SECTOR;
            if (stream) /* markers per grain and the trailing tables, footer */
                meta += (l.gt_count * (1 + l.gt_sect) + 1 + l.gd_sect + 3) * VMDK_SECTOR +
                        VS_DIV_ROUND_UP(size, gb) * VMDK_SECTOR;
        }
    } else {
        meta = VMDK_SECTOR * 2; /* the descriptor file */
    }
    uint64_t full = VS_ALIGN_UP(size, gb);
    *required = meta + (flat ? size : VS_MIN(data, full));
    *fully_allocated = meta + (flat ? size : full);
    return 0;
}
