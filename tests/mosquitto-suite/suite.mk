# Mosquitto 2.0.11's own broker tests against kite (tests/mosquitto-suite/,
# docs/MOSQUITTO-SUITE.md). Included by the top-level Makefile.
#   make mosquitto-suite                           kite (build/kite), about 1.5 min
#   make mosquitto-suite BROKER=/usr/sbin/mosquitto the reference, about 8 min
# MOSQ_SUITE_ARGS passes more options to run.py, e.g. a test list
# (MOSQ_SUITE_ARGS='07-will-*') or --no-skip. Fails if a test kite passed
# before (tests/mosquitto-suite/expected-pass.txt) fails; for Mosquitto, if
# any test fails that skip.txt does not skip.

BROKER          ?= $(BUILD)/kite
MOSQ_SUITE_ARGS ?=
# Tests at once, each job with its own copy of the suite and its own ports:
# the tests mostly wait, and 06-bridge-clean-session alone takes 2 min.
MOSQ_SUITE_JOBS ?= 3

.PHONY: mosquitto-suite

mosquitto-suite: deps
	@if [ "$(BROKER)" = "$(BUILD)/kite" ]; then \
		$(MAKE) --no-print-directory $(BUILD)/kite; fi
	$(PYTHON) tests/mosquitto-suite/run.py --broker $(BROKER) \
		--out $(BUILD)/mosquitto-suite --jobs $(MOSQ_SUITE_JOBS) $(MOSQ_SUITE_ARGS)
