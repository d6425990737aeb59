/*
 * lib/appliance/appliance-internal.h — helpers the appliance files share (not public API).
 */
#ifndef VESSEL_APPLIANCE_INTERNAL_H
#define VESSEL_APPLIANCE_INTERNAL_H

#include <inttypes.h>
#include <stdbool.h>

#include "vessel/appliance.h"

int appliance_add_disk(struct appliance_system *sys, struct appliance_disk **out);
int appliance_add_nic(struct appliance_system *sys, struct appliance_nic **out);
/* A valid vessel VM name from any text (bad characters become '-'), malloc'd. */
char *appliance_sanitize_name(const char *text);
/* A bare file name: no '/', not '.' or '..', not empty. */
bool appliance_plain_name(const char *name);
/* OVF allocation units ("byte * 2^20", "MegaBytes") → multiplier; -EINVAL when unknown. */
int appliance_units(const char *text, uint64_t *mult);
/* Import SYS: convert each disk's href (in SRC_DIR; SOURCES_RAW: plain bytes, else a sparse VMDK
 * when its header says so) to the target format in the target directory, write DIR/NAME.vm. */
int appliance_write_import(const struct appliance_system *sys, const char *src_dir,
                           bool sources_raw, const struct appliance_import_params *params,
                           char **def_path);

#endif
