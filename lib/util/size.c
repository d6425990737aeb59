/*
 * lib/util/size.c — sizes as users type them ("64k", "1.5G", "4T") and as qemu-img prints them
 * ("1 GiB", "192 KiB"). All units are binary, as in qemu-img.
 */
#include <ctype.h>
#include <math.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vessel/util.h"

static int size_unit_shift(char c)
{
    switch (tolower((unsigned char)c)) {
    case 'b':
        return 0;
    case 'k':
        return 10;
    case 'm':
        return 20;
    case 'g':
        return 30;
    case 't':
        return 40;
    case 'p':
        return 50;
    case 'e':
        return 60;
    default:
        return -1;
    }
}

int vs_parse_size(const char *text, uint64_t *out)
{
    if (!text || !*text)
        return vs_error(-EINVAL, "empty size");
    const char *p = text;
    if (!isdigit((unsigned char)*p) && *p != '.')
        return vs_error(-EINVAL, "invalid size '%s'", text);
    char *end;
    errno = 0;
    unsigned long long whole = strtoull(p, &end, 10);
    if (errno)
        return vs_error(-EINVAL, "size '%s' is too large", text);
    double frac = 0;
    bool has_frac = false;
    if (*end == '.') {
        const char *f = end + 1;
        double scale = 0.1;
        if (!isdigit((unsigned char)*f))
            return vs_error(-EINVAL, "invalid size '%s'", text);
        while (isdigit((unsigned char)*f)) {
            frac += (*f - '0') * scale;
            scale /= 10;
            f++;
        }
        end = (char *)f;
        has_frac = true;
    }
    int shift = 0;
    if (*end) {
        shift = size_unit_shift(*end);
        if (shift < 0)
            return vs_error(-EINVAL, "invalid size '%s': unknown unit '%c' (use k, M, G, T, P, E)",
                            text, *end);
        end++;
        if (shift > 0 && (*end == 'i' || *end == 'I'))
            end++;
        if (shift > 0 && (*end == 'b' || *end == 'B'))
            end++;
        if (*end)
            return vs_error(-EINVAL, "invalid size '%s': trailing '%s'", text, end);
    }
    if (has_frac && shift == 0 && frac != 0)
        return vs_error(-EINVAL, "invalid size '%s': fractional bytes", text);
    if (shift > 0 && whole > (UINT64_MAX >> shift))
        return vs_error(-EINVAL, "size '%s' is too large", text);
    uint64_t value = (uint64_t)whole << shift;
    if (has_frac) {
        double extra = frac * (double)(1ULL << (shift ? shift : 0));
        if ((double)value + extra >= 18446744073709551615.0)
            return vs_error(-EINVAL, "size '%s' is too large", text);
        value += (uint64_t)extra;
    }
    *out = value;
    return 0;
}

void vs_format_size(uint64_t bytes, char *buf, size_t len)
{
    /* qemu-img's rule: pick the unit so the number is below 1000 (not 1024), then print three
     * significant digits: 1024000 bytes is "0.977 MiB", 1 GiB is "1 GiB". */
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int exponent;
    frexp((double)bytes / (1000.0 / 1024.0), &exponent);
    int u = (exponent - 1) / 10;
    if (u < 0)
        u = 0;
    if (u > 6)
        u = 6;
    double value = (double)bytes / (double)(1ULL << (u * 10));
    snprintf(buf, len, "%0.3g %s", value, units[u]);
}
