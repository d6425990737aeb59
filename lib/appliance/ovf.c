/*
 * lib/appliance/ovf.c — OVF descriptors: read what VMware, VirtualBox and vessel write into a
 * struct appliance_system, and write an OVF 1.0 descriptor back.
 *
 * The idea: match elements by local name (every producer spells the DMTF namespaces the same,
 * but prefixes differ), resolve the three levels of indirection — hardware Item → ovf:/disk/ID in
 * DiskSection → ovf:fileRef in References → href — and refuse anything that does not resolve, so
 * the importer only ever opens plain file names next to the descriptor. The descriptor is hostile
 * input: no network, no entity expansion, every number range-checked, every href a bare name.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "appliance-internal.h"
#include "vessel/appliance.h"
#include "vessel/util.h"

#define OVF_NS "http://schemas.dmtf.org/ovf/envelope/1"
#define RASD_NS                                                                                    \
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
#define VSSD_NS         "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
#define VMW_NS          "http://www.vmware.com/schema/ovf"
#define VMDK_STREAM_URI "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

void appliance_system_free(struct appliance_system *sys)
{
    if (!sys)
        return;
    for (size_t i = 0; i < sys->disk_count; i++) {
        free(sys->disks[i].id);
        free(sys->disks[i].href);
    }
    for (size_t i = 0; i < sys->nic_count; i++)
        free(sys->nics[i].network);
    free(sys->disks);
    free(sys->nics);
    free(sys->name);
    free(sys);
}

int appliance_add_disk(struct appliance_system *sys, struct appliance_disk **out)
{
    struct appliance_disk *d = realloc(sys->disks, (sys->disk_count + 1) * sizeof(*d));
    if (!d)
        return vs_error(-ENOMEM, "out of memory");
    sys->disks = d;
    *out = memset(&d[sys->disk_count++], 0, sizeof(*d));
    return 0;
}

int appliance_add_nic(struct appliance_system *sys, struct appliance_nic **out)
{
    struct appliance_nic *n = realloc(sys->nics, (sys->nic_count + 1) * sizeof(*n));
    if (!n)
        return vs_error(-ENOMEM, "out of memory");
    sys->nics = n;
    *out = memset(&n[sys->nic_count++], 0, sizeof(*n));
    return 0;
}

char *appliance_sanitize_name(const char *text)
{
    char buf[VM_DEF_NAME_MAX + 1];
    size_t n = 0;
    for (const char *p = text ? text : ""; *p && n < VM_DEF_NAME_MAX; p++) {
        char c = *p;
        bool okc = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '.' || c == '_' || c == '-';
        buf[n++] = okc ? c : '-';
    }
    buf[n] = '\0';
    if (n == 0)
        return vs_strdup("imported");
    if (buf[0] == '.' || buf[0] == '-')
        buf[0] = 'x';
    return vs_strdup(buf);
}

bool appliance_plain_name(const char *name)
{
    return name && *name && !strchr(name, '/') && !strchr(name, '\\') && strcmp(name, ".") &&
           strcmp(name, "..") && strlen(name) < 256;
}

/* ---- reading --------------------------------------------------------------------------------- */

static bool is_elem(const xmlNode *n, const char *name)
{
    return n && n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, name);
}

static xmlNode *child(const xmlNode *parent, const char *name)
{
    for (xmlNode *c = parent ? parent->children : NULL; c; c = c->next)
        if (is_elem(c, name))
            return c;
    return NULL;
}

/* An attribute by local name, whatever its namespace prefix (ovf:href, href, vmw:key). */
static const char *attr(const xmlNode *n, const char *name)
{
    for (xmlAttr *a = n->properties; a; a = a->next)
        if (!strcmp((const char *)a->name, name) && a->children &&
            a->children->type == XML_TEXT_NODE)
            return (const char *)a->children->content;
    return NULL;
}

/* Text of a child element (malloc'd, trimmed), NULL when absent. */
static char *child_text(const xmlNode *parent, const char *name)
{
    xmlNode *c = child(parent, name);
    if (!c)
        return NULL;
    xmlChar *t = xmlNodeGetContent(c);
    if (!t)
        return NULL;
    char *s = (char *)t, *e = s + strlen(s);
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        e--;
    char *copy = strndup(s, (size_t)(e - s));
    xmlFree(t);
    return copy;
}

static int parse_u64(const char *text, uint64_t *out)
{
    if (!text || !*text || *text == '-' || *text == '+' || *text == ' ')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

/* "byte", "byte * 2^20", "MegaBytes", "KB" … → multiplier. */
int appliance_units(const char *text, uint64_t *mult)
{
    if (!text || !*text) {
        *mult = 1;
        return 0;
    }
    char buf[64];
    size_t n = 0;
    for (const char *p = text; *p; p++)
        if (*p != ' ' && *p != '\t') {
            if (n + 1 >= sizeof(buf))
                return -EINVAL;
            buf[n++] = *p;
        }
    buf[n] = '\0';
    static const struct {
        const char *name;
        unsigned shift;
    } named[] = {{"byte", 0}, {"bytes", 0},      {"B", 0},   {"KiloBytes", 10},
                 {"KB", 10},  {"MegaBytes", 20}, {"MB", 20}, {"GigaBytes", 30},
                 {"GB", 30},  {"TeraBytes", 40}, {"TB", 40}};
    for (size_t i = 0; i < VS_ARRAY_SIZE(named); i++)
        if (!strcasecmp(buf, named[i].name)) {
            *mult = 1ULL << named[i].shift;
            return 0;
        }
    const char *exp = NULL;
    if (!strncasecmp(buf, "byte*2^", 7))
        exp = buf + 7;
    else if (!strncasecmp(buf, "bytes*2^", 8))
        exp = buf + 8;
    uint64_t e;
    if (!exp || parse_u64(exp, &e) < 0 || e > 50)
        return -EINVAL;
    *mult = 1ULL << e;
    return 0;
}

/* VALUE × UNITS with overflow check. */
static int scaled(const char *value, const char *units, uint64_t *out)
{
    uint64_t v, m;
    if (parse_u64(value, &v) < 0 || appliance_units(units, &m) < 0)
        return -EINVAL;
    if (m && v > UINT64_MAX / m)
        return -ERANGE;
    *out = v * m;
    return 0;
}

struct ovf_file {
    const char *id, *href, *size;
};
struct ovf_diskdesc {
    const char *id, *file_ref, *capacity, *units;
};
struct ovf_controller {
    char *instance;
    enum vm_disk_bus bus;
};

struct ovf_reader {
    const char *source;
    struct ovf_file *files;
    size_t file_count;
    struct ovf_diskdesc *descs;
    size_t desc_count;
    struct ovf_controller *controllers;
    size_t controller_count;
    bool *desc_used;
};

static int grow(void **array, size_t count, size_t size)
{
    void *p = realloc(*array, (count + 1) * size);
    if (!p)
        return vs_error(-ENOMEM, "out of memory");
    *array = p;
    return 0;
}

static int read_references(struct ovf_reader *r, xmlNode *refs)
{
    for (xmlNode *f = refs ? refs->children : NULL; f; f = f->next) {
        if (!is_elem(f, "File"))
            continue;
        struct ovf_file file = {attr(f, "id"), attr(f, "href"), attr(f, "size")};
        if (!file.id || !file.href)
            return vs_error(-EINVAL, "%s: References: File: %s missing", r->source,
                            file.id ? "ovf:href" : "ovf:id");
        if (!appliance_plain_name(file.href))
            return vs_error(-EINVAL,
                            "%s: References: File '%s': ovf:href '%.200s' is not a plain file "
                            "name next to the descriptor",
                            r->source, file.id, file.href);
        uint64_t size;
        if (file.size && parse_u64(file.size, &size) < 0)
            return vs_error(-EINVAL, "%s: References: File '%s': ovf:size '%.40s' is not a number",
                            r->source, file.id, file.size);
        int rc = grow((void **)&r->files, r->file_count, sizeof(file));
        if (rc < 0)
            return rc;
        r->files[r->file_count++] = file;
    }
    return 0;
}

static int read_disk_section(struct ovf_reader *r, xmlNode *section)
{
    for (xmlNode *d = section ? section->children : NULL; d; d = d->next) {
        if (!is_elem(d, "Disk"))
            continue;
        struct ovf_diskdesc desc = {attr(d, "diskId"), attr(d, "fileRef"), attr(d, "capacity"),
                                    attr(d, "capacityAllocationUnits")};
        if (!desc.id || !desc.capacity)
            return vs_error(-EINVAL, "%s: DiskSection: Disk: %s missing", r->source,
                            desc.id ? "ovf:capacity" : "ovf:diskId");
        int rc = grow((void **)&r->descs, r->desc_count, sizeof(desc));
        if (rc < 0)
            return rc;
        r->descs[r->desc_count++] = desc;
    }
    if (!(r->desc_used = calloc(r->desc_count + 1, sizeof(bool))))
        return vs_error(-ENOMEM, "out of memory");
    return 0;
}

static int add_disk_from_desc(struct ovf_reader *r, struct appliance_system *sys, size_t i,
                              enum vm_disk_bus bus)
{
    const struct ovf_diskdesc *desc = &r->descs[i];
    if (r->desc_used[i])
        return vs_error(-EINVAL, "%s: VirtualHardwareSection: disk '%s' attached twice", r->source,
                        desc->id);
    r->desc_used[i] = true;
    struct appliance_disk *disk;
    int rc = appliance_add_disk(sys, &disk);
    if (rc < 0)
        return rc;
    disk->bus = bus;
    if (!(disk->id = vs_strdup(desc->id)))
        return -ENOMEM;
    rc = scaled(desc->capacity, desc->units, &disk->capacity);
    if (rc < 0 || disk->capacity == 0)
        return vs_error(-EINVAL,
                        "%s: DiskSection: Disk '%s': ovf:capacity '%.40s' (units '%.40s') "
                        "is not a size",
                        r->source, desc->id, desc->capacity, desc->units ? desc->units : "byte");
    if (!desc->file_ref)
        return 0; /* a blank disk the importer creates */
    for (size_t f = 0; f < r->file_count; f++)
        if (!strcmp(r->files[f].id, desc->file_ref)) {
            if (r->files[f].size)
                parse_u64(r->files[f].size, &disk->file_size);
            return (disk->href = vs_strdup(r->files[f].href)) ? 0 : -ENOMEM;
        }
    return vs_error(-EINVAL,
                    "%s: DiskSection: Disk '%s': ovf:fileRef '%.100s' is not in References",
                    r->source, desc->id, desc->file_ref);
}

static enum vm_disk_bus controller_bus(const struct ovf_reader *r, const char *parent)
{
    for (size_t i = 0; parent && i < r->controller_count; i++)
        if (!strcmp(r->controllers[i].instance, parent))
            return r->controllers[i].bus;
    return VM_DISK_BUS_VIRTIO;
}

static const char *item_label(xmlNode *item, char *buf, size_t len)
{
    char *name = child_text(item, "ElementName");
    snprintf(buf, len, "Item '%.60s'", name ? name : "?");
    free(name);
    return buf;
}

/* Collect the controllers first so disk Items can name them as Parent in any order. */
static int read_controllers(struct ovf_reader *r, xmlNode *hw)
{
    for (xmlNode *it = hw->children; it; it = it->next) {
        if (!is_elem(it, "Item") && !is_elem(it, "StorageItem"))
            continue;
        char *type = child_text(it, "ResourceType");
        uint64_t t = 0;
        int bad = !type || parse_u64(type, &t) < 0;
        free(type);
        if (bad || (t != 5 && t != 6 && t != 20))
            continue;
        char *sub = child_text(it, "ResourceSubType");
        enum vm_disk_bus bus = t == 5                               ? VM_DISK_BUS_IDE
                               : t == 20                            ? VM_DISK_BUS_SATA
                               : (sub && strcasestr(sub, "virtio")) ? VM_DISK_BUS_VIRTIO
                                                                    : VM_DISK_BUS_SCSI;
        free(sub);
        char *instance = child_text(it, "InstanceID");
        if (!instance)
            continue;
        int rc = grow((void **)&r->controllers, r->controller_count, sizeof(*r->controllers));
        if (rc < 0) {
            free(instance);
            return rc;
        }
        r->controllers[r->controller_count++] = (struct ovf_controller){instance, bus};
    }
    return 0;
}

static int read_item(struct ovf_reader *r, struct appliance_system *sys, xmlNode *it,
                     bool *have_memory)
{
    char label[96];
    char *type_text = child_text(it, "ResourceType");
    uint64_t type;
    if (!type_text || parse_u64(type_text, &type) < 0) {
        int rc = vs_error(-EINVAL, "%s: %s: ResourceType '%.20s' is not a number", r->source,
                          item_label(it, label, sizeof(label)), type_text ? type_text : "");
        free(type_text);
        return rc;
    }
    free(type_text);
    int rc = 0;
    char *q = NULL, *u = NULL, *s1 = NULL, *s2 = NULL;
    switch (type) {
    case 3: { /* processors */
        uint64_t n;
        q = child_text(it, "VirtualQuantity");
        if (!q || parse_u64(q, &n) < 0 || n < 1 || n > VM_DEF_MAX_VCPUS)
            rc = vs_error(-EINVAL, "%s: %s: VirtualQuantity '%.20s' is not a CPU count 1..%d",
                          r->source, item_label(it, label, sizeof(label)), q ? q : "",
                          VM_DEF_MAX_VCPUS);
        else
            sys->vcpus = (unsigned)n;
        break;
    }
    case 4: { /* memory */
        uint64_t bytes = 0;
        q = child_text(it, "VirtualQuantity");
        u = child_text(it, "AllocationUnits");
        if (!q || scaled(q, u ? u : "MegaBytes", &bytes) < 0 || bytes < VM_DEF_MIN_MEMORY ||
            bytes > VM_DEF_MAX_MEMORY) {
            rc = vs_error(-EINVAL,
                          "%s: %s: VirtualQuantity '%.20s' AllocationUnits '%.40s' is not a "
                          "memory size 1M..16T",
                          r->source, item_label(it, label, sizeof(label)), q ? q : "", u ? u : "");
        } else {
            sys->memory = VS_ALIGN_UP(bytes, 1 << 20);
            *have_memory = true;
        }
        break;
    }
    case 17: { /* disk drive */
        s1 = child_text(it, "HostResource");
        if (!s1)
            break; /* an empty drive */
        const char *id = NULL;
        if (!strncmp(s1, "ovf:/disk/", 10))
            id = s1 + 10;
        else if (!strncmp(s1, "/disk/", 6))
            id = s1 + 6;
        if (!id) {
            rc = vs_error(-EINVAL, "%s: %s: HostResource '%.100s' is not ovf:/disk/ID", r->source,
                          item_label(it, label, sizeof(label)), s1);
            break;
        }
        size_t i;
        for (i = 0; i < r->desc_count; i++)
            if (!strcmp(r->descs[i].id, id))
                break;
        if (i == r->desc_count) {
            rc = vs_error(-EINVAL, "%s: %s: HostResource: no disk '%.100s' in DiskSection",
                          r->source, item_label(it, label, sizeof(label)), id);
            break;
        }
        s2 = child_text(it, "Parent");
        rc = add_disk_from_desc(r, sys, i, controller_bus(r, s2));
        break;
    }
    case 10: { /* ethernet adapter */
        struct appliance_nic *nic;
        if ((rc = appliance_add_nic(sys, &nic)) < 0)
            break;
        nic->network = child_text(it, "Connection");
        s1 = child_text(it, "Address");
        if (s1 && *s1 && vm_mac_parse(s1, nic->mac) < 0) {
            rc = vs_error(-EINVAL, "%s: %s: Address '%.40s' is not a MAC address", r->source,
                          item_label(it, label, sizeof(label)), s1);
            break;
        }
        s2 = child_text(it, "ResourceSubType");
        nic->model = s2 && strcasestr(s2, "e1000")     ? VM_NIC_MODEL_E1000
                     : s2 && strcasestr(s2, "rtl8139") ? VM_NIC_MODEL_RTL8139
                                                       : VM_NIC_MODEL_VIRTIO;
        break;
    }
    default:
        break;
    }
    free(q);
    free(u);
    free(s1);
    free(s2);
    return rc;
}

/* VMware keeps MACs it was asked to keep as ExtraConfig "ethernetN.address". */
static int read_extra_config(struct ovf_reader *r, struct appliance_system *sys, xmlNode *hw)
{
    for (xmlNode *c = hw->children; c; c = c->next) {
        if (!is_elem(c, "ExtraConfig") && !is_elem(c, "Config"))
            continue;
        const char *key = attr(c, "key"), *value = attr(c, "value");
        unsigned n;
        int used = 0;
        if (!key || !value || sscanf(key, "ethernet%u.address%n", &n, &used) != 1 || key[used] ||
            n >= sys->nic_count || sys->nics[n].mac[0])
            continue;
        if (vm_mac_parse(value, sys->nics[n].mac) < 0)
            return vs_error(-EINVAL, "%s: ExtraConfig '%s': '%.40s' is not a MAC address",
                            r->source, key, value);
    }
    return 0;
}

static xmlNode *find_virtual_system(xmlNode *n)
{
    for (xmlNode *c = n->children; c; c = c->next) {
        if (is_elem(c, "VirtualSystem"))
            return c;
        if (is_elem(c, "VirtualSystemCollection")) {
            xmlNode *vs = find_virtual_system(c);
            if (vs)
                return vs;
        }
    }
    return NULL;
}

static int read_envelope(struct ovf_reader *r, xmlNode *root, struct appliance_system *sys)
{
    int rc;
    if ((rc = read_references(r, child(root, "References"))) < 0)
        return rc;
    xmlNode *disks = child(root, "DiskSection");
    if ((rc = read_disk_section(r, disks ? disks : child(root, "VirtualDiskDescSection"))) < 0)
        return rc;
    xmlNode *vsys = find_virtual_system(root);
    if (!vsys)
        return vs_error(-EINVAL, "%s: VirtualSystem: missing", r->source);
    char *name = child_text(vsys, "Name");
    sys->name = appliance_sanitize_name(name && *name ? name : attr(vsys, "id"));
    free(name);
    if (!sys->name)
        return -ENOMEM;
    xmlNode *hw = child(vsys, "VirtualHardwareSection");
    if (!hw)
        return vs_error(-EINVAL, "%s: VirtualSystem '%s': VirtualHardwareSection: missing",
                        r->source, sys->name);
    if ((rc = read_controllers(r, hw)) < 0)
        return rc;
    bool have_memory = false;
    for (xmlNode *it = hw->children; it; it = it->next) {
        if (!is_elem(it, "Item") && !is_elem(it, "StorageItem") && !is_elem(it, "EthernetPortItem"))
            continue;
        if ((rc = read_item(r, sys, it, &have_memory)) < 0)
            return rc;
    }
    if (!have_memory)
        return vs_error(-EINVAL, "%s: VirtualHardwareSection: no memory Item (ResourceType 4)",
                        r->source);
    /* a descriptor whose Items attach no disk: take DiskSection in order */
    if (sys->disk_count == 0)
        for (size_t i = 0; i < r->desc_count; i++)
            if ((rc = add_disk_from_desc(r, sys, i, VM_DISK_BUS_VIRTIO)) < 0)
                return rc;
    return read_extra_config(r, sys, hw);
}

int appliance_ovf_parse(const char *xml, size_t len, const char *source,
                        struct appliance_system **out)
{
    if (!source)
        source = "descriptor.ovf";
    if (len > INT_MAX)
        return vs_error(-EFBIG, "%s: descriptor larger than 2 GiB", source);
    xmlDoc *doc = xmlReadMemory(xml, (int)len, source, NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc) {
        const xmlError *e = xmlGetLastError();
        return vs_error(-EINVAL, "%s: line %d: not well-formed XML", source, e ? e->line : 0);
    }
    struct ovf_reader r = {.source = source};
    struct appliance_system *sys = calloc(1, sizeof(*sys));
    int rc;
    xmlNode *root = xmlDocGetRootElement(doc);
    if (!sys)
        rc = vs_error(-ENOMEM, "out of memory");
    else if (!is_elem(root, "Envelope"))
        rc = vs_error(-EINVAL, "%s: root element is '%.40s', expected Envelope", source,
                      root ? (const char *)root->name : "");
    else {
        sys->vcpus = 1;
        rc = read_envelope(&r, root, sys);
    }
    free(r.files);
    free(r.descs);
    free(r.desc_used);
    for (size_t i = 0; i < r.controller_count; i++)
        free(r.controllers[i].instance);
    free(r.controllers);
    xmlFreeDoc(doc);
    if (rc < 0) {
        appliance_system_free(sys);
        return rc;
    }
    *out = sys;
    return 0;
}

/* ---- writing --------------------------------------------------------------------------------- */

struct ovf_writer {
    xmlNs *ovf, *rasd, *vssd, *vmw;
    int instance;
};

static xmlNode *text_child(xmlNode *parent, xmlNs *ns, const char *name, const char *text)
{
    return xmlNewTextChild(parent, ns, BAD_CAST name, BAD_CAST text);
}

/* One RASD Item; elements must come in the schema's alphabetical order. */
struct rasd_fields {
    const char *address, *address_on_parent, *allocation_units, *connection, *description,
        *element_name, *host_resource, *parent, *resource_sub_type, *resource_type,
        *virtual_quantity;
};

static xmlNode *rasd_item(struct ovf_writer *w, xmlNode *hw, const struct rasd_fields *f)
{
    xmlNode *item = xmlNewChild(hw, NULL, BAD_CAST "Item", NULL);
    char instance[16];
    snprintf(instance, sizeof(instance), "%d", ++w->instance);
    if (f->address)
        text_child(item, w->rasd, "Address", f->address);
    if (f->address_on_parent)
        text_child(item, w->rasd, "AddressOnParent", f->address_on_parent);
    if (f->allocation_units)
        text_child(item, w->rasd, "AllocationUnits", f->allocation_units);
    if (f->connection) {
        text_child(item, w->rasd, "AutomaticAllocation", "true");
        text_child(item, w->rasd, "Connection", f->connection);
    }
    if (f->description)
        text_child(item, w->rasd, "Description", f->description);
    text_child(item, w->rasd, "ElementName", f->element_name);
    if (f->host_resource)
        text_child(item, w->rasd, "HostResource", f->host_resource);
    text_child(item, w->rasd, "InstanceID", instance);
    if (f->parent)
        text_child(item, w->rasd, "Parent", f->parent);
    if (f->resource_sub_type)
        text_child(item, w->rasd, "ResourceSubType", f->resource_sub_type);
    text_child(item, w->rasd, "ResourceType", f->resource_type);
    if (f->virtual_quantity)
        text_child(item, w->rasd, "VirtualQuantity", f->virtual_quantity);
    return item;
}

static const char *bus_controller(enum vm_disk_bus bus, const char **type, const char **name)
{
    switch (bus) {
    case VM_DISK_BUS_IDE:
        *type = "5", *name = "IDE Controller";
        return "PIIX4";
    case VM_DISK_BUS_SATA:
        *type = "20", *name = "SATA Controller";
        return "AHCI";
    case VM_DISK_BUS_SCSI:
        *type = "6", *name = "SCSI Controller";
        return "lsilogic";
    default:
        *type = "6", *name = "VirtIO SCSI Controller";
        return "VirtioSCSI";
    }
}

char *appliance_ovf_write(const struct appliance_system *sys)
{
    xmlDoc *doc = xmlNewDoc(BAD_CAST "1.0");
    xmlNode *env = xmlNewNode(NULL, BAD_CAST "Envelope");
    xmlDocSetRootElement(doc, env);
    xmlSetNs(env, xmlNewNs(env, BAD_CAST OVF_NS, NULL));
    struct ovf_writer w = {
        .ovf = xmlNewNs(env, BAD_CAST OVF_NS, BAD_CAST "ovf"),
        .rasd = xmlNewNs(env, BAD_CAST RASD_NS, BAD_CAST "rasd"),
        .vssd = xmlNewNs(env, BAD_CAST VSSD_NS, BAD_CAST "vssd"),
        .vmw = xmlNewNs(env, BAD_CAST VMW_NS, BAD_CAST "vmw"),
    };
    xmlNewNs(env, BAD_CAST "http://www.w3.org/2001/XMLSchema-instance", BAD_CAST "xsi");
    xmlNewNsProp(env, w.ovf, BAD_CAST "version", BAD_CAST "1.0");
    char num[32], id[48];

    xmlNode *refs = xmlNewChild(env, NULL, BAD_CAST "References", NULL);
    for (size_t i = 0; i < sys->disk_count; i++) {
        if (!sys->disks[i].href)
            continue;
        xmlNode *f = xmlNewChild(refs, NULL, BAD_CAST "File", NULL);
        snprintf(id, sizeof(id), "file%zu", i + 1);
        xmlNewNsProp(f, w.ovf, BAD_CAST "href", BAD_CAST sys->disks[i].href);
        xmlNewNsProp(f, w.ovf, BAD_CAST "id", BAD_CAST id);
        snprintf(num, sizeof(num), "%" PRIu64, sys->disks[i].file_size);
        xmlNewNsProp(f, w.ovf, BAD_CAST "size", BAD_CAST num);
    }

    xmlNode *ds = xmlNewChild(env, NULL, BAD_CAST "DiskSection", NULL);
    text_child(ds, NULL, "Info", "Virtual disk information");
    for (size_t i = 0; i < sys->disk_count; i++) {
        xmlNode *d = xmlNewChild(ds, NULL, BAD_CAST "Disk", NULL);
        snprintf(num, sizeof(num), "%" PRIu64, sys->disks[i].capacity);
        xmlNewNsProp(d, w.ovf, BAD_CAST "capacity", BAD_CAST num);
        xmlNewNsProp(d, w.ovf, BAD_CAST "capacityAllocationUnits", BAD_CAST "byte");
        snprintf(id, sizeof(id), "vmdisk%zu", i + 1);
        xmlNewNsProp(d, w.ovf, BAD_CAST "diskId", BAD_CAST id);
        if (sys->disks[i].href) {
            snprintf(id, sizeof(id), "file%zu", i + 1);
            xmlNewNsProp(d, w.ovf, BAD_CAST "fileRef", BAD_CAST id);
            xmlNewNsProp(d, w.ovf, BAD_CAST "format", BAD_CAST VMDK_STREAM_URI);
        }
    }

    xmlNode *ns = xmlNewChild(env, NULL, BAD_CAST "NetworkSection", NULL);
    text_child(ns, NULL, "Info", "The list of logical networks");
    for (size_t i = 0; i < sys->nic_count; i++) {
        const char *net = sys->nics[i].network;
        bool seen = !net;
        for (size_t j = 0; j < i && !seen; j++)
            seen = sys->nics[j].network && !strcmp(sys->nics[j].network, net);
        if (seen)
            continue;
        xmlNode *n = xmlNewChild(ns, NULL, BAD_CAST "Network", NULL);
        xmlNewNsProp(n, w.ovf, BAD_CAST "name", BAD_CAST net);
        text_child(n, NULL, "Description", "A network the VM's NICs connect to");
    }

    xmlNode *vsys = xmlNewChild(env, NULL, BAD_CAST "VirtualSystem", NULL);
    xmlNewNsProp(vsys, w.ovf, BAD_CAST "id", BAD_CAST sys->name);
    text_child(vsys, NULL, "Info", "A virtual machine");
    text_child(vsys, NULL, "Name", sys->name);
    xmlNode *os = xmlNewChild(vsys, NULL, BAD_CAST "OperatingSystemSection", NULL);
    xmlNewNsProp(os, w.ovf, BAD_CAST "id", BAD_CAST "101");
    text_child(os, NULL, "Info", "The kind of installed guest operating system");
    text_child(os, NULL, "Description", "Linux 64-Bit");

    xmlNode *hw = xmlNewChild(vsys, NULL, BAD_CAST "VirtualHardwareSection", NULL);
    text_child(hw, NULL, "Info", "Virtual hardware requirements");
    xmlNode *system = xmlNewChild(hw, NULL, BAD_CAST "System", NULL);
    text_child(system, w.vssd, "ElementName", "Virtual Hardware Family");
    text_child(system, w.vssd, "InstanceID", "0");
    text_child(system, w.vssd, "VirtualSystemIdentifier", sys->name);
    text_child(system, w.vssd, "VirtualSystemType", "vmx-07");

    snprintf(num, sizeof(num), "%u", sys->vcpus);
    char cpu_name[48];
    snprintf(cpu_name, sizeof(cpu_name), "%u virtual CPU(s)", sys->vcpus);
    rasd_item(&w, hw,
              &(struct rasd_fields){.allocation_units = "hertz * 10^6",
                                    .description = "Number of Virtual CPUs",
                                    .element_name = cpu_name,
                                    .resource_type = "3",
                                    .virtual_quantity = num});
    char mem_name[48];
    snprintf(num, sizeof(num), "%" PRIu64, sys->memory >> 20);
    snprintf(mem_name, sizeof(mem_name), "%sMB of memory", num);
    rasd_item(&w, hw,
              &(struct rasd_fields){.allocation_units = "byte * 2^20",
                                    .description = "Memory Size",
                                    .element_name = mem_name,
                                    .resource_type = "4",
                                    .virtual_quantity = num});

    /* one controller per bus in use, then the disks on it */
    static const enum vm_disk_bus buses[] = {VM_DISK_BUS_VIRTIO, VM_DISK_BUS_SCSI, VM_DISK_BUS_SATA,
                                             VM_DISK_BUS_IDE};
    for (size_t b = 0; b < VS_ARRAY_SIZE(buses); b++) {
        char controller[16] = "";
        unsigned slot = 0;
        for (size_t i = 0; i < sys->disk_count; i++) {
            if (sys->disks[i].bus != buses[b])
                continue;
            if (!controller[0]) {
                const char *type, *name, *sub = bus_controller(buses[b], &type, &name);
                rasd_item(&w, hw,
                          &(struct rasd_fields){.address = "0",
                                                .description = name,
                                                .element_name = name,
                                                .resource_sub_type = sub,
                                                .resource_type = type});
                snprintf(controller, sizeof(controller), "%d", w.instance);
            }
            char slot_text[24], host[48], disk_name[48];
            snprintf(slot_text, sizeof(slot_text), "%u", slot++);
            snprintf(host, sizeof(host), "ovf:/disk/vmdisk%zu", i + 1);
            snprintf(disk_name, sizeof(disk_name), "Hard disk %zu", i + 1);
            rasd_item(&w, hw,
                      &(struct rasd_fields){.address_on_parent = slot_text,
                                            .element_name = disk_name,
                                            .host_resource = host,
                                            .parent = controller,
                                            .resource_type = "17"});
        }
    }
    static const char *const models[] = {"virtio", "E1000", "rtl8139"};
    for (size_t i = 0; i < sys->nic_count; i++) {
        char nic_name[48];
        snprintf(nic_name, sizeof(nic_name), "Network adapter %zu", i + 1);
        unsigned m = sys->nics[i].model;
        rasd_item(&w, hw,
                  &(struct rasd_fields){.address = sys->nics[i].mac[0] ? sys->nics[i].mac : NULL,
                                        .address_on_parent = NULL,
                                        .connection = sys->nics[i].network,
                                        .element_name = nic_name,
                                        .resource_sub_type = models[m < 3 ? m : 0],
                                        .resource_type = "10"});
    }
    /* VMware keeps a static MAC from this key; OVF consumers ignore what they don't know */
    for (size_t i = 0; i < sys->nic_count; i++) {
        if (!sys->nics[i].mac[0])
            continue;
        char key[40];
        snprintf(key, sizeof(key), "ethernet%zu.address", i);
        xmlNode *x = xmlNewChild(hw, w.vmw, BAD_CAST "ExtraConfig", NULL);
        xmlNewNsProp(x, w.ovf, BAD_CAST "required", BAD_CAST "false");
        xmlNewNsProp(x, w.vmw, BAD_CAST "key", BAD_CAST key);
        xmlNewNsProp(x, w.vmw, BAD_CAST "value", BAD_CAST sys->nics[i].mac);
    }

    xmlChar *mem = NULL;
    int size = 0;
    xmlDocDumpFormatMemoryEnc(doc, &mem, &size, "UTF-8", 1);
    xmlFreeDoc(doc);
    char *text = mem ? vs_strdup((const char *)mem) : NULL;
    xmlFree(mem);
    if (!text)
        vs_error(-ENOMEM, "OVF descriptor: out of memory");
    return text;
}
