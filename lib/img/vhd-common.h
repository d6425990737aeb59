/*
 * lib/img/vhd-common.h — pieces the VHD, VHDX and VDI drivers share: UTF-16 names, GUIDs,
 * Castagnoli CRC32C, finding a parent disk from the paths a child stores, writing a fresh block
 * sparsely, counting the blocks measure must allow for, and check's report lines.
 *
 * The idea: Microsoft's two formats locate their parent the same way (a relative path first, then
 * an absolute one, each stored as UTF-16 with Windows separators), so the search and the text
 * conversions live here once and each driver only says which strings its file holds.
 */
#ifndef VESSEL_IMG_VHD_COMMON_H
#define VESSEL_IMG_VHD_COMMON_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vessel/util.h"

/* UTF-16 (little or big endian) of LEN bytes to a malloc'd UTF-8 string; stops at a NUL unit.
 * NULL (error set) on malformed surrogates. */
char *vhd_utf16_to_utf8(const uint8_t *src, size_t len, bool big_endian);
/* UTF-8 to UTF-16 into DST (capacity CAP bytes). Returns bytes written or -EINVAL if it does not
 * fit or is not UTF-8. */
int vhd_utf8_to_utf16(const char *src, uint8_t *dst, size_t cap, bool big_endian);

/* 16 random bytes shaped as an RFC 4122 version 4 GUID. */
void vhd_guid_generate(uint8_t guid[16]);
/* "xxxxxxxx-xxxx-…" of the 16 bytes as stored (no byte swapping); BUF holds 37 bytes. */
void vhd_guid_format(const uint8_t guid[16], char buf[37]);

/* CRC-32C (Castagnoli) as VHDX uses it: initial ~0, final xor ~0. */
uint32_t vhd_crc32c(uint32_t crc, const void *buf, size_t len);

/* Turn a stored Windows-style path (".\dir\x.vhd", "C:\x.vhd") into a POSIX one in place:
 * backslashes become slashes and a leading "./" is dropped. */
void vhd_path_from_windows(char *path);
/* Relative path from directory FROM_DIR to file TO (both absolute, canonical). malloc'd. */
char *vhd_relative_path(const char *from_dir, const char *to);

/* The parent search of VHD and VHDX: CANDIDATES (NULL entries skipped) are tried in order, a
 * relative one relative to CHILD's directory. Returns the index of the first that exists and
 * sets *found to the name the core should open (relative names stay relative), or -ENOENT. */
int vhd_find_parent(const char *child, const char *const *candidates, size_t count, char **found);

/* Refine a "data at HOST" answer with the container file's holes: a hole inside an allocated
 * block reads as zeros, so converters and mappers can skip it. Returns IMG_DS_DATA or
 * IMG_DS_ZERO with *pnum (<= LEN) set; FILE is the protocol node. The last extent found is
 * cached (some file systems, tmpfs among them, find a hole by walking every page), and
 * vhd_extent_cache_reset() forgets it whenever the driver writes. */
struct img;
struct vhd_extent_cache {
    pthread_mutex_t lock;
    uint64_t lo, hi; /* [lo, hi) of the container has status 'status' */
    int status;
};
void vhd_extent_cache_init(struct vhd_extent_cache *c);
void vhd_extent_cache_destroy(struct vhd_extent_cache *c);
void vhd_extent_cache_reset(struct vhd_extent_cache *c);
int vhd_file_status(struct img *file, struct vhd_extent_cache *c, uint64_t host, uint64_t len,
                    uint64_t *pnum);

/* Write BUF (LEN bytes) at AT of the protocol node FILE, leaving out all-zero 4 KiB pages: a
 * freshly reserved block's file space is still a hole, so converting sparse data keeps the file
 * sparse inside blocks too. */
/* Make FILE reach the end of a newly allocated block [BLOCK, BLOCK+BLOCK_SIZE) without ever
 * shrinking it: other writers may be filling blocks further out right now, and ftruncate would
 * cut their data. Writes the block's own last byte with the value it must hold (from BUF when
 * the write [IN, IN+LEN) reaches it, else zero). */
int vhd_cover_block_end(struct img *file, uint64_t block, uint64_t block_size, const uint8_t *buf,
                        uint64_t in, size_t len);
int vhd_write_nonzero(struct img *file, const uint8_t *buf, uint64_t at, size_t len);

/* Writes one piece that lies inside a single block of the format. */
typedef int (*vhd_block_write_fn)(struct img *img, const uint8_t *buf, uint64_t offset, size_t len);
/* The block formats' pwrite: split [OFFSET, OFFSET+LEN) at BLOCK_SIZE boundaries and hand each
 * piece to WRITE_BLOCK. Writes turn holes into data, so the cached container extent HOLES is
 * forgotten before and after. */
int vhd_pwrite_split(struct img *img, struct vhd_extent_cache *holes, uint64_t block_size,
                     const void *buf, uint64_t offset, size_t len, vhd_block_write_fn write_block);

/* For measure: how many BLOCK_SIZE blocks of SOURCE's first SIZE bytes hold anything but zeros
 * (through the backing chain) — the blocks a converted copy of SOURCE would allocate. */
int vhd_count_data_blocks(struct img *source, uint64_t size, uint64_t block_size, uint64_t *count);

/* One line of a check report, through the caller's report callback when it has one. */
struct img_check;
void vhd_check_report(struct img_check *r, const char *fmt, ...) VS_PRINTF(2, 3);

#endif
