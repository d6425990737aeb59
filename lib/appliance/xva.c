/*
 * lib/appliance/xva.c — XenServer XVA import: a tar of ova.xml (XML-RPC-style object list) and,
 * per VDI, a directory "Ref:N/" of numbered 1 MiB chunks, each followed by a ".checksum" file
 * holding the chunk's SHA1 in hex.
 *
 * The idea: stream the archive once. ova.xml comes first and tells which VDIs exist and how big
 * they are; each chunk is then written at index × 1 MiB into a sparse raw file in a staging
 * directory (all-zero chunks and missing chunks stay holes), and no chunk counts until the
 * checksum after it matched. The reassembled raw disks then go through the OVF importer's last
 * step (convert + definition), so XVA and OVA share everything but the parsing.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <openssl/evp.h>

#include "appliance-internal.h"
#include "vessel/appliance.h"
#include "vessel/util.h"

#define XVA_CHUNK    (1u << 20)
#define XVA_XML_MAX  (16u << 20)
#define XVA_DISK_MAX (64ULL << 40) /* 64 TiB: beyond any VDI XenServer makes */

/* ---- ova.xml --------------------------------------------------------------------------------- */

static bool is_elem(const xmlNode *n, const char *name)
{
    return n && n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, name);
}

static xmlNode *first_child(const xmlNode *parent, const char *name)
{
    for (xmlNode *c = parent ? parent->children : NULL; c; c = c->next)
        if (is_elem(c, name))
            return c;
    return NULL;
}

/* The <value> of member NAME in the <struct> inside VALUE. */
static xmlNode *member(const xmlNode *value, const char *name)
{
    xmlNode *st = first_child(value, "struct");
    for (xmlNode *m = st ? st->children : NULL; m; m = m->next) {
        if (!is_elem(m, "member"))
            continue;
        xmlNode *n = first_child(m, "name");
        xmlChar *t = n ? xmlNodeGetContent(n) : NULL;
        bool match = t && !strcmp((const char *)t, name);
        xmlFree(t);
        if (match)
            return first_child(m, "value");
    }
    return NULL;
}

/* Scalar text of a value (its <string>/<int>/… child or itself), malloc'd, or NULL. */
static char *text(const xmlNode *value)
{
    if (!value)
        return NULL;
    xmlChar *t = xmlNodeGetContent(value);
    char *s = t ? vs_strdup((const char *)t) : NULL;
    xmlFree(t);
    return s;
}

static char *member_text(const xmlNode *value, const char *name)
{
    return text(member(value, name));
}

static int member_u64(const xmlNode *value, const char *name, uint64_t *out)
{
    char *t = member_text(value, name);
    char *end;
    errno = 0;
    int rc = -EINVAL;
    if (t && *t >= '0' && *t <= '9') {
        unsigned long long v = strtoull(t, &end, 10);
        if (!errno && !*end) {
            *out = v;
            rc = 0;
        }
    }
    free(t);
    return rc;
}

struct xva_object {
    char *class, *id;
    xmlNode *snapshot; /* the <value> holding the object's fields */
};

struct xva_reader {
    const char *source;
    struct xva_object *objects;
    size_t count;
};

static const struct xva_object *find_object(const struct xva_reader *r, const char *id)
{
    for (size_t i = 0; id && i < r->count; i++)
        if (r->objects[i].id && !strcmp(r->objects[i].id, id))
            return &r->objects[i];
    return NULL;
}

static int read_vbds(struct xva_reader *r, const xmlNode *vm, struct appliance_system *sys)
{
    xmlNode *arr = first_child(first_child(member(vm, "VBDs"), "array"), "data");
    for (xmlNode *v = arr ? arr->children : NULL; v; v = v->next) {
        if (!is_elem(v, "value"))
            continue;
        char *ref = text(v);
        const struct xva_object *vbd = find_object(r, ref);
        int rc = 0;
        char *type = vbd ? member_text(vbd->snapshot, "type") : NULL;
        char *vdi_ref = vbd ? member_text(vbd->snapshot, "VDI") : NULL;
        const struct xva_object *vdi = find_object(r, vdi_ref);
        if (!vbd) {
            rc = vs_error(-EINVAL, "%s: VM: VBDs: '%.60s' is not an object of the file", r->source,
                          ref ? ref : "");
        } else if (type && strcasecmp(type, "Disk")) {
            /* CD drives carry no disk of the VM */
        } else if (!vdi) {
            rc = vs_error(-EINVAL, "%s: VBD '%.60s': VDI '%.60s' is not an object of the file",
                          r->source, ref, vdi_ref ? vdi_ref : "");
        } else {
            uint64_t size;
            struct appliance_disk *d;
            if (member_u64(vdi->snapshot, "virtual_size", &size) < 0 || size == 0 ||
                size > XVA_DISK_MAX)
                rc = vs_error(-EINVAL, "%s: VDI '%.60s': virtual_size is not a size up to 64 TiB",
                              r->source, vdi_ref);
            else if ((rc = appliance_add_disk(sys, &d)) == 0) {
                d->capacity = size;
                d->bus = VM_DISK_BUS_VIRTIO;
                if (!(d->id = vs_strdup(vdi_ref)))
                    rc = -ENOMEM;
            }
        }
        free(type);
        free(vdi_ref);
        free(ref);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int read_vifs(struct xva_reader *r, const xmlNode *vm, struct appliance_system *sys)
{
    xmlNode *arr = first_child(first_child(member(vm, "VIFs"), "array"), "data");
    for (xmlNode *v = arr ? arr->children : NULL; v; v = v->next) {
        if (!is_elem(v, "value"))
            continue;
        char *ref = text(v);
        const struct xva_object *vif = find_object(r, ref);
        free(ref);
        if (!vif)
            return vs_error(-EINVAL, "%s: VM: VIFs: a reference that is not an object of the file",
                            r->source);
        struct appliance_nic *nic;
        int rc = appliance_add_nic(sys, &nic);
        if (rc < 0)
            return rc;
        char *mac = member_text(vif->snapshot, "MAC");
        if (mac && *mac && vm_mac_parse(mac, nic->mac) < 0)
            rc = vs_error(-EINVAL, "%s: VIF: MAC '%.40s' is not a MAC address", r->source, mac);
        free(mac);
        char *net_ref = member_text(vif->snapshot, "network");
        const struct xva_object *net = find_object(r, net_ref);
        free(net_ref);
        if (net)
            nic->network = member_text(net->snapshot, "name_label");
        if (rc < 0)
            return rc;
    }
    return 0;
}

int appliance_xva_parse(const char *xml, size_t len, const char *source,
                        struct appliance_system **out)
{
    if (!source)
        source = "ova.xml";
    if (len > INT_MAX)
        return vs_error(-EFBIG, "%s: larger than 2 GiB", source);
    xmlDoc *doc = xmlReadMemory(xml, (int)len, source, NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc) {
        const xmlError *e = xmlGetLastError();
        return vs_error(-EINVAL, "%s: line %d: not well-formed XML", source, e ? e->line : 0);
    }
    struct xva_reader r = {.source = source};
    struct appliance_system *sys = calloc(1, sizeof(*sys));
    int rc = sys ? 0 : -ENOMEM;
    xmlNode *root = xmlDocGetRootElement(doc);
    xmlNode *objects = first_child(first_child(member(root, "objects"), "array"), "data");
    if (rc == 0 && (!is_elem(root, "value") || !objects))
        rc = vs_error(-EINVAL, "%s: objects: missing (not a XenServer ova.xml)", source);
    for (xmlNode *v = objects ? objects->children : NULL; rc == 0 && v; v = v->next) {
        if (!is_elem(v, "value"))
            continue;
        struct xva_object *grown = realloc(r.objects, (r.count + 1) * sizeof(*grown));
        if (!grown) {
            rc = -ENOMEM;
            break;
        }
        r.objects = grown;
        r.objects[r.count++] = (struct xva_object){member_text(v, "class"), member_text(v, "id"),
                                                   member(v, "snapshot")};
    }
    const xmlNode *vm = NULL;
    for (size_t i = 0; rc == 0 && i < r.count && !vm; i++) {
        if (!r.objects[i].class || strcmp(r.objects[i].class, "VM") || !r.objects[i].snapshot)
            continue;
        char *snap = member_text(r.objects[i].snapshot, "is_a_snapshot");
        if (!snap || strcasecmp(snap, "true"))
            vm = r.objects[i].snapshot;
        free(snap);
    }
    if (rc == 0 && !vm)
        rc = vs_error(-EINVAL, "%s: objects: no object of class VM", source);
    if (rc == 0) {
        char *name = member_text(vm, "name_label");
        sys->name = appliance_sanitize_name(name);
        free(name);
        uint64_t v = 1;
        if (member(vm, "VCPUs_max") &&
            (member_u64(vm, "VCPUs_max", &v) < 0 || v < 1 || v > VM_DEF_MAX_VCPUS))
            rc = vs_error(-EINVAL, "%s: VM: VCPUs_max is not a CPU count 1..%d", source,
                          VM_DEF_MAX_VCPUS);
        sys->vcpus = (unsigned)v;
        if (rc == 0 && (member_u64(vm, "memory_static_max", &v) < 0 || v < VM_DEF_MIN_MEMORY ||
                        v > VM_DEF_MAX_MEMORY))
            rc =
                vs_error(-EINVAL, "%s: VM: memory_static_max is not a memory size 1M..16T", source);
        sys->memory = VS_ALIGN_UP(v, 1 << 20);
    }
    if (rc == 0)
        rc = read_vbds(&r, vm, sys);
    if (rc == 0)
        rc = read_vifs(&r, vm, sys);
    for (size_t i = 0; i < r.count; i++) {
        free(r.objects[i].class);
        free(r.objects[i].id);
    }
    free(r.objects);
    xmlFreeDoc(doc);
    if (rc < 0) {
        appliance_system_free(sys);
        return rc;
    }
    *out = sys;
    return 0;
}

/* ---- the archive ----------------------------------------------------------------------------- */

struct xva_import {
    const char *label; /* the .xva's base name */
    struct appliance_system *sys;
    int *fds; /* staging raw file per disk */
    /* the last chunk seen, waiting for its checksum */
    bool pending;
    size_t pending_disk;
    uint64_t pending_index;
    unsigned char pending_sha1[20];
    bool warned_xxhash;
};

static int read_entry(struct archive *a, void *buf, size_t want, const char *label,
                      const char *name)
{
    size_t got = 0;
    while (got < want) {
        la_ssize_t n = archive_read_data(a, (char *)buf + got, want - got);
        if (n < 0)
            return vs_error(-EIO, "%s: %s: %s", label, name, archive_error_string(a));
        if (n == 0)
            return vs_error(-EIO, "%s: %s: entry shorter than its header says", label, name);
        got += (size_t)n;
    }
    return 0;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static int check_pending(struct xva_import *x)
{
    if (!x->pending)
        return 0;
    return vs_error(-EBADMSG, "%s: %s/%08" PRIu64 ": checksum file missing", x->label,
                    x->sys->disks[x->pending_disk].id, x->pending_index);
}

/* One "Ref:N/NNNNNNNN[.checksum|.xxhash]" entry. */
static int xva_entry(struct xva_import *x, struct archive *a, struct archive_entry *e,
                     const char *name, unsigned char *chunk)
{
    const char *slash = strchr(name, '/');
    size_t disk;
    for (disk = 0; slash && disk < x->sys->disk_count; disk++)
        if (strlen(x->sys->disks[disk].id) == (size_t)(slash - name) &&
            !strncmp(x->sys->disks[disk].id, name, (size_t)(slash - name)))
            break;
    if (!slash || disk == x->sys->disk_count)
        return 0; /* a VDI the VM doesn't use (a CD), or something else: skip */
    const char *num = slash + 1;
    uint64_t index = 0;
    size_t digits = 0;
    while (num[digits] >= '0' && num[digits] <= '9' && digits < 12)
        index = index * 10 + (uint64_t)(num[digits++] - '0');
    const char *suffix = num + digits;
    const struct appliance_disk *d = &x->sys->disks[disk];
    if (digits == 0 || (*suffix && strcmp(suffix, ".checksum") && strcmp(suffix, ".xxhash")))
        return vs_error(-EINVAL, "%s: tar entry '%.200s': not a chunk name NNNNNNNN[.checksum]",
                        x->label, name);
    la_int64_t size = archive_entry_size(e);
    if (!*suffix) {
        int rc = check_pending(x);
        if (rc < 0)
            return rc;
        if (size < 0 || size > XVA_CHUNK || index > (d->capacity - 1) / XVA_CHUNK ||
            index * XVA_CHUNK + (uint64_t)size > d->capacity)
            return vs_error(-EINVAL,
                            "%s: tar entry '%.200s': chunk of %lld bytes beyond the VDI's "
                            "virtual_size %" PRIu64,
                            x->label, name, (long long)size, d->capacity);
        if ((rc = read_entry(a, chunk, (size_t)size, x->label, name)) < 0)
            return rc;
        unsigned int len = 20;
        EVP_Digest(chunk, (size_t)size, x->pending_sha1, &len, EVP_sha1(), NULL);
        if (!vs_buffer_is_zero(chunk, (size_t)size) &&
            (rc = vs_pwrite_full(x->fds[disk], chunk, (size_t)size, index * XVA_CHUNK)) < 0)
            return vs_error_errno(rc, "%s: writing chunk %s", x->label, name);
        x->pending = true;
        x->pending_disk = disk;
        x->pending_index = index;
        return 0;
    }
    if (!x->pending || x->pending_disk != disk || x->pending_index != index)
        return vs_error(-EINVAL, "%s: tar entry '%.200s': checksum without its chunk before it",
                        x->label, name);
    x->pending = false;
    if (!strcmp(suffix, ".xxhash")) {
        if (!x->warned_xxhash)
            vs_warn("%s: xxhash chunk checksums are not verified", x->label);
        x->warned_xxhash = true;
        return 0;
    }
    char sum[128];
    if (size < 40 || size >= (la_int64_t)sizeof(sum))
        return vs_error(-EINVAL, "%s: %s: checksum: %lld bytes, expected 40 hex digits", x->label,
                        name, (long long)size);
    int rc = read_entry(a, sum, (size_t)size, x->label, name);
    if (rc < 0)
        return rc;
    for (int i = 0; i < 20; i++) {
        int hi = hexval(sum[2 * i]), lo = hexval(sum[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return vs_error(-EINVAL, "%s: %s: checksum: not 40 hex digits", x->label, name);
        if ((unsigned char)(hi << 4 | lo) != x->pending_sha1[i])
            return vs_error(-EBADMSG, "%s: %s: checksum: SHA1 of the chunk does not match",
                            x->label, name);
    }
    return 0;
}

static int xva_stream(struct xva_import *x, struct archive *a, const char *staging)
{
    struct archive_entry *e;
    unsigned char *chunk = vs_malloc(XVA_CHUNK);
    char *xml = NULL;
    int rc = chunk ? 0 : -ENOMEM;
    bool first = true;
    while (rc == 0) {
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
            rc = vs_error(-EINVAL, "%s: tar: %s", x->label, archive_error_string(a));
            break;
        }
        const char *name = archive_entry_pathname(e);
        if (!name)
            name = "";
        if (name[0] == '/' || !strncmp(name, "../", 3) || strstr(name, "/../") ||
            !strcmp(name, "..")) {
            rc =
                vs_error(-EPERM, "%s: tar entry '%.200s': path leaves the archive", x->label, name);
            break;
        }
        mode_t type = archive_entry_filetype(e);
        if (type == AE_IFDIR)
            continue;
        if (type != AE_IFREG || archive_entry_hardlink(e)) {
            rc = vs_error(-EPERM, "%s: tar entry '%.200s': only regular files belong in an XVA",
                          x->label, name);
            break;
        }
        if (first) {
            first = false;
            la_int64_t size = archive_entry_size(e);
            if (strcmp(name, "ova.xml")) {
                rc = vs_error(-EINVAL, "%s: first tar entry is '%.200s', expected ova.xml",
                              x->label, name);
                break;
            }
            if (size <= 0 || size > XVA_XML_MAX) {
                rc = vs_error(-EINVAL, "%s: ova.xml: %lld bytes (at most %u)", x->label,
                              (long long)size, XVA_XML_MAX);
                break;
            }
            if (!(xml = vs_malloc((size_t)size)) ||
                (rc = read_entry(a, xml, (size_t)size, x->label, name)) < 0) {
                rc = rc < 0 ? rc : -ENOMEM;
                break;
            }
            char *label = vs_asprintf("%s: ova.xml", x->label);
            rc = label ? appliance_xva_parse(xml, (size_t)size, label, &x->sys) : -ENOMEM;
            free(label);
            if (rc < 0)
                break;
            if (!(x->fds = calloc(x->sys->disk_count + 1, sizeof(int)))) {
                rc = -ENOMEM;
                break;
            }
            for (size_t i = 0; i < x->sys->disk_count; i++) {
                struct appliance_disk *d = &x->sys->disks[i];
                d->href = vs_asprintf("disk%zu.raw", i + 1);
                char *p = d->href ? vs_asprintf("%s/%s", staging, d->href) : NULL;
                x->fds[i] = p ? open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -1;
                if (x->fds[i] < 0 || ftruncate(x->fds[i], (off_t)d->capacity) < 0)
                    rc = p ? vs_error_errno(-errno, "%s: staging disk %s", x->label, p) : -ENOMEM;
                free(p);
                if (rc < 0)
                    break;
            }
            continue;
        }
        rc = xva_entry(x, a, e, name, chunk);
    }
    if (rc == 0 && first)
        rc = vs_error(-EINVAL, "%s: ova.xml: missing (empty archive)", x->label);
    if (rc == 0)
        rc = check_pending(x);
    free(chunk);
    free(xml);
    return rc;
}

int appliance_import_xva(const struct appliance_import_params *params, char **def_path)
{
    const char *dir = params->dir ? params->dir : ".";
    const char *slash = strrchr(params->file, '/');
    struct xva_import x = {.label = slash ? slash + 1 : params->file};
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return vs_error_errno(-errno, "%s", dir);
    char *staging = vs_asprintf("%s/.vessel-import.XXXXXX", dir);
    if (!staging)
        return -ENOMEM;
    if (!mkdtemp(staging)) {
        int rc = vs_error_errno(-errno, "%s: staging directory in %s", x.label, dir);
        free(staging);
        return rc;
    }
    struct archive *a = archive_read_new();
    int rc = a ? 0 : -ENOMEM;
    if (a) {
        archive_read_support_format_tar(a);
        if (archive_read_open_filename(a, params->file, 1 << 16) != ARCHIVE_OK)
            rc = vs_error(-EINVAL, "%s: %s", x.label, archive_error_string(a));
        else
            rc = xva_stream(&x, a, staging);
        archive_read_free(a);
    }
    if (rc == 0)
        rc = appliance_write_import(x.sys, staging, true, params, def_path);
    for (size_t i = 0; x.sys && i < x.sys->disk_count; i++) {
        if (x.fds && x.fds[i] > 0)
            close(x.fds[i]);
        char *p = x.sys->disks[i].href ? vs_asprintf("%s/%s", staging, x.sys->disks[i].href) : NULL;
        if (p)
            unlink(p);
        free(p);
    }
    free(x.fds);
    appliance_system_free(x.sys);
    rmdir(staging);
    free(staging);
    return rc;
}
