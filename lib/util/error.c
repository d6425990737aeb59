/*
 * lib/util/error.c — per-thread error messages and warnings.
 *
 * Failing functions return a negative errno and leave one line here; each layer that knows more
 * context prefixes it, so the user sees "disk.qcow2: L1 table: offset beyond end of file" rather
 * than a bare "Invalid argument".
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vessel/util.h"

#define ERROR_MAX 1024

static _Thread_local char error_buf[ERROR_MAX];

static void error_vset(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void error_vset(const char *fmt, va_list ap)
{
    vsnprintf(error_buf, sizeof(error_buf), fmt, ap);
}

int vs_error(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(fmt, ap);
    va_end(ap);
    return err;
}

int vs_error_errno(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(fmt, ap);
    va_end(ap);
    size_t n = strlen(error_buf);
    snprintf(error_buf + n, sizeof(error_buf) - n, ": %s", strerror(err < 0 ? -err : err));
    return err;
}

int vs_error_prefix(int err, const char *fmt, ...)
{
    char prefix[ERROR_MAX];
    char old[ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    if (error_buf[0])
        snprintf(old, sizeof(old), "%s", error_buf);
    else
        snprintf(old, sizeof(old), "%s", strerror(err < 0 ? -err : err));
    /* truncation of very long chains is fine: the start names the file */
    size_t plen = strnlen(prefix, sizeof(error_buf) - 3);
    memcpy(error_buf, prefix, plen);
    memcpy(error_buf + plen, ": ", 2);
    size_t room = sizeof(error_buf) - plen - 3;
    size_t olen = strnlen(old, room);
    memcpy(error_buf + plen + 2, old, olen);
    error_buf[plen + 2 + olen] = '\0';
    return err;
}

const char *vs_error_message(void)
{
    return error_buf;
}

void vs_error_clear(void)
{
    error_buf[0] = '\0';
}

static void (*warn_handler)(const char *msg);

void vs_warn_set_handler(void (*handler)(const char *msg))
{
    warn_handler = handler;
}

void vs_warn(const char *fmt, ...)
{
    char msg[ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (warn_handler)
        warn_handler(msg);
    else
        fprintf(stderr, "vessel: warning: %s\n", msg);
}
