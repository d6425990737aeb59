/*
 * tests/fuzz/fuzz-leases.c — libFuzzer target for the dnsmasq leases parser (vs_net_leases_parse).
 * The leases file is written by dnsmasq, which runs as its own user and takes hostnames from the
 * guests, so its lines are untrusted: every lease that comes back must carry a usable unicast MAC,
 * a hostname that is a terminated printable string, and there can be no more leases than lines.
 *
 * The one idea: the parser's output is checked against properties of the input, not against a
 * second parser.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vessel/net.h"
#include "vessel/util.h"

static void quiet(const char *msg)
{
    (void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vs_warn_set_handler(quiet);
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    size_t lines = 1;
    for (size_t i = 0; i < size && text[i]; i++)
        lines += text[i] == '\n';
    struct vs_net_lease *leases = NULL;
    size_t n = 0;
    if (vs_net_leases_parse(text, &leases, &n) == 0) {
        if (n > lines)
            __builtin_trap();
        for (size_t i = 0; i < n; i++) {
            if (vs_mac_validate(&leases[i].mac) < 0 || leases[i].ip == 0)
                __builtin_trap();
            size_t hl = strnlen(leases[i].hostname, sizeof(leases[i].hostname));
            if (hl == sizeof(leases[i].hostname))
                __builtin_trap();
            for (size_t j = 0; j < hl; j++)
                if ((unsigned char)leases[i].hostname[j] <= 0x20 ||
                    (unsigned char)leases[i].hostname[j] == 0x7f)
                    __builtin_trap();
        }
    }
    free(leases);
    free(text);
    return 0;
}
