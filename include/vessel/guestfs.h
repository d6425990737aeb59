/*
 * vessel/guestfs.h — guest disks from outside: partition tables, ext2/3/4 files, boot configs.
 *
 * Everything sits on the image engine (vessel/img.h): a partition is a byte window of an open
 * image, and a filesystem is read and written through that window, so the same code works on raw,
 * qcow2, vmdk, vhd and on any overlay chain. Parsers of untrusted bytes (partition tables, boot
 * configs) take plain buffers or a read callback so they can be unit-tested and fuzzed alone.
 * Failures are negative errnos with a one-line message (vs_error_message()) naming the image,
 * partition, file and line.
 */
#ifndef VESSEL_GUESTFS_H
#define VESSEL_GUESTFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vessel/img.h"

/* ---- partition tables ------------------------------------------------------------------------ */

enum guestfs_scheme {
    GUESTFS_SCHEME_NONE, /* no table: the whole disk is partition 0 */
    GUESTFS_SCHEME_MBR,
    GUESTFS_SCHEME_GPT,
};

struct guestfs_part {
    unsigned number;  /* 1..4 primary, 5.. logical (MBR); 1.. (GPT); 0 = whole disk */
    uint64_t start;   /* bytes */
    uint64_t size;    /* bytes */
    uint8_t mbr_type; /* MBR system id (0 for GPT) */
    bool bootable;    /* MBR active flag */
    char type[40];    /* "0x83" or the GPT type GUID */
    char guid[40];    /* GPT unique partition GUID, "" for MBR */
    char name[80];    /* GPT name (UTF-8), or a description ("Linux", "whole") */
};

struct guestfs_table {
    enum guestfs_scheme scheme;
    uint32_t sector_size;
    bool gpt_used_backup; /* the primary GPT header was bad and the backup was used */
    size_t count;
    struct guestfs_part *parts;
};

/* Reads LEN bytes at OFFSET of the disk; 0 or -errno. */
typedef int (*guestfs_read_fn)(void *ctx, void *buf, uint64_t offset, size_t len);

/* Parse the table of a disk of DISK_SIZE bytes read through READ. NAME labels messages. Extended
 * partition chains are followed with loop detection and a bound on their length. */
int guestfs_parts_parse(guestfs_read_fn read, void *ctx, uint64_t disk_size, const char *name,
                        struct guestfs_table *out);
/* The same over an open image. */
int guestfs_parts_read(struct img *img, struct guestfs_table *out);
void guestfs_table_free(struct guestfs_table *table);
const char *guestfs_scheme_name(enum guestfs_scheme scheme);
/* The partition numbered NUMBER (0 = whole disk), or NULL. */
const struct guestfs_part *guestfs_table_find(const struct guestfs_table *table, unsigned number);

/* ---- ext2/3/4 filesystems -------------------------------------------------------------------- */

struct guestfs_fs;

/* Open the ext filesystem at [start, start+size) of IMG (LABEL names it in messages, e.g.
 * "disk.qcow2:1"). WRITABLE needs an image opened IMG_OPEN_RDWR. */
int guestfs_fs_open(struct img *img, uint64_t start, uint64_t size, const char *label,
                    bool writable, struct guestfs_fs **out);
/* Write back everything (for writable filesystems) and free. Returns the flush result. */
int guestfs_fs_close(struct guestfs_fs *fs);
/* Cheap check: does the window hold an ext2/3/4 superblock? Fills uuid ("xxxxxxxx-…") and
 * label when asked. */
bool guestfs_fs_probe(struct img *img, uint64_t start, uint64_t size, char *uuid, size_t uuid_len,
                      char *label, size_t label_len);

enum guestfs_fs_kind {
    GUESTFS_FS_NONE,
    GUESTFS_FS_EXT,
    GUESTFS_FS_FAT,
};
/* Which filesystem (if any) the window holds; ext wins over a stale FAT boot sector. */
enum guestfs_fs_kind guestfs_fs_kind(struct img *img, uint64_t start, uint64_t size);

struct guestfs_dirent {
    char *name;
    uint32_t ino;
    uint16_t mode; /* S_IF* | permissions */
    uint64_t size;
    int64_t mtime;
    char *link; /* symlink target or NULL */
};

int guestfs_fs_list(struct guestfs_fs *fs, const char *path, struct guestfs_dirent **entries,
                    size_t *count);
void guestfs_dirents_free(struct guestfs_dirent *entries, size_t count);
/* Read the file PATH into a new buffer (*data, *len); files above MAX bytes are -EFBIG. */
int guestfs_fs_read_file(struct guestfs_fs *fs, const char *path, size_t max, char **data,
                         size_t *len);
/* Copy the file PATH into the host fd FD. */
int guestfs_fs_read_to_fd(struct guestfs_fs *fs, const char *path, int fd);
/* Create or replace the regular file PATH with the content of the host fd FD (mode MODE). */
int guestfs_fs_write_from_fd(struct guestfs_fs *fs, const char *path, int fd, mode_t mode);
int guestfs_fs_write_file(struct guestfs_fs *fs, const char *path, const void *data, size_t len,
                          mode_t mode);
int guestfs_fs_mkdir(struct guestfs_fs *fs, const char *path, mode_t mode);
/* Remove a file, a symlink or an empty directory. */
int guestfs_fs_remove(struct guestfs_fs *fs, const char *path);
/* 1 when PATH exists, 0 when not, -errno on error. */
int guestfs_fs_exists(struct guestfs_fs *fs, const char *path);

/* ---- FAT12/16/32 filesystems, read-write (fat.c) --------------------------------------------- */

/* guestfs_fs_open/probe and the read functions above handle FAT partitions too (EFI system
 * partitions). Writing goes through guestfs_fat_open_img(…, writable) and the guestfs_fat_write*,
 * mkdir and remove calls below. The FAT layer over read/write callbacks is here for tests and
 * fuzzing. */
struct guestfs_fat;

/* Writes LEN bytes at OFFSET of the volume; 0 or -errno. */
typedef int (*guestfs_write_fn)(void *ctx, const void *buf, uint64_t offset, size_t len);

struct guestfs_fat_geometry {
    unsigned type; /* 12, 16, 32 (from the cluster count, as the spec says) */
    uint32_t bytes_per_sector;
    uint32_t cluster_size;
    uint64_t fat_offset; /* bytes from the start of the volume */
    uint64_t fat_bytes;  /* the part of one FAT that covers every cluster */
    uint64_t root_offset;
    uint32_t root_entries; /* FAT12/16 */
    uint32_t root_cluster; /* FAT32 */
    uint64_t data_offset;  /* cluster 2 */
    uint32_t cluster_count;
    uint32_t fat_count;     /* copies of the FAT */
    uint64_t fat_stride;    /* bytes from one copy to the next */
    uint64_t fsinfo_offset; /* FAT32 FSInfo sector (not yet validated), 0 if none */
    bool dirty;             /* the boot sector's "not cleanly unmounted" flag */
    uint32_t serial;
    char volume_label[12];
};

/* Validate a boot sector (LEN >= 512) of a volume in a window of PART_SIZE bytes. */
int guestfs_fat_parse_boot(const uint8_t *boot_sector, size_t len, uint64_t part_size,
                           const char *label, struct guestfs_fat_geometry *out);
/* READ reads at offsets relative to the volume start; SIZE bounds the volume. */
int guestfs_fat_open(guestfs_read_fn read, void *ctx, uint64_t size, const char *label,
                     struct guestfs_fat **out);
/* The same, writable through WRITE. A volume marked dirty (boot sector flag, or the FAT16/32
 * clean-shutdown bits in FAT[1]) is refused with -EUCLEAN, as an unclean ext is. */
int guestfs_fat_open_rw(guestfs_read_fn read, guestfs_write_fn write, void *ctx, uint64_t size,
                        const char *label, struct guestfs_fat **out);
/* The FAT volume at [start, start+size) of IMG through img_pread/img_pwrite. WRITABLE needs an
 * image opened IMG_OPEN_RDWR. Every write call below reaches the image before it returns. */
int guestfs_fat_open_img(struct img *img, uint64_t start, uint64_t size, const char *label,
                         bool writable, struct guestfs_fat **out);
void guestfs_fat_close(struct guestfs_fat *fat);
/* The volume serial as "ABCD-1234" (what grub's search --fs-uuid names) and the label. */
void guestfs_fat_id(const struct guestfs_fat *fat, char *uuid, size_t uuid_len, char *label,
                    size_t label_len);
int guestfs_fat_list(struct guestfs_fat *fat, const char *path, struct guestfs_dirent **entries,
                     size_t *count);
int guestfs_fat_read_file(struct guestfs_fat *fat, const char *path, size_t max, char **data,
                          size_t *len);
int guestfs_fat_read_to_fd(struct guestfs_fat *fat, const char *path, int fd);
int guestfs_fat_exists(struct guestfs_fat *fat, const char *path);
/* Create or replace the file PATH (a replaced file keeps its names). New names get a VFAT long
 * name and a unique NAME~N.EXT alias unless they are valid 8.3 names. A full volume is -ENOSPC
 * with the volume unchanged. */
int guestfs_fat_write_file(struct guestfs_fat *fat, const char *path, const void *data, size_t len);
int guestfs_fat_write_from_fd(struct guestfs_fat *fat, const char *path, int fd);
int guestfs_fat_mkdir(struct guestfs_fat *fat, const char *path);
/* Remove a file or an empty directory. */
int guestfs_fat_remove(struct guestfs_fat *fat, const char *path);
/* Free space of a volume opened for writing (0 for a read-only one). */
uint64_t guestfs_fat_free_bytes(const struct guestfs_fat *fat);

/* ---- boot configuration (vessel's pygrub) ---------------------------------------------------- */

enum guestfs_boot_kind {
    GUESTFS_BOOT_GRUB2,
    GUESTFS_BOOT_GRUB_LEGACY,
    GUESTFS_BOOT_EXTLINUX,
};

struct guestfs_boot_entry {
    char *title;      /* for submenu children: "Submenu>Child" */
    char *id;         /* grub2 --id, extlinux LABEL; may be NULL */
    char *kernel;     /* path on its partition, device prefix removed */
    char *initrd;     /* NULL when none */
    char *cmdline;    /* "" when none */
    int part;         /* partition number from (hdX,Y), or -1: the partition the config is on */
    char *root_uuid;  /* from `search --fs-uuid --set=root`, or NULL */
    char *root_label; /* from `search --label --set=root`, or NULL */
    char *position;   /* grub2 "1>2" style index path; top-level entries "N" */
    unsigned line;    /* where the entry starts */
};

struct guestfs_bootcfg {
    enum guestfs_boot_kind kind;
    size_t count;
    struct guestfs_boot_entry *entries;
    char *default_spec; /* as written ("0", "1>2", a title, a label), or NULL */
    int timeout;        /* seconds, -1 when not set */
};

/* Parse TEXT (LEN bytes, need not be NUL-terminated). FILENAME names it in messages ("grub.cfg
 * line 12: unterminated quote"). GRUBENV (may be NULL) is the grubenv block, for saved_entry. */
int guestfs_bootcfg_parse(enum guestfs_boot_kind kind, const char *text, size_t len,
                          const char *filename, const char *grubenv, size_t grubenv_len,
                          struct guestfs_bootcfg **out);
/* Choose NAME (a title, id, "A>B" title path, index or index path), or the default when NAME is
 * NULL (falling back to the first entry when the default names nothing). */
int guestfs_bootcfg_choose(const struct guestfs_bootcfg *cfg, const char *name, size_t *index);
void guestfs_bootcfg_free(struct guestfs_bootcfg *cfg);
const char *guestfs_boot_kind_name(enum guestfs_boot_kind kind);

/* ---- whole-image helpers (inspect.c) --------------------------------------------------------- */

struct guestfs_bootinfo {
    char *config_path; /* "/boot/grub/grub.cfg" */
    unsigned config_part;
    enum guestfs_boot_kind kind;
    char *title;
    unsigned part; /* the partition holding kernel and initrd */
    char *kernel;
    char *initrd; /* NULL when none */
    char *cmdline;
};

/* Find a boot config on any partition of IMG and choose ENTRY (NULL = default). */
int guestfs_bootinfo(struct img *img, const struct guestfs_table *table, const char *entry,
                     struct guestfs_bootinfo *out);
void guestfs_bootinfo_free(struct guestfs_bootinfo *info);

struct guestfs_os {
    unsigned root_part;
    char *id;       /* os-release ID ("ubuntu"), or "debian"/"rhel" from the fallbacks */
    char *name;     /* PRETTY_NAME or the release file's line */
    char *version;  /* VERSION_ID, or NULL */
    char **kernels; /* /boot/vmlinu[xz]-* paths (on the partition holding them) */
    size_t kernel_count;
    unsigned kernel_part;
};

/* Look for an OS root (a partition with /etc/os-release and friends) and its kernels. -ENOENT
 * when none is found. */
int guestfs_inspect_os(struct img *img, const struct guestfs_table *table, struct guestfs_os *out);
void guestfs_os_free(struct guestfs_os *os);

/* ---- boot from disk (bootdisk.c) ------------------------------------------------------------- */

/* A chosen boot entry with its kernel and initrd copied out of the disk into memory files. */
struct guestfs_bootload {
    struct guestfs_bootinfo info;
    int kernel_fd;        /* memfd holding the kernel */
    int initrd_fd;        /* memfd holding the initrd, -1 when none */
    char kernel_path[32]; /* "/proc/self/fd/N": loadable like any host file */
    char initrd_path[32]; /* "" when none */
    char *cmdline;        /* the entry's command line, then EXTRA_CMDLINE */
};

/* Open DISK (FORMAT NULL = probe), find its boot config, choose ENTRY (NULL = default) and copy
 * the kernel (at most 256 MiB) and initrd (at most 2 GiB) out. Errors name the disk, the
 * partition, the config file and line, or the missing kernel/initrd. */
int guestfs_boot_load(const char *disk, const char *format, const char *entry,
                      const char *extra_cmdline, struct guestfs_bootload *out);
void guestfs_bootload_free(struct guestfs_bootload *b);

#endif
