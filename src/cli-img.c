/*
 * src/cli-img.c — `vessel img VERB …`: the qemu-img compatible command line of the image engine.
 *
 * The idea: each verb only turns its options into a libvessel call and the result into the text
 * (or JSON) qemu-img prints in the same situation, with the same exit code, so scripts written
 * for qemu-img keep working. Errors are one line: "vessel: <library message>".
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vessel/img.h"

struct cli_verb {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
};

static const struct cli_verb *cli_verb_current;

enum cli_output { CLI_OUTPUT_HUMAN, CLI_OUTPUT_JSON };

/* ---- shared helpers -------------------------------------------------------------------------- */

static int cli_fail(int code)
{
    const char *msg = vs_error_message();
    fprintf(stderr, "vessel: %s\n", msg[0] ? msg : "unknown error");
    return code;
}

static int cli_usage_error(const char *fmt, ...) VS_PRINTF(1, 2);
static int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "vessel: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (cli_verb_current)
        fprintf(stderr, "Try 'vessel img %s --help' for more information.\n",
                cli_verb_current->name);
    return 1;
}

static int cli_help(void)
{
    printf("usage: vessel img %s\n", cli_verb_current->usage);
    return 0;
}

/* getopt's complaint about argv[optind-1], in our words. */
static int cli_bad_option(int opt, char **argv)
{
    if (opt == ':')
        return cli_usage_error("option '%s' needs an argument", argv[optind - 1]);
    if (optopt)
        return cli_usage_error("unknown option '-%c'", optopt);
    return cli_usage_error("unknown option '%s'", argv[optind - 1]);
}

static int cli_parse_output(const char *arg, enum cli_output *out)
{
    if (!strcmp(arg, "human"))
        *out = CLI_OUTPUT_HUMAN;
    else if (!strcmp(arg, "json"))
        *out = CLI_OUTPUT_JSON;
    else
        return cli_usage_error("--output must be 'human' or 'json', not '%s'", arg);
    return 0;
}

/* The options most verbs share: -h, -f FMT, -q, -U, --output, --object (accepted for qemu-img
 * compatibility; vessel has no objects to define) and --image-opts (refused). A verb's getopt
 * string and long options decide which of them it takes; its own cases come first in its switch
 * and the rest fall through to cli_common_option(). */
struct cli_common {
    const char *format;
    enum cli_output output;
    bool quiet;
    int open_flags; /* -U adds IMG_OPEN_NO_LOCK */
};

#define CLI_OPTION_TAKEN (-1)

/* CLI_OPTION_TAKEN, or the exit code the verb returns now (help, a bad option or value). */
static int cli_common_option(int c, char **argv, struct cli_common *o)
{
    switch (c) {
    case 'h':
        return cli_help();
    case 'f':
        o->format = optarg;
        return CLI_OPTION_TAKEN;
    case 'j':
        return cli_parse_output(optarg, &o->output) ? 1 : CLI_OPTION_TAKEN;
    case 'q':
        o->quiet = true;
        return CLI_OPTION_TAKEN;
    case 'U':
        o->open_flags |= IMG_OPEN_NO_LOCK;
        return CLI_OPTION_TAKEN;
    case 'O':
        return CLI_OPTION_TAKEN;
    case 'I':
        return cli_usage_error("--image-opts is not supported");
    default:
        return cli_bad_option(c, argv);
    }
}

static int cli_parse_size_arg(const char *text, const char *what, uint64_t *out)
{
    if (vs_parse_size(text, out))
        return cli_usage_error("invalid %s '%s' (a number of bytes, optionally with a k, M, G, "
                               "T, P or E suffix)",
                               what, text);
    return 0;
}

static int cli_parse_uint(const char *text, const char *what, uint64_t min, uint64_t max,
                          uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 0);
    if (!text[0] || *end || errno || text[0] == '-' || v < min || v > max)
        return cli_usage_error("invalid %s '%s' (expected an integer from %llu to %llu)", what,
                               text, (unsigned long long)min, (unsigned long long)max);
    *out = v;
    return 0;
}

/* Progress bar on stdout when asked and stdout is a terminal. */
static void cli_progress_cb(void *ctx, uint64_t done, uint64_t total)
{
    vs_progress_update(ctx, done, total);
}

static void cli_progress_init(struct vs_progress *p, bool wanted)
{
    vs_progress_init(p, wanted && isatty(STDOUT_FILENO), stdout);
    if (wanted)
        vs_progress_update(p, 0, 1);
}

/* JSON laid out like qemu-img's: four-space indentation, "key": value. */
static void cli_json_indent(FILE *out, int level)
{
    for (int i = 0; i < level; i++)
        fputs("    ", out);
}

static void cli_json_write(FILE *out, struct json_object *o, int level)
{
    switch (json_object_get_type(o)) {
    case json_type_object: {
        fputs("{\n", out);
        int n = json_object_object_length(o), i = 0;
        json_object_object_foreach(o, key, val)
        {
            cli_json_indent(out, level + 1);
            struct json_object *name = json_object_new_string(key);
            fprintf(out, "%s: ",
                    json_object_to_json_string_ext(name, JSON_C_TO_STRING_PLAIN |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE));
            json_object_put(name);
            cli_json_write(out, val, level + 1);
            fputs(++i < n ? ",\n" : "\n", out);
        }
        cli_json_indent(out, level);
        fputs("}", out);
        break;
    }
    case json_type_array: {
        size_t n = json_object_array_length(o);
        fputs("[\n", out);
        for (size_t i = 0; i < n; i++) {
            cli_json_indent(out, level + 1);
            cli_json_write(out, json_object_array_get_idx(o, i), level + 1);
            fputs(i + 1 < n ? ",\n" : "\n", out);
        }
        cli_json_indent(out, level);
        fputs("]", out);
        break;
    }
    default:
        fputs(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                    JSON_C_TO_STRING_NOSLASHESCAPE),
              out);
    }
}

static void cli_json_print(struct json_object *o)
{
    cli_json_write(stdout, o, 0);
    fputs("\n", stdout);
}

static int64_t cli_json_int(struct json_object *o, const char *key, int64_t dflt)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : dflt;
}

static const char *cli_json_str(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

static bool cli_json_bool(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

/* A backing file name as the image's directory makes it (what qemu-img calls the actual path). */
static char *cli_backing_path(const char *image, const char *backing)
{
    const char *slash = strrchr(image, '/');
    if (backing[0] == '/' || !slash)
        return vs_strdup(backing);
    return vs_asprintf("%.*s/%s", (int)(slash - image), image, backing);
}

/* ---- snapshot table (info and snapshot -l) --------------------------------------------------- */

static void cli_snapshot_header(void)
{
    printf("%-9s %-17s %7s %19s %12s %10s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
}

static void cli_snapshot_row(const char *id, const char *name, uint64_t vm_size, int64_t date_sec,
                             uint64_t clock_nsec, int64_t icount)
{
    char size[32], date[32], clock[48], count[24];
    vs_format_size(vm_size, size, sizeof(size));
    time_t t = (time_t)date_sec;
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    uint64_t ms = clock_nsec / 1000000;
    snprintf(clock, sizeof(clock), "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64,
             ms / 3600000, ms / 60000 % 60, ms / 1000 % 60, ms % 1000);
    if (icount >= 0)
        snprintf(count, sizeof(count), "%" PRId64, icount);
    else
        count[0] = '\0';
    printf("%-9s %-17s %7s %19s %12s %10s\n", id, name, size, date, clock, count);
}

/* ---- create ---------------------------------------------------------------------------------- */

static int cli_create(int argc, char **argv)
{
    const char *format = "raw", *backing = NULL, *backing_format = NULL;
    struct vs_opts opts = {0};
    bool quiet = false, unsafe = false;
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'}, {"object", required_argument, NULL, 'O'}, {0}};
    int c, rc = 1;
    while ((c = getopt_long(argc, argv, ":hf:b:F:o:uq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            vs_opts_free(&opts);
            return cli_help();
        case 'f':
            format = optarg;
            break;
        case 'b':
            backing = optarg;
            break;
        case 'F':
            backing_format = optarg;
            break;
        case 'o':
            if (vs_opts_parse(&opts, optarg)) {
                cli_fail(1);
                goto out;
            }
            break;
        case 'u':
            unsafe = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'O':
            break; /* --object: nothing to define in vessel */
        default:
            rc = cli_bad_option(c, argv);
            goto out;
        }
    }
    if (optind >= argc) {
        rc = cli_usage_error("expecting a filename");
        goto out;
    }
    if (argc - optind > 2) {
        rc = cli_usage_error("unexpected argument '%s'", argv[optind + 2]);
        goto out;
    }
    const char *filename = argv[optind];
    struct img_create_params p = {.filename = filename, .format = format, .quiet = true};
    if (vs_opts_take(&opts, "help")) {
        rc = cli_usage_error("-o help: the options of each format are listed in "
                             "docs/vessel-img.md");
        goto out;
    }
    if (argc - optind == 2) {
        if (cli_parse_size_arg(argv[optind + 1], "image size", &p.size))
            goto out;
        p.size_given = true;
    } else {
        const char *size = vs_opts_take(&opts, "size");
        if (size) {
            if (cli_parse_size_arg(size, "image size", &p.size))
                goto out;
            p.size_given = true;
        }
    }
    if (!backing)
        backing = vs_opts_take(&opts, "backing_file");
    if (!backing_format)
        backing_format = vs_opts_take(&opts, "backing_fmt");
    if (p.size_given && p.size > INT64_MAX) {
        rc = cli_usage_error("image size must be less than 8 EiB");
        goto out;
    }
    if (backing && backing[0] && !backing_format) {
        rc = cli_usage_error("%s: backing file specified without backing format (add -F FMT)",
                             filename);
        goto out;
    }
    if (!backing && !p.size_given) {
        rc = cli_usage_error("an image size is required (or a backing file to take it from)");
        goto out;
    }
    if (backing && !backing[0])
        backing = NULL;
    if (unsafe && backing && !p.size_given) {
        rc = cli_usage_error("-u needs an image size: the backing file is not opened");
        goto out;
    }
    p.backing_file = backing;
    p.backing_format = backing ? backing_format : NULL;
    p.opts = opts.count ? &opts : NULL;
    if (!img_format_canonical(format)) {
        vs_error(-EINVAL, "unknown format '%s'", format);
        cli_fail(1);
        goto out;
    }
    /* the line qemu-img prints, built before the driver consumes the options */
    char *line = vs_asprintf("Formatting '%s', fmt=%s", filename, img_format_canonical(format));
    for (size_t i = 0; line && i < opts.count; i++) {
        if (opts.items[i].used)
            continue;
        char *next = vs_asprintf("%s %s=%s", line, opts.items[i].key,
                                 opts.items[i].value ? opts.items[i].value : "on");
        free(line);
        line = next;
    }
    if (img_create(&p)) {
        free(line);
        cli_fail(1);
        goto out;
    }
    if (!quiet && line) {
        uint64_t size = p.size;
        if (!p.size_given) {
            struct img *img;
            if (!img_open(&img, filename, img_format_canonical(format),
                          IMG_OPEN_NO_BACKING | IMG_OPEN_NO_LOCK)) {
                size = img_size(img);
                img_close(img);
            }
        }
        printf("%s size=%" PRIu64, line, size);
        if (backing)
            printf(" backing_file=%s backing_fmt=%s", backing, backing_format);
        printf("\n");
    }
    free(line);
    rc = 0;
out:
    vs_opts_free(&opts);
    return rc;
}

/* ---- info ------------------------------------------------------------------------------------ */

static void cli_info_dump_value(struct json_object *v, int indent);

/* qemu-img's "Format specific information": keys with spaces for dashes, lists as [i]. */
static void cli_info_dump_object(struct json_object *o, int indent)
{
    json_object_object_foreach(o, key, val)
    {
        char name[128];
        snprintf(name, sizeof(name), "%s", key);
        for (char *p = name; *p; p++)
            if (*p == '-')
                *p = ' ';
        enum json_type t = json_object_get_type(val);
        if (t == json_type_object || t == json_type_array) {
            printf("%*s%s:\n", indent, "", name);
            cli_info_dump_value(val, indent + 4);
        } else {
            printf("%*s%s: %s\n", indent, "", name, json_object_get_string(val));
        }
    }
}

static void cli_info_dump_value(struct json_object *v, int indent)
{
    if (json_object_get_type(v) == json_type_object) {
        cli_info_dump_object(v, indent);
        return;
    }
    size_t n = json_object_array_length(v);
    for (size_t i = 0; i < n; i++) {
        struct json_object *item = json_object_array_get_idx(v, i);
        enum json_type t = json_object_get_type(item);
        if (t == json_type_object || t == json_type_array) {
            printf("%*s[%zu]:\n", indent, "", i);
            cli_info_dump_value(item, indent + 4);
        } else {
            printf("%*s[%zu]: %s\n", indent, "", i, json_object_get_string(item));
        }
    }
}

static void cli_info_human(struct json_object *o)
{
    char size[32];
    const char *filename = cli_json_str(o, "filename");
    printf("image: %s\n", filename ? filename : "");
    printf("file format: %s\n", cli_json_str(o, "format") ? cli_json_str(o, "format") : "");
    uint64_t vsize = (uint64_t)cli_json_int(o, "virtual-size", 0);
    vs_format_size(vsize, size, sizeof(size));
    printf("virtual size: %s (%" PRIu64 " bytes)\n", size, vsize);
    int64_t actual = cli_json_int(o, "actual-size", -1);
    if (actual >= 0) {
        vs_format_size((uint64_t)actual, size, sizeof(size));
        printf("disk size: %s\n", size);
    } else {
        printf("disk size: unavailable\n");
    }
    int64_t cluster = cli_json_int(o, "cluster-size", -1);
    if (cluster >= 0)
        printf("cluster_size: %" PRId64 "\n", cluster);
    if (cli_json_bool(o, "encrypted"))
        printf("encrypted: yes\n");
    if (cli_json_bool(o, "dirty-flag"))
        printf("cleanly shut down: no\n");
    const char *backing = cli_json_str(o, "backing-filename");
    if (backing) {
        char *actual_path = filename ? cli_backing_path(filename, backing) : NULL;
        if (actual_path && strcmp(actual_path, backing))
            printf("backing file: %s (actual path: %s)\n", backing, actual_path);
        else
            printf("backing file: %s\n", backing);
        free(actual_path);
        const char *bfmt = cli_json_str(o, "backing-filename-format");
        if (bfmt)
            printf("backing file format: %s\n", bfmt);
    }
    struct json_object *snaps;
    if (json_object_object_get_ex(o, "snapshots", &snaps) && json_object_array_length(snaps)) {
        printf("Snapshot list:\n");
        cli_snapshot_header();
        for (size_t i = 0; i < json_object_array_length(snaps); i++) {
            struct json_object *s = json_object_array_get_idx(snaps, i);
            cli_snapshot_row(cli_json_str(s, "id") ? cli_json_str(s, "id") : "",
                             cli_json_str(s, "name") ? cli_json_str(s, "name") : "",
                             (uint64_t)cli_json_int(s, "vm-state-size", 0),
                             cli_json_int(s, "date-sec", 0),
                             (uint64_t)cli_json_int(s, "vm-clock-sec", 0) * 1000000000ULL +
                                 (uint64_t)cli_json_int(s, "vm-clock-nsec", 0),
                             cli_json_int(s, "icount", -1));
        }
    }
    struct json_object *fs, *data;
    if (json_object_object_get_ex(o, "format-specific", &fs) &&
        json_object_object_get_ex(fs, "data", &data) &&
        json_object_get_type(data) == json_type_object && json_object_object_length(data)) {
        printf("Format specific information:\n");
        cli_info_dump_object(data, 4);
    }
}

static int cli_info(int argc, char **argv)
{
    struct cli_common o = {.output = CLI_OUTPUT_HUMAN, .open_flags = IMG_OPEN_NO_BACKING};
    bool chain = false;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"output", required_argument, NULL, 'j'},
                                             {"backing-chain", no_argument, NULL, 'c'},
                                             {"force-share", no_argument, NULL, 'U'},
                                             {"object", required_argument, NULL, 'O'},
                                             {"image-opts", no_argument, NULL, 'I'},
                                             {0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":hf:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            chain = true;
            break;
        default:
            if ((rc = cli_common_option(c, argv, &o)) != CLI_OPTION_TAKEN)
                return rc;
        }
    }
    if (optind != argc - 1)
        return cli_usage_error(optind >= argc ? "expecting one image file name"
                                              : "expecting one image file name, got several");
    if (chain)
        o.open_flags &= ~IMG_OPEN_NO_BACKING;
    struct img *img;
    if (img_open(&img, argv[optind], o.format, o.open_flags))
        return cli_fail(1);
    struct json_object *info;
    if (img_info_json(img, chain, &info)) {
        img_close(img);
        return cli_fail(1);
    }
    if (o.output == CLI_OUTPUT_JSON) {
        cli_json_print(info);
    } else if (chain) {
        for (size_t i = 0; i < json_object_array_length(info); i++) {
            if (i)
                printf("\n");
            cli_info_human(json_object_array_get_idx(info, i));
        }
    } else {
        cli_info_human(info);
    }
    json_object_put(info);
    img_close(img);
    return 0;
}

/* ---- check ----------------------------------------------------------------------------------- */

static void cli_check_report(void *ctx, const char *line)
{
    if (!*(bool *)ctx)
        fprintf(stderr, "%s\n", line);
}

static void cli_check_human(const struct img_check *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        if (r->leaks)
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        if (r->check_errors)
            printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
                   r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% "
               "compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    if (r->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

static void cli_check_json(const struct img_check *r, struct img *img)
{
    struct json_object *o = json_object_new_object();
#define CHECK_FIELD(key, value)                                                                    \
    do {                                                                                           \
        if (value)                                                                                 \
            json_object_object_add(o, key, json_object_new_int64((int64_t)(value)));               \
    } while (0)
    CHECK_FIELD("image-end-offset", r->image_end_offset);
    CHECK_FIELD("total-clusters", r->total_clusters);
    CHECK_FIELD("corruptions", r->corruptions);
    json_object_object_add(o, "check-errors", json_object_new_int64((int64_t)r->check_errors));
    CHECK_FIELD("leaks", r->leaks);
    CHECK_FIELD("corruptions-fixed", r->corruptions_fixed);
    CHECK_FIELD("leaks-fixed", r->leaks_fixed);
    CHECK_FIELD("allocated-clusters", r->allocated_clusters);
    CHECK_FIELD("fragmented-clusters", r->fragmented_clusters);
    CHECK_FIELD("compressed-clusters", r->compressed_clusters);
#undef CHECK_FIELD
    json_object_object_add(o, "filename", json_object_new_string(img_filename(img)));
    json_object_object_add(o, "format", json_object_new_string(img_format(img)));
    cli_json_print(o);
    json_object_put(o);
}

static int cli_check(int argc, char **argv)
{
    struct cli_common o = {.output = CLI_OUTPUT_HUMAN,
                           .open_flags = IMG_OPEN_CHECK | IMG_OPEN_NO_BACKING};
    int fix = 0;
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},         {"output", required_argument, NULL, 'j'},
        {"repair", required_argument, NULL, 'r'}, {"force-share", no_argument, NULL, 'U'},
        {"object", required_argument, NULL, 'O'}, {0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (!strcmp(optarg, "leaks"))
                fix = IMG_CHECK_FIX_LEAKS;
            else if (!strcmp(optarg, "all"))
                fix = IMG_CHECK_FIX_LEAKS | IMG_CHECK_FIX_ERRORS;
            else
                return cli_usage_error("unknown value for -r: '%s' (expecting 'leaks' or 'all')",
                                       optarg);
            o.open_flags |= IMG_OPEN_RDWR;
            break;
        case 'T':
            break;
        default:
            if ((rc = cli_common_option(c, argv, &o)) != CLI_OPTION_TAKEN)
                return rc;
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("expecting one image file name");
    if ((o.open_flags & IMG_OPEN_RDWR) && (o.open_flags & IMG_OPEN_NO_LOCK))
        return cli_usage_error("-U cannot be combined with -r: repairing needs the lock");
    struct img *img;
    if (img_open(&img, argv[optind], o.format, o.open_flags))
        return cli_fail(1);
    struct img_check r = {.report = cli_check_report, .report_ctx = &o.quiet};
    rc = img_check(img, &r, fix);
    if (rc == -ENOTSUP) {
        img_close(img);
        return cli_fail(63);
    }
    if (rc) {
        vs_error_prefix(rc, "check failed");
        img_close(img);
        return cli_fail(1);
    }
    if (fix && (r.corruptions_fixed || r.leaks_fixed)) {
        uint64_t leaks_fixed = r.leaks_fixed, corruptions_fixed = r.corruptions_fixed;
        if (o.output == CLI_OUTPUT_HUMAN && !o.quiet)
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   leaks_fixed, corruptions_fixed);
        r = (struct img_check){.report = cli_check_report, .report_ctx = &o.quiet};
        rc = img_check(img, &r, 0);
        if (rc) {
            vs_error_prefix(rc, "check failed");
            img_close(img);
            return cli_fail(1);
        }
        r.leaks_fixed = leaks_fixed;
        r.corruptions_fixed = corruptions_fixed;
    }
    if (!o.quiet) {
        if (o.output == CLI_OUTPUT_JSON)
            cli_check_json(&r, img);
        else
            cli_check_human(&r);
    }
    rc = img_close(img);
    if (r.check_errors)
        return 1;
    if (r.corruptions)
        return 2;
    if (r.leaks)
        return 3;
    if (rc)
        return cli_fail(1);
    return 0;
}

/* ---- convert --------------------------------------------------------------------------------- */

static int cli_convert(int argc, char **argv)
{
    struct img_convert_params p;
    img_convert_params_init(&p);
    p.target_flags = IMG_OPEN_NO_FLUSH; /* qemu-img convert defaults to cache=unsafe */
    struct vs_opts opts = {0};
    bool quiet = false, progress = false;
    const char *output_format = NULL;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"object", required_argument, NULL, 'O' + 256},
                                             {"force-share", no_argument, NULL, 'U'},
                                             {"target-is-zero", no_argument, NULL, 'z'},
                                             {0}};
    int c, rc = 1;
    uint64_t v;
    while ((c = getopt_long(argc, argv, ":hf:O:B:F:o:cpm:WnS:Uqt:T:C", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            vs_opts_free(&opts);
            return cli_help();
        case 'f':
            p.source_format = optarg;
            break;
        case 'O':
            output_format = optarg;
            break;
        case 'B':
            p.backing_file = optarg;
            break;
        case 'F':
            p.backing_format = optarg;
            break;
        case 'o':
            if (vs_opts_parse(&opts, optarg)) {
                cli_fail(1);
                goto out;
            }
            break;
        case 'c':
            p.compress = true;
            break;
        case 'p':
            progress = true;
            break;
        case 'm':
            if (cli_parse_uint(optarg, "number of workers (-m)", 1, 64, &v))
                goto out;
            p.workers = (unsigned)v;
            break;
        case 'W':
            p.out_of_order = true;
            break;
        case 'n':
            p.target_exists = true;
            break;
        case 'S':
            if (cli_parse_size_arg(optarg, "sparse size (-S)", &v))
                goto out;
            if (v % 512 || v > (64u << 20)) {
                rc = cli_usage_error("the sparse size (-S) must be a multiple of 512 up to 64 "
                                     "MiB, not '%s'",
                                     optarg);
                goto out;
            }
            p.sparse_size = v;
            break;
        case 'U':
            p.source_flags |= IMG_OPEN_NO_LOCK;
            break;
        case 'q':
            quiet = true;
            break;
        case 't':
            /* qemu-img's cache modes for the target; unsafe (no fdatasync) is the default */
            if (!strcmp(optarg, "unsafe")) {
                p.target_flags = IMG_OPEN_NO_FLUSH;
            } else if (!strcmp(optarg, "writeback") || !strcmp(optarg, "writethrough")) {
                p.target_flags = 0;
            } else if (!strcmp(optarg, "none") || !strcmp(optarg, "directsync")) {
                p.target_flags = IMG_OPEN_DIRECT;
            } else {
                rc = cli_usage_error("cache mode '%s' unknown (unsafe, writeback, writethrough, "
                                     "none, directsync)",
                                     optarg);
                goto out;
            }
            break;
        case 'T':
        case 'C':
        case 'z':
        case 'O' + 256:
            break;
        default:
            rc = cli_bad_option(c, argv);
            goto out;
        }
    }
    if (argc - optind < 2) {
        rc = cli_usage_error("expecting a source and a target file name");
        goto out;
    }
    if (p.target_exists && opts.count) {
        rc = cli_usage_error("-o cannot be used with -n: the target already exists");
        goto out;
    }
    if (p.target_exists && p.backing_file) {
        rc = cli_usage_error("-B cannot be used with -n: the target already exists");
        goto out;
    }
    if (p.backing_format && !p.backing_file) {
        rc = cli_usage_error("-F needs a backing file (-B)");
        goto out;
    }
    if (!p.backing_file)
        p.backing_file = vs_opts_take(&opts, "backing_file");
    if (!p.backing_format)
        p.backing_format = vs_opts_take(&opts, "backing_fmt");
    if (p.backing_file && p.backing_file[0] && !p.backing_format) {
        rc = cli_usage_error("use of a backing file (-B) requires an explicit backing format "
                             "(-F)");
        goto out;
    }
    p.sources = (const char *const *)&argv[optind];
    p.source_count = (size_t)(argc - optind - 1);
    p.target = argv[argc - 1];
    p.target_format = output_format ? output_format : "raw";
    p.opts = opts.count ? &opts : NULL;
    struct vs_progress bar;
    cli_progress_init(&bar, progress && !quiet);
    p.progress = cli_progress_cb;
    p.progress_ctx = &bar;
    if (img_convert(&p)) {
        vs_progress_finish(&bar);
        cli_fail(1);
        goto out;
    }
    vs_progress_finish(&bar);
    rc = 0;
out:
    vs_opts_free(&opts);
    return rc;
}

/* ---- compare --------------------------------------------------------------------------------- */

static int cli_compare(int argc, char **argv)
{
    const char *fmt1 = NULL, *fmt2 = NULL;
    bool strict = false, quiet = false, progress = false;
    int flags = 0;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"force-share", no_argument, NULL, 'U'},
                                             {"object", required_argument, NULL, 'O'},
                                             {0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help();
        case 'f':
            fmt1 = optarg;
            break;
        case 'F':
            fmt2 = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            strict = true;
            break;
        case 'U':
            flags |= IMG_OPEN_NO_LOCK;
            break;
        case 'T':
        case 'O':
            break;
        default:
            return cli_bad_option(c, argv); /* usage errors are 1, like qemu-img */
        }
    }
    if (argc - optind != 2)
        return cli_usage_error("expecting two image file names");
    struct img *a = NULL, *b = NULL;
    if (img_open(&a, argv[optind], fmt1, flags) || img_open(&b, argv[optind + 1], fmt2, flags)) {
        cli_fail(2);
        img_close(a);
        return 2;
    }
    struct vs_progress bar;
    cli_progress_init(&bar, progress && !quiet);
    struct img_compare_result r;
    int rc = img_compare(a, b, strict, cli_progress_cb, &bar, &r);
    vs_progress_finish(&bar);
    img_close(a);
    img_close(b);
    if (rc) {
        vs_error_prefix(rc, "error while comparing");
        return cli_fail(2);
    }
    if (r.outcome == IMG_COMPARE_SIZE) {
        if (!quiet)
            printf("Strict mode: Image size mismatch!\n");
        return 1;
    }
    if (r.size_mismatch && !quiet)
        printf("Warning: Image size mismatch!\n");
    switch (r.outcome) {
    case IMG_COMPARE_IDENTICAL:
        if (!quiet)
            printf("Images are identical.\n");
        return 0;
    case IMG_COMPARE_CONTENT:
        if (!quiet)
            printf("Content mismatch at offset %" PRIu64 "!\n", r.offset);
        return 1;
    case IMG_COMPARE_ALLOCATION:
        if (!quiet)
            printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", r.offset);
        return 1;
    default:
        return 1;
    }
}

/* ---- map ------------------------------------------------------------------------------------- */

struct cli_map_state {
    enum cli_output output;
    bool first;
    struct img_map_entry human; /* pending merged data run (human output) */
    bool have_human;
};

static void cli_map_human_flush(struct cli_map_state *s)
{
    if (!s->have_human)
        return;
    char a[24], b[24], c[24];
    snprintf(a, sizeof(a), "%#" PRIx64, s->human.start);
    snprintf(b, sizeof(b), "%#" PRIx64, s->human.length);
    snprintf(c, sizeof(c), "%#" PRIx64, s->human.offset);
    printf("%-16s%-16s%-16s%s\n", a, b, c, s->human.filename ? s->human.filename : "");
    s->have_human = false;
}

static int cli_map_entry(void *ctx, const struct img_map_entry *e)
{
    struct cli_map_state *s = ctx;
    if (s->output == CLI_OUTPUT_JSON) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, "
               "\"present\": %s, \"zero\": %s, \"data\": %s",
               s->first ? "[" : ",\n", e->start, e->length, e->depth, e->present ? "true" : "false",
               e->zero ? "true" : "false", e->data ? "true" : "false");
        if (e->compressed)
            printf(", \"compressed\": true");
        if (e->has_offset)
            printf(", \"offset\": %" PRIu64, e->offset);
        printf("}");
        s->first = false;
        return 0;
    }
    if (!e->data)
        return 0;
    if (!e->has_offset)
        return vs_error(-ENOTSUP, "%s: file contains external, encrypted or compressed clusters",
                        e->filename ? e->filename : "image");
    if (s->have_human && s->human.filename == e->filename &&
        s->human.start + s->human.length == e->start &&
        s->human.offset + s->human.length == e->offset) {
        s->human.length += e->length;
        return 0;
    }
    cli_map_human_flush(s);
    s->human = *e;
    s->have_human = true;
    return 0;
}

static int cli_map(int argc, char **argv)
{
    struct cli_map_state s = {.output = CLI_OUTPUT_HUMAN, .first = true};
    struct cli_common o = {.output = CLI_OUTPUT_HUMAN};
    uint64_t start = 0, length = UINT64_MAX;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"output", required_argument, NULL, 'j'},
                                             {"start-offset", required_argument, NULL, 's'},
                                             {"max-length", required_argument, NULL, 'l'},
                                             {"force-share", no_argument, NULL, 'U'},
                                             {"object", required_argument, NULL, 'O'},
                                             {0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":hf:U", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (cli_parse_size_arg(optarg, "start offset", &start))
                return 1;
            break;
        case 'l':
            if (cli_parse_size_arg(optarg, "maximum length", &length))
                return 1;
            break;
        default:
            if ((rc = cli_common_option(c, argv, &o)) != CLI_OPTION_TAKEN)
                return rc;
        }
    }
    s.output = o.output;
    if (optind != argc - 1)
        return cli_usage_error("expecting one image file name");
    struct img *img;
    if (img_open(&img, argv[optind], o.format, o.open_flags))
        return cli_fail(1);
    if (s.output == CLI_OUTPUT_HUMAN)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    rc = img_map(img, start, length, cli_map_entry, &s);
    if (s.output == CLI_OUTPUT_JSON)
        printf(s.first ? "[]\n" : "]\n");
    else if (!rc)
        cli_map_human_flush(&s);
    fflush(stdout);
    img_close(img);
    return rc ? cli_fail(1) : 0;
}

/* ---- resize ---------------------------------------------------------------------------------- */

static int cli_resize(int argc, char **argv)
{
    const char *prealloc = NULL;
    bool shrink = false;
    struct cli_common o = {.output = CLI_OUTPUT_HUMAN};
    int flags = IMG_OPEN_RDWR;
    /* a "-5M" size would look like an option to getopt: take the last argument out first */
    if (argc > 2 && argv[argc - 1][0] == '-' && argv[argc - 1][1] >= '0' &&
        argv[argc - 1][1] <= '9')
        argc--;
    const char *size_arg = argv[argc] && argv[argc][0] == '-' ? argv[argc] : NULL;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"shrink", no_argument, NULL, 's'},
                                             {"preallocation", required_argument, NULL, 'P'},
                                             {"object", required_argument, NULL, 'O'},
                                             {"image-opts", no_argument, NULL, 'I'},
                                             {0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":hf:q", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            shrink = true;
            break;
        case 'P':
            prealloc = optarg;
            break;
        default:
            if ((rc = cli_common_option(c, argv, &o)) != CLI_OPTION_TAKEN)
                return rc;
        }
    }
    if (!size_arg) {
        if (argc - optind != 2)
            return cli_usage_error("expecting a file name and a size");
        size_arg = argv[argc - 1];
        argc--;
    }
    if (argc - optind != 1)
        return cli_usage_error("expecting a file name and a size");
    int sign = 0;
    const char *num = size_arg;
    if (*num == '+' || *num == '-')
        sign = *num++ == '+' ? 1 : -1;
    uint64_t n;
    if (cli_parse_size_arg(num, "size", &n))
        return 1;
    struct img *img;
    if (img_open(&img, argv[optind], o.format, flags))
        return cli_fail(1);
    uint64_t cur = img_size(img), target = n;
    if (sign > 0) {
        target = cur + n;
        if (target < cur) {
            img_close(img);
            return cli_usage_error("the new size is too large");
        }
    } else if (sign < 0) {
        if (n > cur) {
            img_close(img);
            return cli_usage_error(
                "the new size would be negative (the image has %" PRIu64 " bytes)", cur);
        }
        target = cur - n;
    }
    if (target < cur) {
        fprintf(stderr, "vessel: warning: Shrinking an image will delete all data beyond the "
                        "shrunken image's end. Before performing such an operation, make sure "
                        "there is no important data there.\n");
        if (!shrink) {
            img_close(img);
            fprintf(stderr, "vessel: Use the --shrink option to perform a shrink operation.\n");
            return 1;
        }
    }
    if (img_resize(img, target, shrink ? IMG_RESIZE_SHRINK : 0, prealloc)) {
        img_close(img);
        return cli_fail(1);
    }
    if (img_close(img))
        return cli_fail(1);
    if (!o.quiet)
        printf("Image resized.\n");
    return 0;
}

/* ---- commit ---------------------------------------------------------------------------------- */

static int cli_commit(int argc, char **argv)
{
    const char *base_name = NULL;
    bool progress = false, keep = false;
    struct cli_common o = {.output = CLI_OUTPUT_HUMAN};
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'}, {"object", required_argument, NULL, 'O'}, {0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":hf:t:b:dpqr:", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            base_name = optarg;
            break;
        case 'd':
            keep = true;
            break;
        case 'p':
            progress = true;
            break;
        case 't':
        case 'r':
            break;
        default:
            if ((rc = cli_common_option(c, argv, &o)) != CLI_OPTION_TAKEN)
                return rc;
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("expecting one image file name");
    struct img *top;
    if (img_open(&top, argv[optind], o.format, IMG_OPEN_RDWR))
        return cli_fail(1);
    struct img *base = NULL;
    if (base_name) {
        keep = true; /* the layers between are now stale; the top stays valid */
        base = img_chain_find(top, base_name);
        if (!base && base_name[0] != '/') {
            char *rel = cli_backing_path(argv[optind], base_name);
            base = rel ? img_chain_find(top, rel) : NULL;
            free(rel);
            if (!base)
                vs_error(-ENOENT, "'%s' is not in the backing chain of '%s'", base_name,
                         argv[optind]);
        }
        if (!base) {
            img_close(top);
            return cli_fail(1);
        }
    }
    struct vs_progress bar;
    cli_progress_init(&bar, progress && !o.quiet);
    rc = img_commit(top, base, keep, cli_progress_cb, &bar);
    vs_progress_finish(&bar);
    if (rc) {
        img_close(top);
        return cli_fail(1);
    }
    if (img_close(top))
        return cli_fail(1);
    if (!o.quiet)
        printf("Image committed.\n");
    return 0;
}

/* ---- rebase ---------------------------------------------------------------------------------- */

static int cli_rebase(int argc, char **argv)
{
    const char *backing = NULL, *backing_format = NULL;
    bool progress = false, unsafe = false;
    struct cli_common o = {.output = CLI_OUTPUT_HUMAN};
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"force-share", no_argument, NULL, 'U'},
                                             {"object", required_argument, NULL, 'O'},
                                             {0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'F':
            backing_format = optarg;
            break;
        case 'b':
            backing = optarg;
            break;
        case 'u':
            unsafe = true;
            break;
        case 'p':
            progress = true;
            break;
        case 't':
        case 'T':
            break;
        default:
            if ((rc = cli_common_option(c, argv, &o)) != CLI_OPTION_TAKEN)
                return rc;
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("expecting one image file name");
    if (!backing && !unsafe)
        return cli_usage_error("must specify backing file (-b) or use unsafe mode (-u)");
    if (backing && backing[0] && !backing_format && unsafe)
        return cli_usage_error("backing format must be specified (-F) in unsafe mode");
    struct img *img;
    int flags = IMG_OPEN_RDWR | (unsafe ? IMG_OPEN_NO_BACKING : 0) | o.open_flags;
    if (img_open(&img, argv[optind], o.format, flags))
        return cli_fail(1);
    struct vs_progress bar;
    cli_progress_init(&bar, progress && !o.quiet);
    rc = img_rebase(img, backing, backing_format, unsafe, o.open_flags, cli_progress_cb, &bar);
    vs_progress_finish(&bar);
    if (rc) {
        img_close(img);
        return cli_fail(1);
    }
    return img_close(img) ? cli_fail(1) : 0;
}

/* ---- snapshot -------------------------------------------------------------------------------- */

static int cli_snapshot(int argc, char **argv)
{
    const char *format = NULL, *name = NULL;
    int action = 0, flags = IMG_OPEN_NO_BACKING;
    bool quiet = false;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"force-share", no_argument, NULL, 'U'},
                                             {"object", required_argument, NULL, 'O'},
                                             {0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hla:c:d:f:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help();
        case 'l':
        case 'a':
        case 'c':
        case 'd':
            if (action)
                return cli_usage_error("only one of -l, -a, -c and -d may be given");
            action = c;
            name = optarg;
            break;
        case 'f':
            format = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            flags |= IMG_OPEN_NO_LOCK;
            break;
        case 'O':
            break;
        default:
            return cli_bad_option(c, argv);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("expecting one image file name");
    if (!action)
        action = 'l';
    if (action != 'l')
        flags |= IMG_OPEN_RDWR;
    struct img *img;
    if (img_open(&img, argv[optind], format, flags))
        return cli_fail(1);
    int rc = 0;
    switch (action) {
    case 'l': {
        struct img_snapshot *list = NULL;
        size_t count = 0;
        rc = img_snapshot_list(img, &list, &count);
        if (rc == -ENOTSUP) {
            rc = 0; /* formats without snapshots simply have none */
            count = 0;
        }
        if (!rc && count && !quiet) {
            printf("Snapshot list:\n");
            cli_snapshot_header();
            for (size_t i = 0; i < count; i++)
                cli_snapshot_row(list[i].id, list[i].name ? list[i].name : "",
                                 list[i].vm_state_size, (int64_t)list[i].date_sec,
                                 list[i].vm_clock_nsec, 0);
        }
        if (!rc)
            img_snapshot_list_free(list, count);
        break;
    }
    case 'c':
        if ((rc = img_snapshot_create(img, name)))
            vs_error_prefix(rc, "could not create snapshot '%s'", name);
        break;
    case 'a':
        if ((rc = img_snapshot_apply(img, name)))
            vs_error_prefix(rc, "could not apply snapshot '%s'", name);
        break;
    case 'd':
        if ((rc = img_snapshot_delete(img, name)))
            vs_error_prefix(rc, "could not delete snapshot '%s'", name);
        break;
    }
    if (rc) {
        img_close(img);
        return cli_fail(1);
    }
    return img_close(img) ? cli_fail(1) : 0;
}

/* ---- measure --------------------------------------------------------------------------------- */

static int cli_measure(int argc, char **argv)
{
    const char *format = NULL, *output_format = "raw";
    enum cli_output output = CLI_OUTPUT_HUMAN;
    struct vs_opts opts = {0};
    uint64_t size = 0;
    bool size_given = false;
    int flags = 0, rc = 1;
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},         {"output", required_argument, NULL, 'j'},
        {"size", required_argument, NULL, 's'},   {"force-share", no_argument, NULL, 'U'},
        {"object", required_argument, NULL, 'X'}, {0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            vs_opts_free(&opts);
            return cli_help();
        case 'f':
            format = optarg;
            break;
        case 'O':
            output_format = optarg;
            break;
        case 'o':
            if (vs_opts_parse(&opts, optarg)) {
                cli_fail(1);
                goto out;
            }
            break;
        case 'j':
            if (cli_parse_output(optarg, &output))
                goto out;
            break;
        case 's':
            if (cli_parse_size_arg(optarg, "size", &size))
                goto out;
            size_given = true;
            break;
        case 'U':
            flags |= IMG_OPEN_NO_LOCK;
            break;
        case 'l':
            rc = cli_usage_error("-l (internal snapshots) is not supported by measure");
            goto out;
        case 'X':
            break;
        default:
            rc = cli_bad_option(c, argv);
            goto out;
        }
    }
    if (size_given && optind < argc) {
        rc = cli_usage_error("--size N cannot be used together with a filename");
        goto out;
    }
    if (!size_given && optind != argc - 1) {
        rc = cli_usage_error(optind >= argc ? "either --size N or one filename must be specified"
                                            : "expecting one image file name");
        goto out;
    }
    struct img *src = NULL;
    if (!size_given && img_open(&src, argv[optind], format, flags)) {
        cli_fail(1);
        goto out;
    }
    uint64_t required, full;
    if (img_measure(output_format, opts.count ? &opts : NULL, src, size, &required, &full)) {
        img_close(src);
        cli_fail(1);
        goto out;
    }
    /* qemu-img reports the space for persistent bitmaps between two qcow2 images; vessel
     * converts copy no bitmaps, so that is 0 */
    bool bitmaps =
        src && !strcmp(img_format(src), "qcow2") &&
        !strcmp(img_format_canonical(output_format) ? img_format_canonical(output_format) : "",
                "qcow2");
    img_close(src);
    if (output == CLI_OUTPUT_JSON) {
        struct json_object *o = json_object_new_object();
        if (bitmaps)
            json_object_object_add(o, "bitmaps", json_object_new_int64(0));
        json_object_object_add(o, "required", json_object_new_int64((int64_t)required));
        json_object_object_add(o, "fully-allocated", json_object_new_int64((int64_t)full));
        cli_json_print(o);
        json_object_put(o);
    } else {
        printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n", required, full);
        if (bitmaps)
            printf("bitmaps size: 0\n");
    }
    rc = 0;
out:
    vs_opts_free(&opts);
    return rc;
}

/* ---- bench ----------------------------------------------------------------------------------- */

static int cli_bench(int argc, char **argv)
{
    struct img_bench_params p;
    img_bench_params_init(&p);
    const char *format = NULL;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    bool quiet = false;
    int flags = 0;
    uint64_t threads = 0, v;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"pattern", required_argument, NULL, 'P'},
                                             {"flush-interval", required_argument, NULL, 'I'},
                                             {"no-drain", no_argument, NULL, 'N'},
                                             {"random", no_argument, NULL, 'R'},
                                             {"seed", required_argument, NULL, 'D'},
                                             {"threads", required_argument, NULL, 'H'},
                                             {"output", required_argument, NULL, 'j'},
                                             {"force-share", no_argument, NULL, 'U'},
                                             {"object", required_argument, NULL, 'X'},
                                             {0}};
    int c;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help();
        case 'c':
            if (cli_parse_uint(optarg, "request count (-c)", 1, INT32_MAX, &p.count))
                return 1;
            break;
        case 'd':
            if (cli_parse_uint(optarg, "queue depth (-d)", 1, 4096, &v))
                return 1;
            p.depth = (unsigned)v;
            break;
        case 'f':
            format = optarg;
            break;
        case 'n':
            break; /* native AIO: every request is already a synchronous syscall */
        case 'i':
            if (strcmp(optarg, "threads") && strcmp(optarg, "native") && strcmp(optarg, "io_uring"))
                return cli_usage_error("invalid aio option '%s'", optarg);
            break;
        case 'o':
            if (cli_parse_size_arg(optarg, "offset (-o)", &p.offset))
                return 1;
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            if (cli_parse_size_arg(optarg, "buffer size (-s)", &v))
                return 1;
            if (!v || v > (1u << 30))
                return cli_usage_error("buffer size must be between 1 byte and 1 GiB");
            p.bufsize = (size_t)v;
            break;
        case 'S':
            if (cli_parse_size_arg(optarg, "step size (-S)", &p.step))
                return 1;
            break;
        case 't':
            if (!strcmp(optarg, "none") || !strcmp(optarg, "directsync"))
                flags |= IMG_OPEN_DIRECT;
            else if (strcmp(optarg, "writeback") && strcmp(optarg, "writethrough") &&
                     strcmp(optarg, "unsafe"))
                return cli_usage_error("invalid cache mode '%s'", optarg);
            break;
        case 'w':
            p.write = true;
            break;
        case 'U':
            flags |= IMG_OPEN_NO_LOCK;
            break;
        case 'P':
            if (cli_parse_uint(optarg, "pattern", 0, 255, &v))
                return 1;
            p.pattern = (int)v;
            break;
        case 'I':
            if (cli_parse_uint(optarg, "flush interval", 0, UINT32_MAX, &p.flush_interval))
                return 1;
            break;
        case 'R':
            p.random = true;
            break;
        case 'D':
            if (cli_parse_uint(optarg, "seed", 0, UINT64_MAX, &p.seed))
                return 1;
            break;
        case 'H':
            if (cli_parse_uint(optarg, "thread count", 1, 4096, &threads))
                return 1;
            break;
        case 'j':
            if (cli_parse_output(optarg, &output))
                return 1;
            break;
        case 'N':
        case 'X':
            break;
        default:
            return cli_bad_option(c, argv);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("expecting one image file name");
    if (p.flush_interval && !p.write)
        return cli_usage_error("--flush-interval is only available in write tests");
    if (threads)
        p.depth = (unsigned)threads;
    if (p.write)
        flags |= IMG_OPEN_RDWR;
    struct img *img;
    if (img_open(&img, argv[optind], format, flags))
        return cli_fail(1);
    if (!quiet && output == CLI_OUTPUT_HUMAN)
        printf("Sending %" PRIu64 " %s requests, %zu bytes each, %u in parallel (starting at "
               "offset %" PRIu64 ", step size %" PRIu64 ")%s\n",
               p.count, p.write ? "write" : "read", p.bufsize, p.depth, p.offset,
               p.step ? p.step : p.bufsize, p.random ? ", random offsets" : "");
    fflush(stdout);
    struct img_bench_result r;
    int rc = img_bench(img, &p, &r);
    if (rc) {
        vs_error_prefix(rc, "failed request");
        img_close(img);
        return cli_fail(1);
    }
    img_close(img);
    if (quiet)
        return 0;
    if (output == CLI_OUTPUT_JSON) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "requests", json_object_new_int64((int64_t)r.requests));
        json_object_object_add(o, "request-size", json_object_new_int64((int64_t)p.bufsize));
        json_object_object_add(o, "depth", json_object_new_int64(p.depth));
        json_object_object_add(o, "write", json_object_new_boolean(p.write));
        json_object_object_add(o, "seconds", json_object_new_double(r.seconds));
        double secs = r.seconds > 0 ? r.seconds : 1e-9;
        json_object_object_add(o, "iops", json_object_new_int64((int64_t)(r.requests / secs)));
        json_object_object_add(o, "bytes-per-second",
                               json_object_new_int64((int64_t)(r.bytes / secs)));
        cli_json_print(o);
        json_object_put(o);
    } else {
        printf("Run completed in %3.3f seconds.\n", r.seconds);
    }
    return 0;
}

/* ---- dispatch -------------------------------------------------------------------------------- */

/* ---- compact --------------------------------------------------------------------------------- */

/* Virtual Server's "compact": give back the space of allocated blocks that read as zeros. */
static int cli_compact(int argc, char **argv)
{
    struct cli_common o = {.output = CLI_OUTPUT_HUMAN};
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'}, {"output", required_argument, NULL, 'j'}, {0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":hf:q", longopts, NULL)) != -1)
        if ((rc = cli_common_option(c, argv, &o)) != CLI_OPTION_TAKEN)
            return rc;
    if (optind != argc - 1)
        return cli_usage_error("expecting one file name");
    struct img *img;
    if (img_open(&img, argv[optind], o.format, IMG_OPEN_RDWR | IMG_OPEN_NO_BACKING))
        return cli_fail(1);
    struct img_compact result;
    rc = img_compact(img, &result);
    if (!rc)
        rc = img_close(img);
    else
        img_close(img);
    if (rc)
        return cli_fail(1);
    if (o.output == CLI_OUTPUT_JSON) {
        struct json_object *json = json_object_new_object();
        json_object_object_add(json, "blocks-freed",
                               json_object_new_int64((int64_t)result.blocks_freed));
        json_object_object_add(json, "bytes-before",
                               json_object_new_int64((int64_t)result.bytes_before));
        json_object_object_add(json, "bytes-after",
                               json_object_new_int64((int64_t)result.bytes_after));
        cli_json_print(json);
        json_object_put(json);
    } else if (!o.quiet) {
        char before[32], after[32];
        vs_format_size(result.bytes_before, before, sizeof(before));
        vs_format_size(result.bytes_after, after, sizeof(after));
        printf("Compacted: %llu blocks freed, disk size %s -> %s\n",
               (unsigned long long)result.blocks_freed, before, after);
    }
    return 0;
}

static const struct cli_verb cli_verbs[] = {
    {"bench", cli_bench,
     "bench [-c COUNT] [-d DEPTH] [-f FMT] [-n] [-o OFFSET] [-s BUFSIZE] [-S STEP] "
     "[-t none|writeback] [-w] [--pattern=N] [--flush-interval=N] [--random] [--seed=N] "
     "[--threads=N] [--output=human|json] [-U] [-q] FILE"},
    {"check", cli_check, "check [-f FMT] [-r leaks|all] [--output=human|json] [-U] [-q] FILE"},
    {"commit", cli_commit, "commit [-f FMT] [-b BASE] [-d] [-p] [-q] FILE"},
    {"compact", cli_compact, "compact [-f FMT] [--output=human|json] [-q] FILE"},
    {"compare", cli_compare, "compare [-f FMT] [-F FMT] [-s] [-p] [-U] [-q] FILE1 FILE2"},
    {"convert", cli_convert,
     "convert [-f FMT] [-O FMT] [-B BACKING [-F FMT]] [-o OPTIONS] [-c] [-p] [-m N] [-W] [-n] "
     "[-S SIZE] [-U] [-q] SRC... DST"},
    {"create", cli_create,
     "create [-f FMT] [-b BACKING [-F FMT]] [-o OPTIONS] [-u] [-q] FILE [SIZE]"},
    {"info", cli_info, "info [-f FMT] [--output=human|json] [--backing-chain] [-U] FILE"},
    {"map", cli_map,
     "map [-f FMT] [--output=human|json] [--start-offset=OFFSET] [--max-length=LEN] [-U] FILE"},
    {"measure", cli_measure,
     "measure [-O FMT] [-o OPTIONS] [--output=human|json] [--size SIZE | [-f FMT] [-U] FILE]"},
    {"rebase", cli_rebase, "rebase [-f FMT] [-u] -b BACKING [-F FMT] [-p] [-U] [-q] FILE"},
    {"resize", cli_resize, "resize [-f FMT] [--shrink] [--preallocation=MODE] [-q] FILE [+|-]SIZE"},
    {"snapshot", cli_snapshot,
     "snapshot [-f FMT] [-U] [-q] [-l | -a NAME | -c NAME | -d NAME] FILE"},
};

static void cli_img_usage(FILE *out)
{
    fprintf(out, "usage: vessel img VERB [OPTIONS] ARGS\n\nVerbs:\n");
    for (size_t i = 0; i < VS_ARRAY_SIZE(cli_verbs); i++)
        fprintf(out, "  %s\n", cli_verbs[i].usage);
    fprintf(out, "\nSizes take k, M, G, T, P, E suffixes (powers of 1024). Formats:");
    for (const char *const *f = img_format_names(); f && *f; f++)
        fprintf(out, " %s", *f);
    fprintf(out, "\nSee docs/vessel-img.md for every option and the exit codes.\n");
}

int cli_img_main(int argc, char **argv)
{
    if (argc < 2) {
        cli_img_usage(stderr);
        return 1;
    }
    const char *verb = argv[1];
    if (!strcmp(verb, "--help") || !strcmp(verb, "-h") || !strcmp(verb, "help")) {
        cli_img_usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < VS_ARRAY_SIZE(cli_verbs); i++) {
        if (strcmp(cli_verbs[i].name, verb))
            continue;
        cli_verb_current = &cli_verbs[i];
        optind = 0; /* full getopt reset for the verb's own argv */
        opterr = 0;
        int rc = cli_verbs[i].run(argc - 1, argv + 1);
        fflush(stdout);
        return rc;
    }
    fprintf(stderr, "vessel: img: unknown verb '%s'\nTry 'vessel img --help'.\n", verb);
    return 1;
}
