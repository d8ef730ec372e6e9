# kTLS VM harness (tests/vm/README.md). Not included by the top-level
# Makefile yet; to use it alone:  make -f tests/vm/vm.mk ktls-vm
#
#   make ktls-vm                  probe kTLS on Debian's stock kernel in qemu
#   make vm-run VM_BINS="build/kite /usr/bin/mosquitto_pub" \
#        VM_FILES="pki:/etc/kite/pki" VM_CMD='kite -v & sleep 2; ...'
#                                 any command in the VM (PASS iff it exits 0)

BUILD    ?= build
VM_DIR   := $(BUILD)/vm
VM_BINS  ?=
VM_FILES ?=
VM_CMD   ?= cat /proc/net/tls_stat
VM_TIMEOUT ?= 150

.PHONY: ktls-vm vm-run

$(VM_DIR)/ktls_probe: tests/vm/ktls_probe.c
	@mkdir -p $(dir $@)
	gcc -std=c17 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter \
	    -o $@ $< -lssl -lcrypto -lpthread

ktls-vm: $(VM_DIR)/ktls_probe
	BUILD=$(BUILD) VM_TIMEOUT=$(VM_TIMEOUT) tests/vm/test_ktls_vm.sh

vm-run:
	tests/vm/build-initramfs.sh -o $(VM_DIR)/run-initramfs.cpio.gz \
	    $(addprefix -f ,$(VM_FILES)) $(VM_BINS) >/dev/null
	tests/vm/run-vm.sh -t $(VM_TIMEOUT) -i $(VM_DIR)/run-initramfs.cpio.gz \
	    -l $(VM_DIR)/run-console.log '$(VM_CMD)'
