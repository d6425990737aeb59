/*
 * lib/util/opts.c — "key=value,key=value" option lists (qemu-img's -o). Each consumer takes the
 * options it understands; whatever nobody took is reported, so a typo never passes silently.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vessel/util.h"

int vs_opts_set(struct vs_opts *opts, const char *key, const char *value)
{
    for (size_t i = 0; i < opts->count; i++) {
        if (strcmp(opts->items[i].key, key) == 0) {
            char *v = vs_strdup(value);
            if (!v)
                return -ENOMEM;
            free(opts->items[i].value);
            opts->items[i].value = v;
            opts->items[i].used = false;
            return 0;
        }
    }
    struct vs_opt *items = realloc(opts->items, (opts->count + 1) * sizeof(*items));
    if (!items)
        return vs_error(-ENOMEM, "out of memory");
    opts->items = items;
    struct vs_opt *o = &items[opts->count];
    o->key = vs_strdup(key);
    o->value = vs_strdup(value);
    o->used = false;
    if (!o->key || !o->value) {
        free(o->key);
        free(o->value);
        return -ENOMEM;
    }
    opts->count++;
    return 0;
}

int vs_opts_parse(struct vs_opts *opts, const char *text)
{
    size_t len = strlen(text);
    char *buf = vs_malloc(len + 1);
    if (!buf)
        return -ENOMEM;
    const char *p = text;
    int rc = 0;
    while (*p) {
        /* one item, with ",," as an escaped comma */
        size_t n = 0;
        while (*p) {
            if (*p == ',') {
                if (p[1] == ',') {
                    buf[n++] = ',';
                    p += 2;
                    continue;
                }
                break;
            }
            buf[n++] = *p++;
        }
        buf[n] = '\0';
        if (*p == ',')
            p++;
        if (n == 0)
            continue;
        char *eq = strchr(buf, '=');
        if (!eq) {
            rc = vs_error(-EINVAL, "option '%s' has no value (expected key=value)", buf);
            break;
        }
        *eq = '\0';
        if (!buf[0]) {
            rc = vs_error(-EINVAL, "option '=%s' has no name", eq + 1);
            break;
        }
        rc = vs_opts_set(opts, buf, eq + 1);
        if (rc)
            break;
    }
    free(buf);
    return rc;
}

const char *vs_opts_take(struct vs_opts *opts, const char *key)
{
    if (!opts)
        return NULL;
    for (size_t i = 0; i < opts->count; i++) {
        if (strcmp(opts->items[i].key, key) == 0) {
            opts->items[i].used = true;
            return opts->items[i].value;
        }
    }
    return NULL;
}

int vs_opts_take_size(struct vs_opts *opts, const char *key, uint64_t *out)
{
    const char *v = vs_opts_take(opts, key);
    if (!v)
        return 0;
    int rc = vs_parse_size(v, out);
    if (rc)
        return vs_error_prefix(rc, "option %s", key);
    return 0;
}

int vs_opts_take_bool(struct vs_opts *opts, const char *key, bool *out)
{
    const char *v = vs_opts_take(opts, key);
    if (!v)
        return 0;
    if (!strcasecmp(v, "on") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") ||
        !strcmp(v, "1"))
        *out = true;
    else if (!strcasecmp(v, "off") || !strcasecmp(v, "false") || !strcasecmp(v, "no") ||
             !strcmp(v, "0"))
        *out = false;
    else
        return vs_error(-EINVAL, "option %s: '%s' is not on/off", key, v);
    return 0;
}

int vs_opts_take_uint(struct vs_opts *opts, const char *key, uint64_t *out)
{
    const char *v = vs_opts_take(opts, key);
    if (!v)
        return 0;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 0);
    if (errno || end == v || *end || v[0] == '-')
        return vs_error(-EINVAL, "option %s: '%s' is not a number", key, v);
    *out = n;
    return 0;
}

int vs_opts_check_all_used(const struct vs_opts *opts, const char *format)
{
    if (!opts)
        return 0;
    for (size_t i = 0; i < opts->count; i++)
        if (!opts->items[i].used)
            return vs_error(-EINVAL, "format '%s' has no option '%s'", format,
                            opts->items[i].key);
    return 0;
}

void vs_opts_free(struct vs_opts *opts)
{
    if (!opts)
        return;
    for (size_t i = 0; i < opts->count; i++) {
        free(opts->items[i].key);
        free(opts->items[i].value);
    }
    free(opts->items);
    opts->items = NULL;
    opts->count = 0;
}
