/*
 * lib/defs/libvirt-export.c — write a struct vm_def as libvirt domain XML.
 *
 * The idea: emit only what vessel knows, in the element order of libvirt's own `virsh dumpxml`, and
 * map each vessel field to the one libvirt element that means the same thing (undo disk ->
 * <transient/>, cpu_weight -> <shares>, cpu_cap -> <global_quota>), so the import in
 * libvirt-import.c can read every field back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "defs/defs-internal.h"

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '\'':
            fputs("&apos;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

static void element(FILE *f, const char *indent, const char *name, const char *text)
{
    fprintf(f, "%s<%s>", indent, name);
    xml_text(f, text);
    fprintf(f, "</%s>\n", name);
}

/* The target names libvirt needs where the definition has none: vda, vdb … per bus prefix,
 * skipping names that explicit targets or earlier disks already use. One pass in disk order, so
 * the cost stays polynomial however many disks there are (fuzz-defs found the recursive version
 * exponential). OUT has disk_count entries. */
static void assign_targets(const struct vm_def *def, char (*out)[16])
{
    for (size_t i = 0; i < def->disk_count; i++) {
        const struct vm_disk *d = &def->disks[i];
        if (d->target) {
            snprintf(out[i], 16, "%s", d->target);
            continue;
        }
        const char *prefix = d->bus == VM_DISK_BUS_VIRTIO ? "vd"
                             : d->bus == VM_DISK_BUS_IDE  ? "hd"
                                                          : "sd";
        for (unsigned n = 0; n <= 26 * 27; n++) {
            if (n < 26)
                snprintf(out[i], 16, "%s%c", prefix, 'a' + n);
            else
                snprintf(out[i], 16, "%s%c%c", prefix, 'a' + n / 26 - 1, 'a' + n % 26);
            bool taken = false;
            for (size_t j = 0; j < def->disk_count && !taken; j++) {
                if (j == i)
                    continue;
                if (def->disks[j].target)
                    taken = strcmp(def->disks[j].target, out[i]) == 0;
                else if (j < i)
                    taken = strcmp(out[j], out[i]) == 0;
            }
            if (!taken)
                break;
        }
    }
}

char *vm_def_to_libvirt(const struct vm_def *def)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        vs_error(-ENOMEM, "out of memory");
        return NULL;
    }
    unsigned long long kib = (unsigned long long)(def->memory >> 10);
    fputs("<domain type='kvm'>\n", f);
    element(f, "  ", "name", def->name ? def->name : "");
    if (def->uuid[0])
        element(f, "  ", "uuid", def->uuid);
    fprintf(f, "  <memory unit='KiB'>%llu</memory>\n", kib);
    fprintf(f, "  <currentMemory unit='KiB'>%llu</currentMemory>\n", kib);
    if (def->cpu_affinity)
        fprintf(f, "  <vcpu placement='static' cpuset='%s'>%u</vcpu>\n", def->cpu_affinity,
                def->vcpus);
    else
        fprintf(f, "  <vcpu placement='static'>%u</vcpu>\n", def->vcpus);
    fputs("  <cputune>\n", f);
    fprintf(f, "    <shares>%u</shares>\n", def->cpu_weight);
    if (def->cpu_cap) {
        fputs("    <global_period>100000</global_period>\n", f);
        fprintf(f, "    <global_quota>%llu</global_quota>\n",
                (unsigned long long)def->cpu_cap * 1000);
    }
    fputs("  </cputune>\n", f);
    fputs("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n", f);
    if (def->boot_from == VM_BOOT_FROM_KERNEL) {
        element(f, "    ", "kernel", def->kernel ? def->kernel : "");
        if (def->initrd)
            element(f, "    ", "initrd", def->initrd);
        if (def->cmdline)
            element(f, "    ", "cmdline", def->cmdline);
    } else {
        fprintf(f, "    <boot dev='%s'/>\n", def->boot_from == VM_BOOT_FROM_CDROM ? "cdrom" : "hd");
    }
    fputs("  </os>\n", f);
    fputs("  <features>\n    <acpi/>\n  </features>\n", f);
    fprintf(f, "  <on_poweroff>%s</on_poweroff>\n", vm_action_name(def->on_poweroff));
    fprintf(f, "  <on_reboot>%s</on_reboot>\n", vm_action_name(def->on_reboot));
    fprintf(f, "  <on_crash>%s</on_crash>\n", vm_action_name(def->on_crash));
    fputs("  <devices>\n", f);
    char(*targets)[16] = vs_calloc(def->disk_count ? def->disk_count : 1, sizeof(*targets));
    if (!targets) {
        fclose(f);
        free(buf);
        return NULL;
    }
    assign_targets(def, targets);
    for (size_t i = 0; i < def->disk_count; i++) {
        const struct vm_disk *d = &def->disks[i];
        bool block = d->file && strncmp(d->file, "/dev/", 5) == 0;
        const char *target = targets[i];
        fprintf(f, "    <disk type='%s' device='%s'>\n", block ? "block" : "file",
                d->media == VM_DISK_MEDIA_CDROM ? "cdrom" : "disk");
        if (d->format)
            fprintf(f, "      <driver name='qemu' type='%s'/>\n", d->format);
        fprintf(f, "      <source %s='", block ? "dev" : "file");
        xml_text(f, d->file ? d->file : "");
        fputs("'/>\n", f);
        fprintf(f, "      <target dev='%s' bus='%s'/>\n", target, vm_disk_bus_name(d->bus));
        if (d->readonly)
            fputs("      <readonly/>\n", f);
        if (d->undo)
            fputs("      <transient/>\n", f);
        if (d->iops || d->bps) {
            fputs("      <iotune>\n", f);
            if (d->iops)
                fprintf(f, "        <total_iops_sec>%llu</total_iops_sec>\n",
                        (unsigned long long)d->iops);
            if (d->bps)
                fprintf(f, "        <total_bytes_sec>%llu</total_bytes_sec>\n",
                        (unsigned long long)d->bps);
            fputs("      </iotune>\n", f);
        }
        fputs("    </disk>\n", f);
    }
    for (size_t i = 0; i < def->nic_count; i++) {
        const struct vm_nic *n = &def->nics[i];
        fprintf(f, "    <interface type='%s'>\n", n->bridge ? "bridge" : "network");
        if (n->mac[0])
            fprintf(f, "      <mac address='%s'/>\n", n->mac);
        fprintf(f, "      <source %s='", n->bridge ? "bridge" : "network");
        xml_text(f, n->bridge ? n->bridge : n->network ? n->network : "default");
        fputs("'/>\n", f);
        fprintf(f, "      <model type='%s'/>\n", vm_nic_model_name(n->model));
        if (n->rate_mbit) /* libvirt's average is in kilobytes per second */
            fprintf(f,
                    "      <bandwidth>\n        <inbound average='%u'/>\n"
                    "        <outbound average='%u'/>\n      </bandwidth>\n",
                    n->rate_mbit * 125, n->rate_mbit * 125);
        fputs("    </interface>\n", f);
    }
    if (def->console == VM_CONSOLE_PTY) {
        fputs("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n", f);
        fputs("    <console type='pty'>\n      <target type='serial' port='0'/>\n"
              "    </console>\n",
              f);
    } else if (def->console != VM_CONSOLE_NONE) {
        bool unix_socket = def->console == VM_CONSOLE_UNIX;
        fprintf(f, "    <serial type='%s'>\n      <source %spath='", unix_socket ? "unix" : "file",
                unix_socket ? "mode='bind' " : "");
        xml_text(f, def->console_path ? def->console_path : "");
        fputs("'/>\n      <target port='0'/>\n    </serial>\n", f);
    }
    free(targets);
    fputs("  </devices>\n</domain>\n", f);
    if (fclose(f) != 0 || !buf) {
        free(buf);
        vs_error(-ENOMEM, "out of memory");
        return NULL;
    }
    return buf;
}
