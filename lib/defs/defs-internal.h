/*
 * lib/defs/defs-internal.h — what the parser, the importers and the exporter of lib/defs share:
 * the error helper that puts "SOURCE: line N: KEY: " in front of a message, tokenising helpers and
 * the enum tables.
 *
 * The idea: every message is built in one place, so all readers speak the same way.
 */
#ifndef VESSEL_DEFS_INTERNAL_H
#define VESSEL_DEFS_INTERNAL_H

#include "vessel/defs.h"
#include "vessel/util.h"

/* -EINVAL with "SOURCE: line N: KEY: message" (each prefix part only when known). */
int defs_error(const char *source, int line, const char *key, const char *fmt, ...) VS_PRINTF(4, 5);
/* vs_warn with the same prefix. */
void defs_warn(const char *source, int line, const char *key, const char *fmt, ...) VS_PRINTF(4, 5);

/* A name table for an enum: index = value. -1 when text is not in it. */
int defs_lookup(const char *const *names, size_t count, const char *text);
/* "a, b or c" for messages. */
const char *defs_choices(const char *const *names, size_t count, char *buf, size_t len);

extern const char *const defs_action_names[3];
extern const char *const defs_autostart_names[3];
extern const char *const defs_bus_names[4];
extern const char *const defs_model_names[3];
extern const char *const defs_format_names[6];

/* Copy of s[0..len) trimmed of blanks; NULL on no memory. */
char *defs_strndup_trim(const char *s, size_t len);
/* Turn a foreign name into a valid vessel VM name (bad characters become '-'). Returns a malloc'd
 * copy or NULL. */
char *defs_sanitize_name(const char *name);
/* True when name is a valid vessel VM name. */
bool defs_name_valid(const char *name);
/* Set a size, decimal number of units, into *out; -EINVAL when not a plain number or overflows. */
int defs_parse_uint(const char *text, uint64_t max, uint64_t *out);
/* The bus a guest device name implies: hd* -> IDE, sd* -> SCSI, vd and xvd -> virtio. */
enum vm_disk_bus defs_bus_from_target(const char *target);

#endif
