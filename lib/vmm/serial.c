/*
 * lib/vmm/serial.c — a 16550A UART on COM1 (0x3f8, IRQ 4) wired to the console.
 *
 * Transmission is instantaneous: a byte written to THR goes straight to the console and the
 * transmitter is empty again at once, so LSR always shows THRE|TEMT and a polling guest never
 * waits. The interrupt output is a level computed from IER and the pending conditions after every
 * register access (RX data, THR-empty until IIR is read); loopback mode reflects MCR into MSR
 * the way Linux's autoconfig probes for a real 16550A.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/machine.h"
#include "vmm/vmstate.h"

#define RX_SIZE 4096

struct serial {
    struct machine *machine;
    struct console *console;
    pthread_mutex_t lock;
    uint8_t ier, lcr, mcr, scr, fcr, dll, dlm;
    bool thri_pending;
    int irq_level;
    uint8_t rx[RX_SIZE];
    size_t rx_head, rx_count;
    uint64_t tx_bytes, rx_bytes, rx_dropped;
};

#define IER_RDI  0x01
#define IER_THRI 0x02
#define LCR_DLAB 0x80
#define MCR_LOOP 0x10
#define LSR_DR   0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

static void serial_update_irq(struct serial *s)
{
    int level = ((s->ier & IER_RDI) && s->rx_count) || ((s->ier & IER_THRI) && s->thri_pending);
    if (level != s->irq_level) {
        s->irq_level = level;
        machine_irq_line(s->machine, IRQ_COM1, level);
    }
}

static void rx_push(struct serial *s, uint8_t b)
{
    if (s->rx_count == RX_SIZE) {
        s->rx_dropped++;
        return;
    }
    s->rx[(s->rx_head + s->rx_count) % RX_SIZE] = b;
    s->rx_count++;
    s->rx_bytes++;
}

static void serial_tx(struct serial *s, uint8_t b)
{
    struct machine *m = s->machine;
    if (s->mcr & MCR_LOOP) {
        rx_push(s, b);
        return;
    }
    uint64_t zero = 0;
    atomic_compare_exchange_strong(&m->first_output_ns, &zero, vs_now_ns());
    s->tx_bytes++;
    if (s->console)
        console_write(s->console, &b, 1);
}

static uint8_t serial_read(struct serial *s, unsigned reg)
{
    switch (reg) {
    case 0:
        if (s->lcr & LCR_DLAB)
            return s->dll;
        if (s->rx_count) {
            uint8_t b = s->rx[s->rx_head];
            s->rx_head = (s->rx_head + 1) % RX_SIZE;
            s->rx_count--;
            return b;
        }
        return 0;
    case 1:
        return (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
    case 2: {
        uint8_t fifo = (s->fcr & 1) ? 0xc0 : 0;
        if ((s->ier & IER_RDI) && s->rx_count)
            return fifo | 0x04;
        if ((s->ier & IER_THRI) && s->thri_pending) {
            s->thri_pending = false; /* reading IIR acknowledges THR empty */
            return fifo | 0x02;
        }
        return fifo | 0x01;
    }
    case 3:
        return s->lcr;
    case 4:
        return s->mcr;
    case 5:
        return LSR_THRE | LSR_TEMT | (s->rx_count ? LSR_DR : 0);
    case 6:
        if (s->mcr & MCR_LOOP) /* DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD */
            return (uint8_t)(((s->mcr & 0x01) << 5) | ((s->mcr & 0x02) << 3) |
                             ((s->mcr & 0x04) << 4) | ((s->mcr & 0x08) << 4));
        return 0xb0; /* DCD, DSR, CTS */
    default:
        return s->scr;
    }
}

static void serial_write(struct serial *s, unsigned reg, uint8_t v)
{
    switch (reg) {
    case 0:
        if (s->lcr & LCR_DLAB) {
            s->dll = v;
        } else {
            serial_tx(s, v);
            s->thri_pending = true;
        }
        break;
    case 1:
        if (s->lcr & LCR_DLAB) {
            s->dlm = v;
        } else {
            if ((v & IER_THRI) && !(s->ier & IER_THRI))
                s->thri_pending = true;
            s->ier = v & 0x0f;
        }
        break;
    case 2:
        s->fcr = v & 0xc9;
        if (v & 0x02) { /* clear RX FIFO */
            s->rx_head = s->rx_count = 0;
        }
        break;
    case 3:
        s->lcr = v;
        break;
    case 4:
        s->mcr = v & 0x1f;
        break;
    case 7:
        s->scr = v;
        break;
    default:
        break;
    }
}

static void serial_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    struct serial *s = opaque;
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < size && off + i < 8; i++) {
        if (is_write)
            serial_write(s, (unsigned)off + i, data[i]);
        else
            data[i] = serial_read(s, (unsigned)off + i);
    }
    serial_update_irq(s);
    pthread_mutex_unlock(&s->lock);
}

static void serial_input(void *opaque, const uint8_t *buf, size_t len)
{
    struct serial *s = opaque;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < len; i++)
        rx_push(s, buf[i]);
    serial_update_irq(s);
    pthread_mutex_unlock(&s->lock);
}

static void serial_destroy(void *opaque)
{
    struct serial *s = opaque;
    if (s->console)
        console_set_input(s->console, NULL, NULL);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static void serial_stats(void *opaque, void *json)
{
    struct serial *s = opaque;
    json_stats_add(json, "serial", "tx_bytes", s->tx_bytes, "rx_bytes", s->rx_bytes, "rx_dropped",
                   s->rx_dropped, NULL);
}

static void serial_park(void *opaque, bool hold)
{
    (void)opaque;
    (void)hold; /* no worker: every access runs on a vCPU, and they are paused */
}

static int serial_save(void *opaque, struct vmstate_writer *w)
{
    struct serial *s = opaque;
    pthread_mutex_lock(&s->lock);
    uint8_t regs[7] = {s->ier, s->lcr, s->mcr, s->scr, s->fcr, s->dll, s->dlm};
    vmw_bytes(w, regs, sizeof(regs));
    vmw_u8(w, s->thri_pending);
    vmw_u8(w, (uint8_t)s->irq_level);
    vmw_u32(w, (uint32_t)s->rx_count);
    for (size_t i = 0; i < s->rx_count; i++)
        vmw_u8(w, s->rx[(s->rx_head + i) % RX_SIZE]);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int serial_load(void *opaque, struct vmstate_reader *r)
{
    struct serial *s = opaque;
    uint8_t regs[7];
    vmr_bytes(r, regs, sizeof(regs));
    bool thri = vmr_bool(r), level = vmr_bool(r);
    uint32_t n = vmr_u32(r);
    if (!vmr_check(r, n <= RX_SIZE))
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    vmr_bytes(r, s->rx, n);
    s->rx_head = 0;
    s->rx_count = n;
    s->ier = regs[0] & 0x0f;
    s->lcr = regs[1];
    s->mcr = regs[2] & 0x1f;
    s->scr = regs[3];
    s->fcr = regs[4] & 0xc9;
    s->dll = regs[5];
    s->dlm = regs[6];
    s->thri_pending = thri;
    s->irq_level = level; /* the line itself is in the restored irqchip */
    pthread_mutex_unlock(&s->lock);
    return r->failed ? -EINVAL : 0;
}

static const struct device_persist serial_persist = {serial_park, serial_save, serial_load};

int serial_create(struct machine *m, struct console *console)
{
    struct serial *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->machine = m;
    s->console = console;
    s->dll = 12; /* 9600 baud */
    pthread_mutex_init(&s->lock, NULL);
    int rc = machine_add_device(m, "serial", s, serial_destroy, serial_stats);
    if (rc < 0) {
        serial_destroy(s);
        return rc;
    }
    m->serial = s;
    machine_device_persist(m, s, &serial_persist, s);
    if (console)
        console_set_input(console, serial_input, s);
    return bus_register(&m->pio, PORT_COM1, 8, serial_io, s, "com1");
}
