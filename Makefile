# vessel — build, test, demo.  `make demo` and `make check` install their own Debian packages.
#
# Layout: libvessel (lib/*/*.c -> $(BUILD)/libvessel.a), programs (src/), unit tests
# (tests/unit/test-*.c, one binary each), fuzz targets (tests/fuzz/fuzz-*.c, clang libFuzzer).
# BUILD selects the tree: build/ is the optimised one (demo, benchmarks, install), build/asan/ the
# ASan+UBSan one the test suite runs.

BUILD    ?= build
SANITIZE ?= 0
PREFIX   ?= /usr/local
CC       ?= cc
JOBS     ?= $(shell nproc)

PKGS      := json-c libzstd zlib libdeflate libxml-2.0 ext2fs com_err sqlite3 libmnl libarchive libcrypto openssl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# lib/vmm: decompressors for bzImage payloads (lz4, xz/lzma, bzip2; zstd and zlib are above).
PKG_LIBS   += -llz4 -llzma -lbz2

CFLAGS_COMMON := -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Wall -Wextra -Werror \
                 -Wno-unused-parameter -Wshadow -Wformat=2 -g -Iinclude -Ilib $(PKG_CFLAGS)
ifeq ($(SANITIZE),1)
  OPT_CFLAGS := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  OPT_LDFLAGS := -fsanitize=address,undefined
else
  OPT_CFLAGS := -O2
  OPT_LDFLAGS :=
endif
CFLAGS  += $(CFLAGS_COMMON) $(OPT_CFLAGS) -MMD -MP
LDFLAGS += $(OPT_LDFLAGS)
LDLIBS  += $(PKG_LIBS) -lpthread -lm

LIB_SRCS    := $(sort $(wildcard lib/*/*.c))
LIB_OBJS    := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
VESSEL_SRCS := $(sort $(wildcard src/vessel.c src/cli-*.c))
VESSEL_OBJS := $(VESSEL_SRCS:%.c=$(BUILD)/obj/%.o)
VMM_SRCS    := $(sort $(wildcard src/vessel-vmm.c src/vmm-*.c))
VMM_OBJS    := $(VMM_SRCS:%.c=$(BUILD)/obj/%.o)
VESSELD_SRCS := $(sort $(wildcard src/vesseld.c))
VESSELD_OBJS := $(VESSELD_SRCS:%.c=$(BUILD)/obj/%.o)
PROGRAMS    := $(BUILD)/bin/vessel $(if $(VMM_SRCS),$(BUILD)/bin/vessel-vmm) \
               $(if $(VESSELD_SRCS),$(BUILD)/bin/vesseld)
UNIT_SRCS   := $(sort $(wildcard tests/unit/test-*.c))
UNIT_BINS   := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRCS   := $(sort $(wildcard tests/fuzz/fuzz-*.c))
FUZZ_BUILD  ?= build/fuzz
FUZZ_BINS   := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_BUILD)/%)

.PHONY: all lib tests fuzz check demo deps deps-check install clean format bench
all: $(PROGRAMS) guest

# guest/probe/probe.mk adds the freestanding probe guest (build/guest/probe.elf) to `guest`.
.PHONY: guest
guest:
-include guest/probe/probe.mk

lib: $(BUILD)/libvessel.a

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/libvessel.a: $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# Programs link the library's objects, not the archive, so every driver in the registry is in.
$(BUILD)/bin/vessel: $(VESSEL_OBJS) $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(VESSEL_OBJS) $(LIB_OBJS) $(LDLIBS)

$(BUILD)/tests/test-%: $(BUILD)/obj/tests/unit/test-%.o $(BUILD)/obj/tests/unit/harness.o $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/obj/tests/unit/harness.o $(LIB_OBJS) $(LDLIBS)

# vessel-vmm links the archive, so only the objects it uses come in (no libxml2/ICU/OpenSSL/
# SQLite). Safe because the image drivers are reached through img.c's static table, not
# constructors. The optimised build links statically (static-pie, Debian's .a libraries): one
# mapping instead of twelve shared objects, no dynamic loader at exec, and about half the RSS of
# each VM process — what Firecracker does with musl. The sanitizer build can't be static, so it
# links the shared libraries --as-needed.
# A static link names exactly the libraries the VMM's objects use (libmnl ships no .a).
ifeq ($(SANITIZE),1)
  VMM_LINK := -Wl,--as-needed
  VMM_LIBS := $(LDLIBS)
else
  VMM_LINK := -static-pie
  VMM_LIBS := -ljson-c -lzstd -lz -ldeflate -lext2fs -lcom_err -llz4 -llzma -lbz2 -lpthread -lm
endif
$(BUILD)/bin/vessel-vmm: $(VMM_OBJS) $(BUILD)/libvessel.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(VMM_LINK) -o $@ $(VMM_OBJS) $(BUILD)/libvessel.a $(VMM_LIBS)

$(BUILD)/bin/vesseld: $(VESSELD_OBJS) $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(VESSELD_OBJS) $(LIB_OBJS) $(LDLIBS)

tests: $(PROGRAMS) guest $(UNIT_BINS)

# libFuzzer targets: clang, ASan+UBSan. The library is compiled once for them (fuzzer-no-link
# instrumentation) and linked into each target.
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS := $(CFLAGS_COMMON) -Wno-format-nonliteral -O1 $(FUZZ_SAN)
FUZZ_OBJS   := $(LIB_SRCS:%.c=$(FUZZ_BUILD)/obj/%.o)
$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<
$(FUZZ_BUILD)/fuzz-%: tests/fuzz/fuzz-%.c $(FUZZ_OBJS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJS) $(PKG_LIBS) -lpthread -lm

fuzz: $(FUZZ_BINS)

deps:
	scripts/deps.sh build
deps-check:
	scripts/deps.sh check

# The two commands of the README.
demo: deps
	$(MAKE) -j$(JOBS) all
	scripts/demo.sh build/bin

check: deps-check
	$(MAKE) -j$(JOBS) BUILD=build/asan SANITIZE=1 tests
	$(MAKE) -j$(JOBS) fuzz
	tests/run-all.sh

bench: deps-check
	$(MAKE) -j$(JOBS) all
	bench/img-convert
	bench/img-io
	bench/vmm
	bench/net
	bench/mgmt
	bench/guest

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(PROGRAMS) $(DESTDIR)$(PREFIX)/bin/

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)

# Keep object files that pattern rules build as intermediates (unit-test objects).
.SECONDARY:
