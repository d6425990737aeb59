/*
 * lib/vmm/rtc.c — the CMOS real-time clock (MC146818) at ports 0x70/0x71.
 *
 * Time registers are computed from the host's clock on every read (UTC, in BCD or binary and 12-
 * or 24-hour form as register B asks), so the clock needs no timer thread; the update-in-progress
 * bit never shows. A guest that sets the clock moves an offset kept here, not the host clock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vmm/machine.h"
#include "vmm/vmstate.h"

struct rtc {
    pthread_mutex_t lock;
    uint8_t index;
    uint8_t cmos[128];
    int64_t offset; /* seconds the guest moved the clock */
};

static uint8_t to_reg(const struct rtc *r, int v)
{
    if (r->cmos[0x0b] & 0x04)
        return (uint8_t)v;
    return (uint8_t)(((v / 10) << 4) | (v % 10));
}

static int from_reg(const struct rtc *r, uint8_t v)
{
    if (r->cmos[0x0b] & 0x04)
        return v;
    return (v >> 4) * 10 + (v & 0xf);
}

static void current_tm(const struct rtc *r, struct tm *tm)
{
    time_t t = time(NULL) + (time_t)r->offset;
    gmtime_r(&t, tm);
}

static uint8_t rtc_read(struct rtc *r, uint8_t idx)
{
    struct tm tm;
    current_tm(r, &tm);
    switch (idx) {
    case 0x00:
        return to_reg(r, tm.tm_sec);
    case 0x02:
        return to_reg(r, tm.tm_min);
    case 0x04:
        if (r->cmos[0x0b] & 0x02)
            return to_reg(r, tm.tm_hour);
        return (uint8_t)(to_reg(r, tm.tm_hour % 12 ? tm.tm_hour % 12 : 12) |
                         (tm.tm_hour >= 12 ? 0x80 : 0));
    case 0x06:
        return to_reg(r, tm.tm_wday + 1);
    case 0x07:
        return to_reg(r, tm.tm_mday);
    case 0x08:
        return to_reg(r, tm.tm_mon + 1);
    case 0x09:
        return to_reg(r, tm.tm_year % 100);
    case 0x32:
        return to_reg(r, (tm.tm_year + 1900) / 100);
    case 0x0a:
        return r->cmos[0x0a] & 0x7f; /* never "update in progress" */
    case 0x0c:
        return 0;
    case 0x0d:
        return 0x80; /* battery good */
    default:
        return r->cmos[idx & 0x7f];
    }
}

static void rtc_write(struct rtc *r, uint8_t idx, uint8_t v)
{
    static const uint8_t fields[] = {0x00, 0x02, 0x04, 0x07, 0x08, 0x09};
    for (size_t i = 0; i < sizeof(fields); i++) {
        if (idx != fields[i])
            continue;
        struct tm tm;
        current_tm(r, &tm);
        int val = from_reg(r, idx == 0x04 ? (uint8_t)(v & 0x7f) : v);
        switch (idx) {
        case 0x00:
            tm.tm_sec = val;
            break;
        case 0x02:
            tm.tm_min = val;
            break;
        case 0x04:
            tm.tm_hour = val;
            break;
        case 0x07:
            tm.tm_mday = val;
            break;
        case 0x08:
            tm.tm_mon = val - 1;
            break;
        case 0x09:
            tm.tm_year = val + 100;
            break;
        }
        time_t target = timegm(&tm);
        if (target != (time_t)-1)
            r->offset = (int64_t)target - (int64_t)time(NULL);
        return;
    }
    if (idx == 0x0c || idx == 0x0d)
        return;
    r->cmos[idx & 0x7f] = v;
}

static void rtc_io(void *opaque, uint64_t off, uint8_t *data, unsigned size, bool is_write)
{
    struct rtc *r = opaque;
    pthread_mutex_lock(&r->lock);
    if (off == 0) {
        if (is_write)
            r->index = data[0] & 0x7f;
        else
            data[0] = 0xff;
    } else if (is_write) {
        rtc_write(r, r->index, data[0]);
    } else {
        data[0] = rtc_read(r, r->index);
    }
    for (unsigned i = 1; i < size && !is_write; i++)
        data[i] = 0xff;
    pthread_mutex_unlock(&r->lock);
}

static void rtc_destroy(void *opaque)
{
    struct rtc *r = opaque;
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* The time registers follow the host clock plus the guest's offset, so the offset is the state. */
static int rtc_save(void *opaque, struct vmstate_writer *w)
{
    struct rtc *r = opaque;
    pthread_mutex_lock(&r->lock);
    vmw_u8(w, r->index);
    vmw_bytes(w, r->cmos, sizeof(r->cmos));
    vmw_u64(w, (uint64_t)r->offset);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static int rtc_load(void *opaque, struct vmstate_reader *in)
{
    struct rtc *r = opaque;
    uint8_t index = vmr_u8(in);
    uint8_t cmos[128];
    vmr_bytes(in, cmos, sizeof(cmos));
    int64_t offset = (int64_t)vmr_u64(in);
    if (in->failed)
        return -EINVAL;
    pthread_mutex_lock(&r->lock);
    r->index = index & 0x7f;
    memcpy(r->cmos, cmos, sizeof(cmos));
    r->offset = offset;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static const struct device_persist rtc_persist = {NULL, rtc_save, rtc_load};

int rtc_create(struct machine *m)
{
    struct rtc *r = vs_calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    pthread_mutex_init(&r->lock, NULL);
    r->cmos[0x0a] = 0x26; /* 32.768 kHz divider, 1024 Hz rate */
    r->cmos[0x0b] = 0x02; /* 24-hour, BCD */
    int rc = machine_add_device(m, "rtc", r, rtc_destroy, NULL);
    if (rc < 0) {
        rtc_destroy(r);
        return rc;
    }
    machine_device_persist(m, r, &rtc_persist, r);
    return bus_register(&m->pio, 0x70, 2, rtc_io, r, "cmos-rtc");
}
