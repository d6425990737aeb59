/*
 * tests/fuzz/fuzz-vhdx.c — libFuzzer target for the VHDX driver: the same bounded open / read /
 * block-status / check / repair / write / compact sequence as fuzz-vhd.c, on VHDX inputs.
 *
 * The one idea: one harness for the three Microsoft/VirtualBox formats, so each format's parser
 * gets exactly the same scrutiny; only the format name differs, and VHDX inputs are spread
 * over a sparse file (FUZZ_WINDOWS) because its regions lie megabytes apart.
 */
#define FUZZ_FORMAT "vhdx"
/* input window -> file offset: identifier, both headers, both region tables, the log, the
 * metadata table and items, the BAT and the first data — where qemu-img and vessel put them */
#define KB_ 1024ull
#define MB_ (1024ull * 1024)
#define FUZZ_WINDOWS                                                                               \
    {                                                                                              \
        {0, 0, 4 * KB_}, {4 * KB_, 64 * KB_, 4 * KB_}, {8 * KB_, 128 * KB_, 4 * KB_},              \
            {12 * KB_, 192 * KB_, 4 * KB_}, {16 * KB_, 256 * KB_, 4 * KB_},                        \
            {20 * KB_, 1 * MB_, 12 * KB_}, {32 * KB_, 2 * MB_, 4 * KB_},                           \
            {36 * KB_, 2 * MB_ + 64 * KB_, 4 * KB_}, {40 * KB_, 3 * MB_, 8 * KB_},                 \
            {48 * KB_, 4 * MB_, 8 * KB_}, {56 * KB_, 8 * MB_, 8 * KB_},                            \
    }
#define FUZZ_FILE_SIZE (16 * MB_)
#include "fuzz-vhd.c"
