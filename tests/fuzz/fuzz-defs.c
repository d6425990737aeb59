/*
 * tests/fuzz/fuzz-defs.c — libFuzzer target for every definition reader: the vessel text parser,
 * the xl/xm, .vmx and libvirt XML imports; whatever parses must print and export without fault,
 * and the vessel text must parse back to an equal definition.
 *
 * The one idea: the first byte picks the reader, so one corpus covers them all.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vessel/defs.h"
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
    static const enum vm_def_format formats[4] = {VM_DEF_FORMAT_VESSEL, VM_DEF_FORMAT_XL,
                                                  VM_DEF_FORMAT_VMX, VM_DEF_FORMAT_LIBVIRT};
    struct vm_def *def = NULL;
    if (vm_def_import((const char *)data + 1, size - 1, "fuzz", formats[data[0] % 4], &def) < 0)
        return 0;
    char *text = vm_def_print(def);
    char *xml = vm_def_to_libvirt(def);
    struct vm_def *again = NULL;
    if (text && vm_def_parse(text, strlen(text), "again", &again) == 0 && !vm_def_equal(def, again))
        __builtin_trap();
    vm_def_free(again);
    free(text);
    free(xml);
    vm_def_free(def);
    return 0;
}
