/*
 * tests/fuzz/fuzz-bootcfg.c — libFuzzer target for the boot-config parsers (grub2 grub.cfg with
 * its quoting and variables, grub-legacy menu.lst, extlinux.conf). The first byte picks the
 * format; the rest is the file, and the part after a NUL (if any) is the grubenv block.
 *
 * The one idea: the parsers bound words, entries, nesting and variable growth themselves, so any
 * input must finish quickly, and choosing every entry by position, title and id must be safe.
 */
#include <stdint.h>
#include <string.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    enum guestfs_boot_kind kind = (enum guestfs_boot_kind)(data[0] % 3);
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    const char *env = memchr(text, 0, len);
    size_t env_len = 0;
    if (env) {
        env_len = len - (size_t)(env - text) - 1;
        len = (size_t)(env - text);
        env++;
    }
    struct guestfs_bootcfg *cfg;
    if (guestfs_bootcfg_parse(kind, text, len, "fuzz.cfg", env, env_len, &cfg) < 0)
        return 0;
    size_t index;
    guestfs_bootcfg_choose(cfg, NULL, &index);
    for (size_t i = 0; i < cfg->count && i < 64; i++) {
        guestfs_bootcfg_choose(cfg, cfg->entries[i].position, &index);
        guestfs_bootcfg_choose(cfg, cfg->entries[i].title, &index);
        if (cfg->entries[i].id)
            guestfs_bootcfg_choose(cfg, cfg->entries[i].id, &index);
    }
    guestfs_bootcfg_free(cfg);
    return 0;
}
