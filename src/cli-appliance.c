/*
 * src/cli-appliance.c — `vessel export`, `vessel import` and `vessel p2v`: appliances (OVF, OVA,
 * XVA) in and out of vessel definitions, and physical disks into images.
 *
 * The idea: parse the arguments, call lib/appliance, print one line — the work and every check
 * live in the library, so the commands stay thin and their errors are the library's one-line
 * messages naming file and field.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vessel/appliance.h"
#include "vessel/util.h"

static void progress_cb(void *ctx, uint64_t done, uint64_t total)
{
    vs_progress_update(ctx, done, total);
}

static void progress_init(struct vs_progress *p, bool wanted)
{
    vs_progress_init(p, wanted && isatty(STDOUT_FILENO), stdout);
    if (wanted)
        vs_progress_update(p, 0, 1);
}

static int fail(const char *cmd)
{
    fprintf(stderr, "vessel %s: %s\n", cmd, vs_error_message());
    return 1;
}

static void export_usage(FILE *out)
{
    fprintf(out, "usage: vessel export ova DEFFILE OUT.ova [-p]\n"
                 "       vessel export ovf DEFFILE DIR [-p]\n\n"
                 "Export the VM of a definition file as an OVF 1.0 appliance: disks as\n"
                 "streamOptimized VMDK, a SHA256 manifest; an OVA is the tar of it, descriptor "
                 "first.\n");
}

int cli_export_main(int argc, char **argv)
{
    bool progress = false;
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'}, {0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+hp", longopts, NULL)) != -1) {
        if (c == 'h') {
            export_usage(stdout);
            return 0;
        }
        if (c == 'p')
            progress = true;
        else {
            export_usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 3 || (strcmp(argv[optind], "ova") && strcmp(argv[optind], "ovf"))) {
        export_usage(stderr);
        return 2;
    }
    bool archive = !strcmp(argv[optind], "ova");
    struct vs_progress bar;
    progress_init(&bar, progress);
    int rc = appliance_export(argv[optind + 1], argv[optind + 2], archive, progress_cb, &bar);
    vs_progress_finish(&bar);
    if (rc < 0)
        return fail("export");
    printf("exported %s\n", argv[optind + 2]);
    return 0;
}

static void import_usage(FILE *out)
{
    fprintf(out, "usage: vessel import ova|ovf|xva FILE [--dir DIR] [--format FMT] [-p]\n\n"
                 "Check the appliance (manifest digests, XVA chunk checksums), convert its disks\n"
                 "to FMT (default qcow2) and write DIR/NAME.vm (DIR defaults to the current\n"
                 "directory).\n");
}

int cli_import_main(int argc, char **argv)
{
    struct appliance_import_params p = {0};
    bool progress = false;
    static const struct option longopts[] = {{"dir", required_argument, NULL, 'd'},
                                             {"format", required_argument, NULL, 'f'},
                                             {"help", no_argument, NULL, 'h'},
                                             {0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:f:O:hp", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            p.dir = optarg;
            break;
        case 'f':
        case 'O':
            p.format = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'h':
            import_usage(stdout);
            return 0;
        default:
            import_usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        import_usage(stderr);
        return 2;
    }
    const char *kind = argv[optind];
    p.file = argv[optind + 1];
    int (*fn)(const struct appliance_import_params *, char **) =
        !strcmp(kind, "ova")   ? appliance_import_ova
        : !strcmp(kind, "ovf") ? appliance_import_ovf
        : !strcmp(kind, "xva") ? appliance_import_xva
                               : NULL;
    if (!fn) {
        import_usage(stderr);
        return 2;
    }
    struct vs_progress bar;
    progress_init(&bar, progress);
    p.progress = progress_cb;
    p.progress_ctx = &bar;
    char *def_path = NULL;
    int rc = fn(&p, &def_path);
    vs_progress_finish(&bar);
    if (rc < 0)
        return fail("import");
    printf("imported %s\n", def_path);
    free(def_path);
    return 0;
}

static void p2v_usage(FILE *out)
{
    fprintf(out, "usage: vessel p2v SOURCE OUT.FMT [-O FMT] [--force] [-p]\n\n"
                 "Copy a block device (or any file) into a sparse image. FMT comes from -O or the\n"
                 "extension of OUT (qcow2 when unknown). A source mounted read-write is refused\n"
                 "unless --force.\n");
}

int cli_p2v_main(int argc, char **argv)
{
    struct appliance_p2v_params p = {0};
    bool progress = false;
    static const struct option longopts[] = {
        {"force", no_argument, NULL, 'F'}, {"help", no_argument, NULL, 'h'}, {0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "O:hp", longopts, NULL)) != -1) {
        switch (c) {
        case 'O':
            p.format = optarg;
            break;
        case 'F':
            p.force = true;
            break;
        case 'p':
            progress = true;
            break;
        case 'h':
            p2v_usage(stdout);
            return 0;
        default:
            p2v_usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        p2v_usage(stderr);
        return 2;
    }
    p.source = argv[optind];
    p.target = argv[optind + 1];
    struct vs_progress bar;
    progress_init(&bar, progress);
    p.progress = progress_cb;
    p.progress_ctx = &bar;
    int rc = appliance_p2v(&p);
    vs_progress_finish(&bar);
    if (rc < 0)
        return fail("p2v");
    return 0;
}
