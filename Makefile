# kite: `make run` starts the broker with built-in defaults; `make test`
# runs everything. Both install missing Debian packages first.
# `make install` (PREFIX, DESTDIR) puts the binary and man pages in place;
# `make deb` builds the Debian 12 package (docs/PACKAGING.md).

CC       ?= gcc
BUILD    ?= build
SAN      ?=
PYTHON   := /usr/bin/python3
FUZZ_SECONDS ?= 20

# One line per step ("  CC      io/main.c"); V=1 shows the commands.
V ?= 0
ifeq ($(V),1)
Q :=
msg = @true
else
Q := @
msg = @printf '  %-7s %s\n' '$(1)' '$(2)'
endif

# The version has one home: KITE_VERSION in io/version.h.
VERSION := $(shell sed -n 's/^\#define KITE_VERSION "\(.*\)"$$/\1/p' io/version.h)

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
            -Wmissing-prototypes -Wno-unused-parameter
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c17 -D_GNU_SOURCE -I. $(WARN) -pthread -fno-strict-aliasing
# `make` builds the broker: bpf/bpf.mk, included below, defines targets
# of its own before `all`.
.DEFAULT_GOAL := all

LDLIBS   := -luring -lurcu-qsbr -lurcu-cds -lssl -lcrypto -lwslay -lpthread -lsystemd -lnats

ifeq ($(SAN),1)
# jemalloc stays out of sanitizer builds: ASan must own malloc.
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined -DKITE_SANITIZE=1
LDFLAGS  += -fsanitize=address,undefined
else
LDLIBS   += -ljemalloc
endif

# Modules without io_uring (unit-tested on their own): core/, tls/, acl/,
# tools/, ws/. The engine (io/) links them into kite.
CORE_SRC := $(sort $(wildcard core/*.c tls/*.c acl/*.c tools/*.c ws/*.c))
IO_SRC   := $(sort $(wildcard io/*.c))
UNIT_SRC := $(sort $(wildcard tests/unit/*.c))
# The engine's own unit tests (tests/io/): its handlers driven by a harness
# instead of sockets, linked with everything of kite but main().
IO_TEST_SRC := $(sort $(wildcard tests/io/*.c))
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
# The packet handlers' targets (fuzz_handle_*) run the engine in the
# tests/io harness: they link io/ (but main) and what it needs.
FUZZ_IO_SRC := $(filter-out io/main.c,$(IO_SRC)) tests/io/harness.c \
	bpf/flood_filter_stub.c
FUZZ_IO_LIBS := -luring -lsystemd -lnats

# The XDP flood filter (bpf/): its loader, or a stub where it cannot build.
include bpf/bpf.mk
LDLIBS   += $(BPF_LDLIBS)

CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o)
IO_OBJ   := $(IO_SRC:%.c=$(BUILD)/%.o)
UNIT_OBJ := $(UNIT_SRC:%.c=$(BUILD)/%.o)
IO_TEST_OBJ := $(IO_TEST_SRC:%.c=$(BUILD)/%.o)

.PHONY: all deps run test unit integration check-clang check-layers asan fuzz clean \
	install uninstall deb deb-test soak

all: $(BUILD)/kite $(BUILD)/unit-tests $(BUILD)/io-unit-tests $(BUILD)/mosqdb-dump

deps:
	@sh tools/deps.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(call msg,CC,$<)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/kite: $(IO_OBJ) $(CORE_OBJ) $(BPF_OBJ)
	$(call msg,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The engine includes the filter's interface only.
$(IO_OBJ): | $(BPF_OBJ)

$(BUILD)/unit-tests: $(UNIT_OBJ) $(CORE_OBJ)
	$(call msg,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/io-unit-tests: $(IO_TEST_OBJ) $(BUILD)/tests/unit/main.o \
		$(filter-out $(BUILD)/io/main.o,$(IO_OBJ)) $(CORE_OBJ) $(BPF_OBJ)
	$(call msg,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(IO_TEST_OBJ): | $(BPF_OBJ)

# A mosquitto.db as text (tools/mosqdb_dump.h), for the import tests until
# `kite db dump` exists.
$(BUILD)/mosqdb-dump: $(BUILD)/tests/tools/mosqdb_dump_main.o $(CORE_OBJ)
	$(call msg,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

-include $(CORE_OBJ:.o=.d) $(IO_OBJ:.o=.d) $(UNIT_OBJ:.o=.d) $(IO_TEST_OBJ:.o=.d) \
	$(BUILD)/tests/tools/mosqdb_dump_main.d

# The README's first command: the broker with its built-in default
# (127.0.0.1:1883, anonymous allowed on that local listener only).
run: deps
	@$(MAKE) --no-print-directory $(BUILD)/kite
	exec $(BUILD)/kite $(ARGS)

unit: $(BUILD)/unit-tests $(BUILD)/io-unit-tests
	$(BUILD)/unit-tests
	$(BUILD)/io-unit-tests

# The kernel TLS fault seam (tests/fault/): preloaded into kite by the
# hand-off tests. Never sanitized itself: ASan's runtime is kite's.
$(BUILD)/ktls-fault.so: tests/fault/ktls_fault.c
	@mkdir -p $(dir $@)
	$(CC) -std=c17 -shared -fPIC -O2 $(WARN) -o $@ $< -ldl -pthread

# Compilers at once in `make test` and `make asan` (a plain `make` builds
# one file at a time unless given -j).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
ASAN_BINS := kite unit-tests io-unit-tests ktls-fault.so mosqdb-dump bench/kite-bench

# The integration tests mostly wait (keep-alives, timeouts, a broker
# starting), so TEST_JOBS of them run at once (pytest-xdist), each with
# its own brokers on free ports. TEST_JOBS=1: all one by one.
TEST_JOBS ?= 4
INTEGRATION_ENV = KITE_BIN=$(abspath $(BUILD)/kite) KTLS_FAULT_SO=$(abspath $(BUILD)/ktls-fault.so) \
	MOSQDB_DUMP=$(abspath $(BUILD)/mosqdb-dump)
PYTEST = $(PYTHON) -m pytest -q -p no:cacheprovider

integration: $(BUILD)/kite $(BUILD)/ktls-fault.so $(BUILD)/mosqdb-dump $(BUILD)/bench/kite-bench
ifeq ($(TEST_JOBS),1)
	$(INTEGRATION_ENV) $(PYTEST) tests/integration $(PYTEST_ARGS)
else
	$(INTEGRATION_ENV) $(PYTEST) -n $(TEST_JOBS) tests/integration $(PYTEST_ARGS)
endif

# The include graph of io/ follows the layers docs/ENGINE.md gives, with
# no cycle (tools/check_layers.py; no build needed). The self-test plants
# each kind of fault in a copy of the tree and expects it reported.
check-layers:
	@$(PYTHON) tools/check_layers.py --self-test
	@$(PYTHON) tools/check_layers.py

check-clang:
	$(MAKE) --no-print-directory CC=clang BUILD=build/clang all

# Built with JOBS compilers at once first: the tests themselves must not
# run in parallel with each other as make targets.
asan:
	$(MAKE) --no-print-directory -j$(JOBS) CC=clang SAN=1 BUILD=build/asan \
		$(addprefix build/asan/,$(ASAN_BINS))
	$(MAKE) --no-print-directory CC=clang SAN=1 BUILD=build/asan unit integration

# Each parser's libFuzzer target, for a short bounded time. kite's own
# sources are compiled once with the fuzzer's instrumentation
# (fuzzer-no-link) and linked into every target: compiling them again
# per target cost most of the step's time.
FUZZ_CFLAGS := -std=c17 -D_GNU_SOURCE -I. -g -O1 \
	-fsanitize=fuzzer-no-link,address,undefined
FUZZ_CORE_OBJ := $(patsubst %.c,build/fuzz/obj/%.o,$(CORE_SRC))
FUZZ_IO_OBJ := $(patsubst %.c,build/fuzz/obj/%.o,$(FUZZ_IO_SRC))

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@clang $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@

# The targets run FUZZ_JOBS at a time (each is one process on one core):
# with 2 cores the step takes half as long, and each target still runs
# FUZZ_SECONDS. -O keeps each target's lines together.
FUZZ_JOBS ?= 2
FUZZ_NAMES := $(notdir $(FUZZ_SRC:.c=))

fuzz:
	@$(MAKE) --no-print-directory -O -j$(FUZZ_JOBS) $(FUZZ_NAMES:%=fuzz-run-%)

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_CORE_OBJ) $(FUZZ_IO_OBJ)
	@case $* in handle_*) io="$(FUZZ_IO_OBJ) $(FUZZ_IO_LIBS)";; *) io=;; esac; \
	clang $(FUZZ_CFLAGS) -MMD -MP -fsanitize=fuzzer -o $@ $< $(FUZZ_CORE_OBJ) $$io \
		-lurcu-qsbr -lurcu-cds -lssl -lcrypto -lwslay -lpthread

-include $(FUZZ_CORE_OBJ:.o=.d) $(FUZZ_IO_OBJ:.o=.d) $(FUZZ_NAMES:%=build/fuzz/%.d)

# Kept: make would delete them as intermediate files.
.SECONDARY: $(FUZZ_NAMES:%=build/fuzz/%) $(FUZZ_CORE_OBJ) $(FUZZ_IO_OBJ)

# Not files: always run (a pattern rule, so .PHONY cannot name them).
fuzz-run-%: build/fuzz/%
	@mkdir -p build/fuzz/$*.corpus
	@echo "fuzz: $* for $(FUZZ_SECONDS)s"
	@build/fuzz/$* -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 \
		build/fuzz/$*.corpus tests/fuzz/corpus/$* 2>build/fuzz/$*.log \
		|| { tail -50 build/fuzz/$*.log; exit 1; }
	@grep -E '^#[0-9]+.*DONE' build/fuzz/$*.log | tail -1 || true

# The whole suite: gcc and clang builds without warnings, unit and
# integration tests, the same under ASan+UBSan, every fuzz target, the
# benchmark harness on tiny numbers (delivery counts only, never speed),
# and the kernel TLS tests in a VM (exit 77 there: could not run, skipped).
test: deps
	$(MAKE) --no-print-directory check-layers
	$(MAKE) --no-print-directory -j$(JOBS) all
	$(MAKE) --no-print-directory -j$(JOBS) check-clang
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory integration
	$(MAKE) --no-print-directory mosquitto-suite
	$(MAKE) --no-print-directory deb-test
	$(MAKE) --no-print-directory asan
	$(MAKE) --no-print-directory fuzz
	$(MAKE) --no-print-directory bench-smoke BENCH_ARGS=--require-kite
	$(MAKE) --no-print-directory $(VM_DIR)/ktls_probe
	@rc=0; BUILD=$(BUILD) VM_TIMEOUT=$(VM_TIMEOUT) tests/vm/test_ktls_vm.sh || rc=$$?; \
	 if [ $$rc -eq 77 ]; then echo "ktls-vm: skipped (see above)"; else exit $$rc; fi
	@# kite itself in the VM: TX and RX must be offloaded for every
	@# version and cipher, data intact.
	@rc=0; BROKER=$(abspath $(BUILD)/kite) EXPECT=txrx BUILD=$(BUILD) \
	 tests/vm/test_broker_ktls_vm.sh || rc=$$?; \
	 if [ $$rc -eq 77 ]; then echo "kite-ktls-vm: skipped (see above)"; else exit $$rc; fi
	@# The same behind HAProxy with send-proxy-v2 (enable_proxy_protocol 2):
	@# kernel TLS engages after a PROXY header, the log names the client.
	@rc=0; PROXY=2 BROKER=$(abspath $(BUILD)/kite) EXPECT=txrx BUILD=$(BUILD) \
	 tests/vm/test_broker_ktls_vm.sh || rc=$$?; \
	 if [ $$rc -eq 77 ]; then echo "kite-ktls-proxy-vm: skipped (see above)"; else exit $$rc; fi
	@# Records that are not application data once the kernel has the keys:
	@# close_notify, fatal alerts, KeyUpdate, renegotiation; on Debian 12's
	@# kernel, then on the newest Debian kernel that can re-key (>= 6.14).
	@# kite built with ASan+UBSan (the asan step above), so a memory error
	@# on these rare paths fails the test.
	@# Real clients that connect, publish and close at once (TLS 1.2
	@# and 1.3): kite survives, and every one that waited for its
	@# CONNACK moved to kernel TLS.
	@rc=0; KITE=$(abspath build/asan/kite) VM_TIMEOUT=$(VM_TIMEOUT) \
	 tests/vm/test_ktls_shortlived_vm.sh || rc=$$?; \
	 if [ $$rc -eq 77 ]; then echo "ktls-shortlived-vm: skipped (see above)"; else exit $$rc; fi
	@# MQTT over WebSockets over kernel TLS (a wss listener): paho-mqtt
	@# with transport="websockets", both ways, TLS 1.2 and 1.3.
	@rc=0; KITE=$(abspath build/asan/kite) VM_TIMEOUT=$(VM_TIMEOUT) \
	 tests/vm/test_ktls_wss_vm.sh || rc=$$?; \
	 if [ $$rc -eq 77 ]; then echo "ktls-wss-vm: skipped (see above)"; else exit $$rc; fi
	@# A bridge over TLS (1.2, 1.3) to a remote kite and to Mosquitto:
	@# the bridge's own socket moves to kernel TLS, messages both ways.
	@# Nine cases and a late ticket, 1.5 min here: at least 300 s.
	@rc=0; KITE=$(abspath build/asan/kite) \
	 VM_TIMEOUT=$$(( $(VM_TIMEOUT) > 300 ? $(VM_TIMEOUT) : 300 )) \
	 tests/vm/test_bridge_ktls_vm.sh || rc=$$?; \
	 if [ $$rc -eq 77 ]; then echo "bridge-ktls-vm: skipped (see above)"; else exit $$rc; fi
	@for k in stock rekey; do rc=0; KITE=$(abspath build/asan/kite) VM_MEM=1G VM_TIMEOUT=$(VM_TIMEOUT) \
	 tests/vm/test_ktls_records_vm.sh $$k || rc=$$?; \
	 if [ $$rc -eq 77 ]; then echo "ktls-records-vm ($$k): skipped (see above)"; \
	 elif [ $$rc -ne 0 ]; then exit $$rc; fi; done
	@# The soak (tests/soak/soak.py) for a minute where TLS clients move
	@# to kernel TLS: churn that vanishes, stalled handshakes, garbage,
	@# slow readers, QoS 1/2 accounting, SIGHUPs; about 1.5 min.
	@rc=0; KITE=$(abspath build/asan/kite) SOAK_SECONDS=60 \
	 tests/vm/test_ktls_soak_vm.sh || rc=$$?; \
	 if [ $$rc -eq 77 ]; then echo "ktls-soak-vm: skipped (see above)"; else exit $$rc; fi

clean:
	rm -rf build

# ---- installing and packaging (docs/PACKAGING.md) ------------------------
# `make install`: the binary and the man pages under PREFIX, nothing else
# (no config, no unit, no user: the Debian package owns those).
PREFIX  ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
MAN_PAGES := man/kite.8 man/kite.conf.5 man/kite-cert.1 man/kite-passwd.1

install: $(BUILD)/kite
	$(call msg,INSTALL,$(DESTDIR)$(SBINDIR)/kite)
	$(Q)install -d $(DESTDIR)$(SBINDIR)
	$(Q)install -m 0755 $(BUILD)/kite $(DESTDIR)$(SBINDIR)/kite
	$(Q)set -e; for m in $(MAN_PAGES); do \
		s=$${m##*.}; install -d $(DESTDIR)$(MANDIR)/man$$s; \
		install -m 0644 $$m $(DESTDIR)$(MANDIR)/man$$s/; \
	done

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/kite
	@set -e; for m in $(MAN_PAGES); do \
		s=$${m##*.}; rm -f $(DESTDIR)$(MANDIR)/man$$s/$${m##*/}; \
	done

# build/kite_<version>_<arch>.deb, built by dpkg-buildpackage (debhelper)
# from a copy of the tree in build/deb/. Installs its build tools first.
deb:
	@sh tools/deps.sh deb
	@BUILD=$(BUILD) VERSION=$(VERSION) sh packaging/build-deb.sh

# The package's tests (tests/package): contents, unit, maintainer
# scripts, lintian, and install / start / reload / stop / purge under a
# real systemd in a throwaway container.
deb-test:
	@sh tools/deps.sh deb
	BUILD=$(abspath $(BUILD)) VERSION=$(VERSION) $(PYTHON) -m pytest -q -p no:cacheprovider tests/package $(PYTEST_ARGS)

# A bounded soak under mixed hostile traffic (tests/soak/soak.py): 10
# minutes unless SOAK_SECONDS says otherwise; KITE_BIN=/usr/sbin/mosquitto
# for comparison. Not part of `make test`.
soak:
	@if [ -z "$$KITE_BIN" ]; then $(MAKE) --no-print-directory $(BUILD)/kite; fi
	KITE_BIN=$${KITE_BIN:-$(abspath $(BUILD)/kite)} $(PYTHON) tests/soak/soak.py

# Kernel TLS is proven in a VM with Debian's stock kernel (tests/vm/).
include tests/vm/vm.mk

# Benchmarks (bench/): `make bench`, `make bench-quick`.
-include bench/bench.mk

# Mosquitto 2.0.11's own broker tests: `make mosquitto-suite`.
-include tests/mosquitto-suite/suite.mk
