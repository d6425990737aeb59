/*
 * ring0.c — the only C that runs in ring 0: IDT/TSS setup, the trap handler, the system calls.
 *
 * On a PVM host every instruction here is emulated (~1 µs each), so the rule is: ring 0 does
 * only what ring 3 cannot (load descriptor tables, halt, toggle IF, touch MSRs) and returns.
 * Ring 3 enters through INT3 (see syscall3 in entry.S). Faults print one "PROBE fail exception …"
 * line and power off, so a test never hangs on them.
 */
#include "probe.h"

struct trap_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error;
    u64 rip, cs, rflags, rsp, ss;
};

struct idt_gate {
    u16 offset_low, selector;
    u8 ist, type_attr;
    u16 offset_mid;
    u32 offset_high, reserved;
} __attribute__((packed));

struct tss64 {
    u32 reserved0;
    u64 rsp[3];
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3, iomap_base;
    /* All ports allowed. IOPL 3 alone should do, but PVM's emulator does not keep a virtual IOPL
     * across exits from ring 3 and falls back to this bitmap (its check reads two bytes, hence
     * the terminating 0xff inside the limit). */
    u8 iomap[8192 + 1];
} __attribute__((packed));

extern char trap_stubs[], kstack_top[], dfstack_top[];
extern u64 gdt_tss[2];

/* In .data, not .bss: ring 3 clears .bss when it starts, after ring 0 has filled these. */
static struct idt_gate idt[IDT_VECTORS] __attribute__((aligned(16), section(".data.ring0")));
static struct tss64 tss __attribute__((aligned(16), section(".data.ring0"))) = {
    .iomap_base = 104,
    .iomap[8192] = 0xff,
};
volatile u64 irq_count[IDT_VECTORS];

#define LAPIC_EOI 0xfee000b0ull

static void set_gate(int vec, void *handler, u8 dpl, u8 ist)
{
    u64 a = (u64)handler;
    idt[vec].offset_low = (u16)a;
    idt[vec].selector = 0x08;
    idt[vec].ist = ist;
    idt[vec].type_attr = (u8)(0x8e | (dpl << 5)); /* present, 64-bit interrupt gate */
    idt[vec].offset_mid = (u16)(a >> 16);
    idt[vec].offset_high = (u32)(a >> 32);
}

static void wrmsr(u32 msr, u64 v)
{
    __asm__ __volatile__("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}

void ring0_init(void)
{
    for (int v = 0; v < IDT_VECTORS; v++)
        set_gate(v, trap_stubs + 16 * v, v == SYSCALL_VECTOR ? 3 : 0, v == 8 ? 1 : 0);

    tss.rsp[0] = (u64)kstack_top;
    tss.ist[0] = (u64)dfstack_top;
    u64 base = (u64)&tss, limit = sizeof(tss) - 1;
    gdt_tss[0] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
                 (((base >> 24) & 0xff) << 56);
    gdt_tss[1] = base >> 32;

    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ __volatile__("lidt %0" ::"m"(idtr));
    __asm__ __volatile__("ltr %w0" ::"r"(0x30));
}

static u64 read_cr2(void)
{
    u64 v;
    __asm__ __volatile__("mov %%cr2, %0" : "=r"(v));
    return v;
}

static void syscall_dispatch(struct trap_frame *f)
{
    switch (f->rax) {
    case SYS_WAIT_IRQ:
        __asm__ __volatile__("sti; hlt; cli" ::: "memory");
        f->rax = 0;
        break;
    case SYS_IRQ_ENABLE:
        f->rflags |= 0x200;
        f->rax = 0;
        break;
    case SYS_IRQ_DISABLE:
        f->rflags &= ~0x200ull;
        f->rax = 0;
        break;
    case SYS_WRMSR:
        wrmsr((u32)f->rdi, f->rsi);
        f->rax = 0;
        break;
    case SYS_RDMSR: {
        u32 lo, hi;
        __asm__ __volatile__("rdmsr" : "=a"(lo), "=d"(hi) : "c"((u32)f->rdi));
        f->rax = ((u64)hi << 32) | lo;
        break;
    }
    case SYS_GET_CS: {
        u16 cs;
        __asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
        f->rax = cs;
        break;
    }
    case SYS_STOP:
        for (;;)
            __asm__ __volatile__("cli; hlt");
    default:
        f->rax = (u64)-1;
    }
}

void trap_handler(struct trap_frame *f)
{
    if (f->vector == SYSCALL_VECTOR) {
        syscall_dispatch(f);
        return;
    }
    if (f->vector >= 32) {
        irq_count[f->vector]++;
        if (f->vector != SPURIOUS_VECTOR)
            *(volatile u32 *)LAPIC_EOI = 0;
        return;
    }
    con_printf("PROBE fail exception vector=%llu error=0x%llx rip=0x%llx cs=0x%llx rflags=0x%llx "
               "rsp=0x%llx "
               "cr2=0x%llx\n",
               (unsigned long long)f->vector, (unsigned long long)f->error,
               (unsigned long long)f->rip, (unsigned long long)f->cs, (unsigned long long)f->rflags,
               (unsigned long long)f->rsp, (unsigned long long)read_cr2());
    power_off();
}
