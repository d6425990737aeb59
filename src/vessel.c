/*
 * src/vessel.c — the `vessel` program: finds the subsystem named by the first argument
 * (`vessel img …`) and hands it the rest of the command line.
 *
 * The idea: one table of subsystems, each a main-like function over argv shifted by one, so a new
 * subsystem (host, net, …) is one line here plus its own src/cli-*.c.
 */
#include <stdio.h>
#include <string.h>

#ifndef VESSEL_VERSION
#define VESSEL_VERSION "0.1.0"
#endif

/* Subsystem entry points (src/cli-*.c): argv[0] is the subsystem's name. */
int cli_img_main(int argc, char **argv);
int cli_host_main(int argc, char **argv);
int cli_vm_main(int argc, char **argv); /* src/cli-vm.c: argv[0] is the verb */
int cli_net_main(int argc, char **argv);
int cli_pool_main(int argc, char **argv); /* src/cli-pool.c: argv[0] is pool or vol */
int cli_guest_main(int argc, char **argv);
int cli_export_main(int argc, char **argv); /* src/cli-appliance.c */
int cli_import_main(int argc, char **argv);
int cli_p2v_main(int argc, char **argv);

struct vessel_command {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
};

static const struct vessel_command vessel_commands[] = {
    {"img", cli_img_main, "create, inspect, convert and repair disk images"},
    {"host", cli_host_main, "what this host can run (KVM, CPU features)"},
    {"define", cli_vm_main, "add or replace a VM definition (vesseld)"},
    {"undefine", cli_vm_main, "remove a shut-off VM's definition"},
    {"list", cli_vm_main, "list VMs (--all: also shut off)"},
    {"info", cli_vm_main, "a VM's state and settings"},
    {"start", cli_vm_main, "start a VM (--paused, --console: then attach its console)"},
    {"shutdown", cli_vm_main, "press a VM's power button (--timeout N: then destroy)"},
    {"destroy", cli_vm_main, "pull a VM's plug"},
    {"save", cli_vm_main, "save a running VM to a state file and stop it (xm save)"},
    {"restore", cli_vm_main, "resume a saved VM from its state file (xm restore)"},
    {"reboot", cli_vm_main, "reset a VM (its on_reboot policy decides)"},
    {"pause", cli_vm_main, "stop a VM's vCPUs"},
    {"resume", cli_vm_main, "continue a paused VM"},
    {"dumpdef", cli_vm_main, "print a VM's definition (--format vessel|libvirt)"},
    {"autostart", cli_vm_main, "start a VM when vesseld starts: on|off"},
    {"stats", cli_vm_main, "a running VM's CPU, memory and device counters"},
    {"clone", cli_vm_main, "copy a shut-off VM (new uuid and MACs)"},
    {"snapshot", cli_vm_main, "external qcow2 snapshots: create|list|revert|delete"},
    {"console", cli_vm_main, "attach to a VM's serial console"},
    {"events", cli_vm_main, "follow vesseld's event stream (--json, --since ID)"},
    {"edit", cli_vm_main, "edit a VM's definition in $VISUAL/$EDITOR, define it when valid"},
    {"template", cli_vm_main, "a shut-off VM's first disk as a standalone gold qcow2"},
    {"pool", cli_pool_main, "storage pools (directories): define|list|info|undefine"},
    {"vol", cli_pool_main, "volumes in a pool: create|list|delete|resize"},
    {"net", cli_net_main, "virtual networks: bridges, NAT with DHCP, VXLAN; taps for VMs"},
    {"guest", cli_guest_main, "files, partitions and boot entries of guest disks"},
    {"export", cli_export_main, "a VM definition as an OVF/OVA appliance"},
    {"import", cli_import_main, "an OVA, OVF or XenServer XVA appliance as a VM definition"},
    {"p2v", cli_p2v_main, "a block device or file into a sparse image"},
};

static void vessel_usage(FILE *out)
{
    fprintf(out, "usage: vessel COMMAND [ARGS…]\n"
                 "       vessel --version\n"
                 "       vessel help [COMMAND]\n\n"
                 "Commands:\n");
    for (size_t i = 0; i < sizeof(vessel_commands) / sizeof(vessel_commands[0]); i++)
        fprintf(out, "  %-10s %s\n", vessel_commands[i].name, vessel_commands[i].summary);
    fprintf(out, "\nRun 'vessel COMMAND --help' for the options of a command.\n");
}

static const struct vessel_command *vessel_find(const char *name)
{
    for (size_t i = 0; i < sizeof(vessel_commands) / sizeof(vessel_commands[0]); i++)
        if (!strcmp(vessel_commands[i].name, name))
            return &vessel_commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        vessel_usage(stderr);
        return 1;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--version") || !strcmp(name, "-V") || !strcmp(name, "version")) {
        printf("vessel version %s\n", VESSEL_VERSION);
        return 0;
    }
    if (!strcmp(name, "help") || !strcmp(name, "--help") || !strcmp(name, "-h")) {
        if (argc > 2 && vessel_find(argv[2])) {
            char *help_argv[] = {argv[2], "--help", NULL};
            return vessel_find(argv[2])->main(2, help_argv);
        }
        vessel_usage(stdout);
        return 0;
    }
    const struct vessel_command *cmd = vessel_find(name);
    if (!cmd) {
        fprintf(stderr, "vessel: unknown command '%s'\nTry 'vessel help' for the list.\n", name);
        return 1;
    }
    return cmd->main(argc - 1, argv + 1);
}
