/*
 * tests/fuzz/fuzz-vdi.c — libFuzzer target for the VDI driver: the same bounded open / read /
 * block-status / check / repair / write / compact sequence as fuzz-vhd.c, on VDI inputs.
 *
 * The one idea: one harness for the three Microsoft/VirtualBox formats, so each format's parser
 * gets exactly the same scrutiny; only the format name differs.
 */
#define FUZZ_FORMAT "vdi"
#include "fuzz-vhd.c"
