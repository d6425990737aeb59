/*
 * lib/img/qcow2-compress.c — compressing and decompressing one qcow2 cluster: raw deflate with a
 * 4 KiB window (what qemu writes, so either tool reads the other's images) or a zstd frame.
 *
 * The idea: a compressed cluster is stored in whole 512-byte sectors and the bytes after the
 * stream are garbage, so decompression stops as soon as the cluster is full and never insists on
 * seeing the end of the stream.
 */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "img/qcow2.h"

static ssize_t deflate_cluster(void *out, size_t out_len, const void *in, size_t in_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    int zr = deflate(&z, Z_FINISH);
    ssize_t n = (ssize_t)(out_len - z.avail_out);
    deflateEnd(&z);
    if (zr != Z_STREAM_END)
        return -ENOSPC; /* did not fit: store uncompressed */
    return n;
}

static int inflate_cluster(void *out, size_t out_len, const void *in, size_t in_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    int zr = inflate(&z, Z_FINISH);
    size_t got = out_len - z.avail_out;
    inflateEnd(&z);
    if ((zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK) && got == out_len)
        return 0;
    return -EIO;
}

static ssize_t zstd_compress_cluster(void *out, size_t out_len, const void *in, size_t in_len)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (!cctx)
        return -ENOMEM;
    ZSTD_outBuffer ob = {out, out_len, 0};
    ZSTD_inBuffer ib = {in, in_len, 0};
    ssize_t ret;
    for (;;) {
        size_t r = ZSTD_compressStream2(cctx, &ob, &ib, ZSTD_e_end);
        if (ZSTD_isError(r)) {
            ret = ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
            break;
        }
        if (r == 0) {
            ret = (ssize_t)ob.pos;
            break;
        }
        if (ob.pos == ob.size) {
            ret = -ENOSPC;
            break;
        }
    }
    ZSTD_freeCCtx(cctx);
    return ret;
}

static int zstd_decompress_cluster(void *out, size_t out_len, const void *in, size_t in_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx)
        return -ENOMEM;
    ZSTD_outBuffer ob = {out, out_len, 0};
    ZSTD_inBuffer ib = {in, in_len, 0};
    int ret = -EIO;
    while (ob.pos < ob.size) {
        size_t last_in = ib.pos, last_out = ob.pos;
        size_t r = ZSTD_decompressStream(dctx, &ob, &ib);
        if (ZSTD_isError(r))
            break;
        if (ob.pos == ob.size) {
            ret = 0;
            break;
        }
        if (r == 0 || (ib.pos == last_in && ob.pos == last_out))
            break; /* frame ended short, or no progress possible */
    }
    ZSTD_freeDCtx(dctx);
    return ret;
}

ssize_t qcow2_compress(int type, void *out, size_t out_len, const void *in, size_t in_len)
{
    if (type == QCOW2_COMPRESSION_ZSTD)
        return zstd_compress_cluster(out, out_len, in, in_len);
    return deflate_cluster(out, out_len, in, in_len);
}

int qcow2_decompress(int type, void *out, size_t out_len, const void *in, size_t in_len)
{
    if (type == QCOW2_COMPRESSION_ZSTD)
        return zstd_decompress_cluster(out, out_len, in, in_len);
    return inflate_cluster(out, out_len, in, in_len);
}
