/*
 * src/cli-host.c — `vessel host info [--json]`: what this host can and can't run.
 *
 * The facts come from vmm_host_info (lib/vmm/hostinfo.c); this file only words them: a table of
 * facts, then plain sentences on what will work (the verdict matters more than the flags).
 */
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "vessel/util.h"
#include "vessel/vmm.h"

int cli_host_main(int argc, char **argv);

static const char *verdict(const struct vmm_host_info *h)
{
    switch (h->kvm_kind) {
    case VMM_KVM_HARDWARE:
        return "hardware virtualization: guests run at native speed";
    case VMM_KVM_NESTED:
        return "nested virtualization (this host is itself a VM): guests run, with slower exits";
    case VMM_KVM_PVM:
        return "software-assisted KVM (kvm_pvm): guest user code runs natively but guest kernel "
               "code is emulated (~1M instructions/s); Linux guests boot very slowly and may stop "
               "on instructions the emulator lacks; the probe guest and device tests work";
    case VMM_KVM_UNKNOWN:
        return "KVM works but its kind is unknown";
    default:
        return "no usable KVM: vessel-vmm cannot run guests here";
    }
}

static void print_json(const struct vmm_host_info *h)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "cpu_vendor", json_object_new_string(h->cpu_vendor));
    json_object_object_add(o, "cpu_model", json_object_new_string(h->cpu_model));
    json_object_object_add(o, "host_cpus", json_object_new_int((int)h->host_cpus));
    json_object_object_add(o, "vmx", json_object_new_boolean(h->vmx));
    json_object_object_add(o, "svm", json_object_new_boolean(h->svm));
    json_object_object_add(o, "hypervisor", json_object_new_boolean(h->hypervisor));
    json_object_object_add(o, "kvm_present", json_object_new_boolean(h->kvm_present));
    json_object_object_add(o, "kvm_usable", json_object_new_boolean(h->kvm_usable));
    if (h->kvm_problem[0])
        json_object_object_add(o, "kvm_problem", json_object_new_string(h->kvm_problem));
    json_object_object_add(o, "kvm_api_version", json_object_new_int(h->kvm_api_version));
    json_object_object_add(o, "kvm_kind", json_object_new_string(vmm_kvm_kind_name(h->kvm_kind)));
    json_object_object_add(o, "kvm_module", json_object_new_string(h->kvm_module));
    json_object_object_add(o, "nested_enabled", json_object_new_boolean(h->nested_enabled));
    json_object_object_add(o, "max_vcpus", json_object_new_int(h->max_vcpus));
    json_object_object_add(o, "recommended_vcpus", json_object_new_int(h->recommended_vcpus));
    json_object_object_add(o, "mem_total", json_object_new_int64((int64_t)h->mem_total));
    json_object_object_add(o, "mem_available", json_object_new_int64((int64_t)h->mem_available));
    json_object_object_add(o, "hugepages", json_object_new_boolean(h->hugepages_available));
    json_object_object_add(o, "tun", json_object_new_boolean(h->tun));
    json_object_object_add(o, "cgroup_version", json_object_new_int(h->cgroup_version));
    json_object_object_add(o, "verdict", json_object_new_string(verdict(h)));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
    json_object_put(o);
}

static void print_text(const struct vmm_host_info *h)
{
    char total[32], avail[32];
    vs_format_size(h->mem_total, total, sizeof(total));
    vs_format_size(h->mem_available, avail, sizeof(avail));
    printf("cpu:          %s (%s), %u logical CPUs\n", h->cpu_model[0] ? h->cpu_model : "?",
           h->cpu_vendor[0] ? h->cpu_vendor : "?", h->host_cpus);
    printf("cpu flags:    vmx %s, svm %s, hypervisor %s\n", h->vmx ? "yes" : "no",
           h->svm ? "yes" : "no", h->hypervisor ? "yes" : "no");
    if (h->kvm_usable)
        printf("kvm:          /dev/kvm API %d, %s (%s), max %d vCPUs per VM\n", h->kvm_api_version,
               vmm_kvm_kind_name(h->kvm_kind), h->kvm_module[0] ? h->kvm_module : "module ?",
               h->max_vcpus);
    else
        printf("kvm:          unusable: %s\n", h->kvm_problem);
    if (h->kvm_kind == VMM_KVM_HARDWARE || h->kvm_kind == VMM_KVM_NESTED)
        printf("nested:       %s\n",
               h->nested_enabled ? "enabled (guests may run KVM)" : "disabled");
    printf("memory:       %s total, %s available%s\n", total, avail,
           h->hugepages_available ? ", huge pages reserved" : "");
    printf("tun:          %s\n",
           h->tun ? "/dev/net/tun works (virtio-net on tap)" : "missing (no tap networking)");
    printf("cgroups:      %s\n", h->cgroup_version == 2   ? "v2"
                                 : h->cgroup_version == 1 ? "v1"
                                                          : "not mounted");
    printf("verdict:      %s\n", verdict(h));
}

int cli_host_main(int argc, char **argv)
{
    /* argv[0] is "host" (or "info" when dispatched one level deeper): find the verb */
    bool json = false;
    const char *verb = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 || strcmp(argv[i], "--output=json") == 0)
            json = true;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: vessel host info [--json]\n");
            return 0;
        } else if (!verb)
            verb = argv[i];
        else {
            fprintf(stderr, "vessel host: unexpected argument '%s'\n", argv[i]);
            return 1;
        }
    }
    if (verb && strcmp(verb, "info") != 0) {
        fprintf(stderr, "vessel host: unknown verb '%s' (try: vessel host info [--json])\n", verb);
        return 1;
    }
    struct vmm_host_info h;
    vmm_host_info(&h);
    if (json)
        print_json(&h);
    else
        print_text(&h);
    return 0;
}
