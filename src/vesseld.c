/*
 * src/vesseld.c — the vessel daemon: `vesseld [--state DIR] [--vmm PATH] [--listen tcp:H:P …]`.
 *
 * Parses its few flags, finds vessel-vmm (--vmm, $VESSEL_VMM, or next to this binary) and hands
 * over to mgmt_daemon_run (lib/mgmt), which serves the API on DIR/vesseld.sock until SIGTERM.
 * Stopping the daemon never stops a VM: each runs in its own session and is found again on start.
 */
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vessel/mgmt.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: vesseld [--state DIR] [--vmm PATH] [--max-clients N] [--hook-timeout S]\n"
            "               [--listen tcp:HOST:PORT --tls-cert FILE --tls-key FILE "
            "--token-file FILE]\n"
            "  --state DIR       state directory (default %s): vessel.db, vesseld.sock, run/,\n"
            "                    hooks/ (executables run on events), log/hooks.log, net/ (the\n"
            "                    networks VMs' NICs use: vessel net --state DIR/net)\n"
            "  --vmm PATH        the vessel-vmm program (default $VESSEL_VMM, else next to "
            "vesseld)\n"
            "  --max-clients N   concurrent API connections (default 64)\n"
            "  --hook-timeout S  kill a hook after S seconds (default 10)\n"
            "  --listen tcp:HOST:PORT   also serve the API over TCP: TLS with --tls-cert and\n"
            "                    --tls-key, every request with the bearer token of --token-file\n",
            MGMT_DEFAULT_STATE_DIR);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"state", required_argument, NULL, 's'},
        {"vmm", required_argument, NULL, 'm'},
        {"max-clients", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"tls-cert", required_argument, NULL, 'C'},
        {"tls-key", required_argument, NULL, 'K'},
        {"token-file", required_argument, NULL, 'T'},
        {"hook-timeout", required_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct mgmt_daemon_config config = {.state_dir = MGMT_DEFAULT_STATE_DIR};
    const char *vmm = getenv("VESSEL_VMM");
    int c;
    while ((c = getopt_long(argc, argv, "hs:m:c:", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            config.state_dir = optarg;
            break;
        case 'm':
            vmm = optarg;
            break;
        case 'c':
            config.max_clients = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'l':
            config.listen = optarg;
            break;
        case 'C':
            config.tls_cert = optarg;
            break;
        case 'K':
            config.tls_key = optarg;
            break;
        case 'T':
            config.token_file = optarg;
            break;
        case 'H': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*end || v == 0 || v > 3600) {
                fprintf(stderr, "vesseld: --hook-timeout: seconds, 1-3600\n");
                return 1;
            }
            config.hook_timeout = (unsigned)v;
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }
    char self[PATH_MAX], sibling[PATH_MAX + 16], state[PATH_MAX];
    if (!vmm || !*vmm) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0) {
            fprintf(stderr, "vesseld: cannot find vessel-vmm; use --vmm or VESSEL_VMM\n");
            return 1;
        }
        self[n] = 0;
        snprintf(sibling, sizeof(sibling), "%s/vessel-vmm", dirname(self));
        vmm = sibling;
    }
    config.vmm_path = vmm;
    /* the VMs' sockets are named relative to the state dir: make it absolute */
    if (config.state_dir[0] != '/' && getcwd(state, sizeof(state))) {
        size_t len = strlen(state);
        snprintf(state + len, sizeof(state) - len, "/%s", config.state_dir);
        config.state_dir = state;
    }
    int err = mgmt_daemon_run(&config);
    if (err) {
        fprintf(stderr, "vesseld: %s\n", vs_error_message());
        return 1;
    }
    return 0;
}
