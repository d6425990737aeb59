/*
 * lib/vmm/vmstate.h — the state file of a saved VM (`save` / `vessel-vmm --restore`): a growing
 * writer and a bounds-checked reader of little-endian fields, and the file's header, machine
 * configuration and section directory.
 *
 * The idea: the file is a short header, then named sections (config, vm, one per vCPU, one per
 * device in creation order), then guest RAM at a page-aligned offset with zero pages left as
 * holes. Everything before the RAM is parsed here without KVM or devices, by a reader whose
 * every read checks the remaining length and latches a failure, so a truncated or hostile file
 * can only ever produce "corrupt at byte N".
 */
#ifndef VESSEL_VMM_VMSTATE_H
#define VESSEL_VMM_VMSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vessel/vmm.h"

#define VMSTATE_MAGIC        "VESSELVM"
#define VMSTATE_VERSION      1
#define VMSTATE_HEADER_SIZE  48
#define VMSTATE_MAX_STATE    (64u << 20) /* bytes of sections: far above what devices need */
#define VMSTATE_MAX_STRING   4096
#define VMSTATE_MAX_SECTIONS 4096
#define VMSTATE_MAX_ITEMS    1024 /* disks, NICs, vCPU blobs */

struct vmstate_writer {
    uint8_t *buf;
    size_t len, cap;
    bool failed; /* out of memory */
};

void vmw_bytes(struct vmstate_writer *w, const void *p, size_t n);
void vmw_u8(struct vmstate_writer *w, uint8_t v);
void vmw_u16(struct vmstate_writer *w, uint16_t v);
void vmw_u32(struct vmstate_writer *w, uint32_t v);
void vmw_u64(struct vmstate_writer *w, uint64_t v);
void vmw_str(struct vmstate_writer *w, const char *s); /* NULL is kept apart from "" */
/* A length-prefixed blob whose length is patched by vmw_blob_end. */
size_t vmw_blob_begin(struct vmstate_writer *w);
void vmw_blob_end(struct vmstate_writer *w, size_t mark);
/* Section NAME holding what is written until vmw_section_end. */
size_t vmw_section_begin(struct vmstate_writer *w, const char *name);
void vmw_section_end(struct vmstate_writer *w, size_t mark);
void vmw_free(struct vmstate_writer *w);

struct vmstate_reader {
    const uint8_t *p;
    size_t len, pos;
    bool failed;
    const char *what; /* section being read, for messages */
};

void vmr_init(struct vmstate_reader *r, const void *p, size_t len, const char *what);
bool vmr_bytes(struct vmstate_reader *r, void *out, size_t n);
uint8_t vmr_u8(struct vmstate_reader *r);
uint16_t vmr_u16(struct vmstate_reader *r);
uint32_t vmr_u32(struct vmstate_reader *r);
uint64_t vmr_u64(struct vmstate_reader *r);
bool vmr_bool(struct vmstate_reader *r); /* 0 or 1, anything else fails */
/* A malloc'd NUL-free string (NULL when the writer stored NULL); false on failure. */
bool vmr_str(struct vmstate_reader *r, char **out);
/* A length-prefixed blob: a sub-reader over it. */
bool vmr_blob(struct vmstate_reader *r, struct vmstate_reader *sub);
/* Fail (latching) with a message unless COND. */
bool vmr_check(struct vmstate_reader *r, bool cond);
/* 0 when the reader consumed everything without failing, else -EINVAL with a message. */
int vmr_finish(struct vmstate_reader *r);

struct vmstate_section {
    char name[64];
    const uint8_t *data;
    size_t len;
};

/* What the file records of the machine: enough to rebuild the same board. */
struct vmstate_config {
    struct vmm_config config; /* strings below are owned by the vmstate_file */
    uint64_t *disk_sizes;     /* bytes, per disk: the image must still have this size */
    char boot_how[128];
    char save_id[33]; /* "" in files older than the VM identity */
};

struct vmstate_file {
    uint32_t version;
    uint64_t memory;
    uint32_t vcpus;
    uint64_t state_len;  /* bytes of sections after the header */
    uint64_t ram_offset; /* page-aligned */
    struct vmstate_config cfg;
    struct vmstate_section *sections;
    size_t section_count;
    uint8_t *state; /* header + sections as read (sections point into it) */
    char **strings; /* everything cfg points to */
    size_t string_count;
};

/* Encode CONFIG (+ disk sizes, boot description) as the "config" section payload. SAVE_ID: this
 * save's own random id (hex), kept with the VM's name and uuid. */
void vmstate_config_write(struct vmstate_writer *w, const struct vmm_config *config,
                          const uint64_t *disk_sizes, const char *boot_how, const char *save_id);
/* Write the 48-byte header into OUT. */
void vmstate_header_write(uint8_t out[VMSTATE_HEADER_SIZE], uint64_t memory, uint32_t vcpus,
                          uint32_t sections, uint64_t state_len, uint64_t ram_offset);
/* Parse the header alone: the sizes to read next. -EINVAL with a message on a bad header. */
int vmstate_header_parse(const uint8_t *buf, size_t len, uint64_t *state_len, const char *name);
/* Parse header + sections (BUF, LEN bytes: exactly header + state_len) into F, taking ownership
 * of BUF (freed by vmstate_file_free even on failure). NAME prefixes messages. */
int vmstate_parse(uint8_t *buf, size_t len, struct vmstate_file *f, const char *name);
/* Check the file's size holds all of guest RAM. */
int vmstate_check_size(const struct vmstate_file *f, uint64_t file_size, const char *name);
/* Section NAME number NTH (0-based among equal names), or NULL. */
const struct vmstate_section *vmstate_find(const struct vmstate_file *f, const char *name,
                                           unsigned nth);
void vmstate_file_free(struct vmstate_file *f);

#endif
