/*
 * lib/defs/import-vmx.c — import a VMware .vmx file into a struct vm_def, and the format-guessing
 * front door (vm_def_import, vm_def_import_file) for every import.
 *
 * The idea: a .vmx is a flat list of `dotted.key = "value"` lines whose keys are case-insensitive
 * and whose devices are spelled as prefixes (scsi0:0., ide1:0., ethernet0.). Keys are lowered and
 * grouped by device prefix; each device is built from its group, and every key nobody consumed is
 * reported once as unsupported.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "defs/defs-internal.h"

struct vmx_entry {
    char *key; /* lower case */
    char *value;
    int line;
    bool used;
};

struct vmx {
    struct vmx_entry *e;
    size_t count;
    const char *source;
};

static void vmx_free(struct vmx *v)
{
    for (size_t i = 0; i < v->count; i++) {
        free(v->e[i].key);
        free(v->e[i].value);
    }
    free(v->e);
}

static int vmx_read(struct vmx *v, const char *text, size_t len)
{
    int line = 1;
    size_t pos = 0;
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + 1;
        char *l = defs_strndup_trim(s, n);
        if (!l)
            return -ENOMEM;
        if (!*l || l[0] == '#') {
            free(l);
            line++;
            continue;
        }
        char *eq = strchr(l, '=');
        if (!eq || eq == l) {
            free(l);
            return defs_error(v->source, line, NULL, "expected 'key = \"value\"'");
        }
        *eq = '\0';
        char *key = defs_strndup_trim(l, strlen(l));
        char *raw = defs_strndup_trim(eq + 1, strlen(eq + 1));
        free(l);
        if (!key || !raw) {
            free(key);
            free(raw);
            return -ENOMEM;
        }
        for (char *c = key; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c + 32);
        /* "value" with |XX hex escapes (VMware's way of quoting '"' and '|') */
        char *val = raw;
        size_t rl = strlen(raw);
        if (rl && raw[0] == '"') {
            if (rl < 2 || raw[rl - 1] != '"') {
                free(key);
                free(raw);
                return defs_error(v->source, line, NULL, "unterminated quoted value");
            }
            size_t o = 0;
            for (size_t i = 1; i + 1 < rl; i++) {
                if (raw[i] == '|' && i + 3 < rl && isxdigit((unsigned char)raw[i + 1]) &&
                    isxdigit((unsigned char)raw[i + 2])) {
                    char hex[3] = {raw[i + 1], raw[i + 2], 0};
                    raw[o++] = (char)strtol(hex, NULL, 16);
                    i += 2;
                } else {
                    raw[o++] = raw[i];
                }
            }
            raw[o] = '\0';
        }
        struct vmx_entry *e = realloc(v->e, (v->count + 1) * sizeof(*e));
        if (!e) {
            free(key);
            free(val);
            return vs_error(-ENOMEM, "out of memory");
        }
        v->e = e;
        v->e[v->count++] = (struct vmx_entry){.key = key, .value = val, .line = line};
        line++;
    }
    return 0;
}

/* The entry for key (lower case), marked used; the last one wins like VMware's. */
static struct vmx_entry *vmx_take(struct vmx *v, const char *key)
{
    struct vmx_entry *found = NULL;
    for (size_t i = 0; i < v->count; i++)
        if (strcmp(v->e[i].key, key) == 0) {
            v->e[i].used = true;
            found = &v->e[i];
        }
    return found;
}

static const char *vmx_get(struct vmx *v, const char *prefix, const char *suffix)
{
    char key[128];
    snprintf(key, sizeof(key), "%s%s", prefix, suffix);
    struct vmx_entry *e = vmx_take(v, key);
    return e ? e->value : NULL;
}

static bool vmx_true(const char *s)
{
    return s && (strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0 || strcmp(s, "1") == 0);
}

static int vmx_disk(struct vmx *v, struct vm_def *def, const char *dir, const char *dev,
                    enum vm_disk_bus bus, int line)
{
    const char *present = vmx_get(v, dev, ".present");
    const char *file = vmx_get(v, dev, ".filename");
    const char *type = vmx_get(v, dev, ".devicetype");
    const char *mode = vmx_get(v, dev, ".mode");
    if ((present && !vmx_true(present)) || !file || !*file)
        return 0;
    bool cdrom = type && strncasecmp(type, "cdrom", 5) == 0;
    if (type && (strcasecmp(type, "cdrom-raw") == 0 || strcasecmp(type, "atapi-cdrom") == 0)) {
        defs_warn(v->source, line, dev, "host CD-ROM drives are not supported, ignored");
        return 0;
    }
    struct vm_disk *d;
    int rc = vm_def_add_disk(def, &d);
    if (rc < 0)
        return rc;
    d->line = d->file_line = line;
    d->bus = bus;
    if (cdrom) {
        d->media = VM_DISK_MEDIA_CDROM;
        d->readonly = true;
    }
    if (file[0] != '/' && !(file[0] && file[1] == ':') && dir)
        d->file = vs_asprintf("%s/%s", dir, file);
    else
        d->file = vs_strdup(file);
    if (!d->file)
        return -ENOMEM;
    const char *ext = strrchr(file, '.');
    if (ext && strcasecmp(ext, ".vmdk") == 0)
        rc = vm_def_set_string(&d->format, "vmdk");
    else if (ext && strcasecmp(ext, ".iso") == 0)
        rc = vm_def_set_string(&d->format, "raw");
    if (mode && strcasecmp(mode, "independent-nonpersistent") == 0 && !cdrom)
        d->undo = true;
    else if (mode && strcasecmp(mode, "persistent") != 0 &&
             strcasecmp(mode, "independent-persistent") != 0)
        defs_warn(v->source, line, dev, "mode '%s' is not supported, imported as persistent", mode);
    return rc;
}

static int vmx_nic(struct vmx *v, struct vm_def *def, const char *dev, int line)
{
    const char *present = vmx_get(v, dev, ".present");
    if (present && !vmx_true(present))
        return 0;
    const char *type = vmx_get(v, dev, ".addresstype");
    const char *addr = vmx_get(v, dev, ".address");
    const char *gen = vmx_get(v, dev, ".generatedaddress");
    const char *net = vmx_get(v, dev, ".networkname");
    const char *conn = vmx_get(v, dev, ".connectiontype");
    const char *model = vmx_get(v, dev, ".virtualdev");
    vmx_get(v, dev, ".generatedaddressoffset");
    struct vm_nic *n;
    int rc = vm_def_add_nic(def, &n);
    if (rc < 0)
        return rc;
    n->line = n->mac_line = line;
    const char *mac = type && strcasecmp(type, "static") == 0 ? addr : gen ? gen : addr;
    if (mac && *mac && vm_mac_parse(mac, n->mac) < 0)
        return defs_error(v->source, line, dev, "'%s' is not a unicast MAC address", mac);
    rc = vm_def_set_string(&n->network, net && *net ? net : conn && *conn ? conn : "default");
    if (model && strncasecmp(model, "e1000", 5) == 0)
        n->model = VM_NIC_MODEL_E1000;
    else if (model && strcasecmp(model, "vmxnet3") != 0 && strcasecmp(model, "vmxnet") != 0)
        defs_warn(v->source, line, dev, "virtualDev '%s' imported as virtio", model);
    return rc;
}

int vm_def_import_vmx(const char *text, size_t len, const char *source, struct vm_def **out)
{
    *out = NULL;
    struct vmx v = {.source = source};
    struct vm_def *def = vm_def_new();
    if (!def)
        return -ENOMEM;
    char *dir = NULL;
    int rc = source ? vm_def_set_string(&def->source, source) : 0;
    if (rc == 0 && source && strchr(source, '/')) {
        dir = defs_strndup_trim(source, (size_t)(strrchr(source, '/') - source));
        if (!dir)
            rc = -ENOMEM;
    }
    if (rc == 0)
        rc = vmx_read(&v, text, len);
    struct vmx_entry *e;
    uint64_t num = 0;
    if (rc == 0 && (e = vmx_take(&v, "displayname"))) {
        def->name = defs_sanitize_name(e->value);
        def->name_line = e->line;
        if (!def->name)
            rc = -ENOMEM;
        else if (strcmp(def->name, e->value) != 0)
            defs_warn(source, e->line, "displayName", "'%s' imported as '%s'", e->value, def->name);
    }
    if (rc == 0 && (e = vmx_take(&v, "memsize"))) {
        if (defs_parse_uint(e->value, VM_DEF_MAX_MEMORY >> 20, &num) < 0 || num == 0)
            rc = defs_error(source, e->line, "memsize", "'%s' is not a number of MiB", e->value);
        def->memory = num << 20;
        def->memory_line = e->line;
    }
    if (rc == 0 && (e = vmx_take(&v, "numvcpus"))) {
        if (defs_parse_uint(e->value, VM_DEF_MAX_VCPUS, &num) < 0 || num == 0)
            rc = defs_error(source, e->line, "numvcpus", "'%s' is not a vCPU count", e->value);
        def->vcpus = (unsigned)num;
        def->vcpus_line = e->line;
    }
    if (rc == 0 && ((e = vmx_take(&v, "uuid.bios")) || (e = vmx_take(&v, "uuid.location")))) {
        vmx_take(&v, "uuid.location");
        if (vm_uuid_parse(e->value, def->uuid) < 0)
            rc = defs_error(source, e->line, e->key, "'%s' is not a UUID", e->value);
    }
    /* devices in file order of their first key, which is also VMware's order in practice */
    for (size_t i = 0; i < v.count && rc == 0; i++) {
        const char *k = v.e[i].key;
        static const struct {
            const char *prefix;
            enum vm_disk_bus bus;
        } buses[] = {{"scsi", VM_DISK_BUS_SCSI},
                     {"ide", VM_DISK_BUS_IDE},
                     {"sata", VM_DISK_BUS_SATA},
                     {"nvme", VM_DISK_BUS_VIRTIO}};
        char dev[64];
        const char *dot = strchr(k, '.');
        if (!dot || (size_t)(dot - k) >= sizeof(dev))
            continue;
        memcpy(dev, k, (size_t)(dot - k));
        dev[dot - k] = '\0';
        for (size_t b = 0; b < VS_ARRAY_SIZE(buses); b++) {
            size_t pl = strlen(buses[b].prefix);
            if (strncmp(dev, buses[b].prefix, pl) == 0 && strchr(dev, ':') &&
                !vmx_get(&v, dev, ".__seen")) {
                /* mark every key of this device's group as seen by consuming .present etc. */
                rc = vmx_disk(&v, def, dir, dev, buses[b].bus, v.e[i].line);
                char *seen = vs_asprintf("%s.__seen", dev);
                struct vmx_entry *ne = seen ? realloc(v.e, (v.count + 1) * sizeof(*ne)) : NULL;
                if (!ne) {
                    free(seen);
                    rc = -ENOMEM;
                    break;
                }
                v.e = ne;
                v.e[v.count++] = (struct vmx_entry){seen, NULL, 0, true};
                char *empty = vs_strdup("");
                v.e[v.count - 1].value = empty;
                if (!empty)
                    rc = -ENOMEM;
            }
        }
        if (strncmp(dev, "ethernet", 8) == 0 && !vmx_get(&v, dev, ".__seen")) {
            rc = vmx_nic(&v, def, dev, v.e[i].line);
            char *seen = vs_asprintf("%s.__seen", dev);
            struct vmx_entry *ne = seen ? realloc(v.e, (v.count + 1) * sizeof(*ne)) : NULL;
            if (!ne) {
                free(seen);
                rc = -ENOMEM;
                break;
            }
            v.e = ne;
            char *empty = vs_strdup("");
            v.e[v.count++] = (struct vmx_entry){seen, empty, 0, true};
            if (!empty)
                rc = -ENOMEM;
        }
    }
    if (rc == 0) {
        /* keys that only describe VMware's own bookkeeping are dropped quietly */
        static const char *const quiet[] = {".encoding",          "config.version",
                                            "virtualhw.version",  "cleanshutdown",
                                            "extendedconfigfile", "nvram"};
        for (size_t i = 0; i < v.count; i++) {
            if (v.e[i].used)
                continue;
            bool q = false;
            for (size_t j = 0; j < VS_ARRAY_SIZE(quiet); j++)
                q = q || strcmp(v.e[i].key, quiet[j]) == 0;
            size_t kl = strlen(v.e[i].key);
            q = q ||
                (kl > 8 && strcmp(v.e[i].key + kl - 8, ".present") == 0 &&
                 !vmx_true(v.e[i].value)) ||
                (kl > 14 && strcmp(v.e[i].key + kl - 14, ".pcislotnumber") == 0);
            if (!q)
                defs_warn(source, v.e[i].line, v.e[i].key, "not supported by vessel, ignored");
        }
    }
    free(dir);
    vmx_free(&v);
    if (rc == 0)
        rc = vm_def_validate(def);
    if (rc < 0) {
        vm_def_free(def);
        return rc;
    }
    *out = def;
    return 0;
}

/* ---- the front door -------------------------------------------------------------------------- */

int vm_def_format_from_name(const char *name, enum vm_def_format *out)
{
    static const char *const names[] = {"auto", "vessel", "xl", "vmx", "libvirt"};
    int i = defs_lookup(names, VS_ARRAY_SIZE(names), name);
    if (i < 0 && (strcmp(name, "xm") == 0 || strcmp(name, "xen") == 0))
        i = VM_DEF_FORMAT_XL;
    if (i < 0 && strcmp(name, "xml") == 0)
        i = VM_DEF_FORMAT_LIBVIRT;
    if (i < 0)
        return vs_error(-EINVAL, "'%s' is not a definition format (vessel, xl, vmx, libvirt)",
                        name);
    *out = (enum vm_def_format)i;
    return 0;
}

static enum vm_def_format guess_format(const char *text, size_t len, const char *source)
{
    const char *ext = source ? strrchr(source, '.') : NULL;
    if (ext && strcasecmp(ext, ".vmx") == 0)
        return VM_DEF_FORMAT_VMX;
    if (ext && strcasecmp(ext, ".xml") == 0)
        return VM_DEF_FORMAT_LIBVIRT;
    if (ext && (strcasecmp(ext, ".cfg") == 0 || strcasecmp(ext, ".xl") == 0))
        return VM_DEF_FORMAT_XL;
    if (ext && strcasecmp(ext, ".vm") == 0)
        return VM_DEF_FORMAT_VESSEL;
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r'))
        i++;
    if (i < len && text[i] == '<')
        return VM_DEF_FORMAT_LIBVIRT;
    if (memmem(text, len, "\n[disk]", 7) || memmem(text, len, "\n[nic]", 6) ||
        memmem(text, len, "\n[boot]", 7))
        return VM_DEF_FORMAT_VESSEL;
    if (memmem(text, len, "displayName", 11) || memmem(text, len, "memsize", 7) ||
        memmem(text, len, "config.version", 14))
        return VM_DEF_FORMAT_VMX;
    if (memmem(text, len, "\"", 1) || memmem(text, len, "'", 1) || memmem(text, len, "[", 1))
        return VM_DEF_FORMAT_XL;
    return VM_DEF_FORMAT_VESSEL;
}

int vm_def_import(const char *text, size_t len, const char *source, enum vm_def_format format,
                  struct vm_def **out)
{
    if (format == VM_DEF_FORMAT_AUTO)
        format = guess_format(text, len, source);
    switch (format) {
    case VM_DEF_FORMAT_XL:
        return vm_def_import_xl(text, len, source, out);
    case VM_DEF_FORMAT_VMX:
        return vm_def_import_vmx(text, len, source, out);
    case VM_DEF_FORMAT_LIBVIRT:
        return vm_def_import_libvirt(text, len, source, out);
    default:
        return vm_def_parse(text, len, source, out);
    }
}

int vm_def_import_file(const char *path, enum vm_def_format format, struct vm_def **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (64 << 20)) {
        close(fd);
        return vs_error(-EINVAL, "%s: not a regular file of at most 64 MiB", path);
    }
    char *buf = vs_malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    int rc = vs_pread_full(fd, buf, (size_t)st.st_size, 0);
    close(fd);
    buf[st.st_size] = '\0';
    if (rc == 0)
        rc = vm_def_import(buf, (size_t)st.st_size, path, format, out);
    else
        vs_error_errno(rc, "%s", path);
    free(buf);
    return rc;
}
