/*
 * lib/vmm/pm.c — how a guest stops or resets the machine: the ACPI PM1a event and control blocks
 * and PM timer (as the FADT describes them), the fast-reset bit of port 0x92, and QEMU's
 * isa-debug-exit port 0xf4 for test guests. (The FADT's reset register, port 0xcf9, shares its
 * decode with PCI configuration and lives in pci.c.)
 *
 * Each path ends in machine_request_stop with the reason the caller turns into an exit code. The
 * power button is the fixed-feature event: PWRBTN_STS is set and, while the guest has it enabled,
 * the SCI line (IRQ 9, level) stays raised until the guest writes the status bit back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/machine.h"
#include "vmm/vmstate.h"

#define PM1_PWRBTN     (1u << 8)
#define PM1_CNT_SCI_EN 1u
#define PM1_CNT_SLP_EN (1u << 13)
#define PM_TIMER_HZ    3579545ULL

struct pm {
    struct machine *machine;
    pthread_mutex_t lock;
    uint16_t status, enable, control;
    uint64_t power_button_presses;
};

static uint64_t load_le(const uint8_t *d, unsigned size)
{
    uint64_t v = 0;
    memcpy(&v, d, size > 8 ? 8 : size);
    return v;
}

static void store_le(uint8_t *d, unsigned size, uint64_t v)
{
    memcpy(d, &v, size > 8 ? 8 : size);
}

static void pm_update_sci(struct pm *pm)
{
    machine_irq_line(pm->machine, IRQ_SCI, (pm->status & pm->enable) ? 1 : 0);
}

static void pm_evt_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    struct pm *pm = opaque;
    pthread_mutex_lock(&pm->lock);
    uint32_t reg = (uint32_t)pm->status | (uint32_t)pm->enable << 16;
    if (!is_write) {
        store_le(data, size,
                 (reg >> (8 * off)) & (size >= 4 ? 0xffffffffu : (1u << (8 * size)) - 1));
    } else {
        uint64_t v = load_le(data, size) << (8 * off);
        uint64_t mask = (size >= 4 ? 0xffffffffULL : ((1ULL << (8 * size)) - 1)) << (8 * off);
        if (mask & 0xffff)
            pm->status &= (uint16_t) ~(v & mask & 0xffff); /* write 1 to clear */
        if (mask & 0xffff0000)
            pm->enable = (uint16_t)((pm->enable & ~(mask >> 16)) | ((v & mask) >> 16));
        pm_update_sci(pm);
    }
    pthread_mutex_unlock(&pm->lock);
}

static void pm_cnt_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    struct pm *pm = opaque;
    if (!is_write) {
        pthread_mutex_lock(&pm->lock);
        store_le(data, size, (uint16_t)(pm->control | PM1_CNT_SCI_EN) >> (8 * off));
        pthread_mutex_unlock(&pm->lock);
        return;
    }
    uint16_t v = (uint16_t)(load_le(data, size) << (8 * off));
    pthread_mutex_lock(&pm->lock);
    pm->control = (uint16_t)((v & ~PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN);
    pthread_mutex_unlock(&pm->lock);
    unsigned type = (v >> 10) & 7;
    if ((v & PM1_CNT_SLP_EN) && type == ACPI_S5_TYPE)
        machine_request_stop(pm->machine, VMM_EXIT_POWEROFF, 0, "ACPI S5 (PM1a_CNT SLP_EN)");
}

static void pm_tmr_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    if (is_write)
        return;
    uint64_t ns = vs_now_ns();
    uint32_t ticks = (uint32_t)((unsigned __int128)ns * PM_TIMER_HZ / 1000000000ULL);
    store_le(data, size, (uint64_t)ticks >> (8 * off));
}

static void port92_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    struct pm *pm = opaque;
    if (!is_write) {
        memset(data, 0, size);
        data[0] = 0x02; /* A20 on */
        return;
    }
    if (data[0] & 0x01)
        machine_request_stop(pm->machine, VMM_EXIT_REBOOT, 0, "fast reset via port 0x92");
}

static void debug_exit_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    struct pm *pm = opaque;
    if (!is_write) {
        memset(data, 0xff, size);
        return;
    }
    char detail[64];
    snprintf(detail, sizeof(detail), "isa-debug-exit: 0x%x written to port 0xf4", data[0]);
    machine_request_stop(pm->machine, VMM_EXIT_DEBUG, data[0], detail);
}

void pm_power_button(struct machine *m)
{
    struct pm *pm = m->pm;
    pthread_mutex_lock(&pm->lock);
    pm->status |= PM1_PWRBTN;
    pm->power_button_presses++;
    pm_update_sci(pm);
    pthread_mutex_unlock(&pm->lock);
}

static void pm_destroy(void *opaque)
{
    struct pm *pm = opaque;
    pthread_mutex_destroy(&pm->lock);
    free(pm);
}

static int pm_save(void *opaque, struct vmstate_writer *w)
{
    struct pm *pm = opaque;
    pthread_mutex_lock(&pm->lock);
    vmw_u16(w, pm->status);
    vmw_u16(w, pm->enable);
    vmw_u16(w, pm->control);
    pthread_mutex_unlock(&pm->lock);
    return 0;
}

static int pm_load(void *opaque, struct vmstate_reader *r)
{
    struct pm *pm = opaque;
    uint16_t status = vmr_u16(r), enable = vmr_u16(r), control = vmr_u16(r);
    pthread_mutex_lock(&pm->lock);
    pm->status = status;
    pm->enable = enable;
    pm->control = (uint16_t)((control & ~PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN);
    pthread_mutex_unlock(&pm->lock);
    return r->failed ? -EINVAL : 0;
}

/* The PM timer needs nothing: it counts host time, which only moves forward. */
static const struct device_persist pm_persist = {NULL, pm_save, pm_load};

int pm_create(struct machine *m)
{
    struct pm *pm = vs_calloc(1, sizeof(*pm));
    if (!pm)
        return -ENOMEM;
    pm->machine = m;
    pm->control = PM1_CNT_SCI_EN;
    pthread_mutex_init(&pm->lock, NULL);
    int rc = machine_add_device(m, "pm", pm, pm_destroy, NULL);
    if (rc < 0) {
        pm_destroy(pm);
        return rc;
    }
    m->pm = pm;
    machine_device_persist(m, pm, &pm_persist, pm);
    if ((rc = bus_register(&m->pio, PORT_PM_EVT, 4, pm_evt_io, pm, "acpi-pm1a-evt")) < 0 ||
        (rc = bus_register(&m->pio, PORT_PM_CNT, 2, pm_cnt_io, pm, "acpi-pm1a-cnt")) < 0 ||
        (rc = bus_register(&m->pio, PORT_PM_TMR, 4, pm_tmr_io, pm, "acpi-pm-timer")) < 0 ||
        (rc = bus_register(&m->pio, 0x92, 1, port92_io, pm, "port92")) < 0 ||
        (rc = bus_register(&m->pio, PORT_DEBUG_EXIT, 4, debug_exit_io, pm, "isa-debug-exit")) < 0)
        return rc;
    return 0;
}
