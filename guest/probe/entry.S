/*
 * entry.S — the PVH entry point and everything the CPU needs before C can run.
 *
 * The one idea: do at build time what would otherwise cost emulated ring-0 instructions. The
 * page tables (an identity map of the first 4 GiB in 2 MiB pages, all user-accessible) and the
 * GDT are assembled as data, so the 32-bit entry only prints "PROBE hello", loads registers and
 * jumps to long mode; ring0_init() then fills the IDT and TSS and we IRET to ring 3 with IOPL 3.
 */

#define CODE64_SEL 0x08
#define DATA_SEL   0x10
#define UDATA_SEL  0x23 /* 0x20 | RPL 3 */
#define UCODE_SEL  0x2b /* 0x28 | RPL 3 */
#define IDT_VECTORS_ASM 64 /* keep equal to IDT_VECTORS in probe.h */

/* XEN_ELFNOTE_PHYS32_ENTRY: QEMU and vessel-vmm find the 32-bit entry point here. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4         /* namesz: "Xen\0" */
    .long 8         /* descsz: a 64-bit address, like Linux's vmlinux */
    .long 18        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_entry

    .section .text.entry, "ax"
    .code32
    .globl pvh_entry
pvh_entry:
    /* PVH: protected mode, paging off, %ebx = struct hvm_start_info. Say hello first — the
     * benchmark measures exec to first serial byte. */
    cld
    movl %ebx, %edi
    movl $hello_msg, %esi
    movw $0x3f8, %dx
1:  lodsb
    testb %al, %al
    jz 2f
    outb %al, %dx
    jmp 1b
2:  lgdt gdt_desc
    movl $DATA_SEL, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %cr4, %eax
    orl $0x20, %eax             /* PAE */
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx      /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax       /* PG | PE */
    movl %eax, %cr0
    ljmp $CODE64_SEL, $long_mode

    .code64
long_mode:
    movl $DATA_SEL, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movq $kstack_top, %rsp
    movl %edi, %r12d            /* start info, zero-extended */
    call ring0_init
    pushq $0x3002               /* IOPL 3 in ring 0 first: some emulated IRETs keep IOPL */
    popfq
    /* Drop to ring 3: IOPL 3 (bits 12-13), interrupts off until ring 3 asks. */
    pushq $UDATA_SEL
    pushq $ustack_top - 8         /* as if called: %rsp+8 is 16-byte aligned */
    pushq $0x3002
    pushq $UCODE_SEL
    pushq $probe_main
    movq %r12, %rdi
    movl $UDATA_SEL, %eax
    movl %eax, %ds
    movl %eax, %es
    iretq

/* Exception and interrupt stubs, 16 bytes apart so ring0_init() can compute their addresses:
 * each pushes a zero error code when the CPU does not, then its vector. */
    .balign 16
    .globl trap_stubs
trap_stubs:
    .set vec, 0
    .rept IDT_VECTORS_ASM
    .balign 16
    .if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp trap_common
    .set vec, vec + 1
    .endr

trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    call trap_handler
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq

/* Ring 3's door into ring 0: INT3 with the number in %rax, arguments in %rdi/%rsi/%rdx. On PVM,
 * `int $0x80` from ring 3 becomes #UD and SYSCALL never leaves ring 3, but #BP is delivered
 * through our IDT into ring 0 like any exception — and it is a trap, so IRETQ resumes after it. */
    .section .text
    .globl syscall3
syscall3:
    movq %rdi, %rax
    movq %rsi, %rdi
    movq %rdx, %rsi
    movq %rcx, %rdx
    int3
    ret

    .section .rodata
hello_msg:
    .asciz "PROBE hello\n"

    .section .data
    .balign 16
    .globl gdt
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08 ring-0 code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10 ring-0 data */
    .quad 0x00cffa000000ffff    /* 0x18 ring-3 code, 32-bit (unused; the SYSRET layout) */
    .quad 0x00cff2000000ffff    /* 0x20 ring-3 data */
    .quad 0x00affa000000ffff    /* 0x28 ring-3 code, 64-bit */
    .globl gdt_tss
gdt_tss:
    .quad 0, 0                  /* 0x30 TSS, filled by ring0_init() */
gdt_end:
    .balign 4
    .word 0
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt

/* Identity map of the first 4 GiB with 2 MiB pages: present, writable, user (0x87). The tables
 * themselves are user-writable too, so ring 3 can add mappings above 4 GiB (map_high()): a
 * not-present entry is never cached, so filling one needs no TLB flush. */
    .section .data.pagetables, "aw"
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
    .globl pdpt
pdpt:
    .quad pd + 0x7, pd + 0x1000 + 0x7, pd + 0x2000 + 0x7, pd + 0x3000 + 0x7
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr

    .section .stack, "aw", @nobits
    .balign 4096
    .space 16384
    .globl kstack_top
kstack_top:
    .space 8192
    .globl dfstack_top
dfstack_top:
    .space 131072
    .globl ustack_top
ustack_top:
