# bpf/bpf.mk: kite's XDP flood filter. Included by the top-level Makefile
# (-include bpf/bpf.mk) or used alone: make -f bpf/bpf.mk bpf-all
#
# Exposes:
#   FLOOD_FILTER  real | stub | auto (default): real needs bpftool, kernel
#                 BTF ($(BPF_VMLINUX)) and libbpf headers; stub builds
#                 bpf/flood_filter_stub.c (flood_filter_load says "not available").
#   BPF_SKEL_H    generated skeleton (build dir, never committed)
#   BPF_OBJ       the object kite links: loader or stub
#   BPF_LDLIBS    libraries BPF_OBJ needs (-lbpf -lelf -lz, or nothing)
# Quiet like the top-level Makefile when included (Q, msg); verbose alone.
# Targets: bpf-all (filter + driver + tests + bench), bpf-test (runs the
# fixture table and the cross-CPU bucket test, root), bpf-bench (root).

BUILD       ?= build
BPFTOOL     ?= bpftool
BPF_CLANG   ?= clang
BPF_VMLINUX ?= /sys/kernel/btf/vmlinux
BPF_ARCH    ?= $(patsubst x86_64,x86,$(patsubst aarch64,arm64,$(shell uname -m)))
BPF_DIR     := $(BUILD)/bpf
FLOOD_FILTER ?= auto

ifeq ($(FLOOD_FILTER),auto)
override FLOOD_FILTER := $(if $(and $(shell command -v $(BPFTOOL) 2>/dev/null),$(wildcard $(BPF_VMLINUX)),$(wildcard /usr/include/bpf/libbpf.h)),real,stub)
endif

BPF_SKEL_H  := $(BPF_DIR)/filter.skel.h
ifeq ($(FLOOD_FILTER),real)
BPF_OBJ     := $(BPF_DIR)/flood_filter.o
BPF_LDLIBS  := -lbpf -lelf -lz
else
BPF_OBJ     := $(BPF_DIR)/flood_filter_stub.o
BPF_LDLIBS  :=
endif

# Kite's CFLAGS when included; the same warnings when used alone.
BPF_DEFAULT_CFLAGS := -O2 -g -std=c17 -D_GNU_SOURCE -I. -Wall -Wextra -Werror \
	-Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter \
	-pthread -fno-strict-aliasing
BPF_USER_CFLAGS = $(if $(strip $(CFLAGS)),$(CFLAGS),$(BPF_DEFAULT_CFLAGS)) -I$(BPF_DIR)
BPF_USER_LIBS   := -lbpf -lelf -lz -pthread

.PHONY: bpf-all bpf-test bpf-bench

bpf-all: $(BPF_OBJ) $(BPF_DIR)/flood-filter-driver $(BPF_DIR)/filter-test \
	$(BPF_DIR)/bucket-race-test $(BPF_DIR)/flood-filter-bench

$(BPF_DIR)/vmlinux.h: $(BPF_VMLINUX)
	@mkdir -p $(@D)
	$(call msg,GEN,$@)
	$(Q)$(BPFTOOL) btf dump file $< format c > $@.tmp && mv $@.tmp $@

# -mcpu=v3: the SYN bucket's compare-and-exchange (BPF atomics, Linux 5.12+;
# clang 14 defaults to v1).
$(BPF_DIR)/filter.bpf.o: bpf/filter.bpf.c bpf/filter.h $(BPF_DIR)/vmlinux.h
	$(call msg,BPF,$<)
	$(Q)$(BPF_CLANG) -O2 -g -Wall -Werror -target bpf -mcpu=v3 -D__TARGET_ARCH_$(BPF_ARCH) \
		-I$(BPF_DIR) -I. -c $< -o $@

$(BPF_SKEL_H): $(BPF_DIR)/filter.bpf.o
	$(call msg,GEN,$@)
	$(Q)$(BPFTOOL) gen skeleton $< name filter_bpf > $@.tmp && mv $@.tmp $@

$(BPF_DIR)/flood_filter.o: bpf/flood_filter.c bpf/flood_filter.h bpf/filter.h $(BPF_SKEL_H)
	@mkdir -p $(@D)
	$(call msg,CC,$<)
	$(Q)$(CC) $(CPPFLAGS) $(BPF_USER_CFLAGS) -c $< -o $@

$(BPF_DIR)/flood_filter_stub.o: bpf/flood_filter_stub.c bpf/flood_filter.h
	@mkdir -p $(@D)
	$(call msg,CC,$<)
	$(Q)$(CC) $(CPPFLAGS) $(BPF_USER_CFLAGS) -c $< -o $@

# Test and bench programs: always the real filter.
$(BPF_DIR)/flood-filter-driver: bpf/test_driver.c $(BPF_DIR)/flood_filter.o
	$(CC) $(BPF_USER_CFLAGS) -o $@ $^ $(BPF_USER_LIBS)

$(BPF_DIR)/filter-test: bpf/filter_test.c bpf/testpkt.h bpf/filter.h $(BPF_SKEL_H)
	$(CC) $(BPF_USER_CFLAGS) -o $@ $< $(BPF_USER_LIBS)

$(BPF_DIR)/bucket-race-test: bpf/bucket_race_test.c bpf/testpkt.h bpf/filter.h $(BPF_SKEL_H)
	$(CC) $(BPF_USER_CFLAGS) -o $@ $< $(BPF_USER_LIBS)

$(BPF_DIR)/flood-filter-bench: bench/flood_filter_bench.c bpf/testpkt.h bpf/filter.h $(BPF_SKEL_H)
	$(CC) $(BPF_USER_CFLAGS) -o $@ $< $(BPF_USER_LIBS)

bpf-test: $(BPF_DIR)/filter-test $(BPF_DIR)/bucket-race-test
	$(BPF_DIR)/filter-test
	$(BPF_DIR)/bucket-race-test

bpf-bench: $(BPF_DIR)/flood-filter-bench
	$(BPF_DIR)/flood-filter-bench
