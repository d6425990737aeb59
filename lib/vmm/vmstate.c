/*
 * lib/vmm/vmstate.c — encoding and parsing of the saved-VM state file (format in vmstate.h and
 * docs/vessel-vmm.md).
 *
 * Writing appends to one growing buffer; a section is its name, a u32 length patched when the
 * section ends, and its bytes. Reading never trusts a length: every field read checks what is
 * left, a failure latches (later reads return zeroes) and the first one records the byte offset
 * for the message, so callers read a whole structure and check once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/vmstate.h"

/* ---- writer ---------------------------------------------------------------------------------- */

void vmw_bytes(struct vmstate_writer *w, const void *p, size_t n)
{
    if (w->failed)
        return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *b = realloc(w->buf, cap);
        if (!b) {
            w->failed = true;
            return;
        }
        w->buf = b;
        w->cap = cap;
    }
    if (n)
        memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void vmw_u8(struct vmstate_writer *w, uint8_t v)
{
    vmw_bytes(w, &v, 1);
}

void vmw_u16(struct vmstate_writer *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    vmw_bytes(w, b, 2);
}

void vmw_u32(struct vmstate_writer *w, uint32_t v)
{
    vmw_u16(w, (uint16_t)v);
    vmw_u16(w, (uint16_t)(v >> 16));
}

void vmw_u64(struct vmstate_writer *w, uint64_t v)
{
    vmw_u32(w, (uint32_t)v);
    vmw_u32(w, (uint32_t)(v >> 32));
}

void vmw_str(struct vmstate_writer *w, const char *s)
{
    if (!s) {
        vmw_u32(w, UINT32_MAX);
        return;
    }
    size_t n = strlen(s);
    vmw_u32(w, (uint32_t)n);
    vmw_bytes(w, s, n);
}

size_t vmw_blob_begin(struct vmstate_writer *w)
{
    size_t mark = w->len;
    vmw_u32(w, 0);
    return mark;
}

void vmw_blob_end(struct vmstate_writer *w, size_t mark)
{
    if (w->failed)
        return;
    uint32_t n = (uint32_t)(w->len - mark - 4);
    uint8_t b[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    memcpy(w->buf + mark, b, 4);
}

size_t vmw_section_begin(struct vmstate_writer *w, const char *name)
{
    vmw_str(w, name);
    return vmw_blob_begin(w);
}

void vmw_section_end(struct vmstate_writer *w, size_t mark)
{
    vmw_blob_end(w, mark);
}

void vmw_free(struct vmstate_writer *w)
{
    free(w->buf);
    memset(w, 0, sizeof(*w));
}

/* ---- reader ---------------------------------------------------------------------------------- */

void vmr_init(struct vmstate_reader *r, const void *p, size_t len, const char *what)
{
    *r = (struct vmstate_reader){.p = p, .len = len, .what = what};
}

static bool vmr_fail(struct vmstate_reader *r)
{
    if (!r->failed)
        vs_error(-EINVAL, "%s: corrupt at byte %zu of %zu", r->what, r->pos, r->len);
    r->failed = true;
    return false;
}

bool vmr_check(struct vmstate_reader *r, bool cond)
{
    return cond && !r->failed ? true : vmr_fail(r);
}

bool vmr_bytes(struct vmstate_reader *r, void *out, size_t n)
{
    if (r->failed || n > r->len - r->pos) {
        vmr_fail(r);
        memset(out, 0, n);
        return false;
    }
    memcpy(out, r->p + r->pos, n);
    r->pos += n;
    return true;
}

uint8_t vmr_u8(struct vmstate_reader *r)
{
    uint8_t v;
    vmr_bytes(r, &v, 1);
    return v;
}

uint16_t vmr_u16(struct vmstate_reader *r)
{
    uint8_t b[2];
    vmr_bytes(r, b, 2);
    return (uint16_t)(b[0] | b[1] << 8);
}

uint32_t vmr_u32(struct vmstate_reader *r)
{
    uint32_t lo = vmr_u16(r);
    return lo | (uint32_t)vmr_u16(r) << 16;
}

uint64_t vmr_u64(struct vmstate_reader *r)
{
    uint64_t lo = vmr_u32(r);
    return lo | (uint64_t)vmr_u32(r) << 32;
}

bool vmr_bool(struct vmstate_reader *r)
{
    uint8_t v = vmr_u8(r);
    vmr_check(r, v <= 1);
    return v == 1;
}

bool vmr_str(struct vmstate_reader *r, char **out)
{
    *out = NULL;
    uint32_t n = vmr_u32(r);
    if (r->failed)
        return false;
    if (n == UINT32_MAX)
        return true;
    if (n > VMSTATE_MAX_STRING || n > r->len - r->pos || memchr(r->p + r->pos, 0, n))
        return vmr_fail(r);
    char *s = malloc((size_t)n + 1);
    if (!s) {
        r->failed = true;
        vs_error(-ENOMEM, "%s: out of memory", r->what);
        return false;
    }
    memcpy(s, r->p + r->pos, n);
    s[n] = 0;
    r->pos += n;
    *out = s;
    return true;
}

bool vmr_blob(struct vmstate_reader *r, struct vmstate_reader *sub)
{
    uint32_t n = vmr_u32(r);
    if (r->failed || n > r->len - r->pos) {
        vmr_init(sub, NULL, 0, r->what);
        sub->failed = true;
        return vmr_fail(r);
    }
    vmr_init(sub, r->p + r->pos, n, r->what);
    r->pos += n;
    return true;
}

int vmr_finish(struct vmstate_reader *r)
{
    if (!r->failed && r->pos != r->len) {
        vs_error(-EINVAL, "%s: %zu unexpected bytes at the end", r->what, r->len - r->pos);
        r->failed = true;
    }
    return r->failed ? -EINVAL : 0;
}

/* ---- header ---------------------------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

void vmstate_header_write(uint8_t out[VMSTATE_HEADER_SIZE], uint64_t memory, uint32_t vcpus,
                          uint32_t sections, uint64_t state_len, uint64_t ram_offset)
{
    memset(out, 0, VMSTATE_HEADER_SIZE);
    memcpy(out, VMSTATE_MAGIC, 8);
    put32(out + 8, VMSTATE_VERSION);
    put32(out + 12, 0); /* flags */
    put64(out + 16, memory);
    put32(out + 24, vcpus);
    put32(out + 28, sections);
    put64(out + 32, state_len);
    put64(out + 40, ram_offset);
}

struct header {
    uint32_t version, flags, vcpus, sections;
    uint64_t memory, state_len, ram_offset;
};

static int header_read(const uint8_t *buf, size_t len, struct header *h, const char *name)
{
    if (len < VMSTATE_HEADER_SIZE)
        return vs_error(-EINVAL, "%s: not a vessel state file (too short: %zu bytes)", name, len);
    if (memcmp(buf, VMSTATE_MAGIC, 8) != 0)
        return vs_error(-EINVAL, "%s: not a vessel state file (bad magic)", name);
    struct vmstate_reader r;
    vmr_init(&r, buf + 8, VMSTATE_HEADER_SIZE - 8, name);
    h->version = vmr_u32(&r);
    h->flags = vmr_u32(&r);
    h->memory = vmr_u64(&r);
    h->vcpus = vmr_u32(&r);
    h->sections = vmr_u32(&r);
    h->state_len = vmr_u64(&r);
    h->ram_offset = vmr_u64(&r);
    if (h->version != VMSTATE_VERSION)
        return vs_error(-EINVAL, "%s: state file version %u, this vessel-vmm reads version %u",
                        name, h->version, VMSTATE_VERSION);
    if (h->flags)
        return vs_error(-EINVAL, "%s: unknown header flags 0x%x", name, h->flags);
    if (h->memory < 16 * (1ULL << 20) || h->memory % 4096 || h->memory > (1ULL << 46))
        return vs_error(-EINVAL, "%s: guest memory size %llu is invalid", name,
                        (unsigned long long)h->memory);
    if (h->vcpus < 1 || h->vcpus > 254)
        return vs_error(-EINVAL, "%s: %u vCPUs is invalid (1..254)", name, h->vcpus);
    if (h->sections > VMSTATE_MAX_SECTIONS || h->state_len > VMSTATE_MAX_STATE)
        return vs_error(-EINVAL, "%s: %u sections / %llu state bytes is more than allowed", name,
                        h->sections, (unsigned long long)h->state_len);
    if (h->ram_offset != VS_ALIGN_UP(VMSTATE_HEADER_SIZE + h->state_len, 4096))
        return vs_error(-EINVAL, "%s: RAM offset %llu does not follow the state", name,
                        (unsigned long long)h->ram_offset);
    return 0;
}

int vmstate_header_parse(const uint8_t *buf, size_t len, uint64_t *state_len, const char *name)
{
    struct header h;
    int rc = header_read(buf, len, &h, name);
    if (rc == 0)
        *state_len = h.state_len;
    return rc;
}

/* ---- configuration --------------------------------------------------------------------------- */

void vmstate_config_write(struct vmstate_writer *w, const struct vmm_config *c,
                          const uint64_t *disk_sizes, const char *boot_how, const char *save_id)
{
    vmw_u32(w, c->cpus);
    vmw_u64(w, c->memory);
    vmw_u8(w, c->hugepages);
    vmw_str(w, c->kernel);
    vmw_str(w, c->initrd);
    vmw_str(w, c->cmdline);
    vmw_str(w, c->cpuid_mask);
    vmw_str(w, c->vconsole);
    vmw_u8(w, (uint8_t)c->boot_path);
    vmw_u8(w, c->restart_on_reboot);
    vmw_u8(w, c->rng);
    vmw_u8(w, c->balloon);
    vmw_str(w, boot_how);
    vmw_u32(w, (uint32_t)c->disk_count);
    for (size_t i = 0; i < c->disk_count; i++) {
        vmw_str(w, c->disks[i].path);
        vmw_str(w, c->disks[i].format);
        vmw_u8(w, c->disks[i].readonly);
        vmw_u64(w, disk_sizes[i]);
    }
    vmw_u32(w, (uint32_t)c->net_count);
    for (size_t i = 0; i < c->net_count; i++) {
        vmw_str(w, c->nets[i].tap);
        vmw_bytes(w, c->nets[i].mac, 6);
        vmw_u8(w, c->nets[i].mac_set);
    }
    /* added later: readers of older files find the section ending here */
    vmw_str(w, c->name);
    vmw_str(w, c->uuid);
    vmw_str(w, save_id);
    vmw_u32(w, (uint32_t)c->disk_count); /* added later still: the disks' I/O limits */
    for (size_t i = 0; i < c->disk_count; i++) {
        vmw_u64(w, c->disks[i].iops);
        vmw_u64(w, c->disks[i].bps);
    }
}

/* Read a string and remember it in F (owned there). */
static const char *take_str(struct vmstate_file *f, struct vmstate_reader *r)
{
    char *s;
    if (!vmr_str(r, &s) || !s)
        return NULL;
    char **n = realloc(f->strings, (f->string_count + 1) * sizeof(*n));
    if (!n) {
        free(s);
        r->failed = true;
        return NULL;
    }
    f->strings = n;
    f->strings[f->string_count++] = s;
    return s;
}

static int config_parse(struct vmstate_file *f, const struct vmstate_section *s, const char *name)
{
    struct vmstate_reader r;
    vmr_init(&r, s->data, s->len, "config section");
    struct vmm_config *c = &f->cfg.config;
    c->cpus = vmr_u32(&r);
    c->memory = vmr_u64(&r);
    c->hugepages = vmr_bool(&r);
    c->kernel = take_str(f, &r);
    c->initrd = take_str(f, &r);
    c->cmdline = take_str(f, &r);
    c->cpuid_mask = take_str(f, &r);
    c->vconsole = take_str(f, &r);
    uint8_t boot_path = vmr_u8(&r);
    vmr_check(&r, boot_path <= VMM_BOOT_VMLINUX);
    c->boot_path = (enum vmm_boot_path)boot_path;
    c->restart_on_reboot = vmr_bool(&r);
    c->rng = vmr_bool(&r);
    c->balloon = vmr_bool(&r);
    const char *how = take_str(f, &r);
    snprintf(f->cfg.boot_how, sizeof(f->cfg.boot_how), "%s", how ? how : "");
    uint32_t n = vmr_u32(&r);
    if (vmr_check(&r, n <= VMSTATE_MAX_ITEMS) && n) {
        c->disks = calloc(n, sizeof(*c->disks));
        f->cfg.disk_sizes = calloc(n, sizeof(*f->cfg.disk_sizes));
        if (!c->disks || !f->cfg.disk_sizes)
            return vs_error(-ENOMEM, "%s: out of memory", name);
        c->disk_count = n;
        for (uint32_t i = 0; i < n && !r.failed; i++) {
            c->disks[i].path = take_str(f, &r);
            c->disks[i].format = take_str(f, &r);
            c->disks[i].readonly = vmr_bool(&r);
            f->cfg.disk_sizes[i] = vmr_u64(&r);
            vmr_check(&r, c->disks[i].path && *c->disks[i].path);
        }
    }
    n = vmr_u32(&r);
    if (vmr_check(&r, n <= VMSTATE_MAX_ITEMS) && n) {
        c->nets = calloc(n, sizeof(*c->nets));
        if (!c->nets)
            return vs_error(-ENOMEM, "%s: out of memory", name);
        c->net_count = n;
        for (uint32_t i = 0; i < n && !r.failed; i++) {
            c->nets[i].tap = take_str(f, &r);
            vmr_bytes(&r, c->nets[i].mac, 6);
            c->nets[i].mac_set = vmr_bool(&r);
            vmr_check(&r, c->nets[i].tap && *c->nets[i].tap);
        }
    }
    if (!r.failed && r.pos < r.len) { /* the VM's identity, in files from this version on */
        c->name = take_str(f, &r);
        c->uuid = take_str(f, &r);
        const char *id = take_str(f, &r);
        vmr_check(&r, (!c->name || strlen(c->name) <= VMM_IDENTITY_MAX) &&
                          (!c->uuid || strlen(c->uuid) <= VMM_IDENTITY_MAX) &&
                          (!id || strlen(id) < sizeof(f->cfg.save_id)));
        snprintf(f->cfg.save_id, sizeof(f->cfg.save_id), "%s", id && !r.failed ? id : "");
    }
    if (!r.failed && r.pos < r.len) { /* the disks' I/O limits */
        uint32_t limits = vmr_u32(&r);
        vmr_check(&r, limits == c->disk_count);
        for (uint32_t i = 0; i < limits && !r.failed; i++) {
            c->disks[i].iops = vmr_u64(&r);
            c->disks[i].bps = vmr_u64(&r);
        }
    }
    int rc = vmr_finish(&r);
    if (rc < 0)
        return vs_error_prefix(rc, "%s", name);
    if (c->cpus != f->vcpus || c->memory != f->memory)
        return vs_error(-EINVAL,
                        "%s: configuration (%u vCPUs, %llu bytes) disagrees with the header "
                        "(%u vCPUs, %llu bytes)",
                        name, c->cpus, (unsigned long long)c->memory, f->vcpus,
                        (unsigned long long)f->memory);
    if (!c->kernel || !*c->kernel)
        return vs_error(-EINVAL, "%s: configuration has no kernel", name);
    return 0;
}

/* ---- the file -------------------------------------------------------------------------------- */

int vmstate_parse(uint8_t *buf, size_t len, struct vmstate_file *f, const char *name)
{
    memset(f, 0, sizeof(*f));
    f->state = buf;
    struct header h;
    int rc = header_read(buf, len, &h, name);
    if (rc < 0)
        return rc;
    if (len - VMSTATE_HEADER_SIZE != h.state_len)
        return vs_error(-EINVAL, "%s: truncated (state is %zu of %llu bytes)", name,
                        len - VMSTATE_HEADER_SIZE, (unsigned long long)h.state_len);
    f->version = h.version;
    f->memory = h.memory;
    f->vcpus = h.vcpus;
    f->state_len = h.state_len;
    f->ram_offset = h.ram_offset;
    if (h.sections) {
        f->sections = calloc(h.sections, sizeof(*f->sections));
        if (!f->sections)
            return vs_error(-ENOMEM, "%s: out of memory", name);
    }
    struct vmstate_reader r;
    vmr_init(&r, buf + VMSTATE_HEADER_SIZE, (size_t)h.state_len, name);
    for (uint32_t i = 0; i < h.sections && !r.failed; i++) {
        struct vmstate_section *s = &f->sections[i];
        char *sname;
        struct vmstate_reader body;
        if (!vmr_str(&r, &sname))
            break;
        bool ok = sname && *sname && strlen(sname) < sizeof(s->name);
        if (ok)
            strcpy(s->name, sname);
        free(sname);
        if (!vmr_check(&r, ok) || !vmr_blob(&r, &body))
            break;
        s->data = body.p;
        s->len = body.len;
        f->section_count++;
    }
    if ((rc = vmr_finish(&r)) < 0)
        return rc;
    const struct vmstate_section *cfg = vmstate_find(f, "config", 0);
    if (!cfg)
        return vs_error(-EINVAL, "%s: no config section", name);
    return config_parse(f, cfg, name);
}

int vmstate_check_size(const struct vmstate_file *f, uint64_t file_size, const char *name)
{
    uint64_t want = f->ram_offset + f->memory;
    if (file_size != want)
        return vs_error(-EINVAL, "%s: %s (%llu bytes, a state with %llu MiB of RAM has %llu)", name,
                        file_size < want ? "truncated" : "trailing bytes",
                        (unsigned long long)file_size, (unsigned long long)(f->memory >> 20),
                        (unsigned long long)want);
    return 0;
}

const struct vmstate_section *vmstate_find(const struct vmstate_file *f, const char *name,
                                           unsigned nth)
{
    for (size_t i = 0; i < f->section_count; i++)
        if (strcmp(f->sections[i].name, name) == 0 && nth-- == 0)
            return &f->sections[i];
    return NULL;
}

void vmstate_file_free(struct vmstate_file *f)
{
    for (size_t i = 0; i < f->string_count; i++)
        free(f->strings[i]);
    free(f->strings);
    free(f->cfg.config.disks);
    free(f->cfg.config.nets);
    free(f->cfg.disk_sizes);
    free(f->sections);
    free(f->state);
    memset(f, 0, sizeof(*f));
}
