/*
 * lib/net/mac.c — guest MAC addresses: parse, format, validate, and allocate under vessel's
 * prefix 52:56:65 (locally administered, unicast).
 *
 * The idea: an allocated MAC is drawn at random (24 bits below the prefix) and checked against
 * everything that could clash on this host — the caller's list (MACs already given to NICs of
 * any network, reservations) and every interface's address, including the fe:… host side of
 * taps — so two NICs never share one. Once allocated it is stored with the NIC, never recomputed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "vessel/net.h"
#include "vessel/util.h"

int vs_mac_parse(const char *text, struct vs_mac *out)
{
    unsigned v[6];
    char sep1, sep2, sep3, sep4, sep5;
    int used = 0;
    if (!text ||
        sscanf(text, "%2x%c%2x%c%2x%c%2x%c%2x%c%2x%n", &v[0], &sep1, &v[1], &sep2, &v[2], &sep3,
               &v[3], &sep4, &v[4], &sep5, &v[5], &used) != 11 ||
        text[used] != '\0' || used != 17)
        return vs_error(-EINVAL, "'%s': not a MAC address like 52:56:65:00:00:01",
                        text ? text : "");
    char seps[5] = {sep1, sep2, sep3, sep4, sep5};
    for (int i = 0; i < 5; i++)
        if (seps[i] != seps[0] || (seps[i] != ':' && seps[i] != '-'))
            return vs_error(-EINVAL, "'%s': not a MAC address like 52:56:65:00:00:01", text);
    struct vs_mac m;
    for (int i = 0; i < 6; i++)
        m.b[i] = (uint8_t)v[i];
    int rc = vs_mac_validate(&m);
    if (rc < 0)
        return rc;
    *out = m;
    return 0;
}

char *vs_mac_format(const struct vs_mac *mac, char *buf)
{
    snprintf(buf, 18, "%02x:%02x:%02x:%02x:%02x:%02x", mac->b[0], mac->b[1], mac->b[2], mac->b[3],
             mac->b[4], mac->b[5]);
    return buf;
}

bool vs_mac_equal(const struct vs_mac *a, const struct vs_mac *b)
{
    return memcmp(a->b, b->b, 6) == 0;
}

int vs_mac_validate(const struct vs_mac *mac)
{
    char s[18];
    if (mac->b[0] & 1)
        return vs_error(-EINVAL, "MAC %s is a multicast address; a NIC needs a unicast one",
                        vs_mac_format(mac, s));
    static const uint8_t zero[6];
    if (!memcmp(mac->b, zero, 6))
        return vs_error(-EINVAL, "MAC 00:00:00:00:00:00 is not a usable NIC address");
    return 0;
}

void vs_mac_tap_host(const struct vs_mac *guest, struct vs_mac *out)
{
    *out = *guest;
    out->b[0] = 0xfe;
}

static bool mac_in(const struct vs_mac *m, const struct vs_mac *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (vs_mac_equal(m, &list[i]))
            return true;
    return false;
}

int vs_mac_allocate(const struct vs_mac *taken, size_t n_taken, struct vs_mac *out)
{
    struct vs_link *links;
    size_t n_links;
    int rc = vs_link_list(&links, &n_links);
    if (rc < 0)
        return rc;
    for (int attempt = 0; attempt < 64; attempt++) {
        uint8_t r[3];
        if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
            free(links);
            return vs_error_errno(-errno, "MAC allocation: getrandom");
        }
        struct vs_mac m = {{VS_MAC_PREFIX0, VS_MAC_PREFIX1, VS_MAC_PREFIX2, r[0], r[1], r[2]}};
        if (mac_in(&m, taken, n_taken))
            continue;
        struct vs_mac host;
        vs_mac_tap_host(&m, &host);
        bool clash = false;
        for (size_t i = 0; i < n_links && !clash; i++)
            clash = links[i].has_mac &&
                    (vs_mac_equal(&links[i].mac, &m) || vs_mac_equal(&links[i].mac, &host));
        if (clash)
            continue;
        free(links);
        *out = m;
        return 0;
    }
    free(links);
    return vs_error(-EADDRNOTAVAIL, "MAC allocation: 64 random draws under 52:56:65 all collided");
}
