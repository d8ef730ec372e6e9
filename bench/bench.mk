# Benchmarks: kite vs Mosquitto (bench/README.md). Included by the
# top-level Makefile.
#   make bench          full scenario set, kite, Mosquitto and kite-all
#                       (< 15 min: about 12)
#   make bench-quick    every scenario with small numbers, kite and
#                       Mosquitto (< 2 min: about 75 s)
#   make bench-smoke    tiny numbers, asserts delivery only (< 30 s)
# Brokers: kite (1 shard, pinned like Mosquitto), mosquitto, kite-all (a
# shard per CPU, unpinned); run.py's default per profile unless
# BENCH_BROKERS=mosquitto (or kite, ...) is given. BENCH_ARGS passes more
# options to bench/run.py (e.g. BENCH_ARGS='--only fanout-q0').

BENCH_BUILD   := $(BUILD)/bench
BENCH_GEN     := $(BENCH_BUILD)/kite-bench
BENCH_CFLAGS  := -std=c17 -D_GNU_SOURCE -I. -O2 -Wall -Wextra -Werror
# Listed, not globbed: bench/ also holds other engineers' micro-benchmarks
# (acl_bench.c, flood_filter_bench.c) with their own main() and builds.
BENCH_SRC     := bench/kite-bench.c bench/client.c bench/net.c bench/proc.c \
		 bench/hist.c bench/tls.c bench/ws.c
# The generator parses and builds packets with the broker's own codec.
BENCH_CORE    := core/codec.c
BENCH_BROKERS ?=
BENCH_ARGS    ?=
# FlashMQ 1.26.2 from ../shared/anchors (a reference, never part of kite):
# built once into build/flashmq, shared by every BUILD dir.
FLASHMQ_ANCHORS ?= ../shared/anchors
FLASHMQ       ?= build/flashmq/flashmq
BENCH_RUN      = $(PYTHON) bench/run.py --gen $(BENCH_GEN) \
		 --kite $(BUILD)/kite --flashmq $(FLASHMQ) \
		 $(if $(BENCH_BROKERS),--brokers $(BENCH_BROKERS)) $(BENCH_ARGS)

.PHONY: bench bench-quick bench-smoke bench-persist bench-deps bench-gen \
	bench-kite bench-flashmq bench-cluster

bench-gen: $(BENCH_GEN)

# core/ follows the top-level Makefile's warning policy, which allows
# unused parameters (-Wno-unused-parameter); bench/ gets the strict set.
$(BENCH_BUILD)/core/%.o: core/%.c core/codec.h core/mqtt.h
	@mkdir -p $(dir $@)
	gcc $(BENCH_CFLAGS) -Wno-unused-parameter -c $< -o $@

$(BENCH_GEN): $(BENCH_SRC) bench/bench.h $(BENCH_CORE:%.c=$(BENCH_BUILD)/%.o)
	@mkdir -p $(BENCH_BUILD)
	gcc $(BENCH_CFLAGS) -o $@ $(BENCH_SRC) $(BENCH_CORE:%.c=$(BENCH_BUILD)/%.o) -luring -lssl -lcrypto -lm

bench-deps:
	@sh bench/deps.sh

# kite is built only when it is one of the brokers. If it does not build,
# the harness measures Mosquitto alone and says so loudly.
bench-kite:
ifneq ($(if $(BENCH_BROKERS),$(findstring kite,$(BENCH_BROKERS)),kite),)
	@$(MAKE) --no-print-directory $(BUILD)/kite || \
		echo "bench: *** $(BUILD)/kite did not build: kite will NOT be measured ***" >&2
endif

# Builds FlashMQ when it is one of the brokers (the full and quick
# profiles' default); a failed build leaves it out, loudly (run.py).
bench-flashmq:
ifneq ($(if $(BENCH_BROKERS),$(findstring flashmq,$(BENCH_BROKERS)),flashmq),)
	@test -x $(FLASHMQ) || sh $(FLASHMQ_ANCHORS)/build-flashmq.sh \
		$(dir $(FLASHMQ)) >/dev/null || \
		echo "bench: *** FlashMQ did not build: it will NOT be measured ***" >&2
endif

bench: bench-deps $(BENCH_GEN) bench-kite bench-flashmq
	$(BENCH_RUN) --profile full

# A full and a resumed TLS handshake through kite's TLS code, in memory
# (bench/tls_handshake_bench.c says how to run it); built by bench-smoke so
# it keeps compiling.
BENCH_TLS_HS  := $(BENCH_BUILD)/tls-handshake-bench
$(BENCH_TLS_HS): bench/tls_handshake_bench.c tls/tls.c tls/rec.c tls/tls.h tls/rec.h
	@mkdir -p $(BENCH_BUILD)
	gcc $(BENCH_CFLAGS) -Wno-unused-parameter -o $@ bench/tls_handshake_bench.c \
		tls/tls.c tls/rec.c -lssl -lcrypto -lpthread

bench-quick: bench-deps $(BENCH_GEN) bench-kite bench-flashmq
	$(BENCH_RUN) --profile quick

# Inside `make test`: correctness only (counts, no loss), never speed.
bench-smoke: $(BENCH_GEN) $(BENCH_TLS_HS) bench-kite
	$(BENCH_RUN) --profile smoke --no-plots

# Durable state (bench/README.md, "Durable state"): persist-* rows only,
# kite persistence off / on / never / always and Mosquitto off / on, three
# rounds each, medians (about 6 minutes). Restart time: bench/restart_time.py.
bench-persist: bench-deps $(BENCH_GEN) bench-kite
	$(BENCH_RUN) --profile persist

# What crossing nodes costs in a kite cluster (bench/cluster.py): one
# nats-server with JetStream, two kite nodes and a kite alone, kite-bench
# at a fixed rate; CPU-s per million deliveries, local vs cross-node.
# BENCH_CLUSTER_ARGS passes more options (e.g. --no-jetstream).
BENCH_CLUSTER_ARGS ?=
bench-cluster: $(BUILD)/kite $(BENCH_GEN)
	$(PYTHON) bench/cluster.py --kite $(BUILD)/kite --gen $(BENCH_GEN) $(BENCH_CLUSTER_ARGS)
