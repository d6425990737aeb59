/*
 * lib/appliance/p2v.c — P2V: copy a physical disk (a block device) or any file into a sparse
 * image of any format, refusing a source that is mounted read-write.
 *
 * The idea: P2V is img_convert with the source read as raw bytes (never probed: a disk that
 * happens to start with an image header is still a disk), zero runs left as holes. The safety
 * check reads /proc/self/mountinfo and compares the major:minor of every read-write mount — and of
 * the whole disk a mounted partition belongs to — with the source's device number, since a
 * filesystem copied while it changes is not a consistent disk.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "appliance-internal.h"
#include "vessel/appliance.h"
#include "vessel/util.h"

/* The whole disk a partition major:minor belongs to, via sysfs; 0 when none or unknown. */
static dev_t parent_disk(unsigned major, unsigned minor)
{
    char path[96], buf[32];
    snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/../dev", major, minor);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    unsigned pmaj, pmin;
    dev_t d = 0;
    if (fgets(buf, sizeof(buf), f) && sscanf(buf, "%u:%u", &pmaj, &pmin) == 2)
        d = makedev(pmaj, pmin);
    fclose(f);
    return d;
}

/* Does a mountinfo option list ("rw,relatime") say read-write? */
static bool options_rw(const char *opts)
{
    return !strncmp(opts, "rw", 2) && (opts[2] == ',' || opts[2] == '\0');
}

int appliance_mounted_rw(const char *path, char *mountpoint, size_t len)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return vs_error_errno(-errno, "%s", path);
    if (!S_ISBLK(st.st_mode))
        return 0;
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return vs_error_errno(-errno, "/proc/self/mountinfo");
    char *line = NULL;
    size_t cap = 0;
    int found = 0;
    while (!found && getline(&line, &cap, f) > 0) {
        /* id parent major:minor root mountpoint options [optional…] - fstype source superopts */
        unsigned id, parent, major, minor;
        char mp[4096], opts[1024];
        if (sscanf(line, "%u %u %u:%u %*s %4095s %1023s", &id, &parent, &major, &minor, mp, opts) !=
            6)
            continue;
        dev_t dev = makedev(major, minor);
        if (dev != st.st_rdev && parent_disk(major, minor) != st.st_rdev)
            continue;
        const char *sep = strstr(line, " - ");
        char fstype[64], source[1024], super[1024] = "";
        bool super_rw = !sep || sscanf(sep, " - %63s %1023s %1023s", fstype, source, super) < 3 ||
                        options_rw(super);
        if (options_rw(opts) && super_rw) {
            found = 1;
            snprintf(mountpoint, len, "%s", mp);
        }
    }
    free(line);
    fclose(f);
    return found;
}

static const char *format_from_name(const char *target)
{
    const char *dot = strrchr(target, '.');
    if (!dot || strchr(dot, '/'))
        return "qcow2";
    if (!strcmp(dot, ".img") || !strcmp(dot, ".raw"))
        return "raw";
    const char *f = img_format_canonical(dot + 1);
    return f ? f : "qcow2";
}

int appliance_p2v(const struct appliance_p2v_params *params)
{
    char mp[4096];
    int rc = appliance_mounted_rw(params->source, mp, sizeof(mp));
    if (rc < 0)
        return rc;
    if (rc > 0 && !params->force)
        return vs_error(-EBUSY,
                        "%s: mounted read-write at %s; unmount or remount it read-only, or use "
                        "--force for a crash-consistent copy",
                        params->source, mp);
    if (rc > 0)
        vs_warn("%s: mounted read-write at %s: the copy may be inconsistent", params->source, mp);
    const char *format =
        params->format ? img_format_canonical(params->format) : format_from_name(params->target);
    if (!format)
        return vs_error(-EINVAL, "-O '%s': unknown image format", params->format);
    struct img_convert_params p;
    img_convert_params_init(&p);
    const char *sources[1] = {params->source};
    p.sources = sources;
    p.source_count = 1;
    p.source_format = "raw";
    p.source_flags = IMG_OPEN_NO_LOCK;
    p.target = params->target;
    p.target_format = format;
    p.progress = params->progress;
    p.progress_ctx = params->progress_ctx;
    return img_convert(&p);
}
