#!/usr/bin/env python3
"""tests/fuzz/make-kernel-seeds.py — writes the seed corpus of fuzz-kernel (tests/fuzz/corpus/
kernel/): small ELFs with and without a PVH note, and bzImages whose payload is such an ELF
compressed with each format the host decompresses that Python's standard library can write
(gzip, bzip2, xz, lzma), the uncompressed size appended as Linux's build does. Run it again after
a change to the loaders' input format; the files it writes are checked in."""
import bz2, gzip, lzma, os, struct, sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "kernel")
os.makedirs(out, exist_ok=True)


def elf(pvh, entry, vaddr, paddr):
    code = bytes([0xF4, 0xEB, 0xFD]) + bytes(61)  # hlt; jmp .
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry & 0xFFFFFFFF)
    phnum = 2 if pvh else 1
    phoff, note_off, code_off = 64, 64 + 56 * 2, 0x100
    hdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    hdr += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, entry if not pvh else vaddr, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, vaddr, paddr, len(code), 0x2000, 0x1000)
    ph = load + (struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4) if pvh else b"")
    b = bytearray(hdr + ph)
    b += bytes(note_off - len(b))
    b += note if pvh else b""
    b += bytes(code_off - len(b))
    return bytes(b + code)


def bzimage(payload, raw_len):
    setup_sects = 1
    b = bytearray(512 * (setup_sects + 1))
    b[0x1F1] = setup_sects
    struct.pack_into("<H", b, 0x1FE, 0xAA55)
    b[0x201] = 0x6A  # header length
    b[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", b, 0x206, 0x020F)  # protocol 2.15
    b[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<H", b, 0x236, 0x1)  # XLF_KERNEL_64
    data = payload + struct.pack("<I", raw_len)
    struct.pack_into("<I", b, 0x248, 0)  # payload offset, after the setup sectors
    struct.pack_into("<I", b, 0x24C, len(data))
    struct.pack_into("<Q", b, 0x258, 0x1000000)  # pref_address
    struct.pack_into("<I", b, 0x260, 0x400000)  # init_size
    return bytes(b) + data


pvh = elf(True, 0x100000, 0x100000, 0x100000)
vmlinux = elf(False, 0x1000000, 0xFFFFFFFF81000000, 0x1000000)
seeds = {"pvh.elf": pvh, "vmlinux.elf": vmlinux}
for name, payload in (("pvh", pvh), ("vmlinux", vmlinux)):
    seeds[f"bz-gzip-{name}"] = bzimage(gzip.compress(payload, mtime=0), len(payload))
    seeds[f"bz-bzip2-{name}"] = bzimage(bz2.compress(payload), len(payload))
    seeds[f"bz-xz-{name}"] = bzimage(lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32), len(payload))
    seeds[f"bz-lzma-{name}"] = bzimage(lzma.compress(payload, format=lzma.FORMAT_ALONE), len(payload))
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
