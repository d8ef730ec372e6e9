/* $SYS/broker/... topics, as Mosquitto publishes them (retained), every
 * sys_interval seconds, from shard 0. */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "bpf/flood_filter.h"
#include "core/log.h"
#include "core/retain.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/route.h"
#include "io/sys.h"
#include "io/version.h"

static void sys_put(struct shard *s, const char *topic, const char *fmt,
		    unsigned long long v)
{
	char payload[64];
	int n = snprintf(payload, sizeof(payload), fmt, v);
	struct msg *m = msg_new((const uint8_t *)topic, (uint16_t)strlen(topic),
				(const uint8_t *)payload, (uint32_t)n, 0, true, NULL, 0);
	if (m)
		route_publish(s, m);
}

static uint64_t sys_sum(struct broker *b, size_t field_offset)
{
	uint64_t sum = 0;
	for (unsigned i = 0; i < b->nshards; i++) {
		_Atomic uint64_t *f = (_Atomic uint64_t *)((char *)&b->shards[i].stats +
							   field_offset);
		sum += atomic_load_explicit(f, memory_order_relaxed);
	}
	return sum;
}

/* The XDP filter's counters: topics and a log line each interval. */
static void sys_flood_filter(struct shard *s)
{
	struct flood_filter_stats st;
	flood_filter_stats(s->b->flood, &st);
	sys_put(s, "$SYS/broker/flood_filter/passed", "%llu", st.passed);
	sys_put(s, "$SYS/broker/flood_filter/dropped/rate", "%llu",
		st.dropped_rate);
	sys_put(s, "$SYS/broker/flood_filter/dropped/blocked", "%llu",
		st.dropped_block);
	sys_put(s, "$SYS/broker/flood_filter/blocks_added", "%llu",
		st.blocks_added);
	sys_put(s, "$SYS/broker/flood_filter/sources_allowed", "%llu",
		st.sources_allowed);
	log_msg(KITE_LOG_NOTICE,
		"flood filter: passed %llu, dropped by rate %llu, dropped blocked "
		"%llu, blocks added %llu, sources allowed %llu",
		(unsigned long long)st.passed,
		(unsigned long long)st.dropped_rate,
		(unsigned long long)st.dropped_block,
		(unsigned long long)st.blocks_added,
		(unsigned long long)st.sources_allowed);
}

#define SUM(field) sys_sum(b, offsetof(struct shard_stats, field))

void sys_publish(struct shard *s)
{
	struct broker *b = s->b;
	char version[64];
	snprintf(version, sizeof(version), "kite version %s", KITE_VERSION);
	struct msg *m = msg_new((const uint8_t *)"$SYS/broker/version", 19,
				(const uint8_t *)version, (uint32_t)strlen(version),
				0, true, NULL, 0);
	if (m)
		route_publish(s, m);
	uint64_t connected = SUM(clients_connected), total = SUM(sessions);
	sys_put(s, "$SYS/broker/uptime", "%llu seconds",
		(unsigned long long)(time(NULL) - (time_t)b->start_s));
	sys_put(s, "$SYS/broker/clients/connected", "%llu", connected);
	sys_put(s, "$SYS/broker/clients/active", "%llu", connected);
	sys_put(s, "$SYS/broker/clients/total", "%llu", total);
	sys_put(s, "$SYS/broker/clients/disconnected", "%llu",
		total > connected ? total - connected : 0);
	sys_put(s, "$SYS/broker/messages/received", "%llu", SUM(msgs_received));
	sys_put(s, "$SYS/broker/messages/sent", "%llu", SUM(msgs_sent));
	sys_put(s, "$SYS/broker/bytes/received", "%llu", SUM(bytes_received));
	sys_put(s, "$SYS/broker/bytes/sent", "%llu", SUM(bytes_sent));
	sys_put(s, "$SYS/broker/subscriptions/count", "%llu", SUM(subscriptions));
	sys_put(s, "$SYS/broker/retained messages/count", "%llu",
		retain_count(b->retained));
	sys_put(s, "$SYS/broker/publish/messages/dropped", "%llu",
		SUM(msgs_dropped));
	sys_put(s, "$SYS/broker/tls/kernel_offloaded", "%llu",
		SUM(ktls_connections));
	sys_put(s, "$SYS/broker/clients/refused/max_connections", "%llu",
		SUM(refused_max_connections));
	sys_put(s, "$SYS/broker/clients/refused/no_resources", "%llu",
		SUM(refused_no_resources));
	if (persist_on(s)) {
		sys_put(s, "$SYS/broker/persistence/bytes_written", "%llu",
			SUM(persist_bytes_written));
		sys_put(s, "$SYS/broker/persistence/write_errors", "%llu",
			SUM(persist_write_errors));
		sys_put(s, "$SYS/broker/persistence/compactions", "%llu",
			SUM(persist_compactions));
		sys_put(s, "$SYS/broker/persistence/acknowledgements_withheld",
			"%llu", SUM(persist_acks_withheld));
	}
	if (b->flood)
		sys_flood_filter(s);
}
