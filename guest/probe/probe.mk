# guest/probe/probe.mk — builds the freestanding probe guest, build/guest/probe.elf, with the host
# gcc: no libc, no PIC, no red zone (interrupts land on the ring-0 stack but the rule keeps ring-0
# C safe), no SSE (ring-0 code is emulated on PVM hosts and must stay plain), own linker script.
# Included by the top Makefile, which declares the phony `guest` target.

PROBE_DIR    := guest/probe
PROBE_OUT    := build/guest
PROBE_SRCS   := $(sort $(wildcard $(PROBE_DIR)/*.c))
PROBE_ASM    := $(sort $(wildcard $(PROBE_DIR)/*.S))
PROBE_OBJS   := $(PROBE_SRCS:$(PROBE_DIR)/%.c=$(PROBE_OUT)/obj/%.o) \
                $(PROBE_ASM:$(PROBE_DIR)/%.S=$(PROBE_OUT)/obj/%.o)
PROBE_CC     := gcc
PROBE_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Werror -m64 -ffreestanding -fno-builtin-printf \
                -fno-pic -fno-pie -mno-red-zone -mcmodel=small --param=min-pagesize=0 -mgeneral-regs-only -mno-sse \
                -mno-mmx -mno-80387 -fno-stack-protector -fno-asynchronous-unwind-tables \
                -fno-unwind-tables -fcf-protection=none -fno-omit-frame-pointer -MMD -MP
PROBE_LDFLAGS := -nostdlib -static -no-pie -Wl,-T,$(PROBE_DIR)/probe.ld -Wl,--build-id=none \
                 -Wl,-z,max-page-size=4096 -Wl,-z,noexecstack

guest: $(PROBE_OUT)/probe.elf

$(PROBE_OUT)/obj/%.o: $(PROBE_DIR)/%.c $(PROBE_DIR)/probe.mk
	@mkdir -p $(dir $@)
	$(PROBE_CC) $(PROBE_CFLAGS) -c -o $@ $<

$(PROBE_OUT)/obj/%.o: $(PROBE_DIR)/%.S $(PROBE_DIR)/probe.mk
	@mkdir -p $(dir $@)
	$(PROBE_CC) $(PROBE_CFLAGS) -c -o $@ $<

$(PROBE_OUT)/probe.elf: $(PROBE_OBJS) $(PROBE_DIR)/probe.ld
	@mkdir -p $(dir $@)
	$(PROBE_CC) $(PROBE_CFLAGS) $(PROBE_LDFLAGS) -o $@ $(PROBE_OBJS) -lgcc
