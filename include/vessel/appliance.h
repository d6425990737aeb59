/*
 * vessel/appliance.h — appliances in and out: OVF descriptors and their manifests, OVA archives,
 * XenServer XVA archives, and P2V (a physical disk or any file into a sparse image).
 *
 * The idea: every foreign appliance is first turned into one small struct (struct
 * appliance_system: name, CPUs, memory, disks with their files, NICs with networks and MACs) by a
 * parser that trusts nothing, and the disks are moved by the image engine (img_convert), so OVF,
 * OVA and XVA differ only in how they find the descriptor and the disk bytes. Archives are never
 * extracted by their own paths: every tar entry name is checked (no '..', no absolute path, no
 * link) before a byte is written, and everything lands inside the target directory.
 */
#ifndef VESSEL_APPLIANCE_H
#define VESSEL_APPLIANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vessel/defs.h"
#include "vessel/img.h"

/* ---- manifests (.mf) ------------------------------------------------------------------------ */

enum appliance_digest_algo { APPLIANCE_SHA1, APPLIANCE_SHA256 };

#define APPLIANCE_DIGEST_MAX 32

struct appliance_manifest_entry {
    enum appliance_digest_algo algo;
    char *file; /* as written between the parentheses */
    unsigned char digest[APPLIANCE_DIGEST_MAX];
    size_t digest_len; /* 20 or 32 */
    int line;
};

struct appliance_manifest {
    struct appliance_manifest_entry *entries;
    size_t count;
};

/* Parse "SHA256(disk1.vmdk)= 3f…" lines (SHA1 too; blanks around '=' and CRLF accepted). Errors
 * name SOURCE and the line: "x.mf: line 3: digest: 63 hex digits, SHA256 needs 64". */
int appliance_manifest_parse(const char *text, size_t len, const char *source,
                             struct appliance_manifest *out);
void appliance_manifest_free(struct appliance_manifest *m);
/* The entry for FILE, or NULL. */
const struct appliance_manifest_entry *appliance_manifest_find(const struct appliance_manifest *m,
                                                               const char *file);
/* Digest of the file at PATH. */
int appliance_file_digest(const char *path, enum appliance_digest_algo algo,
                          unsigned char out[APPLIANCE_DIGEST_MAX], size_t *out_len);
const char *appliance_digest_name(enum appliance_digest_algo algo); /* "SHA1", "SHA256" */

/* ---- OVF descriptors ------------------------------------------------------------------------- */

struct appliance_disk {
    char *id;           /* DiskSection ovf:diskId */
    char *href;         /* the file (References ovf:href), a plain name in the same directory */
    uint64_t file_size; /* References ovf:size, 0 when absent */
    uint64_t capacity;  /* virtual size in bytes */
    enum vm_disk_bus bus;
};

struct appliance_nic {
    char *network; /* NULL: not connected to a named network */
    char mac[18];  /* "" when the descriptor has none */
    enum vm_nic_model model;
};

struct appliance_system {
    char *name; /* a valid vessel VM name (sanitised) */
    unsigned vcpus;
    uint64_t memory; /* bytes, whole MiB */
    struct appliance_disk *disks;
    size_t disk_count;
    struct appliance_nic *nics;
    size_t nic_count;
};

/* Parse an OVF 1.x/2.x descriptor (libxml2, no network, no entities). The first VirtualSystem
 * is taken. Every error names SOURCE and the element or attribute. */
int appliance_ovf_parse(const char *xml, size_t len, const char *source,
                        struct appliance_system **out);
/* An OVF 1.0 descriptor (malloc'd, NUL-terminated), or NULL with the error set. */
char *appliance_ovf_write(const struct appliance_system *sys);
void appliance_system_free(struct appliance_system *sys);

/* ---- export / import ------------------------------------------------------------------------- */

/* Export the VM described by the definition file DEF_PATH: disks as streamOptimized VMDK, an OVF
 * descriptor and a SHA256 manifest. ARCHIVE: OUT is the .ova (tar, descriptor first); else OUT is
 * a directory (created when missing). */
int appliance_export(const char *def_path, const char *out, bool archive, img_progress_fn progress,
                     void *progress_ctx);

struct appliance_import_params {
    const char *file;   /* the .ova, .ovf or .xva */
    const char *dir;    /* where disks and NAME.vm go; NULL = "." */
    const char *format; /* disk format; NULL = qcow2 */
    img_progress_fn progress;
    void *progress_ctx;
};

/* Each writes DIR/NAME-diskN.FORMAT and DIR/NAME.vm; *def_path (malloc'd) names the latter. */
int appliance_import_ovf(const struct appliance_import_params *params, char **def_path);
int appliance_import_ova(const struct appliance_import_params *params, char **def_path);
int appliance_import_xva(const struct appliance_import_params *params, char **def_path);

/* XenServer ova.xml (the XVA's descriptor) into a system; disk ids are the VDI refs ("Ref:3"),
 * hrefs NULL. */
int appliance_xva_parse(const char *xml, size_t len, const char *source,
                        struct appliance_system **out);

/* ---- P2V ------------------------------------------------------------------------------------- */

struct appliance_p2v_params {
    const char *source;
    const char *target;
    const char *format; /* NULL: from the target's extension, else qcow2 */
    bool force;         /* copy even when the source is mounted read-write */
    img_progress_fn progress;
    void *progress_ctx;
};

/* 1 when the block device PATH (or a partition of it) is mounted read-write, with the mount
 * point copied to MOUNTPOINT; 0 when not (or PATH is not a block device); negative errno. */
int appliance_mounted_rw(const char *path, char *mountpoint, size_t len);
int appliance_p2v(const struct appliance_p2v_params *params);

#endif
