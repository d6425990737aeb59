/*
 * lib/vmm/snapshot.c — save a paused machine to one file and set a freshly built machine to what
 * the file holds (`save` over the API, `vessel-vmm --restore`).
 *
 * The idea: a machine rebuilt from the same configuration has the same devices in the same order
 * with the same PCI slots and BARs, so restoring is "overwrite the state of each piece": KVM's
 * VM-wide chips and clock, each vCPU's registers, each device's own section (devices write and
 * read their state themselves), and RAM. Devices are parked first — their worker threads finish
 * the request they are on and take no new one — so a virtqueue's whole state is its registers and
 * ring indices. RAM goes last in the file at a page-aligned offset, zero pages left as holes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm/machine.h"
#include "vmm/vmstate.h"

static const unsigned irqchip_ids[] = {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
                                       KVM_IRQCHIP_IOAPIC};

static int vm_state_save(struct machine *m, struct vmstate_writer *w)
{
    for (size_t i = 0; i < VS_ARRAY_SIZE(irqchip_ids); i++) {
        struct kvm_irqchip chip = {.chip_id = irqchip_ids[i]};
        if (ioctl(m->vm_fd, KVM_GET_IRQCHIP, &chip) < 0)
            return vs_error_errno(-errno, "KVM_GET_IRQCHIP %u", chip.chip_id);
        vmw_u32(w, sizeof(chip));
        vmw_bytes(w, &chip, sizeof(chip));
    }
    struct kvm_pit_state2 pit;
    if (ioctl(m->vm_fd, KVM_GET_PIT2, &pit) < 0)
        return vs_error_errno(-errno, "KVM_GET_PIT2");
    vmw_u32(w, sizeof(pit));
    vmw_bytes(w, &pit, sizeof(pit));
    struct kvm_clock_data clock = {0};
    if (ioctl(m->vm_fd, KVM_GET_CLOCK, &clock) < 0)
        return vs_error_errno(-errno, "KVM_GET_CLOCK");
    vmw_u64(w, clock.clock);
    return 0;
}

static bool page_is_zero(const uint8_t *p)
{
    const uint64_t *q = (const uint64_t *)p;
    for (size_t i = 0; i < GUEST_PAGE / 8; i++)
        if (q[i])
            return false;
    return true;
}

/* Guest RAM (the one mapping, low part then high part) at OFFSET in FD: runs of non-zero pages
 * are written, zero pages skipped so they stay holes. */
static int ram_save(struct machine *m, int fd, uint64_t offset, const char *name)
{
    uint64_t size = m->mmap_size;
    for (uint64_t at = 0; at < size;) {
        if (page_is_zero(m->mmap_base + at)) {
            at += GUEST_PAGE;
            continue;
        }
        uint64_t end = at + GUEST_PAGE;
        while (end < size && end - at < 64 * MIB && !page_is_zero(m->mmap_base + end))
            end += GUEST_PAGE;
        int rc = vs_pwrite_full(fd, m->mmap_base + at, end - at, offset + at);
        if (rc < 0)
            return vs_error_errno(rc, "%s: writing guest RAM", name);
        at = end;
    }
    if (ftruncate(fd, (off_t)(offset + size)) < 0)
        return vs_error_errno(-errno, "%s: setting the file size", name);
    return 0;
}

static void devices_park(struct machine *m, bool hold)
{
    for (size_t i = 0; i < m->device_count; i++)
        if (m->devices[i].persist && m->devices[i].persist->park)
            m->devices[i].persist->park(m->devices[i].persist_opaque, hold);
}

static int state_build(struct machine *m, struct vmstate_writer *w, uint32_t *sections)
{
    uint64_t *sizes = vs_calloc(m->config->disk_count + 1, sizeof(*sizes));
    if (!sizes)
        return -ENOMEM;
    for (size_t i = 0; i < m->config->disk_count; i++)
        sizes[i] = virtio_blk_disk_size(m, i);
    /* this save's id: vesseld restores a moved file only when it is the VM's latest save */
    uint8_t rnd[16];
    char save_id[33];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        free(sizes);
        return vs_error_errno(-errno, "getrandom");
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(save_id + 2 * i, 3, "%02x", rnd[i]);
    size_t mark = vmw_section_begin(w, "config");
    vmstate_config_write(w, m->config, sizes, m->boot.how, save_id);
    vmw_section_end(w, mark);
    free(sizes);
    mark = vmw_section_begin(w, "vm");
    int rc = vm_state_save(m, w);
    vmw_section_end(w, mark);
    *sections = 2;
    for (unsigned i = 0; i < m->vcpu_count && rc == 0; i++) {
        mark = vmw_section_begin(w, "vcpu");
        rc = vcpu_state_save(&m->vcpus[i], w);
        vmw_section_end(w, mark);
        ++*sections;
    }
    for (size_t i = 0; i < m->device_count && rc == 0; i++) {
        struct device *d = &m->devices[i];
        if (!d->persist)
            return vs_error(-ENOTSUP, "device %s cannot be saved", d->name);
        mark = vmw_section_begin(w, d->name);
        rc = d->persist->save(d->persist_opaque, w);
        vmw_section_end(w, mark);
        ++*sections;
    }
    if (rc == 0 && w->failed)
        rc = vs_error(-ENOMEM, "out of memory building the state");
    return rc;
}

int machine_save(struct machine *m, const char *path)
{
    devices_park(m, true);
    struct vmstate_writer w = {0};
    uint32_t sections = 0;
    int rc = state_build(m, &w, &sections);
    char *tmp = NULL;
    int fd = -1;
    if (rc == 0 && w.len > VMSTATE_MAX_STATE)
        rc = vs_error(-EFBIG, "%s: device state of %zu bytes is too large", path, w.len);
    if (rc == 0 && asprintf(&tmp, "%s.tmp", path) < 0) {
        tmp = NULL;
        rc = -ENOMEM;
    }
    if (rc == 0 && (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
        rc = vs_error_errno(-errno, "%s", tmp);
    if (rc == 0) {
        uint8_t header[VMSTATE_HEADER_SIZE];
        uint64_t ram_offset = VS_ALIGN_UP(VMSTATE_HEADER_SIZE + w.len, 4096);
        vmstate_header_write(header, m->mmap_size, m->vcpu_count, sections, w.len, ram_offset);
        if ((rc = vs_pwrite_full(fd, header, sizeof(header), 0)) < 0 ||
            (rc = vs_pwrite_full(fd, w.buf, w.len, VMSTATE_HEADER_SIZE)) < 0)
            rc = vs_error_errno(rc, "%s: writing the state", tmp);
        else if ((rc = ram_save(m, fd, ram_offset, tmp)) == 0 && fsync(fd) < 0)
            rc = vs_error_errno(-errno, "%s: fsync", tmp);
    }
    if (fd >= 0)
        close(fd);
    if (rc == 0 && rename(tmp, path) < 0)
        rc = vs_error_errno(-errno, "%s: rename to %s", tmp, path);
    if (rc < 0) {
        if (fd >= 0)
            unlink(tmp);
        devices_park(m, false); /* the VM goes on */
    }
    free(tmp);
    vmw_free(&w);
    return rc;
}

/* ---- restore --------------------------------------------------------------------------------- */

static int vm_state_load(struct machine *m, const struct vmstate_section *s, uint64_t *clock)
{
    struct vmstate_reader r;
    vmr_init(&r, s->data, s->len, "vm section");
    for (size_t i = 0; i < VS_ARRAY_SIZE(irqchip_ids); i++) {
        struct kvm_irqchip chip;
        if (!vmr_check(&r, vmr_u32(&r) == sizeof(chip)) || !vmr_bytes(&r, &chip, sizeof(chip)) ||
            !vmr_check(&r, chip.chip_id == irqchip_ids[i]))
            return -EINVAL;
        if (ioctl(m->vm_fd, KVM_SET_IRQCHIP, &chip) < 0)
            return vs_error_errno(-errno, "KVM_SET_IRQCHIP %u", chip.chip_id);
    }
    struct kvm_pit_state2 pit;
    if (!vmr_check(&r, vmr_u32(&r) == sizeof(pit)) || !vmr_bytes(&r, &pit, sizeof(pit)))
        return -EINVAL;
    if (ioctl(m->vm_fd, KVM_SET_PIT2, &pit) < 0)
        return vs_error_errno(-errno, "KVM_SET_PIT2");
    *clock = vmr_u64(&r);
    return vmr_finish(&r);
}

/* Read the file's data extents into guest RAM; holes stay untouched (zero, not even faulted). */
static int ram_load(struct machine *m, int fd, uint64_t offset, const char *name)
{
    uint64_t end = offset + m->mmap_size;
    for (uint64_t at = offset; at < end;) {
        off_t data = lseek(fd, (off_t)at, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            break; /* only holes left */
        uint64_t stop = end;
        if (data < 0) { /* no SEEK_DATA here: read it all */
            data = (off_t)at;
        } else {
            off_t hole = lseek(fd, data, SEEK_HOLE);
            if (hole > data && (uint64_t)hole < end)
                stop = (uint64_t)hole;
        }
        if ((uint64_t)data >= end)
            break;
        int rc = vs_pread_full(fd, m->mmap_base + ((uint64_t)data - offset), stop - (uint64_t)data,
                               (uint64_t)data);
        if (rc < 0)
            return vs_error_errno(rc, "%s: reading guest RAM", name);
        at = stop;
    }
    return 0;
}

int machine_restore(struct machine *m, const struct vmstate_file *f, int fd, const char *name)
{
    const struct vmstate_section *vm = vmstate_find(f, "vm", 0);
    if (!vm)
        return vs_error(-EINVAL, "%s: no vm section", name);
    uint64_t clock = 0;
    int rc = vm_state_load(m, vm, &clock);
    if (rc < 0)
        return vs_error_prefix(rc, "%s", name);
    for (unsigned i = 0; i < m->vcpu_count; i++) {
        const struct vmstate_section *s = vmstate_find(f, "vcpu", i);
        if (!s)
            return vs_error(-EINVAL, "%s: no state for vCPU %u", name, i);
        struct vmstate_reader r;
        vmr_init(&r, s->data, s->len, "vcpu section");
        if ((rc = vcpu_state_load(&m->vcpus[i], &r)) < 0)
            return vs_error_prefix(rc, "%s", name);
    }
    if ((rc = ram_load(m, fd, f->ram_offset, name)) < 0)
        return rc;
    for (size_t i = 0; i < m->device_count; i++) {
        struct device *d = &m->devices[i];
        unsigned nth = 0;
        for (size_t j = 0; j < i; j++)
            nth += strcmp(m->devices[j].name, d->name) == 0;
        const struct vmstate_section *s = vmstate_find(f, d->name, nth);
        if (!s || !d->persist)
            return vs_error(-EINVAL, "%s: no state for device %s", name, d->name);
        struct vmstate_reader r;
        char what[96];
        snprintf(what, sizeof(what), "%s section", d->name);
        vmr_init(&r, s->data, s->len, what);
        rc = d->persist->load(d->persist_opaque, &r);
        if (rc == 0)
            rc = vmr_finish(&r);
        if (rc < 0)
            return vs_error_prefix(rc, "%s", name);
    }
    struct kvm_clock_data data = {.clock = clock};
    if (ioctl(m->vm_fd, KVM_SET_CLOCK, &data) < 0)
        return vs_error_errno(-errno, "KVM_SET_CLOCK");
    return 0;
}
