/*
 * lib/defs/import-xl.c — import a Xen xl.cfg / xm cfg file into a struct vm_def.
 *
 * The idea: the file is a tiny subset of Python (`key = value` where a value is a quoted string, a
 * number or a [list] of strings, with # comments and lists across lines), so a small tokenizer
 * turns it into (key, values, line) triples first; the mapping then looks each key up once, and
 * the disk and vif specs — comma-separated strings with their own syntax — get their own parsers.
 * Book and web copies often have `backquotes' for quotes; they are accepted as quotes too.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "defs/defs-internal.h"

struct xl_item {
    char *key;
    char **values;
    size_t count;
    bool is_list;
    int line;
};

struct xl_file {
    struct xl_item *items;
    size_t count;
};

static void xl_free(struct xl_file *f)
{
    for (size_t i = 0; i < f->count; i++) {
        free(f->items[i].key);
        for (size_t j = 0; j < f->items[i].count; j++)
            free(f->items[i].values[j]);
        free(f->items[i].values);
    }
    free(f->items);
}

static int push_value(struct xl_item *it, char *v)
{
    char **vals = realloc(it->values, (it->count + 1) * sizeof(*vals));
    if (!vals) {
        free(v);
        return vs_error(-ENOMEM, "out of memory");
    }
    it->values = vals;
    vals[it->count++] = v;
    return 0;
}

struct lexer {
    const char *s;
    size_t len, pos;
    int line;
    const char *source;
};

static void skip_blank(struct lexer *lx, bool newlines)
{
    while (lx->pos < lx->len) {
        char c = lx->s[lx->pos];
        if (c == '#') {
            while (lx->pos < lx->len && lx->s[lx->pos] != '\n')
                lx->pos++;
        } else if (c == '\n' && newlines) {
            lx->line++;
            lx->pos++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\\') {
            if (c == '\\' && lx->pos + 1 < lx->len && lx->s[lx->pos + 1] == '\n') {
                lx->line++;
                lx->pos++;
            }
            lx->pos++;
        } else {
            break;
        }
    }
}

/* One scalar: a quoted string or a bare word (number, identifier). */
static int lex_scalar(struct lexer *lx, char **out)
{
    char c = lx->s[lx->pos];
    if (c == '"' || c == '\'' || c == '`') {
        char close = c == '`' ? '\'' : c;
        size_t start = ++lx->pos;
        bool triple =
            c != '`' && lx->pos + 1 < lx->len && lx->s[lx->pos] == c && lx->s[lx->pos + 1] == c;
        if (triple)
            start = lx->pos += 2;
        while (lx->pos < lx->len) {
            char d = lx->s[lx->pos];
            if (d == '\n') {
                if (!triple)
                    break;
                lx->line++;
            }
            if (d == close && (!triple || (lx->pos + 2 < lx->len && lx->s[lx->pos + 1] == c &&
                                           lx->s[lx->pos + 2] == c)))
                break;
            if (c == '`' && d == '`') /* `a', `b' — never nested; stop at the next opener */
                break;
            lx->pos++;
        }
        if (lx->pos >= lx->len || lx->s[lx->pos] != close)
            return defs_error(lx->source, lx->line, NULL, "unterminated string");
        *out = defs_strndup_trim(lx->s + start, lx->pos - start);
        lx->pos += triple ? 3 : 1;
        return *out ? 0 : -ENOMEM;
    }
    size_t start = lx->pos;
    while (lx->pos < lx->len) {
        c = lx->s[lx->pos];
        if (c == '\n' || c == '#' || c == ',' || c == ']' || c == ';' || c == ' ' || c == '\t' ||
            c == '\r')
            break;
        lx->pos++;
    }
    if (lx->pos == start)
        return defs_error(lx->source, lx->line, NULL, "expected a value");
    *out = defs_strndup_trim(lx->s + start, lx->pos - start);
    return *out ? 0 : -ENOMEM;
}

static int xl_tokenize(const char *text, size_t len, const char *source, struct xl_file *f)
{
    struct lexer lx = {.s = text, .len = len, .line = 1, .source = source};
    int rc;
    for (;;) {
        skip_blank(&lx, true);
        while (lx.pos < len && lx.s[lx.pos] == ';')
            lx.pos++, skip_blank(&lx, true);
        if (lx.pos >= len)
            return 0;
        size_t kstart = lx.pos;
        while (lx.pos < len && (lx.s[lx.pos] == '_' || lx.s[lx.pos] == '.' ||
                                (lx.s[lx.pos] >= 'a' && lx.s[lx.pos] <= 'z') ||
                                (lx.s[lx.pos] >= 'A' && lx.s[lx.pos] <= 'Z') ||
                                (lx.s[lx.pos] >= '0' && lx.s[lx.pos] <= '9')))
            lx.pos++;
        if (lx.pos == kstart)
            return defs_error(source, lx.line, NULL, "expected 'key = value', found '%c'",
                              lx.s[lx.pos]);
        int line = lx.line;
        char *key = defs_strndup_trim(lx.s + kstart, lx.pos - kstart);
        if (!key)
            return -ENOMEM;
        struct xl_item *items = realloc(f->items, (f->count + 1) * sizeof(*items));
        if (!items) {
            free(key);
            return vs_error(-ENOMEM, "out of memory");
        }
        f->items = items;
        struct xl_item *it = &f->items[f->count++];
        memset(it, 0, sizeof(*it));
        it->key = key;
        it->line = line;
        skip_blank(&lx, false);
        if (lx.pos >= len || lx.s[lx.pos] != '=')
            return defs_error(source, line, key, "expected '=' after the key");
        lx.pos++;
        skip_blank(&lx, false);
        if (lx.pos >= len || lx.s[lx.pos] == '\n')
            return defs_error(source, line, key, "missing value");
        if (lx.s[lx.pos] == '[') {
            it->is_list = true;
            lx.pos++;
            for (;;) {
                skip_blank(&lx, true);
                if (lx.pos >= len)
                    return defs_error(source, line, key, "list not closed with ']'");
                if (lx.s[lx.pos] == ']') {
                    lx.pos++;
                    break;
                }
                char *v;
                if ((rc = lex_scalar(&lx, &v)) < 0)
                    return vs_error_prefix(rc, "%s", key);
                if ((rc = push_value(it, v)) < 0)
                    return rc;
                skip_blank(&lx, true);
                if (lx.pos < len && lx.s[lx.pos] == ',')
                    lx.pos++;
                else if (lx.pos < len && lx.s[lx.pos] != ']')
                    return defs_error(source, lx.line, key, "expected ',' or ']' in the list");
            }
        } else {
            char *v;
            if ((rc = lex_scalar(&lx, &v)) < 0)
                return rc;
            if ((rc = push_value(it, v)) < 0)
                return rc;
        }
        skip_blank(&lx, false);
        if (lx.pos < len && lx.s[lx.pos] != '\n' && lx.s[lx.pos] != ';')
            return defs_error(source, lx.line, key, "unexpected text after the value");
    }
}

/* ---- mapping --------------------------------------------------------------------------------- */

static const char *scalar(const struct xl_item *it)
{
    return it->count ? it->values[0] : "";
}

static int map_action(const char *src, const struct xl_item *it, enum vm_action *out)
{
    const char *v = scalar(it);
    int a = defs_lookup(defs_action_names, 3, v);
    if (a >= 0) {
        *out = (enum vm_action)a;
    } else if (strcmp(v, "rename-restart") == 0) {
        *out = VM_ACTION_RESTART;
    } else if (strcmp(v, "coredump-destroy") == 0 || strcmp(v, "coredump-restart") == 0 ||
               strcmp(v, "soft-reset") == 0) {
        *out = strcmp(v, "coredump-destroy") == 0 ? VM_ACTION_DESTROY : VM_ACTION_RESTART;
        defs_warn(src, it->line, it->key, "'%s' imported without its core dump or soft reset", v);
    } else {
        return defs_error(src, it->line, it->key, "'%s' is not a Xen action", v);
    }
    return 0;
}

static const char *format_from_prefix(const char *p, size_t n)
{
    static const struct {
        const char *prefix, *format;
    } map[] = {{"phy", "raw"},     {"file", "raw"}, {"aio", "raw"},   {"raw", "raw"},
               {"qcow2", "qcow2"}, {"vhd", "vhd"},  {"vmdk", "vmdk"}, {"tapdisk", NULL},
               {"tap", NULL},      {"tap2", NULL},  {"qcow", ""},     {"xen", NULL}};
    for (size_t i = 0; i < VS_ARRAY_SIZE(map); i++)
        if (strlen(map[i].prefix) == n && strncmp(map[i].prefix, p, n) == 0)
            return map[i].format ? map[i].format : "-";
    return NULL;
}

/* 'phy:/dev/vg/x,xvda,w', 'tap:aio:/x.img,xvda1,w', 'format=qcow2,vdev=xvda,target=/x' ... */
static int map_disk(struct vm_def *def, const char *src, int line, const char *spec)
{
    char *pos[4] = {NULL};
    size_t npos = 0;
    char *format = NULL, *vdev = NULL, *access = NULL, *target = NULL;
    bool cdrom = false;
    int rc = 0;
    const char *p = spec;
    while (*p && rc == 0) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (strncmp(p, "target=", 7) == 0) { /* target takes the rest of the string */
            n = strlen(p);
            comma = NULL;
        }
        char *tok = defs_strndup_trim(p, n);
        if (!tok) {
            rc = -ENOMEM;
            break;
        }
        char *eq = strchr(tok, '=');
        if (eq && !strchr(tok, '/')) {
            *eq = '\0';
            char **slot = strcmp(tok, "format") == 0   ? &format
                          : strcmp(tok, "vdev") == 0   ? &vdev
                          : strcmp(tok, "access") == 0 ? &access
                          : strcmp(tok, "target") == 0 ? &target
                                                       : NULL;
            if (slot) {
                rc = vm_def_set_string(slot, eq + 1);
            } else if (strcmp(tok, "devtype") == 0) {
                cdrom = strcmp(eq + 1, "cdrom") == 0;
            } else {
                defs_warn(src, line, "disk", "'%s=%s' is not supported, ignored", tok, eq + 1);
            }
            free(tok);
        } else if (eq && strncmp(tok, "target=", 7) == 0) {
            rc = vm_def_set_string(&target, tok + 7);
            free(tok);
        } else if (npos < 4) {
            pos[npos++] = tok;
        } else {
            free(tok);
            rc = defs_error(src, line, "disk", "'%s': too many positional fields", spec);
        }
        p = comma ? comma + 1 : p + n;
    }
    if (rc == 0 && npos) { /* target[,format],vdev,access — format only with four fields */
        size_t i = 0;
        if (!target)
            rc = vm_def_set_string(&target, pos[i]);
        i++;
        if (rc == 0 && npos == 4)
            rc = vm_def_set_string(&format, pos[i++]);
        if (rc == 0 && i < npos && !vdev)
            rc = vm_def_set_string(&vdev, pos[i]);
        i++;
        if (rc == 0 && i < npos && !access)
            rc = vm_def_set_string(&access, pos[i]);
    }
    struct vm_disk *d = NULL;
    if (rc == 0 && (!target || !*target) && !cdrom && !(vdev && strstr(vdev, ":cdrom")))
        rc = defs_error(src, line, "disk", "'%s' names no file", spec);
    if (rc == 0 && (!target || !*target)) {
        defs_warn(src, line, "disk", "'%s': an empty CD-ROM drive is not supported, ignored", spec);
        goto out;
    }
    if (rc == 0)
        rc = vm_def_add_disk(def, &d);
    if (rc == 0) {
        d->line = d->file_line = line;
        /* strip "phy:", "file:", "tap:aio:", "tap:qcow2:" ... */
        const char *file = target;
        const char *colon;
        while ((colon = strchr(file, ':')) && colon[1] != '\\') {
            const char *fmt = format_from_prefix(file, (size_t)(colon - file));
            if (!fmt)
                break;
            if (fmt[0] == '\0')
                defs_warn(src, line, "disk",
                          "qcow (version 1) images are not supported; the "
                          "format will be probed");
            else if (fmt[0] != '-' && !format)
                rc = vm_def_set_string(&d->format, fmt);
            file = colon + 1;
        }
        if (rc == 0)
            rc = vm_def_set_string(&d->file, file);
        if (rc == 0 && format && defs_lookup(defs_format_names, 6, format) >= 0)
            rc = vm_def_set_string(&d->format, format);
        else if (rc == 0 && format && strcmp(format, "qcow") != 0)
            rc = defs_error(src, line, "disk", "format '%s' is not supported", format);
        if (rc == 0 && vdev) {
            char *c = strchr(vdev, ':');
            if (c) {
                cdrom = cdrom || strcmp(c + 1, "cdrom") == 0;
                *c = '\0';
            }
            const char *t = strncmp(vdev, "xvd", 3) == 0 ? vdev + 1 : vdev;
            d->bus = defs_bus_from_target(t);
            /* drop partition numbers: a partition-as-disk (xvda1) becomes the whole disk */
            size_t tl = strlen(t);
            while (tl && t[tl - 1] >= '0' && t[tl - 1] <= '9')
                tl--;
            bool ok = tl >= 3 && tl < 16;
            for (size_t k = 0; k < tl && ok; k++)
                ok = t[k] >= 'a' && t[k] <= 'z';
            if (ok && (d->target = defs_strndup_trim(t, tl)) == NULL)
                rc = -ENOMEM;
            for (size_t k = 0; rc == 0 && d->target && k + 1 < def->disk_count; k++)
                if (def->disks[k].target && strcmp(def->disks[k].target, d->target) == 0) {
                    free(d->target); /* xvda1 and xvda2: the second one gets the next name */
                    d->target = NULL;
                }
        }
        if (cdrom)
            d->media = VM_DISK_MEDIA_CDROM;
        if (rc == 0 && access) {
            if (strcmp(access, "r") == 0 || strcmp(access, "ro") == 0)
                d->readonly = true;
            else if (strcmp(access, "w!") == 0 || strcmp(access, "!") == 0)
                defs_warn(src, line, "disk",
                          "shared writable access ('w!') is not supported; "
                          "imported as exclusive");
            else if (strcmp(access, "w") != 0 && strcmp(access, "rw") != 0)
                rc = defs_error(src, line, "disk", "access '%s' is not r or w", access);
        }
    }
out:
    for (size_t i = 0; i < npos; i++)
        free(pos[i]);
    free(format);
    free(vdev);
    free(access);
    free(target);
    return rc;
}

/* 'mac=00:16:3e:..,bridge=xenbr0,rate=8Mb/s' */
static int map_vif(struct vm_def *def, const char *src, int line, const char *spec)
{
    struct vm_nic *n;
    int rc = vm_def_add_nic(def, &n);
    if (rc < 0)
        return rc;
    n->line = n->mac_line = line;
    const char *p = spec;
    while (*p && rc == 0) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char *tok = defs_strndup_trim(p, len);
        p = comma ? comma + 1 : p + len;
        if (!tok)
            return -ENOMEM;
        char *eq = strchr(tok, '=');
        const char *k = tok, *v = eq ? eq + 1 : "";
        if (eq)
            *eq = '\0';
        if (!*tok) {
        } else if (strcmp(k, "mac") == 0) {
            if (vm_mac_parse(v, n->mac) < 0)
                rc = defs_error(src, line, "vif", "mac '%s' is not a unicast MAC address", v);
        } else if (strcmp(k, "bridge") == 0) {
            rc = vm_def_set_string(&n->bridge, v);
        } else if (strcmp(k, "model") == 0) {
            int m = defs_lookup(defs_model_names, 3, v);
            if (m < 0 && strncmp(v, "e1000", 5) == 0)
                m = VM_NIC_MODEL_E1000;
            if (m < 0)
                defs_warn(src, line, "vif", "model '%s' is not supported; using virtio", v);
            n->model = m < 0 ? VM_NIC_MODEL_VIRTIO : (enum vm_nic_model)m;
        } else if (strcmp(k, "rate") == 0) {
            /* xl's RATE/s[@INTERVAL]: the interval (the shaper's burst window) is not ours */
            char *at = strchr(v, '@');
            if (at)
                *at = '\0';
            if (vm_rate_parse(v, &n->rate_mbit) < 0)
                rc = defs_error(src, line, "vif", "rate '%s' is not a rate like 8Mb/s", v);
            n->rate_line = line;
        } else if (strcmp(k, "type") == 0 && (strcmp(v, "ioemu") == 0 || strcmp(v, "vif") == 0 ||
                                              strcmp(v, "netfront") == 0)) {
            /* the emulated/PV choice: vessel always gives the guest the NIC model above */
        } else {
            defs_warn(src, line, "vif", "'%s%s%s' is not supported, ignored", k, eq ? "=" : "", v);
        }
        free(tok);
    }
    return rc;
}

int vm_def_import_xl(const char *text, size_t len, const char *source, struct vm_def **out)
{
    *out = NULL;
    struct xl_file f = {0};
    struct vm_def *def = vm_def_new();
    if (!def)
        return -ENOMEM;
    int rc = source ? vm_def_set_string(&def->source, source) : 0;
    if (rc == 0)
        rc = xl_tokenize(text, len, source, &f);
    bool hvm = false, bootloader = false;
    char *root = NULL, *extra = NULL;
    const char *hvm_boot = NULL;
    for (size_t i = 0; i < f.count && rc == 0; i++) {
        const struct xl_item *it = &f.items[i];
        const char *k = it->key, *v = scalar(it);
        if (strcmp(k, "builder") == 0 || strcmp(k, "type") == 0)
            hvm = hvm || strcmp(v, "hvm") == 0;
    }
    for (size_t i = 0; i < f.count && rc == 0; i++) {
        const struct xl_item *it = &f.items[i];
        const char *k = it->key, *v = scalar(it);
        uint64_t num = 0;
        if (it->is_list && strcmp(k, "disk") != 0 && strcmp(k, "vif") != 0) {
            defs_warn(source, it->line, k, "list value not supported, ignored");
            continue;
        }
        if (strcmp(k, "name") == 0) {
            char *name = defs_sanitize_name(v);
            if (!name) {
                rc = -ENOMEM;
                break;
            }
            if (strcmp(name, v) != 0)
                defs_warn(source, it->line, k, "'%s' imported as '%s'", v, name);
            free(def->name);
            def->name = name;
            def->name_line = it->line;
        } else if (strcmp(k, "uuid") == 0) {
            if (vm_uuid_parse(v, def->uuid) < 0)
                rc = defs_error(source, it->line, k, "'%s' is not a UUID", v);
        } else if (strcmp(k, "memory") == 0) {
            if (defs_parse_uint(v, VM_DEF_MAX_MEMORY >> 20, &num) < 0 || num == 0)
                rc = defs_error(source, it->line, k, "'%s' is not a number of MiB", v);
            def->memory = num << 20;
            def->memory_line = it->line;
        } else if (strcmp(k, "maxmem") == 0) {
            defs_warn(source, it->line, k, "memory ballooning is not supported; using memory");
        } else if (strcmp(k, "vcpus") == 0) {
            if (defs_parse_uint(v, VM_DEF_MAX_VCPUS, &num) < 0 || num == 0)
                rc = defs_error(source, it->line, k, "'%s' is not a vCPU count (1 to %d)", v,
                                VM_DEF_MAX_VCPUS);
            def->vcpus = (unsigned)num;
            def->vcpus_line = it->line;
        } else if (strcmp(k, "kernel") == 0) {
            if (hvm) /* hvmloader is Xen's firmware: an HVM guest boots from its disk */
                continue;
            rc = vm_def_set_string(&def->kernel, v);
            def->kernel_line = it->line;
        } else if (strcmp(k, "ramdisk") == 0 || strcmp(k, "initrd") == 0) {
            rc = vm_def_set_string(&def->initrd, v);
        } else if (strcmp(k, "extra") == 0 || strcmp(k, "cmdline") == 0) {
            rc = vm_def_set_string(&extra, v);
        } else if (strcmp(k, "root") == 0) {
            rc = vm_def_set_string(&root, v);
        } else if (strcmp(k, "bootloader") == 0) {
            bootloader = true;
        } else if (strcmp(k, "boot") == 0 && hvm) {
            hvm_boot = v;
        } else if (strcmp(k, "builder") == 0 || strcmp(k, "type") == 0) {
            if (strcmp(v, "hvm") != 0 && strcmp(v, "linux") != 0 && strcmp(v, "pv") != 0 &&
                strcmp(v, "pvh") != 0)
                defs_warn(source, it->line, k, "'%s' is not a known guest type", v);
        } else if (strcmp(k, "on_poweroff") == 0) {
            rc = map_action(source, it, &def->on_poweroff);
        } else if (strcmp(k, "on_reboot") == 0) {
            rc = map_action(source, it, &def->on_reboot);
        } else if (strcmp(k, "on_crash") == 0) {
            rc = map_action(source, it, &def->on_crash);
        } else if (strcmp(k, "cpu_weight") == 0) {
            if (defs_parse_uint(v, 65535, &num) < 0 || num == 0)
                rc = defs_error(source, it->line, k, "'%s' is not a weight (1 to 65535)", v);
            def->cpu_weight = (unsigned)num;
        } else if (strcmp(k, "cpu_cap") == 0) {
            if (defs_parse_uint(v, 100 * VM_DEF_MAX_VCPUS, &num) < 0)
                rc = defs_error(source, it->line, k, "'%s' is not a percentage", v);
            def->cpu_cap = (unsigned)num;
            def->cpu_cap_line = it->line;
        } else if (strcmp(k, "cpus") == 0) { /* hard affinity of all vCPUs: "0-3,6" or "all" */
            if (strcmp(v, "all") != 0 && vm_def_set_cpu_affinity(def, v) < 0)
                rc = defs_error(source, it->line, k,
                                "%s (exclusions and node: lists are not supported)",
                                vs_error_message());
        } else if (strcmp(k, "serial") == 0) {
            if (strcmp(v, "pty") == 0)
                def->console = VM_CONSOLE_PTY;
            else
                defs_warn(source, it->line, k, "'%s' is not supported; console = pty", v);
        } else if (strcmp(k, "disk") == 0) {
            for (size_t j = 0; j < it->count && rc == 0; j++)
                rc = map_disk(def, source, it->line, it->values[j]);
        } else if (strcmp(k, "vif") == 0) {
            for (size_t j = 0; j < it->count && rc == 0; j++)
                rc = map_vif(def, source, it->line, it->values[j]);
        } else {
            defs_warn(source, it->line, k, "not supported by vessel, ignored");
        }
    }
    if (rc == 0 && (root || extra)) {
        free(def->cmdline);
        def->cmdline = root && extra ? vs_asprintf("root=%s %s", root, extra)
                       : root        ? vs_asprintf("root=%s", root)
                                     : vs_strdup(extra);
        if (!def->cmdline)
            rc = -ENOMEM;
    }
    if (rc == 0) {
        if (def->kernel && !bootloader && !hvm) {
            def->boot_from = VM_BOOT_FROM_KERNEL;
        } else {
            if (def->kernel || def->initrd || def->cmdline)
                defs_warn(source, 0, "kernel",
                          "ignored: the guest boots from its disk (bootloader or HVM)");
            vm_def_set_string(&def->kernel, NULL);
            vm_def_set_string(&def->initrd, NULL);
            vm_def_set_string(&def->cmdline, NULL);
            def->boot_from = VM_BOOT_FROM_DISK;
            for (size_t i = 0; hvm_boot && hvm_boot[0] == 'd' && i < def->disk_count; i++)
                if (def->disks[i].media == VM_DISK_MEDIA_CDROM)
                    def->boot_from = VM_BOOT_FROM_CDROM;
        }
    }
    free(root);
    free(extra);
    xl_free(&f);
    if (rc == 0)
        rc = vm_def_validate(def);
    if (rc < 0) {
        vm_def_free(def);
        return rc;
    }
    *out = def;
    return 0;
}
