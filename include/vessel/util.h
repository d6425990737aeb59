/*
 * vessel/util.h — the small shared pieces every subsystem uses: error messages, size parsing and
 * printing, a terminal progress bar, key=value option lists.
 *
 * The idea behind errors: a failing function returns a negative errno and leaves a human message
 * in a per-thread buffer. Callers that add context prefix it ("disk.qcow2: " + "L1 table: offset
 * beyond end of file"), so the user reads one line that names the file and the field.
 */
#ifndef VESSEL_UTIL_H
#define VESSEL_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define VS_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* ---- errors ---------------------------------------------------------------------------------- */

/* Set this thread's error message and return err (a negative errno, e.g. -EINVAL). */
int vs_error(int err, const char *fmt, ...) VS_PRINTF(2, 3);
/* Like vs_error, appending ": strerror(-err)". */
int vs_error_errno(int err, const char *fmt, ...) VS_PRINTF(2, 3);
/* Prepend "PREFIX: " to the current message; returns err. If no message is set, strerror(-err). */
int vs_error_prefix(int err, const char *fmt, ...) VS_PRINTF(2, 3);
/* The current message ("" when none). Valid until the next vs_error* call on this thread. */
const char *vs_error_message(void);
void vs_error_clear(void);

/* Warnings go to stderr with a "vessel: warning: " prefix unless silenced (tests, library users). */
void vs_warn(const char *fmt, ...) VS_PRINTF(1, 2);
void vs_warn_set_handler(void (*handler)(const char *msg));

/* ---- sizes ----------------------------------------------------------------------------------- */

/*
 * Parse "512", "64k", "1.5G", "4T", "100M" (binary units, case-insensitive k/M/G/T/P/E, optional
 * trailing 'B'/"iB"). Returns 0 or -EINVAL with a message naming the text.
 */
int vs_parse_size(const char *text, uint64_t *out);
/* Format a size the way qemu-img does: "1 GiB", "192 KiB", "1.5 MiB". */
void vs_format_size(uint64_t bytes, char *buf, size_t len);

/* ---- progress -------------------------------------------------------------------------------- */

struct vs_progress {
    bool enabled;    /* draw only when asked and stderr/stdout is a terminal or forced */
    int last_permil; /* last drawn value, to redraw only on change */
    FILE *out;
};

/* enabled=false makes every call a no-op. The bar is drawn on 'out' (normally stdout). */
void vs_progress_init(struct vs_progress *p, bool enabled, FILE *out);
void vs_progress_update(struct vs_progress *p, uint64_t done, uint64_t total);
void vs_progress_finish(struct vs_progress *p);

/* ---- key=value option lists (qemu-img's -o a=b,c=d) ------------------------------------------ */

struct vs_opt {
    char *key;
    char *value;
    bool used;
};

struct vs_opts {
    size_t count;
    struct vs_opt *items;
};

/* Append the options in "a=1,b=2"; ",," escapes a comma inside a value. 0 or -EINVAL. */
int vs_opts_parse(struct vs_opts *opts, const char *text);
/* Add or replace one option. */
int vs_opts_set(struct vs_opts *opts, const char *key, const char *value);
/* Look up an option and mark it used; NULL when absent. opts may be NULL. */
const char *vs_opts_take(struct vs_opts *opts, const char *key);
/* Typed getters: leave *out unchanged when absent; -EINVAL (message names key) when malformed. */
int vs_opts_take_size(struct vs_opts *opts, const char *key, uint64_t *out);
int vs_opts_take_bool(struct vs_opts *opts, const char *key, bool *out); /* on/off/true/false */
int vs_opts_take_uint(struct vs_opts *opts, const char *key, uint64_t *out);
/* -EINVAL naming the first option nobody took: "format 'qcow2' has no option 'foo'". */
int vs_opts_check_all_used(const struct vs_opts *opts, const char *format);
void vs_opts_free(struct vs_opts *opts);

/* ---- misc ------------------------------------------------------------------------------------ */

/* Full-length pread/pwrite that retry on EINTR and short transfers. 0 or -errno. A read that hits
 * end of file zero-fills the rest and still returns 0. */
int vs_pread_full(int fd, void *buf, size_t len, uint64_t off);
int vs_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* Allocation that never returns NULL for small sizes in practice; returns NULL (and sets the
 * error) when the size is absurd or memory is short, so callers can fail cleanly. */
void *vs_malloc(size_t size);
void *vs_calloc(size_t n, size_t size);
void *vs_aligned_alloc(size_t align, size_t size); /* free() it */
char *vs_strdup(const char *s);
char *vs_asprintf(const char *fmt, ...) VS_PRINTF(1, 2);

/* Monotonic clock in nanoseconds. */
uint64_t vs_now_ns(void);

/* True when every byte of buf is zero (fast). */
bool vs_buffer_is_zero(const void *buf, size_t len);

#define VS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define VS_MAX(a, b) ((a) > (b) ? (a) : (b))
#define VS_DIV_ROUND_UP(n, d) (((n) + (d)-1) / (d))
#define VS_ALIGN_UP(n, a) (((n) + (a)-1) & ~((uint64_t)(a)-1))
#define VS_ALIGN_DOWN(n, a) ((n) & ~((uint64_t)(a)-1))
#define VS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
