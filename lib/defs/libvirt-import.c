/*
 * lib/defs/libvirt-import.c — import libvirt domain XML (`virsh dumpxml`) into a struct vm_def.
 *
 * The idea: libxml2 builds the tree (no network, no entity expansion, so a hostile file costs at
 * most its own size); we walk <domain>'s children once, map the elements vessel has a field for,
 * and warn — with the element's line — about each one it has not.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "defs/defs-internal.h"

struct xctx {
    const char *source;
    struct vm_def *def;
};

static bool is(const xmlNode *n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0;
}

/* malloc'd attribute or text; NULL when absent. */
static char *attr(const xmlNode *n, const char *name)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    if (!v)
        return NULL;
    char *s = vs_strdup((const char *)v);
    xmlFree(v);
    return s;
}

static char *text(const xmlNode *n)
{
    xmlChar *v = xmlNodeGetContent(n);
    if (!v)
        return vs_strdup("");
    char *s = defs_strndup_trim((const char *)v, strlen((const char *)v));
    xmlFree(v);
    return s;
}

static int line_of(const xmlNode *n)
{
    long l = xmlGetLineNo(n);
    return l > 0 && l < 0x7fffffff ? (int)l : 0;
}

static int memory_of(struct xctx *x, const xmlNode *n, uint64_t *out)
{
    char *unit = attr(n, "unit"), *t = text(n);
    int rc = 0;
    uint64_t v = 0, mul = 1024;
    if (!t) {
        free(unit);
        return -ENOMEM;
    }
    if (unit) {
        static const struct {
            const char *name;
            uint64_t mul;
        } units[] = {{"b", 1},          {"bytes", 1},     {"KiB", 1 << 10},
                     {"k", 1 << 10},    {"MiB", 1 << 20}, {"M", 1 << 20},
                     {"GiB", 1 << 30},  {"G", 1 << 30},   {"TiB", 1ULL << 40},
                     {"T", 1ULL << 40}, {"KB", 1000},     {"MB", 1000000},
                     {"GB", 1000000000}};
        mul = 0;
        for (size_t i = 0; i < VS_ARRAY_SIZE(units); i++)
            if (strcmp(units[i].name, unit) == 0)
                mul = units[i].mul;
        if (!mul)
            rc = defs_error(x->source, line_of(n), (const char *)n->name, "unit '%s' is not known",
                            unit);
    }
    if (rc == 0 && (defs_parse_uint(t, VM_DEF_MAX_MEMORY, &v) < 0 || v > VM_DEF_MAX_MEMORY / mul))
        rc = defs_error(x->source, line_of(n), (const char *)n->name, "'%s' is not a size", t);
    if (rc == 0) {
        v *= mul;
        if (v % (1 << 20)) {
            defs_warn(x->source, line_of(n), (const char *)n->name,
                      "%llu bytes rounded up to whole MiB", (unsigned long long)v);
            v = VS_ALIGN_UP(v, 1 << 20);
        }
        *out = v;
    }
    free(unit);
    free(t);
    return rc;
}

static void unsupported(struct xctx *x, const xmlNode *n, const char *where)
{
    defs_warn(x->source, line_of(n), where, "<%s> is not supported by vessel, ignored",
              (const char *)n->name);
}

static int import_os(struct xctx *x, const xmlNode *os)
{
    struct vm_def *def = x->def;
    int rc = 0;
    for (const xmlNode *c = os->children; c && rc == 0; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        char **field = is(c, "kernel")    ? &def->kernel
                       : is(c, "initrd")  ? &def->initrd
                       : is(c, "cmdline") ? &def->cmdline
                                          : NULL;
        if (field) {
            free(*field);
            if (!(*field = text(c)))
                rc = -ENOMEM;
            if (is(c, "kernel"))
                def->kernel_line = line_of(c);
        } else if (is(c, "boot")) {
            char *dev = attr(c, "dev");
            if (dev && strcmp(dev, "cdrom") == 0 && def->boot_from == VM_BOOT_FROM_DISK &&
                !def->from_line)
                def->boot_from = VM_BOOT_FROM_CDROM;
            else if (dev && strcmp(dev, "hd") != 0 && strcmp(dev, "cdrom") != 0)
                defs_warn(x->source, line_of(c), "boot", "dev '%s' is not supported", dev);
            if (!def->from_line)
                def->from_line = line_of(c);
            free(dev);
        } else if (!is(c, "type")) {
            unsupported(x, c, "os");
        }
    }
    if (def->kernel && *def->kernel)
        def->boot_from = VM_BOOT_FROM_KERNEL;
    return rc;
}

static int import_disk(struct xctx *x, const xmlNode *n)
{
    char *type = attr(n, "type"), *device = attr(n, "device");
    int rc = 0;
    if (device && strcmp(device, "disk") != 0 && strcmp(device, "cdrom") != 0) {
        defs_warn(x->source, line_of(n), "disk", "device '%s' is not supported, ignored", device);
        goto out;
    }
    if (type && strcmp(type, "file") != 0 && strcmp(type, "block") != 0) {
        defs_warn(x->source, line_of(n), "disk", "type '%s' is not supported, ignored", type);
        goto out;
    }
    struct vm_disk *d;
    if ((rc = vm_def_add_disk(x->def, &d)) < 0)
        goto out;
    d->line = d->file_line = line_of(n);
    if (device && strcmp(device, "cdrom") == 0) {
        d->media = VM_DISK_MEDIA_CDROM;
        d->readonly = true;
    }
    for (const xmlNode *c = n->children; c && rc == 0; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        if (is(c, "source")) {
            free(d->file);
            d->file = attr(c, "file");
            if (!d->file)
                d->file = attr(c, "dev");
        } else if (is(c, "driver")) {
            char *fmt = attr(c, "type");
            if (fmt && defs_lookup(defs_format_names, 6, fmt) >= 0)
                rc = vm_def_set_string(&d->format, fmt);
            else if (fmt)
                defs_warn(x->source, line_of(c), "driver",
                          "type '%s' is not supported; the "
                          "format will be probed",
                          fmt);
            free(fmt);
        } else if (is(c, "target")) {
            char *dev = attr(c, "dev"), *bus = attr(c, "bus");
            if (dev) {
                bool ok = *dev && strlen(dev) < 16;
                for (const char *p = dev; *p && ok; p++)
                    ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9');
                if (ok) {
                    rc = vm_def_set_string(&d->target, dev);
                    d->target_line = line_of(c);
                }
                d->bus = defs_bus_from_target(dev);
            }
            if (bus) {
                int b = defs_lookup(defs_bus_names, 4, bus);
                if (b < 0 && strcmp(bus, "xen") == 0)
                    b = VM_DISK_BUS_VIRTIO;
                if (b < 0)
                    defs_warn(x->source, line_of(c), "target", "bus '%s' imported as virtio", bus);
                d->bus = b < 0 ? VM_DISK_BUS_VIRTIO : (enum vm_disk_bus)b;
            }
            free(dev);
            free(bus);
        } else if (is(c, "readonly")) {
            d->readonly = true;
        } else if (is(c, "transient")) {
            d->undo = true;
        } else if (is(c, "iotune")) { /* the totals; per-direction limits have no vessel key */
            for (const xmlNode *t = c->children; t && rc == 0; t = t->next) {
                if (t->type != XML_ELEMENT_NODE)
                    continue;
                bool iops = is(t, "total_iops_sec"), bytes = is(t, "total_bytes_sec");
                if (!iops && !bytes) {
                    unsupported(x, t, "iotune");
                    continue;
                }
                char *v = text(t);
                uint64_t num = 0;
                if (!v)
                    rc = -ENOMEM;
                else if (defs_parse_uint(v, iops ? 10000000 : UINT64_MAX / 2, &num) < 0 ||
                         num == 0 || (bytes && num < 4096))
                    rc = defs_error(x->source, line_of(t),
                                    iops ? "total_iops_sec" : "total_bytes_sec",
                                    "'%s' is not a rate", v);
                else
                    *(iops ? &d->iops : &d->bps) = num;
                free(v);
            }
        } else if (!is(c, "alias") && !is(c, "address")) {
            unsupported(x, c, "disk");
        }
    }
    if (rc == 0 && !d->file)
        rc = defs_error(x->source, line_of(n), "disk", "no <source file=...> or <source dev=...>");
out:
    free(type);
    free(device);
    return rc;
}

/* <bandwidth><inbound|outbound average='KB/s' …/>: vessel shapes both directions at one rate,
 * the larger of the two averages, in whole Mbit/s (1 KB/s = 8 kbit/s). */
static int import_bandwidth(struct xctx *x, const xmlNode *n, struct vm_nic *nic)
{
    uint64_t best = 0;
    for (const xmlNode *c = n->children; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        if (!is(c, "inbound") && !is(c, "outbound")) {
            unsupported(x, c, "bandwidth");
            continue;
        }
        char *a = attr(c, "average");
        uint64_t v = 0;
        int rc = a ? defs_parse_uint(a, 100000ULL * 125, &v) : -EINVAL;
        if (rc < 0 || v == 0) {
            rc = defs_error(x->source, line_of(c), "bandwidth",
                            "average '%s' is not a rate in KB/s (1 to 12500000)", a ? a : "");
            free(a);
            return rc;
        }
        free(a);
        best = v > best ? v : best;
    }
    if (best) {
        nic->rate_mbit = (unsigned)((best + 124) / 125);
        nic->rate_line = line_of(n);
    }
    return 0;
}

static int import_interface(struct xctx *x, const xmlNode *n)
{
    char *type = attr(n, "type");
    int rc = 0;
    if (!type || (strcmp(type, "network") != 0 && strcmp(type, "bridge") != 0)) {
        defs_warn(x->source, line_of(n), "interface", "type '%s' is not supported, ignored",
                  type ? type : "");
        free(type);
        return 0;
    }
    bool bridge = strcmp(type, "bridge") == 0;
    free(type);
    struct vm_nic *nic;
    if ((rc = vm_def_add_nic(x->def, &nic)) < 0)
        return rc;
    nic->line = nic->mac_line = line_of(n);
    for (const xmlNode *c = n->children; c && rc == 0; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        if (is(c, "mac")) {
            char *a = attr(c, "address");
            nic->mac_line = line_of(c);
            if (!a || vm_mac_parse(a, nic->mac) < 0)
                rc = defs_error(x->source, line_of(c), "mac", "'%s' is not a unicast MAC address",
                                a ? a : "");
            free(a);
        } else if (is(c, "source")) {
            char *s = attr(c, bridge ? "bridge" : "network");
            if (s)
                rc = vm_def_set_string(bridge ? &nic->bridge : &nic->network, s);
            free(s);
        } else if (is(c, "model")) {
            char *m = attr(c, "type");
            int v = m ? defs_lookup(defs_model_names, 3, m) : -1;
            if (v < 0 && m && strncmp(m, "e1000", 5) == 0)
                v = VM_NIC_MODEL_E1000;
            if (v < 0)
                defs_warn(x->source, line_of(c), "model", "'%s' imported as virtio", m ? m : "");
            nic->model = v < 0 ? VM_NIC_MODEL_VIRTIO : (enum vm_nic_model)v;
            free(m);
        } else if (is(c, "bandwidth")) {
            rc = import_bandwidth(x, c, nic);
        } else if (!is(c, "alias") && !is(c, "address") && !is(c, "target")) {
            unsupported(x, c, "interface");
        }
    }
    return rc;
}

static int import_serial(struct xctx *x, const xmlNode *n, bool *have)
{
    char *type = attr(n, "type");
    struct vm_def *def = x->def;
    int rc = 0;
    if (*have) {
        free(type);
        return 0; /* the first serial port is the console; <console> repeats it */
    }
    *have = true;
    if (type && strcmp(type, "pty") == 0) {
        def->console = VM_CONSOLE_PTY;
    } else if (type && (strcmp(type, "file") == 0 || strcmp(type, "unix") == 0)) {
        def->console = strcmp(type, "file") == 0 ? VM_CONSOLE_FILE : VM_CONSOLE_UNIX;
        for (const xmlNode *c = n->children; c; c = c->next)
            if (is(c, "source")) {
                free(def->console_path);
                def->console_path = attr(c, "path");
            }
        if (!def->console_path)
            rc = defs_error(x->source, line_of(n), "serial", "no <source path=...>");
    } else {
        defs_warn(x->source, line_of(n), "serial", "type '%s' imported as pty", type ? type : "");
        def->console = VM_CONSOLE_PTY;
    }
    free(type);
    return rc;
}

static int import_action(struct xctx *x, const xmlNode *n, enum vm_action *out)
{
    char *t = text(n);
    if (!t)
        return -ENOMEM;
    int a = defs_lookup(defs_action_names, 3, t);
    if (a < 0 && (strcmp(t, "rename-restart") == 0 || strcmp(t, "coredump-restart") == 0))
        a = VM_ACTION_RESTART;
    if (a < 0 && strcmp(t, "coredump-destroy") == 0)
        a = VM_ACTION_DESTROY;
    int rc = 0;
    if (a < 0)
        rc = defs_error(x->source, line_of(n), (const char *)n->name, "'%s' is not an action", t);
    else
        *out = (enum vm_action)a;
    free(t);
    return rc;
}

static int import_domain(struct xctx *x, const xmlNode *root)
{
    struct vm_def *def = x->def;
    int rc = 0;
    bool have_serial = false;
    uint64_t v;
    for (const xmlNode *n = root->children; n && rc == 0; n = n->next) {
        if (n->type != XML_ELEMENT_NODE)
            continue;
        if (is(n, "name")) {
            if (def->name) {
                rc = defs_error(x->source, line_of(n), "name", "a domain has one <name>");
                break;
            }
            char *t = text(n);
            if (!t)
                return -ENOMEM;
            def->name = defs_sanitize_name(t);
            def->name_line = line_of(n);
            if (def->name && strcmp(def->name, t) != 0)
                defs_warn(x->source, line_of(n), "name", "'%s' imported as '%s'", t, def->name);
            free(t);
            if (!def->name)
                return -ENOMEM;
        } else if (is(n, "uuid")) {
            char *t = text(n);
            if (!t)
                return -ENOMEM;
            if (vm_uuid_parse(t, def->uuid) < 0)
                rc = defs_error(x->source, line_of(n), "uuid", "'%s' is not a UUID", t);
            free(t);
        } else if (is(n, "memory")) {
            rc = memory_of(x, n, &def->memory);
            def->memory_line = line_of(n);
        } else if (is(n, "currentMemory")) {
            if ((rc = memory_of(x, n, &v)) == 0 && def->memory && v != def->memory)
                defs_warn(x->source, line_of(n), "currentMemory",
                          "ballooning is not supported; the VM gets all of <memory>");
        } else if (is(n, "vcpu")) {
            char *t = text(n);
            if (!t)
                return -ENOMEM;
            if (defs_parse_uint(t, VM_DEF_MAX_VCPUS, &v) < 0 || v == 0)
                rc = defs_error(x->source, line_of(n), "vcpu", "'%s' is not a vCPU count", t);
            def->vcpus = (unsigned)v;
            def->vcpus_line = line_of(n);
            free(t);
            char *cpuset = rc == 0 ? attr(n, "cpuset") : NULL; /* the vCPUs' host CPUs */
            if (cpuset && vm_def_set_cpu_affinity(def, cpuset) < 0)
                rc = defs_error(x->source, line_of(n), "vcpu cpuset",
                                "%s (^ exclusions are not supported)", vs_error_message());
            free(cpuset);
        } else if (is(n, "cputune")) {
            for (const xmlNode *c = n->children; c && rc == 0; c = c->next) {
                char *t = c->type == XML_ELEMENT_NODE ? text(c) : NULL;
                if (!t)
                    continue;
                if (is(c, "shares") && defs_parse_uint(t, 65535, &v) == 0 && v)
                    def->cpu_weight = (unsigned)v;
                else if (is(c, "global_quota") && defs_parse_uint(t, UINT32_MAX, &v) == 0)
                    def->cpu_cap = (unsigned)VS_DIV_ROUND_UP(v, 1000),
                    def->cpu_cap_line = line_of(c);
                else if (!is(c, "global_period"))
                    unsupported(x, c, "cputune");
                free(t);
            }
        } else if (is(n, "os")) {
            rc = import_os(x, n);
        } else if (is(n, "on_poweroff")) {
            rc = import_action(x, n, &def->on_poweroff);
        } else if (is(n, "on_reboot")) {
            rc = import_action(x, n, &def->on_reboot);
        } else if (is(n, "on_crash")) {
            rc = import_action(x, n, &def->on_crash);
        } else if (is(n, "devices")) {
            def->console = VM_CONSOLE_NONE;
            for (const xmlNode *c = n->children; c && rc == 0; c = c->next) {
                if (c->type != XML_ELEMENT_NODE)
                    continue;
                if (is(c, "disk"))
                    rc = import_disk(x, c);
                else if (is(c, "interface"))
                    rc = import_interface(x, c);
                else if (is(c, "serial") || is(c, "console"))
                    rc = import_serial(x, c, &have_serial);
                else if (!is(c, "emulator"))
                    unsupported(x, c, "devices");
            }
        } else if (!is(n, "features")) {
            unsupported(x, n, "domain");
        }
    }
    return rc;
}

int vm_def_import_libvirt(const char *data, size_t len, const char *source, struct vm_def **out)
{
    *out = NULL;
    if (len > INT32_MAX)
        return vs_error(-EFBIG, "%s: too large", source ? source : "XML");
    xmlDoc *doc = xmlReadMemory(data, (int)len, source ? source : "domain.xml", NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc) {
        const xmlError *e = xmlGetLastError();
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", e && e->message ? e->message : "not well-formed XML");
        msg[strcspn(msg, "\n")] = '\0';
        return defs_error(source, e ? e->line : 0, NULL, "%s", msg);
    }
    int rc = 0;
    struct vm_def *def = vm_def_new();
    const xmlNode *root = xmlDocGetRootElement(doc);
    if (!def)
        rc = -ENOMEM;
    else if (source && vm_def_set_string(&def->source, source) < 0)
        rc = -ENOMEM;
    else if (!root || !is(root, "domain"))
        rc = defs_error(source, root ? line_of(root) : 0, NULL, "the root element is not <domain>");
    if (rc == 0) {
        struct xctx x = {.source = source, .def = def};
        rc = import_domain(&x, root);
    }
    xmlFreeDoc(doc);
    if (rc == 0)
        rc = vm_def_validate(def);
    if (rc < 0) {
        vm_def_free(def);
        return rc;
    }
    *out = def;
    return 0;
}
