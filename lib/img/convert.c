/*
 * lib/img/convert.c — qemu-img convert: copy one or more images, concatenated, into a new or an
 * existing image of any format, keeping it sparse.
 *
 * The idea: the target's address space is cut into cluster-aligned chunks that worker threads
 * claim from one atomic counter. A worker classifies its chunk per target cluster with block
 * status (skip / zero / data), reads only the data, drops the all-zero blocks it finds, and writes
 * (or compresses) the rest — so reading, scanning, compressing and writing all run in parallel,
 * and no two threads ever touch the same target cluster.
 *
 * Data is never copied twice: where block status says a source range is plain bytes at a host
 * offset (raw, uncompressed qcow2/vmdk/vhd… clusters), the source file is mapped and the zero scan
 * and the target write work straight from the page cache — one copy, where read+write takes two.
 * With zero detection off (-S 0), plain raw to plain raw uses copy_file_range instead.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vessel/img.h"

#define CONVERT_CHUNK_MIN (2u << 20)

enum {
    CONVERT_SKIP = 1 << 0, /* -B: the target's backing provides it */
    CONVERT_ZERO = 1 << 1,
    CONVERT_DATA = 1 << 2,
};

struct convert_source {
    struct img *img;
    uint64_t start; /* where it begins in the target */
    uint64_t size;
    int fd; /* plain raw file, or -1 */
};

/* A source file mapped read-only, shared by the workers. */
struct convert_map {
    int fd;
    const uint8_t *base; /* NULL: this fd can't be mapped */
    uint64_t size;
};

#define CONVERT_MAPS_MAX 32

struct convert_job {
    const struct img_convert_params *params;
    struct convert_source *sources;
    size_t source_count;
    struct img *target;
    int target_fd;
    uint64_t total;
    uint64_t chunk;  /* bytes per work item, a multiple of unit and grain */
    uint64_t unit;   /* target cluster (classification granularity) */
    uint64_t grain;  /* zero-detection granularity (-S rounded to unit), 0 = none */
    bool reads_zero; /* unwritten target ranges read as zeros */
    bool layer_only; /* -B: copy only what the sources' top layers allocate */
    bool compress;
    atomic_bool offload; /* copy_file_range still worth trying */
    bool map_sources;    /* read plain extents through mappings of the source files */
    struct convert_map maps[CONVERT_MAPS_MAX];
    size_t map_count;
    atomic_uint_fast64_t next_chunk;
    atomic_uint_fast64_t done;
    atomic_int failed;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned running;
    int err;
    char *errmsg;
};

#define CONVERT_EXTENTS_MAX 64

/* A source extent seen while classifying a chunk, by target offset (block status is not free:
 * a raw source answers it with two lseeks; each chunk asks once per extent). */
struct convert_extent {
    uint64_t offset; /* target offset */
    uint64_t length;
    struct img_extent ext;
};

struct convert_worker {
    struct convert_job *job;
    pthread_t thread;
    uint8_t *buf;
    uint8_t *classes; /* one per unit of the chunk */
    struct convert_extent extents[CONVERT_EXTENTS_MAX];
    size_t extent_count;
};

void img_convert_params_init(struct img_convert_params *params)
{
    memset(params, 0, sizeof(*params));
    /* I/O-bound, so some more workers than cores; more than 2 per core only adds lock waits */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    params->workers = cpus < 1 ? 2 : (unsigned)VS_MIN(8, VS_MAX(2, 2 * cpus));
    params->sparse_size = 4096;
}

static void convert_fail(struct convert_job *job, int err)
{
    pthread_mutex_lock(&job->lock);
    if (!job->err) {
        job->err = err;
        job->errmsg = vs_strdup(vs_error_message()[0] ? vs_error_message() : strerror(-err));
    }
    pthread_mutex_unlock(&job->lock);
    atomic_store(&job->failed, 1);
}

/* The source holding target offset OFF. */
static struct convert_source *convert_source_at(struct convert_job *job, uint64_t off)
{
    size_t lo = 0, hi = job->source_count;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (job->sources[mid].start <= off)
            lo = mid;
        else
            hi = mid;
    }
    return &job->sources[lo];
}

/* Read target range [off, off+len) from the concatenated sources. */
static int convert_read(struct convert_job *job, uint8_t *buf, uint64_t off, uint64_t len)
{
    while (len) {
        struct convert_source *s = convert_source_at(job, off);
        uint64_t n = VS_MIN(len, s->start + s->size - off);
        int rc = img_pread(s->img, buf, off - s->start, n);
        if (rc)
            return rc;
        buf += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* copy_file_range [off, off+len) from the raw sources to the raw target; -ENOTSUP to fall back. */
static int convert_offload(struct convert_job *job, uint64_t off, uint64_t len)
{
    while (len) {
        struct convert_source *s = convert_source_at(job, off);
        uint64_t n = VS_MIN(len, s->start + s->size - off);
        loff_t in = (loff_t)(off - s->start), out = (loff_t)off;
        uint64_t left = n;
        while (left) {
            ssize_t r = copy_file_range(s->fd, &in, job->target_fd, &out, left, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
                          errno == EOPNOTSUPP || errno == EBADF)) {
                atomic_store(&job->offload, false);
                return -ENOTSUP;
            }
            if (r < 0)
                return vs_error_errno(-errno, "%s: copy_file_range", img_filename(s->img));
            if (r == 0) { /* source file shorter than it claims: let the slow path zero-fill */
                atomic_store(&job->offload, false);
                return -ENOTSUP;
            }
            left -= (uint64_t)r;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static int convert_zero(struct convert_job *job, uint64_t off, uint64_t len)
{
    if (job->reads_zero || !len)
        return 0;
    return img_write_zeroes(job->target, off, len, IMG_ZERO_MAY_UNMAP);
}

/* Write buf (target range [off, off+len)), leaving all-zero grains out. */
static int convert_write(struct convert_job *job, const uint8_t *buf, uint64_t off, uint64_t len)
{
    if (job->compress) {
        for (uint64_t p = 0; p < len; p += job->unit) {
            uint64_t n = VS_MIN(job->unit, len - p);
            int rc;
            if (job->grain && vs_buffer_is_zero(buf + p, n))
                rc = convert_zero(job, off + p, n);
            else
                rc = img_pwrite_compressed(job->target, buf + p, off + p, n);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (!job->grain)
        return img_pwrite(job->target, buf, off, len);
    /* runs of equal "zero-ness", grains aligned to absolute offsets */
    uint64_t p = 0;
    while (p < len) {
        uint64_t g = VS_MIN(VS_ALIGN_UP(off + p + 1, job->grain) - (off + p), len - p);
        bool zero = vs_buffer_is_zero(buf + p, g);
        uint64_t q = p + g;
        while (q < len) {
            uint64_t h = VS_MIN(job->grain, len - q);
            if (vs_buffer_is_zero(buf + q, h) != zero)
                break;
            q += h;
        }
        int rc = zero ? convert_zero(job, off + p, q - p)
                      : img_pwrite(job->target, buf + p, off + p, q - p);
        if (rc)
            return rc;
        p = q;
    }
    return 0;
}

/* Bytes [host, host+len) of LAYER's host file as a pointer into a read-only mapping, or NULL when
 * that file can't be mapped (not a regular file, range beyond its end, mmap refused). */
static const uint8_t *convert_mapped(struct convert_job *job, struct img *layer, uint64_t host,
                                     uint64_t len)
{
    int fd = img_host_fd(layer);
    if (fd < 0)
        return NULL;
    pthread_mutex_lock(&job->lock);
    struct convert_map *m = NULL;
    for (size_t i = 0; i < job->map_count; i++)
        if (job->maps[i].fd == fd)
            m = &job->maps[i];
    if (!m && job->map_count < CONVERT_MAPS_MAX) {
        m = &job->maps[job->map_count++];
        m->fd = fd;
        m->base = NULL;
        m->size = 0;
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
            void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
            if (p != MAP_FAILED) {
                m->base = p;
                m->size = (uint64_t)st.st_size;
            }
        }
    }
    pthread_mutex_unlock(&job->lock);
    if (!m || !m->base || host > m->size || len > m->size - host)
        return NULL;
    return m->base + host;
}

/* Where [off, off+len) can be read straight from a mapped source file: the extent the chunk's
 * classification saw at OFF (not recorded past the 64th) when it is plain bytes at a host
 * offset, with *n set to how much of the range it covers; NULL otherwise. */
static const uint8_t *convert_mapped_at(struct convert_worker *w, uint64_t off, uint64_t len,
                                        uint64_t *n)
{
    const struct convert_extent *e = NULL;
    for (size_t i = 0; i < w->extent_count && !e; i++)
        if (w->extents[i].offset <= off && off < w->extents[i].offset + w->extents[i].length)
            e = &w->extents[i];
    if (!e)
        return NULL;
    const struct img_extent *x = &e->ext;
    if (!(x->flags & IMG_STATUS_DATA) || !(x->flags & IMG_STATUS_OFFSET) ||
        (x->flags & IMG_STATUS_COMPRESSED) || !x->layer)
        return NULL;
    *n = VS_MIN(len, e->offset + e->length - off);
    return convert_mapped(w->job, x->layer, x->host_offset + (off - e->offset), *n);
}

/* Copy DATA-class target range [off, off+len) (whole target units). Pieces that plain source
 * extents cover come straight from the mapped source files; the rest through img_pread into
 * BUF. A piece ends only on a unit boundary — some targets (streamOptimized VMDK) take each unit
 * once, whole — so a unit that mixes sources or a non-plain extent is read as a whole. */
static int convert_data(struct convert_worker *w, uint64_t off, uint64_t len)
{
    struct convert_job *job = w->job;
    uint64_t end = off + len;
    while (off < end) {
        uint64_t n = 0;
        const uint8_t *p = convert_mapped_at(w, off, end - off, &n);
        if (p && (off + n == end || n >= job->unit)) {
            if (off + n < end)
                n -= (off + n) % job->unit; /* split on a unit boundary */
            int rc = convert_write(job, p, off, n);
            if (rc)
                return rc;
            off += n;
            continue;
        }
        /* not mapped: read up to the next unit boundary where a mapped extent starts */
        uint64_t q = VS_MIN(end, VS_ALIGN_UP(off + 1, job->unit));
        while (q < end) {
            uint64_t m = 0;
            if (convert_mapped_at(w, q, end - q, &m))
                break;
            q = VS_MIN(end, q + job->unit);
        }
        uint64_t chunk = VS_MIN(q - off, job->chunk);
        int rc = convert_read(job, w->buf, off, chunk);
        if (!rc)
            rc = convert_write(job, w->buf, off, chunk);
        if (rc)
            return rc;
        off += chunk;
    }
    return 0;
}

/* Mark the units of the chunk starting at CS that [off, off+len) touches with CLS. */
static void convert_mark(struct convert_worker *w, uint64_t cs, uint64_t off, uint64_t len,
                         uint8_t cls)
{
    uint64_t unit = w->job->unit;
    uint64_t first = (off - cs) / unit, last = (off + len - 1 - cs) / unit;
    for (uint64_t u = first; u <= last; u++)
        w->classes[u] |= cls;
}

static uint8_t convert_class_of(const struct convert_job *job, const struct img_extent *ext)
{
    if (job->layer_only) {
        if (!(ext->flags & IMG_STATUS_ALLOCATED))
            return CONVERT_SKIP;
        return (ext->flags & IMG_STATUS_ZERO) ? CONVERT_ZERO : CONVERT_DATA;
    }
    if (ext->flags & IMG_STATUS_ZERO)
        return CONVERT_ZERO;
    if (ext->flags & IMG_STATUS_DATA)
        return CONVERT_DATA;
    return ext->layer ? CONVERT_DATA : CONVERT_ZERO; /* unknown: read it */
}

/* A unit's final class: data wins; skip mixed with zero must be read through the chain. */
static uint8_t convert_resolve(const struct convert_job *job, uint8_t bits)
{
    if ((bits & CONVERT_DATA) || ((bits & CONVERT_SKIP) && (bits & CONVERT_ZERO)))
        return CONVERT_DATA;
    if (bits & CONVERT_ZERO)
        return job->grain ? CONVERT_ZERO : CONVERT_DATA; /* -S 0: allocate everything */
    return CONVERT_SKIP;
}

/* A long run that needs no work (zeros on a target that reads zeros, or -B ranges the backing
 * provides) is skipped whole: the shared chunk counter jumps past it, instead of the workers
 * walking a 4 TiB hole 2 MiB at a time. EXT is the status at CS, asked up to the source's end.
 * Returns the bytes of the chunks this call skipped. */
static uint64_t convert_skip_run(struct convert_job *job, uint64_t cs, const struct img_extent *ext)
{
    uint8_t cls = convert_resolve(job, convert_class_of(job, ext));
    if (!(cls == CONVERT_SKIP || (cls == CONVERT_ZERO && job->reads_zero)))
        return 0;
    uint64_t end_chunk = (cs + ext->length) / job->chunk;
    uint_fast64_t cur = atomic_load(&job->next_chunk);
    while (cur < end_chunk) {
        if (atomic_compare_exchange_weak(&job->next_chunk, &cur, end_chunk))
            return (end_chunk - cur) * job->chunk;
    }
    return 0;
}

static int convert_chunk(struct convert_worker *w, uint64_t cs, uint64_t ce)
{
    struct convert_job *job = w->job;
    uint64_t units = VS_DIV_ROUND_UP(ce - cs, job->unit);
    memset(w->classes, 0, units);
    w->extent_count = 0;
    for (uint64_t off = cs; off < ce;) {
        struct convert_source *s = convert_source_at(job, off);
        /* the first question reaches to the source's end, so a long hole is seen whole */
        uint64_t n = (off == cs ? s->start + s->size : VS_MIN(ce, s->start + s->size)) - off;
        struct img_extent ext;
        int rc = job->layer_only ? img_block_status_layer(s->img, off - s->start, n, &ext)
                                 : img_block_status(s->img, off - s->start, n, &ext);
        if (rc)
            return rc;
        if (off == cs) {
            uint64_t skipped = convert_skip_run(job, cs, &ext);
            if (skipped)
                atomic_fetch_add(&job->done, skipped);
        }
        uint64_t len = VS_MIN(VS_MIN(ext.length, n), ce - off);
        convert_mark(w, cs, off, len, convert_class_of(job, &ext));
        if (w->extent_count < CONVERT_EXTENTS_MAX)
            w->extents[w->extent_count++] =
                (struct convert_extent){.offset = off, .length = len, .ext = ext};
        off += len;
    }
    for (uint64_t u = 0; u < units;) {
        uint8_t cls = convert_resolve(job, w->classes[u]);
        uint64_t v = u + 1;
        while (v < units && convert_resolve(job, w->classes[v]) == cls)
            v++;
        uint64_t off = cs + u * job->unit, end = VS_MIN(ce, cs + v * job->unit);
        int rc = 0;
        if (cls == CONVERT_ZERO) {
            rc = convert_zero(job, off, end - off);
        } else if (cls == CONVERT_DATA) {
            rc = -ENOTSUP;
            if (atomic_load(&job->offload))
                rc = convert_offload(job, off, end - off);
            if (rc == -ENOTSUP && job->map_sources) {
                rc = convert_data(w, off, end - off);
            } else if (rc == -ENOTSUP) {
                rc = convert_read(job, w->buf, off, end - off);
                if (!rc)
                    rc = convert_write(job, w->buf, off, end - off);
            }
        }
        if (rc)
            return rc;
        u = v;
    }
    return 0;
}

static void *convert_worker_main(void *arg)
{
    struct convert_worker *w = arg;
    struct convert_job *job = w->job;
    uint64_t chunks = VS_DIV_ROUND_UP(job->total, job->chunk);
    while (!atomic_load(&job->failed)) {
        uint64_t i = atomic_fetch_add(&job->next_chunk, 1);
        if (i >= chunks)
            break;
        uint64_t cs = i * job->chunk, ce = VS_MIN(job->total, cs + job->chunk);
        int rc = convert_chunk(w, cs, ce);
        if (rc) {
            convert_fail(job, rc);
            break;
        }
        atomic_fetch_add(&job->done, ce - cs);
    }
    pthread_mutex_lock(&job->lock);
    job->running--;
    pthread_cond_signal(&job->cond);
    pthread_mutex_unlock(&job->lock);
    return NULL;
}

static void convert_report(struct convert_job *job)
{
    if (job->params->progress)
        job->params->progress(job->params->progress_ctx, atomic_load(&job->done), job->total);
}

int img_convert_images(struct img *const *sources, size_t count, struct img *target,
                       bool target_reads_zero, const struct img_convert_params *params)
{
    if (!count)
        return vs_error(-EINVAL, "no source image");
    struct convert_job job = {.params = params,
                              .target = target,
                              .reads_zero = target_reads_zero,
                              .layer_only = params->backing_file && params->backing_file[0],
                              .compress = params->compress};
    job.sources = vs_calloc(count, sizeof(*job.sources));
    if (!job.sources)
        return -ENOMEM;
    job.source_count = count;
    bool all_raw = true;
    for (size_t i = 0; i < count; i++) {
        job.sources[i].img = sources[i];
        job.sources[i].start = job.total;
        job.sources[i].size = img_size(sources[i]);
        job.sources[i].fd = img_raw_fd(sources[i]);
        job.total += job.sources[i].size;
        all_raw = all_raw && job.sources[i].fd >= 0;
    }
    int rc = 0;
    if (img_size(target) < job.total) {
        rc = vs_error(-EINVAL, "%s: target is smaller (%llu bytes) than the source (%llu bytes)",
                      img_filename(target), (unsigned long long)img_size(target),
                      (unsigned long long)job.total);
        goto out;
    }
    uint32_t cluster = img_cluster_size(target);
    if (job.compress && !cluster) {
        rc = vs_error(-ENOTSUP, "%s: compression not supported for the %s format",
                      img_filename(target), img_format(target));
        goto out;
    }
    job.target_fd = img_raw_fd(target);
    /* copy_file_range copies zero blocks too: only when zero detection is off (-S 0) */
    atomic_init(&job.offload,
                all_raw && job.target_fd >= 0 && !job.compress && !params->sparse_size);
    /* Mapped reads need whole-unit writes to be optional (not -c), the chain's view (not -B),
     * and a source nobody can truncate under us (-U shares it with writers: read instead). */
    job.map_sources =
        !job.compress && !job.layer_only && !(params->source_flags & IMG_OPEN_NO_LOCK);
    /* classify per target cluster, or finer where the format fills blocks in sparsely: then the
     * zeros inside a block are skipped as well, not written */
    uint32_t wunit = img_write_unit(target);
    job.unit = job.compress ? cluster : wunit ? wunit : 512;
    if (params->sparse_size) {
        job.grain = VS_ALIGN_UP(VS_MAX(params->sparse_size, job.unit), job.unit);
        if (job.compress)
            job.grain = job.unit;
    }
    job.chunk = VS_ALIGN_UP(CONVERT_CHUNK_MIN, job.unit);
    if (job.grain)
        job.chunk = VS_ALIGN_UP(VS_MAX(job.chunk, job.grain), job.grain);
    atomic_init(&job.next_chunk, 0);
    atomic_init(&job.done, 0);
    atomic_init(&job.failed, 0);
    pthread_mutex_init(&job.lock, NULL);
    pthread_cond_init(&job.cond, NULL);

    uint64_t chunks = VS_DIV_ROUND_UP(job.total, job.chunk);
    unsigned nworkers = params->workers ? params->workers : 1;
    if (nworkers > chunks)
        nworkers = chunks ? (unsigned)chunks : 1;
    struct convert_worker *workers = vs_calloc(nworkers, sizeof(*workers));
    if (!workers) {
        rc = -ENOMEM;
        goto out_sync;
    }
    unsigned started = 0;
    for (; started < nworkers; started++) {
        struct convert_worker *w = &workers[started];
        w->job = &job;
        w->buf = vs_aligned_alloc(4096, job.chunk);
        w->classes = vs_malloc(job.chunk / job.unit + 1);
        if (!w->buf || !w->classes) {
            rc = -ENOMEM;
            break;
        }
        pthread_mutex_lock(&job.lock);
        job.running++;
        pthread_mutex_unlock(&job.lock);
        int e = pthread_create(&w->thread, NULL, convert_worker_main, w);
        if (e) {
            pthread_mutex_lock(&job.lock);
            job.running--;
            pthread_mutex_unlock(&job.lock);
            rc = vs_error(-e, "cannot start convert worker: %s", strerror(e));
            break;
        }
    }
    if (rc)
        atomic_store(&job.failed, 1);

    /* the caller's thread only reports progress */
    pthread_mutex_lock(&job.lock);
    while (job.running) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&job.cond, &job.lock, &ts);
        pthread_mutex_unlock(&job.lock);
        convert_report(&job);
        pthread_mutex_lock(&job.lock);
    }
    pthread_mutex_unlock(&job.lock);
    for (unsigned i = 0; i < started; i++)
        pthread_join(workers[i].thread, NULL);
    for (unsigned i = 0; i < nworkers; i++) {
        free(workers[i].buf);
        free(workers[i].classes);
    }
    free(workers);
    if (!rc && job.err) {
        rc = job.err;
        vs_error(rc, "%s", job.errmsg ? job.errmsg : strerror(-rc));
    }
    if (!rc)
        convert_report(&job);
out_sync:
    for (size_t i = 0; i < job.map_count; i++)
        if (job.maps[i].base)
            munmap((void *)job.maps[i].base, (size_t)job.maps[i].size);
    free(job.errmsg);
    pthread_cond_destroy(&job.cond);
    pthread_mutex_destroy(&job.lock);
out:
    free(job.sources);
    return rc;
}

int img_convert(const struct img_convert_params *params)
{
    if (!params->source_count)
        return vs_error(-EINVAL, "no source image");
    if (!params->target)
        return vs_error(-EINVAL, "no target image");
    const char *target_format = params->target_format ? params->target_format : "raw";
    const char *canonical = img_format_canonical(target_format);
    if (!canonical)
        return vs_error(-EINVAL, "unknown format '%s'", target_format);
    if (params->compress && !strcmp(canonical, "raw"))
        return vs_error(-ENOTSUP, "compression not supported for the raw format");

    struct img **sources = vs_calloc(params->source_count, sizeof(*sources));
    if (!sources)
        return -ENOMEM;
    struct img *target = NULL;
    int rc = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < params->source_count; i++) {
        rc = img_open(&sources[i], params->sources[i], params->source_format,
                      params->source_flags & ~IMG_OPEN_RDWR);
        if (rc)
            goto out;
        total += img_size(sources[i]);
    }
    if (!params->target_exists) {
        struct img_create_params cp = {
            .filename = params->target,
            .format = canonical,
            .size = total,
            .size_given = true,
            .backing_file = params->backing_file,
            .backing_format = params->backing_file ? params->backing_format : NULL,
            .opts = params->opts,
            .quiet = true,
        };
        rc = img_create(&cp);
        if (rc)
            goto out;
    }
    rc = img_open(&target, params->target, canonical, IMG_OPEN_RDWR | params->target_flags);
    if (rc)
        goto out;
    rc = img_convert_images(
        sources, params->source_count, target,
        !params->target_exists && !(params->backing_file && params->backing_file[0]), params);
out:;
    int crc = img_close(target);
    if (!rc && crc)
        rc = crc;
    for (size_t i = 0; i < params->source_count; i++)
        img_close(sources[i]);
    free(sources);
    return rc;
}
