/*
 * tests/fuzz/fuzz-ovf.c — libFuzzer target for the appliance parsers of untrusted text: OVF
 * descriptors, .mf manifests and XenServer ova.xml. A descriptor that parses must write back and
 * parse again to the same hardware (a written descriptor is what vessel hands to others).
 *
 * The one idea: the first byte picks the parser, so one corpus covers all three.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vessel/appliance.h"
#include "vessel/util.h"

static void quiet(const char *msg)
{
    (void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    vs_warn_set_handler(quiet);
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    struct appliance_system *sys = NULL, *again = NULL;
    switch (data[0] % 3) {
    case 0:
        if (appliance_ovf_parse(text, len, "fuzz.ovf", &sys) == 0) {
            char *xml = appliance_ovf_write(sys);
            if (!xml || appliance_ovf_parse(xml, strlen(xml), "again.ovf", &again) != 0 ||
                again->vcpus != sys->vcpus || again->memory != sys->memory ||
                again->disk_count != sys->disk_count || again->nic_count != sys->nic_count)
                __builtin_trap();
            free(xml);
        }
        break;
    case 1: {
        struct appliance_manifest m;
        if (appliance_manifest_parse(text, len, "fuzz.mf", &m) == 0) {
            for (size_t i = 0; i < m.count; i++)
                if (appliance_manifest_find(&m, m.entries[i].file) != &m.entries[i])
                    __builtin_trap();
            appliance_manifest_free(&m);
        }
        break;
    }
    default:
        appliance_xva_parse(text, len, "ova.xml", &sys);
        break;
    }
    appliance_system_free(again);
    appliance_system_free(sys);
    return 0;
}
