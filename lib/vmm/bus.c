/*
 * lib/vmm/bus.c — address-range dispatch for port I/O and MMIO exits.
 *
 * A bus is a sorted array of non-overlapping ranges, each owned by one device. Lookups (every
 * exit) take a read lock and binary-search; registration (setup, PCI BAR moves) takes the write
 * lock. The handler runs under the read lock, so a device may not register ranges from inside its
 * own handler on the same bus — PCI defers BAR moves to after the config write returns.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/machine.h"

int bus_init(struct bus *bus, const char *name)
{
    memset(bus, 0, sizeof(*bus));
    bus->name = name;
    if (pthread_rwlock_init(&bus->lock, NULL) != 0)
        return vs_error(-ENOMEM, "%s bus: cannot create lock", name);
    return 0;
}

void bus_destroy(struct bus *bus)
{
    free(bus->ranges);
    bus->ranges = NULL;
    bus->count = bus->cap = 0;
    pthread_rwlock_destroy(&bus->lock);
}

int bus_register(struct bus *bus, uint64_t base, uint64_t len, bus_handler_fn fn, void *opaque,
                 const char *name)
{
    if (len == 0 || base + len < base)
        return vs_error(-EINVAL, "%s bus: %s: empty or wrapping range 0x%llx+0x%llx", bus->name,
                        name, (unsigned long long)base, (unsigned long long)len);
    pthread_rwlock_wrlock(&bus->lock);
    size_t pos = 0;
    while (pos < bus->count && bus->ranges[pos].base < base)
        pos++;
    const struct bus_range *prev = pos ? &bus->ranges[pos - 1] : NULL;
    const struct bus_range *next = pos < bus->count ? &bus->ranges[pos] : NULL;
    if ((prev && prev->base + prev->len > base) || (next && base + len > next->base)) {
        const struct bus_range *o = (prev && prev->base + prev->len > base) ? prev : next;
        pthread_rwlock_unlock(&bus->lock);
        return vs_error(-EBUSY, "%s bus: %s at 0x%llx overlaps %s at 0x%llx", bus->name, name,
                        (unsigned long long)base, o->name, (unsigned long long)o->base);
    }
    if (bus->count == bus->cap) {
        size_t cap = bus->cap ? bus->cap * 2 : 16;
        struct bus_range *r = realloc(bus->ranges, cap * sizeof(*r));
        if (!r) {
            pthread_rwlock_unlock(&bus->lock);
            return vs_error(-ENOMEM, "%s bus: out of memory", bus->name);
        }
        bus->ranges = r;
        bus->cap = cap;
    }
    memmove(&bus->ranges[pos + 1], &bus->ranges[pos], (bus->count - pos) * sizeof(*bus->ranges));
    bus->ranges[pos] = (struct bus_range){base, len, fn, opaque, name};
    bus->count++;
    pthread_rwlock_unlock(&bus->lock);
    return 0;
}

void bus_unregister(struct bus *bus, uint64_t base, void *opaque)
{
    pthread_rwlock_wrlock(&bus->lock);
    for (size_t i = 0; i < bus->count; i++) {
        if (bus->ranges[i].base == base && bus->ranges[i].opaque == opaque) {
            memmove(&bus->ranges[i], &bus->ranges[i + 1],
                    (bus->count - i - 1) * sizeof(*bus->ranges));
            bus->count--;
            break;
        }
    }
    pthread_rwlock_unlock(&bus->lock);
}

bool bus_dispatch(struct bus *bus, uint64_t addr, uint8_t *data, unsigned size, bool is_write)
{
    pthread_rwlock_rdlock(&bus->lock);
    size_t lo = 0, hi = bus->count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (bus->ranges[mid].base <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0) {
        const struct bus_range *r = &bus->ranges[lo - 1];
        if (addr - r->base < r->len) {
            r->fn(r->opaque, addr - r->base, data, size, is_write);
            pthread_rwlock_unlock(&bus->lock);
            return true;
        }
    }
    pthread_rwlock_unlock(&bus->lock);
    if (!is_write)
        memset(data, 0xff, size);
    return false;
}
