/*
 * tests/fuzz/fuzz-vmstate.c — libFuzzer target for the saved-VM state file as `vessel-vmm
 * --restore` reads it before any KVM call: the header, the section directory, the machine
 * configuration, and the state loaders of the devices that need no KVM to exist — serial, ACPI
 * PM, i8042, RTC, the PCI host bridge and a virtio-rng behind the virtio-pci transport (PCI config
 * space, MSI-X table, queue registers checked against fake guest RAM).
 *
 * The one idea: the devices are built once on a machine with no VM (vm_fd -1: interrupts and
 * ioeventfds just fail), then every input's sections are fed to the same loaders restore uses,
 * so a length, index or address in the file can only ever be refused, never followed.
 * The vCPU and VM-wide sections are raw KVM structures handed to the kernel and are not here.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/machine.h"
#include "vmm/vmstate.h"

#define RAM_SIZE (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void quiet(const char *msg)
{
    (void)msg;
}

static struct machine *fuzz_machine(void)
{
    static struct machine *m;
    static uint8_t *ram;
    if (m)
        return m;
    vs_warn_set_handler(quiet);
    m = calloc(1, sizeof(*m));
    ram = calloc(1, RAM_SIZE);
    if (!m || !ram)
        abort();
    m->kvm_fd = m->vm_fd = -1;
    m->mem.regions[0] = (struct mem_region){0, RAM_SIZE, ram};
    m->mem.count = 1;
    m->mem.ram_size = RAM_SIZE;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    if (bus_init(&m->pio, "port I/O") < 0 || bus_init(&m->mmio, "MMIO") < 0 ||
        serial_create(m, NULL) < 0 || pm_create(m) < 0 || i8042_create(m) < 0 ||
        rtc_create(m) < 0 || pci_create(m) < 0 || virtio_rng_create(m) < 0)
        abort();
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct machine *m = fuzz_machine();
    uint64_t state_len;
    if (vmstate_header_parse(data, size, &state_len, "fuzz.save") < 0)
        return 0;
    /* The state part is what restore reads into memory; the rest of the input stands for RAM. */
    size_t len = (size_t)VS_MIN((uint64_t)size, VMSTATE_HEADER_SIZE + state_len);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, len);
    struct vmstate_file f;
    if (vmstate_parse(buf, len, &f, "fuzz.save") == 0) {
        vmstate_check_size(&f, size, "fuzz.save");
        for (size_t i = 0; i < m->device_count; i++) {
            struct device *d = &m->devices[i];
            const struct vmstate_section *s = vmstate_find(&f, d->name, 0);
            if (!s || !d->persist)
                continue;
            struct vmstate_reader r;
            vmr_init(&r, s->data, s->len, d->name);
            if (d->persist->load(d->persist_opaque, &r) == 0)
                vmr_finish(&r);
        }
    }
    vmstate_file_free(&f);
    return 0;
}
