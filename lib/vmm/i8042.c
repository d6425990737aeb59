/*
 * lib/vmm/i8042.c — the PS/2 keyboard controller, enough for what guests use it for: probing,
 * the controller reset line (command 0xfe, or output-port bit 0) that reboots the machine, and a
 * keyboard that acknowledges commands and can type ctrl-alt-del.
 *
 * A small output queue models the controller's output buffer: each byte a command or the keyboard
 * produces is queued and raises IRQ 1 while the command byte enables it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/machine.h"
#include "vmm/vmstate.h"

#define STATUS_OBF  0x01
#define STATUS_SYS  0x04
#define STATUS_CMD  0x08
#define CTR_KBD_INT 0x01

struct i8042 {
    struct machine *machine;
    pthread_mutex_t lock;
    uint8_t ctr;     /* command byte */
    uint8_t pending; /* command waiting for its data byte (0 = none) */
    uint8_t last_was_cmd;
    uint8_t queue[32];
    unsigned head, count;
    int irq_level;
};

static void queue_put(struct i8042 *k, uint8_t b)
{
    if (k->count < sizeof(k->queue)) {
        k->queue[(k->head + k->count) % sizeof(k->queue)] = b;
        k->count++;
    }
}

static void update_irq(struct i8042 *k)
{
    int level = k->count && (k->ctr & CTR_KBD_INT);
    if (level != k->irq_level) {
        k->irq_level = level;
        machine_irq_line(k->machine, 1, level);
    }
}

static void reset_machine(struct i8042 *k)
{
    machine_request_stop(k->machine, VMM_EXIT_REBOOT, 0, "reset via the i8042 controller");
}

static void keyboard_command(struct i8042 *k, uint8_t v)
{
    queue_put(k, 0xfa); /* ACK */
    if (v == 0xff) {
        queue_put(k, 0xaa); /* self-test passed */
    } else if (v == 0xf2) {
        queue_put(k, 0xab);
        queue_put(k, 0x83);
    }
}

static void controller_command(struct i8042 *k, uint8_t v)
{
    switch (v) {
    case 0x20:
        queue_put(k, k->ctr);
        break;
    case 0x60: /* write command byte */
    case 0xd1: /* write output port */
    case 0xd2: /* write keyboard output buffer */
    case 0xd3: /* write aux output buffer */
    case 0xd4: /* write to aux device */
        k->pending = v;
        break;
    case 0xa7:
        k->ctr |= 0x20;
        break;
    case 0xa8:
        k->ctr &= (uint8_t)~0x20;
        break;
    case 0xa9: /* aux interface test: no aux device wired, report a clock line stuck */
        queue_put(k, 0x01);
        break;
    case 0xaa:
        queue_put(k, 0x55);
        break;
    case 0xab:
        queue_put(k, 0x00);
        break;
    case 0xad:
        k->ctr |= 0x10;
        break;
    case 0xae:
        k->ctr &= (uint8_t)~0x10;
        break;
    case 0xfe:
        reset_machine(k);
        break;
    default:
        break;
    }
}

static void i8042_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write,
                     bool is_status_port)
{
    struct i8042 *k = opaque;
    pthread_mutex_lock(&k->lock);
    if (!is_write) {
        memset(data, 0, size);
        if (is_status_port) {
            data[0] = (uint8_t)((k->count ? STATUS_OBF : 0) | STATUS_SYS |
                                (k->last_was_cmd ? STATUS_CMD : 0));
        } else if (k->count) {
            data[0] = k->queue[k->head];
            k->head = (k->head + 1) % sizeof(k->queue);
            k->count--;
        }
    } else if (is_status_port) {
        k->last_was_cmd = 1;
        controller_command(k, data[0]);
    } else {
        k->last_was_cmd = 0;
        uint8_t cmd = k->pending;
        k->pending = 0;
        switch (cmd) {
        case 0x60:
            k->ctr = data[0];
            break;
        case 0xd1:
            if (!(data[0] & 1))
                reset_machine(k);
            break;
        case 0xd2:
            queue_put(k, data[0]);
            break;
        case 0xd3:
        case 0xd4:
            break; /* no aux device */
        default:
            keyboard_command(k, data[0]);
        }
    }
    update_irq(k);
    pthread_mutex_unlock(&k->lock);
}

static void data_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    i8042_io(opaque, off, data, size, is_write, false);
}

static void status_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    i8042_io(opaque, off, data, size, is_write, true);
}

void i8042_ctrl_alt_del(struct machine *m)
{
    static const uint8_t keys[] = {0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d};
    struct i8042 *k = m->i8042;
    pthread_mutex_lock(&k->lock);
    for (size_t i = 0; i < sizeof(keys); i++)
        queue_put(k, keys[i]);
    update_irq(k);
    pthread_mutex_unlock(&k->lock);
}

static void i8042_destroy(void *opaque)
{
    struct i8042 *k = opaque;
    pthread_mutex_destroy(&k->lock);
    free(k);
}

static int i8042_save(void *opaque, struct vmstate_writer *w)
{
    struct i8042 *k = opaque;
    pthread_mutex_lock(&k->lock);
    vmw_u8(w, k->ctr);
    vmw_u8(w, k->pending);
    vmw_u8(w, k->last_was_cmd);
    vmw_u8(w, (uint8_t)k->irq_level);
    vmw_u8(w, (uint8_t)k->count);
    for (unsigned i = 0; i < k->count; i++)
        vmw_u8(w, k->queue[(k->head + i) % sizeof(k->queue)]);
    pthread_mutex_unlock(&k->lock);
    return 0;
}

static int i8042_load(void *opaque, struct vmstate_reader *r)
{
    struct i8042 *k = opaque;
    uint8_t ctr = vmr_u8(r), pending = vmr_u8(r);
    bool last = vmr_bool(r), level = vmr_bool(r);
    uint8_t count = vmr_u8(r);
    if (!vmr_check(r, count <= sizeof(k->queue)))
        return -EINVAL;
    pthread_mutex_lock(&k->lock);
    vmr_bytes(r, k->queue, count);
    k->head = 0;
    k->count = count;
    k->ctr = ctr;
    k->pending = pending;
    k->last_was_cmd = last;
    k->irq_level = level;
    pthread_mutex_unlock(&k->lock);
    return r->failed ? -EINVAL : 0;
}

static const struct device_persist i8042_persist = {NULL, i8042_save, i8042_load};

int i8042_create(struct machine *m)
{
    struct i8042 *k = vs_calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->machine = m;
    k->ctr = 0x45; /* keyboard interrupt, system flag, translation */
    pthread_mutex_init(&k->lock, NULL);
    int rc = machine_add_device(m, "i8042", k, i8042_destroy, NULL);
    if (rc < 0) {
        i8042_destroy(k);
        return rc;
    }
    m->i8042 = k;
    machine_device_persist(m, k, &i8042_persist, k);
    if ((rc = bus_register(&m->pio, 0x60, 1, data_io, k, "i8042-data")) < 0)
        return rc;
    return bus_register(&m->pio, 0x64, 1, status_io, k, "i8042-cmd");
}
