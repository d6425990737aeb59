/*
 * lib/img/vmdk.c — the VMDK format: descriptor parsing, the extent list, and the driver ops that
 * cut guest I/O at extent boundaries and hand each piece to the extent kind that owns it.
 *
 * The idea: whatever the subformat (monolithicSparse with its embedded descriptor, a descriptor
 * file naming FLAT/SPARSE/ZERO extents, a streamOptimized OVA disk), opening ends in the same
 * shape — a sorted array of extents, each a flat, zero or sparse byte store — so reads, writes,
 * block status, check and compaction are written once. The descriptor's lines are kept verbatim
 * and only the CID / parent lines are replaced when they change, so comments and DDB entries
 * other tools wrote survive our writes.
 */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <time.h>

#include "img/vmdk.h"

/* ---- probe ----------------------------------------------------------------------------------- */

static int vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= 4 && (vmdk_le32(buf) == VMDK4_MAGIC || vmdk_le32(buf) == VMDK3_MAGIC))
        return 100;
    /* a descriptor file: comments and blank lines, then "version=N" */
    size_t i = 0;
    while (i < len) {
        if (buf[i] == '#') {
            while (i < len && buf[i] != '\n')
                i++;
            i++;
            continue;
        }
        if (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n') {
            i++;
            continue;
        }
        static const char key[] = "version=";
        if (len - i > sizeof(key) && !memcmp(buf + i, key, sizeof(key) - 1) && buf[i + 8] >= '1' &&
            buf[i + 8] <= '3')
            return 100;
        return 0;
    }
    return 0;
}

/* ---- descriptor ------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    int type; /* enum vmdk_extent_type, or -1 when known but unsupported */
} vmdk_extent_types[] = {
    {"SPARSE", VMDK_EXT_SPARSE}, {"FLAT", VMDK_EXT_FLAT},    {"ZERO", VMDK_EXT_ZERO},
    {"VMFS", VMDK_EXT_FLAT},     {"VMFSRAW", VMDK_EXT_FLAT}, {"VMFSRDM", VMDK_EXT_FLAT},
    {"VMFSSPARSE", -1},          {"SESPARSE", -1},
};

static const char *const vmdk_create_types[] = {
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
    "vmfsThin",
    "vmfsSparse",
    "vmfsPreallocated",
    "vmfsEagerZeroedThick",
    "vmfsRaw",
    "vmfsRawDeviceMap",
    "vmfsPassthroughRawDeviceMap",
    "custom",
    "fullDevice",
    "partitionedDevice",
    "seSparse",
    "monolithicFlatDevice",
};

void vmdk_desc_free(struct vmdk_desc *d)
{
    for (size_t i = 0; i < d->line_count; i++)
        free(d->lines[i]);
    free(d->lines);
    for (size_t i = 0; i < d->extent_count; i++)
        free(d->extents[i].filename);
    free(d->extents);
    free(d->create_type);
    free(d->parent_hint);
    memset(d, 0, sizeof(*d));
}

static char *vmdk_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

static char *vmdk_unquote(char *s)
{
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        s[n - 1] = 0;
        return s + 1;
    }
    return s;
}

static bool vmdk_parse_u64(const char *s, int base, uint64_t *out)
{
    if (!*s || *s == '-' || *s == '+' || *s == ' ')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static int vmdk_desc_extent(struct img *img, const char *where, int lineno, char *line,
                            struct vmdk_desc_extent *x)
{
    char *save = NULL;
    char *access = strtok_r(line, " \t", &save);
    char *size = strtok_r(NULL, " \t", &save);
    char *type = strtok_r(NULL, " \t", &save);
    char *rest = save ? vmdk_trim(save) : NULL;
    memset(x, 0, sizeof(*x));
    x->line = lineno;
    if (!strcmp(access, "RW"))
        x->access = VMDK_ACCESS_RW;
    else if (!strcmp(access, "RDONLY"))
        x->access = VMDK_ACCESS_RDONLY;
    else
        x->access = VMDK_ACCESS_NOACCESS;
    if (!size || !vmdk_parse_u64(size, 10, &x->sectors) || x->sectors == 0 ||
        x->sectors > (UINT64_MAX >> 10))
        return img_error(img, -EINVAL, "%s line %d: extent size '%s' is not a sector count", where,
                         lineno, size ? size : "");
    if (!type)
        return img_error(img, -EINVAL, "%s line %d: extent type missing", where, lineno);
    int t = -2;
    for (size_t i = 0; i < VS_ARRAY_SIZE(vmdk_extent_types); i++) {
        if (!strcmp(type, vmdk_extent_types[i].name)) {
            t = vmdk_extent_types[i].type;
            x->type_name = vmdk_extent_types[i].name;
        }
    }
    if (t == -2)
        return img_error(img, -EINVAL, "%s line %d: extent type '%.40s' unknown", where, lineno,
                         type);
    if (t == -1)
        return img_error(img, -ENOTSUP, "%s line %d: extent type '%s' is not supported", where,
                         lineno, type);
    x->type = (enum vmdk_extent_type)t;
    if (x->type == VMDK_EXT_ZERO)
        return 0;
    if (!rest || rest[0] != '"')
        return img_error(img, -EINVAL, "%s line %d: extent file name missing (expected \"NAME\")",
                         where, lineno);
    char *close = strchr(rest + 1, '"');
    if (!close || close == rest + 1)
        return img_error(img, -EINVAL, "%s line %d: extent file name not quoted", where, lineno);
    *close = 0;
    x->filename = vs_strdup(rest + 1);
    if (!x->filename)
        return -ENOMEM;
    char *offset = vmdk_trim(close + 1);
    if (*offset) {
        if (x->type != VMDK_EXT_FLAT || !vmdk_parse_u64(offset, 10, &x->offset) ||
            x->offset > (UINT64_MAX >> 10))
            return img_error(img, -EINVAL, "%s line %d: extent offset '%.40s' invalid", where,
                             lineno, offset);
    }
    return 0;
}

int vmdk_desc_parse(struct img *img, const char *where, const char *text, size_t len,
                    struct vmdk_desc *d)
{
    memset(d, 0, sizeof(*d));
    d->cid_line = d->parent_cid_line = d->hint_line = -1;
    d->version = 1;
    size_t n = strnlen(text, len);
    int rc = 0;
    size_t cap_lines = 0, cap_ext = 0;
    int lineno = 0;
    for (size_t pos = 0; pos < n;) {
        const char *nl = memchr(text + pos, '\n', n - pos);
        size_t ll = nl ? (size_t)(nl - (text + pos)) : n - pos;
        lineno++;
        if (d->line_count == cap_lines) {
            cap_lines = cap_lines ? cap_lines * 2 : 32;
            char **nlines = realloc(d->lines, cap_lines * sizeof(*nlines));
            if (!nlines) {
                rc = -ENOMEM;
                goto fail;
            }
            d->lines = nlines;
        }
        char *raw = vs_malloc(ll + 1);
        if (!raw) {
            rc = -ENOMEM;
            goto fail;
        }
        memcpy(raw, text + pos, ll);
        raw[ll] = 0;
        if (ll && raw[ll - 1] == '\r')
            raw[ll - 1] = 0;
        d->lines[d->line_count++] = raw;
        pos += ll + 1;

        char *copy = vs_strdup(raw);
        if (!copy) {
            rc = -ENOMEM;
            goto fail;
        }
        char *line = vmdk_trim(copy);
        if (!*line || line[0] == '#') {
            free(copy);
            continue;
        }
        if (!strncmp(line, "RW ", 3) || !strncmp(line, "RDONLY ", 7) ||
            !strncmp(line, "NOACCESS ", 9) || !strncmp(line, "RW\t", 3) ||
            !strncmp(line, "RDONLY\t", 7) || !strncmp(line, "NOACCESS\t", 9)) {
            if (d->extent_count == cap_ext) {
                cap_ext = cap_ext ? cap_ext * 2 : 4;
                struct vmdk_desc_extent *ne = realloc(d->extents, cap_ext * sizeof(*ne));
                if (!ne) {
                    free(copy);
                    rc = -ENOMEM;
                    goto fail;
                }
                d->extents = ne;
            }
            rc = vmdk_desc_extent(img, where, lineno, line, &d->extents[d->extent_count]);
            if (!rc || d->extents[d->extent_count].filename)
                d->extent_count++; /* counted even on failure so the name is freed */
            free(copy);
            if (rc)
                goto fail;
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq) {
            rc = img_error(img, -EINVAL,
                           "%s line %d: expected key=value or an extent line, got "
                           "'%.40s'",
                           where, lineno, line);
            free(copy);
            goto fail;
        }
        *eq = 0;
        char *key = vmdk_trim(line);
        char *value = vmdk_unquote(vmdk_trim(eq + 1));
        long idx = (long)d->line_count - 1;
        if (!strcasecmp(key, "version")) {
            uint64_t v;
            if (!vmdk_parse_u64(value, 10, &v) || v < 1 || v > 3) {
                rc = img_error(img, -ENOTSUP, "%s line %d: version '%.20s' unsupported (1-3)",
                               where, lineno, value);
                free(copy);
                goto fail;
            }
            d->version = (uint32_t)v;
        } else if (!strcasecmp(key, "CID") || !strcasecmp(key, "parentCID")) {
            bool parent = !strcasecmp(key, "parentCID");
            uint64_t v;
            if (!vmdk_parse_u64(value, 16, &v) || v > 0xffffffffu) {
                rc = img_error(img, -EINVAL, "%s line %d: %s '%.20s' is not a 32-bit hex number",
                               where, lineno, key, value);
                free(copy);
                goto fail;
            }
            if (parent) {
                d->parent_cid = (uint32_t)v;
                d->has_parent_cid = true;
                d->parent_cid_line = idx;
            } else {
                d->cid = (uint32_t)v;
                d->has_cid = true;
                d->cid_line = idx;
            }
        } else if (!strcasecmp(key, "createType")) {
            bool known = false;
            for (size_t i = 0; i < VS_ARRAY_SIZE(vmdk_create_types); i++)
                known = known || !strcmp(value, vmdk_create_types[i]);
            if (!known) {
                rc = img_error(img, -EINVAL, "%s line %d: createType '%.40s' unknown", where,
                               lineno, value);
                free(copy);
                goto fail;
            }
            free(d->create_type);
            d->create_type = vs_strdup(value);
        } else if (!strcasecmp(key, "parentFileNameHint")) {
            free(d->parent_hint);
            d->parent_hint = vs_strdup(value);
            d->hint_line = idx;
        }
        free(copy);
    }
    return 0;
fail:
    vmdk_desc_free(d);
    return rc;
}

static char *vmdk_desc_text(const struct vmdk_desc *d, size_t *len)
{
    size_t total = 1;
    for (size_t i = 0; i < d->line_count; i++)
        total += strlen(d->lines[i]) + 1;
    char *t = vs_malloc(total);
    if (!t)
        return NULL;
    size_t p = 0;
    for (size_t i = 0; i < d->line_count; i++) {
        size_t l = strlen(d->lines[i]);
        memcpy(t + p, d->lines[i], l);
        p += l;
        t[p++] = '\n';
    }
    t[p] = 0;
    *len = p;
    return t;
}

static int vmdk_desc_write(struct img *img)
{
    struct vmdk_state *s = img->state;
    size_t len;
    char *text = vmdk_desc_text(&s->desc, &len);
    if (!text)
        return -ENOMEM;
    struct img *f = s->desc_file;
    int rc;
    if (s->desc_space) {
        if (len > s->desc_space) {
            free(text);
            return img_error(img, -ENOSPC,
                             "descriptor: %zu bytes do not fit the %llu bytes reserved in the file",
                             len, (unsigned long long)s->desc_space);
        }
        uint8_t *buf = vs_calloc(1, s->desc_space);
        if (!buf) {
            free(text);
            return -ENOMEM;
        }
        memcpy(buf, text, len);
        rc = f->drv->pwrite(f, buf, s->desc_offset, s->desc_space);
        free(buf);
    } else {
        rc = f->drv->pwrite(f, text, 0, len);
        if (!rc)
            rc = img_file_truncate(f, len);
    }
    free(text);
    return rc;
}

/* Replace line IDX (or append after AFTER when IDX is -1) with TEXT. */
static int vmdk_desc_set_line(struct vmdk_desc *d, long *idx, long after, const char *text)
{
    char *copy = vs_strdup(text);
    if (!copy)
        return -ENOMEM;
    if (*idx >= 0) {
        free(d->lines[*idx]);
        d->lines[*idx] = copy;
        return 0;
    }
    char **nl = realloc(d->lines, (d->line_count + 1) * sizeof(*nl));
    if (!nl) {
        free(copy);
        return -ENOMEM;
    }
    d->lines = nl;
    size_t at = after >= 0 ? (size_t)after + 1 : d->line_count;
    memmove(&d->lines[at + 1], &d->lines[at], (d->line_count - at) * sizeof(*nl));
    d->lines[at] = copy;
    d->line_count++;
    long *fix[] = {&d->cid_line, &d->parent_cid_line, &d->hint_line};
    for (size_t i = 0; i < 3; i++)
        if (*fix[i] >= (long)at)
            (*fix[i])++;
    *idx = (long)at;
    return 0;
}

static void vmdk_desc_drop_line(struct vmdk_desc *d, long *idx)
{
    if (*idx < 0)
        return;
    size_t at = (size_t)*idx;
    free(d->lines[at]);
    memmove(&d->lines[at], &d->lines[at + 1], (d->line_count - at - 1) * sizeof(char *));
    d->line_count--;
    *idx = -1;
    long *fix[] = {&d->cid_line, &d->parent_cid_line, &d->hint_line};
    for (size_t i = 0; i < 3; i++)
        if (*fix[i] > (long)at)
            (*fix[i])--;
}

static uint32_t vmdk_random_cid(uint32_t avoid)
{
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
            v = (uint32_t)vs_now_ns() ^ (uint32_t)(vs_now_ns() >> 29);
        if (v != avoid && v != 0xffffffffu)
            break;
    }
    return v;
}

/* VMware changes the CID the first time a disk is written after it was opened, so children
 * made on the old content can tell. Called with img->lock held. */
static int vmdk_update_cid_locked(struct img *img)
{
    struct vmdk_state *s = img->state;
    if (s->cid_updated || !s->have_desc)
        return 0;
    __atomic_store_n(&s->cid_updated, true, __ATOMIC_RELEASE);
    uint32_t cid = vmdk_random_cid(s->desc.cid);
    char line[32];
    snprintf(line, sizeof(line), "CID=%08x", cid);
    long after = -1;
    for (size_t i = 0; i < s->desc.line_count && after < 0; i++)
        if (!strncasecmp(vmdk_trim(s->desc.lines[i]), "version", 7))
            after = (long)i;
    int rc = vmdk_desc_set_line(&s->desc, &s->desc.cid_line, after, line);
    if (rc)
        return rc;
    s->desc.cid = cid;
    s->desc.has_cid = true;
    return vmdk_desc_write(img);
}

static int vmdk_update_cid(struct img *img)
{
    struct vmdk_state *s = img->state;
    if (__atomic_load_n(&s->cid_updated, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&img->lock);
    int rc = vmdk_update_cid_locked(img);
    pthread_mutex_unlock(&img->lock);
    return rc;
}

const char *vmdk_adapter_check(const char *adapter)
{
    static const char *const known[] = {"ide", "buslogic", "lsilogic", "legacyESX"};
    for (size_t i = 0; i < VS_ARRAY_SIZE(known); i++)
        if (!strcmp(adapter, known[i]))
            return known[i];
    return NULL;
}

/* ---- open / close ---------------------------------------------------------------------------- */

static void vmdk_free_state(struct vmdk_state *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->ext_count; i++) {
        struct vmdk_extent *e = &s->ext[i];
        if (e->sp)
            vmdk_sparse_close(e);
        if (e->own_file && e->file)
            img_close(e->file);
        free(e->filename);
    }
    free(s->ext);
    vmdk_desc_free(&s->desc);
    free(s->pending);
    pthread_cond_destroy(&s->pending_cond);
    free(s);
}

static char *vmdk_extent_path(const char *desc_path, const char *name)
{
    if (name[0] == '/' || !strchr(desc_path, '/'))
        return vs_strdup(name);
    char *copy = vs_strdup(desc_path);
    if (!copy)
        return NULL;
    char *p = vs_asprintf("%s/%s", dirname(copy), name);
    free(copy);
    return p;
}

static int vmdk_add_extent(struct vmdk_state *s, struct vmdk_extent **out)
{
    struct vmdk_extent *n = realloc(s->ext, (s->ext_count + 1) * sizeof(*n));
    if (!n)
        return vs_error(-ENOMEM, "out of memory for the extent list");
    s->ext = n;
    *out = &s->ext[s->ext_count++];
    memset(*out, 0, sizeof(**out));
    return 0;
}

/* The file node for extent I at PATH. Extents may share a file (several FLAT ranges of one
 * device, or the descriptor's own file), and each file is opened once — with write access if
 * any RW extent needs it — since a second open would conflict with the first one's lock. */
static int vmdk_extent_file(struct img *img, size_t i, const char *path, struct img **out,
                            bool *own)
{
    struct vmdk_state *s = img->state;
    struct stat st;
    *own = false;
    if (stat(path, &st) == 0) {
        /* a FIFO would block the open, a character device is no disk */
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
            return vs_error(-EINVAL, "%s: not a regular file or block device", path);
        if (st.st_dev == img->file->dev && st.st_ino == img->file->ino) {
            *out = img->file;
            return 0;
        }
        for (size_t j = 0; j < s->ext_count; j++) {
            struct img *f = s->ext[j].file;
            if (f && f->dev == st.st_dev && f->ino == st.st_ino) {
                *out = f;
                return 0;
            }
        }
    }
    bool write = false;
    for (size_t j = i; j < s->desc.extent_count && (img->flags & IMG_OPEN_RDWR); j++) {
        struct vmdk_desc_extent *y = &s->desc.extents[j];
        if (y->access != VMDK_ACCESS_RW || !y->filename)
            continue;
        char *other = vmdk_extent_path(img->filename, y->filename);
        struct stat st2;
        write =
            write ||
            (other && (!strcmp(other, path) || (stat(other, &st2) == 0 && st2.st_dev == st.st_dev &&
                                                st2.st_ino == st.st_ino)));
        free(other);
    }
    int flags = img->flags & (IMG_OPEN_NO_LOCK | IMG_OPEN_DIRECT);
    if (write)
        flags |= IMG_OPEN_RDWR;
    int rc = img_file_open(out, path, flags, false);
    *own = rc == 0;
    return rc;
}

/* Open the extents a descriptor lists, relative to the descriptor's directory. */
static int vmdk_open_extents(struct img *img)
{
    struct vmdk_state *s = img->state;
    uint64_t start = 0;
    if (!s->desc.extent_count)
        return img_error(img, -EINVAL, "descriptor: no extent lines");
    for (size_t i = 0; i < s->desc.extent_count; i++) {
        struct vmdk_desc_extent *x = &s->desc.extents[i];
        struct vmdk_extent *e;
        int rc = vmdk_add_extent(s, &e);
        if (rc)
            return rc;
        e->type = x->type;
        e->access = x->access;
        e->type_name = x->type_name;
        e->start = start;
        e->length = x->sectors * VMDK_SECTOR;
        if (e->length > (UINT64_MAX >> 1) - start)
            return img_error(img, -EFBIG,
                             "descriptor line %d: extents add up to more than 2^63 "
                             "bytes",
                             x->line);
        start += e->length;
        if (x->type == VMDK_EXT_ZERO)
            continue;
        e->filename = vs_strdup(x->filename);
        char *path = vmdk_extent_path(img->filename, x->filename);
        if (!e->filename || !path) {
            free(path);
            return -ENOMEM;
        }
        rc = vmdk_extent_file(img, i, path, &e->file, &e->own_file);
        free(path);
        if (rc)
            return vs_error_prefix(rc, "%s: descriptor line %d: extent '%s'", img->filename,
                                   x->line, x->filename);
        if (x->type == VMDK_EXT_FLAT) {
            e->flat_offset = x->offset * VMDK_SECTOR;
            continue;
        }
        struct vmdk_header h;
        bool stream;
        rc = vmdk_header_read(e->file, e->file->filename, &h, &stream);
        if (rc)
            return rc;
        if (h.capacity == 0)
            return img_error(img, -EINVAL, "descriptor line %d: sparse extent '%s' has capacity 0",
                             x->line, x->filename);
        if (h.capacity < x->sectors)
            return img_error(img, -EINVAL,
                             "descriptor line %d: extent '%s' is %llu sectors but its header "
                             "capacity is %llu",
                             x->line, x->filename, (unsigned long long)x->sectors,
                             (unsigned long long)h.capacity);
        rc = vmdk_sparse_open(img, e, &h, stream);
        if (rc)
            return rc;
    }
    img->size = start;
    return 0;
}

static int vmdk_read_text(struct img *img, struct img *f, uint64_t offset, uint64_t len, char **out)
{
    char *buf = vs_malloc(len + 1);
    if (!buf)
        return -ENOMEM;
    int rc = len ? f->drv->pread(f, buf, offset, len) : 0;
    if (rc) {
        free(buf);
        return rc;
    }
    buf[len] = 0;
    *out = buf;
    return 0;
}

static int vmdk_open_inner(struct img *img)
{
    struct vmdk_state *s = img->state;
    struct img *f = img->file;
    int64_t fsize = img_file_size(f);
    if (fsize < 0)
        return (int)fsize;
    uint8_t magic[4] = {0};
    int rc = fsize >= 4 ? f->drv->pread(f, magic, 0, 4) : 0;
    if (rc)
        return rc;
    s->desc_file = f;
    if (vmdk_le32(magic) == VMDK3_MAGIC)
        return img_error(img, -ENOTSUP, "header: ESX vmfsSparse (COWD) extents are not supported");
    if (fsize >= 4 && vmdk_le32(magic) == VMDK4_MAGIC) {
        struct vmdk_header h;
        bool stream;
        rc = vmdk_header_read(f, img->filename, &h, &stream);
        if (rc)
            return rc;
        if (h.desc_offset && h.desc_size) {
            char *text;
            s->desc_offset = h.desc_offset * VMDK_SECTOR;
            s->desc_space = h.desc_size * VMDK_SECTOR;
            rc = vmdk_read_text(img, f, s->desc_offset, s->desc_space, &text);
            if (rc)
                return rc;
            rc = vmdk_desc_parse(img, "embedded descriptor", text, s->desc_space, &s->desc);
            free(text);
            if (rc)
                return rc;
            s->have_desc = s->desc.line_count > 0;
        }
        if (h.capacity == 0) {
            /* a descriptor stored in a sparse header: the extents are elsewhere */
            if (!s->have_desc)
                return img_error(img, -EINVAL, "header: capacity is 0 and there is no descriptor");
            return vmdk_open_extents(img);
        }
        struct vmdk_extent *e;
        rc = vmdk_add_extent(s, &e);
        if (rc)
            return rc;
        e->type = VMDK_EXT_SPARSE;
        e->access = VMDK_ACCESS_RW;
        e->type_name = "";
        e->file = f;
        e->own_file = false;
        e->length = h.capacity * VMDK_SECTOR;
        rc = vmdk_sparse_open(img, e, &h, stream);
        if (rc)
            return rc;
        img->size = e->length;
        if (!s->desc.create_type)
            s->desc.create_type =
                vs_strdup(e->sp->compressed ? "streamOptimized" : "monolithicSparse");
        return 0;
    }
    if (fsize > VMDK_DESC_MAX)
        return img_error(img, -EINVAL,
                         "descriptor: file is %lld bytes, more than a descriptor can be (%u)",
                         (long long)fsize, VMDK_DESC_MAX);
    char *text;
    rc = vmdk_read_text(img, f, 0, (uint64_t)fsize, &text);
    if (rc)
        return rc;
    /* qemu pads descriptor files with NULs to a sector; anything after a NUL must be NUL */
    const char *nul = memchr(text, 0, (size_t)fsize);
    if (nul && !vs_buffer_is_zero(nul, (size_t)fsize - (size_t)(nul - text))) {
        free(text);
        return img_error(img, -EINVAL, "descriptor: not a text file (NUL byte); not a VMDK");
    }
    rc = vmdk_desc_parse(img, "descriptor", text, (size_t)fsize, &s->desc);
    free(text);
    if (rc)
        return rc;
    s->have_desc = true;
    if (!s->desc.create_type)
        return img_error(img, -EINVAL, "descriptor: createType missing");
    return vmdk_open_extents(img);
}

static int vmdk_open(struct img *img)
{
    struct vmdk_state *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_cond_init(&s->pending_cond, NULL);
    img->state = s;
    int rc = vmdk_open_inner(img);
    if (!rc && s->desc.parent_hint && s->desc.parent_hint[0]) {
        img->backing_name = vs_strdup(s->desc.parent_hint);
        img->backing_format = vs_strdup("vmdk");
        if (!img->backing_name || !img->backing_format)
            rc = -ENOMEM;
    }
    if (!rc) {
        /* qemu reports the grain size when all sparse extents agree */
        for (size_t i = 0; i < s->ext_count; i++) {
            if (s->ext[i].sp) {
                uint32_t g = (uint32_t)s->ext[i].sp->grain_bytes;
                img->cluster_size = (!img->cluster_size || img->cluster_size == g) ? g : 0;
            }
        }
    }
    if (rc) {
        vmdk_free_state(s);
        img->state = NULL;
    }
    return rc;
}

static void vmdk_close(struct img *img)
{
    vmdk_free_state(img->state);
    img->state = NULL;
}

/* ---- I/O ------------------------------------------------------------------------------------- */

static struct vmdk_extent *vmdk_find(struct vmdk_state *s, uint64_t off)
{
    size_t lo = 0, hi = s->ext_count;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (s->ext[mid].start <= off)
            lo = mid;
        else
            hi = mid;
    }
    return &s->ext[lo];
}

static int vmdk_extent_name_error(struct img *img, struct vmdk_extent *e, int err, const char *what)
{
    return img_error(img, err, "extent %zu ('%s'): %s",
                     (size_t)(e - ((struct vmdk_state *)img->state)->ext) + 1,
                     e->filename ? e->filename : "ZERO", what);
}

/* Warn once when a delta's parent no longer has the content the delta was made on. */
static void vmdk_check_parent_cid(struct img *img)
{
    struct vmdk_state *s = img->state;
    if (!img->backing || !s->desc.has_parent_cid || s->desc.parent_cid == 0xffffffffu)
        return;
    if (__atomic_exchange_n(&s->parent_cid_checked, true, __ATOMIC_ACQ_REL))
        return;
    struct img *b = img->backing;
    if (b->drv != &img_driver_vmdk || !b->state)
        return;
    struct vmdk_state *bs = b->state;
    if (bs->desc.has_cid && bs->desc.cid != s->desc.parent_cid)
        vs_warn("%s: parentCID %08x does not match the CID %08x of its parent '%s': the parent "
                "was modified after this delta was made",
                img->filename, s->desc.parent_cid, bs->desc.cid, b->filename);
}

static int vmdk_pread(struct img *img, void *buf, uint64_t offset, size_t len)
{
    struct vmdk_state *s = img->state;
    uint8_t *p = buf;
    vmdk_check_parent_cid(img);
    while (len) {
        struct vmdk_extent *e = vmdk_find(s, offset);
        uint64_t eoff = offset - e->start;
        size_t n = (size_t)VS_MIN((uint64_t)len, e->length - eoff);
        int rc = 0;
        if (e->access == VMDK_ACCESS_NOACCESS)
            return vmdk_extent_name_error(img, e, -EACCES, "extent is NOACCESS");
        switch (e->type) {
        case VMDK_EXT_ZERO:
            memset(p, 0, n);
            break;
        case VMDK_EXT_FLAT:
            rc = e->file->drv->pread(e->file, p, e->flat_offset + eoff, n);
            break;
        case VMDK_EXT_SPARSE:
            rc = vmdk_sparse_read(img, e, p, eoff, n);
            break;
        }
        if (rc)
            return rc;
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}

static int vmdk_write_common(struct img *img, const void *buf, uint64_t offset, size_t len,
                             bool compress)
{
    struct vmdk_state *s = img->state;
    const uint8_t *p = buf;
    int rc = vmdk_update_cid(img);
    if (rc)
        return rc;
    while (len) {
        struct vmdk_extent *e = vmdk_find(s, offset);
        uint64_t eoff = offset - e->start;
        size_t n = (size_t)VS_MIN((uint64_t)len, e->length - eoff);
        if (e->access != VMDK_ACCESS_RW)
            return vmdk_extent_name_error(img, e, -EROFS, "extent is not RW");
        switch (e->type) {
        case VMDK_EXT_ZERO:
            return vmdk_extent_name_error(img, e, -ENOTSUP, "a ZERO extent cannot store data");
        case VMDK_EXT_FLAT:
            if (compress)
                return vmdk_extent_name_error(img, e, -ENOTSUP,
                                              "flat extents cannot store compressed data");
            rc = e->file->drv->pwrite(e->file, p, e->flat_offset + eoff, n);
            break;
        case VMDK_EXT_SPARSE:
            rc = vmdk_sparse_write(img, e, p, eoff, n, compress);
            break;
        }
        if (rc)
            return rc;
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}

static int vmdk_pwrite(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    return vmdk_write_common(img, buf, offset, len, false);
}

static int vmdk_pwrite_compressed(struct img *img, const void *buf, uint64_t offset, size_t len)
{
    return vmdk_write_common(img, buf, offset, len, true);
}

static int vmdk_write_zeroes(struct img *img, uint64_t offset, uint64_t len, int flags)
{
    struct vmdk_state *s = img->state;
    int rc = vmdk_update_cid(img);
    if (rc)
        return rc;
    while (len) {
        struct vmdk_extent *e = vmdk_find(s, offset);
        uint64_t eoff = offset - e->start;
        uint64_t n = VS_MIN(len, e->length - eoff);
        if (e->type != VMDK_EXT_ZERO && e->access != VMDK_ACCESS_RW)
            return vmdk_extent_name_error(img, e, -EROFS, "extent is not RW");
        switch (e->type) {
        case VMDK_EXT_ZERO:
            break;
        case VMDK_EXT_FLAT:
            rc = e->file->drv->write_zeroes(e->file, e->flat_offset + eoff, n, flags);
            break;
        case VMDK_EXT_SPARSE:
            rc = vmdk_sparse_zero(img, e, eoff, n);
            break;
        }
        if (rc)
            return rc;
        offset += n;
        len -= n;
    }
    return 0;
}

static int vmdk_discard(struct img *img, uint64_t offset, uint64_t len)
{
    return 0; /* a hint; sparse grains are reclaimed by compact */
}

static int vmdk_block_status(struct img *img, uint64_t offset, uint64_t len, uint64_t *pnum,
                             uint64_t *host)
{
    struct vmdk_state *s = img->state;
    struct vmdk_extent *e = vmdk_find(s, offset);
    uint64_t eoff = offset - e->start;
    uint64_t n = VS_MIN(len, e->length - eoff);
    *host = UINT64_MAX;
    vmdk_check_parent_cid(img);
    switch (e->type) {
    case VMDK_EXT_ZERO:
        *pnum = n;
        return IMG_DS_ZERO;
    case VMDK_EXT_FLAT: {
        if (e->access == VMDK_ACCESS_NOACCESS) {
            *pnum = n;
            return IMG_DS_DATA;
        }
        uint64_t h = UINT64_MAX;
        int st = e->file->drv->block_status(e->file, e->flat_offset + eoff, n, pnum, &h);
        if (st < 0)
            return st;
        if (*pnum == 0 || *pnum > n)
            *pnum = n;
        if (e->file == img->file)
            *host = h;
        return st == IMG_DS_ZERO ? IMG_DS_ZERO : IMG_DS_DATA;
    }
    case VMDK_EXT_SPARSE:
        return vmdk_sparse_status(img, e, eoff, n, pnum, host);
    }
    return -EIO;
}

static int vmdk_flush(struct img *img)
{
    struct vmdk_state *s = img->state;
    int rc = 0;
    for (size_t i = 0; i < s->ext_count && !rc; i++) {
        struct vmdk_extent *e = &s->ext[i];
        if (e->sp && e->access == VMDK_ACCESS_RW)
            rc = vmdk_sparse_flush(img, e);
        if (!rc && e->own_file && (e->file->flags & IMG_OPEN_RDWR))
            rc = e->file->drv->flush(e->file);
    }
    if (!rc)
        rc = img->file->drv->flush(img->file);
    return rc;
}

/* ---- facts and maintenance ------------------------------------------------------------------- */

static int vmdk_info(struct img *img, struct img_info_extra *extra)
{
    struct vmdk_state *s = img->state;
    struct json_object *data = json_object_new_object();
    json_object_object_add(data, "cid", json_object_new_int64(s->desc.has_cid ? s->desc.cid : 0));
    json_object_object_add(
        data, "parent-cid",
        json_object_new_int64(s->desc.has_parent_cid ? s->desc.parent_cid : 0xffffffffu));
    json_object_object_add(data, "create-type",
                           json_object_new_string(s->desc.create_type ? s->desc.create_type : ""));
    struct json_object *arr = json_object_new_array();
    for (size_t i = 0; i < s->ext_count; i++) {
        struct vmdk_extent *e = &s->ext[i];
        struct json_object *o = json_object_new_object();
        if (e->sp && e->sp->compressed)
            json_object_object_add(o, "compressed", json_object_new_boolean(true));
        json_object_object_add(o, "virtual-size", json_object_new_int64((int64_t)e->length));
        json_object_object_add(
            o, "filename",
            json_object_new_string(e->file ? e->file->filename : (e->filename ? e->filename : "")));
        if (e->sp)
            json_object_object_add(o, "cluster-size",
                                   json_object_new_int64((int64_t)e->sp->grain_bytes));
        json_object_object_add(o, "format", json_object_new_string(e->type_name));
        json_object_array_add(arr, o);
    }
    json_object_object_add(data, "extents", arr);
    struct json_object *fs = json_object_new_object();
    json_object_object_add(fs, "type", json_object_new_string("vmdk"));
    json_object_object_add(fs, "data", data);
    extra->format_specific = fs;
    return 0;
}

static int vmdk_check(struct img *img, struct img_check *r, int fix)
{
    struct vmdk_state *s = img->state;
    for (size_t i = 0; i < s->ext_count; i++) {
        struct vmdk_extent *e = &s->ext[i];
        if (e->type == VMDK_EXT_FLAT && e->file) {
            int64_t sz = img_file_size(e->file);
            if (sz >= 0 && (uint64_t)sz < e->flat_offset + e->length && r->report) {
                char line[512];
                snprintf(line, sizeof(line),
                         "Warning: flat extent '%s' is %lld bytes, shorter than the %llu the "
                         "descriptor maps (the rest reads as zeros)",
                         e->filename, (long long)sz,
                         (unsigned long long)(e->flat_offset + e->length));
                r->report(r->report_ctx, line);
            }
        }
        if (!e->sp)
            continue;
        int rc = vmdk_sparse_check(img, e, r, fix);
        if (rc)
            return rc;
    }
    return 0;
}

static int vmdk_compact(struct img *img, struct img_compact *result)
{
    struct vmdk_state *s = img->state;
    bool any = false;
    for (size_t i = 0; i < s->ext_count; i++) {
        struct vmdk_extent *e = &s->ext[i];
        if (!e->sp || e->access != VMDK_ACCESS_RW)
            continue;
        uint64_t freed = 0;
        int rc = vmdk_sparse_compact(img, e, &freed);
        if (rc == -ENOTSUP)
            continue;
        if (rc)
            return rc;
        any = true;
        result->blocks_freed += freed;
    }
    if (!any)
        return img_error(img, -ENOTSUP,
                         "compaction needs a hosted sparse extent that is not compressed (this is "
                         "%s)",
                         s->desc.create_type ? s->desc.create_type : "vmdk");
    return vmdk_flush(img);
}

static int vmdk_make_empty(struct img *img)
{
    struct vmdk_state *s = img->state;
    for (size_t i = 0; i < s->ext_count; i++)
        if (s->ext[i].type != VMDK_EXT_SPARSE)
            return img_error(img, -ENOTSUP,
                             "only sparse extents can be emptied (extent '%s' is %s)",
                             s->ext[i].filename ? s->ext[i].filename : "ZERO", s->ext[i].type_name);
    int rc = vmdk_update_cid(img);
    for (size_t i = 0; i < s->ext_count && !rc; i++)
        rc = vmdk_sparse_make_empty(img, &s->ext[i]);
    /* an empty delta is valid on whatever its parent holds now (after a commit, the parent's
     * CID changed): record the parent's current CID so the link checks out again */
    if (!rc && s->have_desc && img->backing_name) {
        uint32_t pcid = vmdk_parent_cid(img->filename, img->backing_name);
        if (pcid != 0xffffffffu) {
            char line[32];
            snprintf(line, sizeof(line), "parentCID=%08x", pcid);
            pthread_mutex_lock(&img->lock);
            rc = vmdk_desc_set_line(&s->desc, &s->desc.parent_cid_line, s->desc.cid_line, line);
            if (!rc) {
                s->desc.parent_cid = pcid;
                s->desc.has_parent_cid = true;
                rc = vmdk_desc_write(img);
            }
            pthread_mutex_unlock(&img->lock);
        }
    }
    if (!rc)
        rc = vmdk_flush(img);
    return rc;
}

static int vmdk_change_backing(struct img *img, const char *backing_file,
                               const char *backing_format)
{
    struct vmdk_state *s = img->state;
    if (!s->have_desc)
        return img_error(img, -ENOTSUP, "the image has no descriptor to record a parent in");
    if (backing_format && strcmp(backing_format, "vmdk"))
        return img_error(img, -EINVAL, "a VMDK's parent must be a VMDK, not %s", backing_format);
    uint32_t pcid = 0xffffffffu;
    bool remove = !backing_file || !backing_file[0];
    if (!remove) {
        if (strchr(backing_file, '"'))
            return img_error(img, -EINVAL, "parentFileNameHint cannot contain '\"'");
        char *path = vmdk_extent_path(img->filename, backing_file);
        struct img *b = NULL;
        if (path && img_open(&b, path, NULL, IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK) == 0) {
            if (b->drv == &img_driver_vmdk) {
                struct vmdk_state *bs = b->state;
                if (bs->desc.has_cid)
                    pcid = bs->desc.cid;
            }
            img_close(b);
        }
        vs_error_clear();
        free(path);
    }
    pthread_mutex_lock(&img->lock);
    char line[64];
    snprintf(line, sizeof(line), "parentCID=%08x", pcid);
    int rc = vmdk_desc_set_line(&s->desc, &s->desc.parent_cid_line, s->desc.cid_line, line);
    if (!rc && remove) {
        vmdk_desc_drop_line(&s->desc, &s->desc.hint_line);
    } else if (!rc) {
        char *hint = vs_asprintf("parentFileNameHint=\"%s\"", backing_file);
        long after = -1;
        for (size_t i = 0; i < s->desc.line_count && after < 0; i++)
            if (!strncasecmp(vmdk_trim(s->desc.lines[i]), "createType", 10))
                after = (long)i;
        rc = hint ? vmdk_desc_set_line(&s->desc, &s->desc.hint_line,
                                       after >= 0 ? after : s->desc.parent_cid_line, hint)
                  : -ENOMEM;
        free(hint);
    }
    if (!rc) {
        s->desc.parent_cid = pcid;
        s->desc.has_parent_cid = true;
        rc = vmdk_desc_write(img);
    }
    pthread_mutex_unlock(&img->lock);
    if (rc)
        return rc;
    free(img->backing_name);
    free(img->backing_format);
    img->backing_name = remove ? NULL : vs_strdup(backing_file);
    img->backing_format = remove ? NULL : vs_strdup("vmdk");
    free(s->desc.parent_hint);
    s->desc.parent_hint = remove ? NULL : vs_strdup(backing_file);
    return 0;
}

static int vmdk_truncate(struct img *img, uint64_t size, int flags, const char *prealloc)
{
    return img_error(img, -ENOTSUP,
                     "resizing VMDK images is not supported (their grain directories and extent "
                     "lists are sized at creation); convert to qcow2 or raw, resize, convert back");
}

static const char *const vmdk_aliases[] = {NULL};

const struct img_driver img_driver_vmdk = {
    .name = "vmdk",
    .aliases = vmdk_aliases,
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .create = vmdk_create,
    .pread = vmdk_pread,
    .pwrite = vmdk_pwrite,
    .pwrite_compressed = vmdk_pwrite_compressed,
    .flush = vmdk_flush,
    .discard = vmdk_discard,
    .write_zeroes = vmdk_write_zeroes,
    .block_status = vmdk_block_status,
    .truncate = vmdk_truncate,
    .info = vmdk_info,
    .check = vmdk_check,
    .change_backing = vmdk_change_backing,
    .make_empty = vmdk_make_empty,
    .compact = vmdk_compact,
    .measure = vmdk_measure,
};
