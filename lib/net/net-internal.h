/*
 * lib/net/net-internal.h — what the files of lib/net share but nobody else needs: a growing
 * string for generated configs (nftables rulesets, dnsmasq.conf, definitions) and the
 * key-by-key setter the text format and the CLI both use.
 */
#ifndef VESSEL_NET_INTERNAL_H
#define VESSEL_NET_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "vessel/net.h"
#include "vessel/util.h"

struct strbuf {
    char *s;
    size_t len, cap;
    bool failed;
};

/* Append formatted text; a failed allocation is remembered and reported by sb_finish. */
void sb_printf(struct strbuf *sb, const char *fmt, ...) VS_PRINTF(2, 3);
/* The string (caller frees), or NULL with -ENOMEM set. */
char *sb_finish(struct strbuf *sb);

/* s is 1-max characters of [A-Za-z0-9._-]: safe as an interface name or hostname in every
 * generated config (no spaces, quotes, commas or line breaks). */
bool net_word_ok(const char *s, size_t max);

#endif
