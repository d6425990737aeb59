/*
 * lib/img/bench.c — qemu-img bench: time COUNT read or write requests against an image.
 *
 * The idea: queue depth is modelled by DEPTH threads each keeping one synchronous request in
 * flight. Request i's offset is a pure function of i (sequential stride, or a seeded hash for
 * random), so a run does the same I/O whatever the thread scheduling and is repeatable.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "vessel/img.h"

struct bench_job {
    struct img *img;
    const struct img_bench_params *params;
    uint64_t step;
    uint64_t slots; /* distinct offsets */
    atomic_uint_fast64_t next;
    atomic_int failed;
    pthread_mutex_t lock;
    int err;
    char *errmsg;
};

struct bench_worker {
    struct bench_job *job;
    pthread_t thread;
    void *buf;
};

void img_bench_params_init(struct img_bench_params *params)
{
    memset(params, 0, sizeof(*params));
    params->count = 75000;
    params->depth = 64;
    params->bufsize = 4096;
    params->seed = 1;
}

/* splitmix64: a well-mixed 64-bit value per request index */
static uint64_t bench_hash(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t bench_offset(const struct bench_job *job, uint64_t i)
{
    uint64_t slot =
        job->params->random ? bench_hash(job->params->seed ^ (i * 0x100000001b3ULL)) : i;
    return job->params->offset + (slot % job->slots) * job->step;
}

static void *bench_worker_main(void *arg)
{
    struct bench_worker *w = arg;
    struct bench_job *job = w->job;
    const struct img_bench_params *p = job->params;
    while (!atomic_load(&job->failed)) {
        uint64_t i = atomic_fetch_add(&job->next, 1);
        if (i >= p->count)
            break;
        uint64_t off = bench_offset(job, i);
        int rc = p->write ? img_pwrite(job->img, w->buf, off, p->bufsize)
                          : img_pread(job->img, w->buf, off, p->bufsize);
        if (!rc && p->write && p->flush_interval && (i + 1) % p->flush_interval == 0)
            rc = img_flush(job->img);
        if (rc) {
            pthread_mutex_lock(&job->lock);
            if (!job->err) {
                job->err = rc;
                job->errmsg = vs_strdup(vs_error_message());
            }
            pthread_mutex_unlock(&job->lock);
            atomic_store(&job->failed, 1);
        }
    }
    return NULL;
}

int img_bench(struct img *img, const struct img_bench_params *params,
              struct img_bench_result *result)
{
    memset(result, 0, sizeof(*result));
    uint64_t size = img_size(img);
    if (!params->bufsize)
        return vs_error(-EINVAL, "buffer size must be positive");
    if (!params->depth)
        return vs_error(-EINVAL, "queue depth must be positive");
    if (params->write && !img_is_writable(img))
        return vs_error(-EACCES, "%s: opened read-only, cannot bench writes", img_filename(img));
    if (params->offset > size || params->bufsize > size - params->offset)
        return vs_error(-EINVAL,
                        "%s: a %zu-byte request at offset %llu is beyond the end of the image "
                        "(%llu bytes)",
                        img_filename(img), params->bufsize, (unsigned long long)params->offset,
                        (unsigned long long)size);
    struct bench_job job = {.img = img, .params = params};
    job.step = params->step ? params->step : params->bufsize;
    job.slots = (size - params->offset - params->bufsize) / job.step + 1;
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, 0);
    pthread_mutex_init(&job.lock, NULL);

    unsigned n = params->depth;
    if (n > params->count)
        n = params->count ? (unsigned)params->count : 1;
    struct bench_worker *workers = vs_calloc(n, sizeof(*workers));
    int rc = 0;
    if (!workers) {
        rc = -ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < n; i++) {
        workers[i].job = &job;
        workers[i].buf = vs_aligned_alloc(4096, VS_ALIGN_UP(params->bufsize, 4096));
        if (!workers[i].buf) {
            rc = -ENOMEM;
            goto out;
        }
        memset(workers[i].buf, params->pattern, params->bufsize);
    }
    uint64_t t0 = vs_now_ns();
    unsigned started = 0;
    for (; started < n; started++) {
        int e =
            pthread_create(&workers[started].thread, NULL, bench_worker_main, &workers[started]);
        if (e) {
            atomic_store(&job.failed, 1);
            rc = vs_error(-e, "cannot start bench worker: %s", strerror(e));
            break;
        }
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(workers[i].thread, NULL);
    uint64_t t1 = vs_now_ns(); /* like qemu-img, the final flush is not timed */
    if (!rc && params->write && !job.err)
        rc = img_flush(img);
    if (!rc && job.err) {
        rc = job.err;
        vs_error(rc, "%s", job.errmsg ? job.errmsg : strerror(-rc));
    }
    result->seconds = (double)(t1 - t0) / 1e9;
    result->requests = params->count;
    result->bytes = params->count * params->bufsize;
out:
    if (workers)
        for (unsigned i = 0; i < n; i++)
            free(workers[i].buf);
    free(workers);
    free(job.errmsg);
    pthread_mutex_destroy(&job.lock);
    return rc;
}
