/* MQTT topics and filters as NATS subjects, and the cluster envelope. */
#include "core/clusterwire.h"
#include "runner.h"

#include <string.h>

static const char *subj(const char *topic)
{
	static char out[CLUSTER_SUBJECT_MAX + 1];
	return cluster_subject("kite.m", topic, strlen(topic), out, sizeof(out)) < 0
		       ? "(none)" : out;
}

TEST(cluster_subject_maps_levels_and_escapes_reserved_bytes)
{
	CHECK_STR(subj("a/b/c"), "kite.m.a.b.c");
	CHECK_STR(subj("a.b/c*d/>"), "kite.m.a%2Eb.c%2Ad.%3E");
	CHECK_STR(subj("sp ace/100%"), "kite.m.sp%20ace.100%25");
	CHECK_STR(subj("/a//"), "kite.m.%.a.%.%");
	CHECK_STR(subj("$SYS/x"), "kite.m.$SYS.x");
}

TEST(cluster_topic_inverts_cluster_subject)
{
	const char *topics[] = {"a/b/c", "a.b/c*d/>", "/a//", "100%/%/x%25",
				"", "t\tab", "\xc3\xa9t\xc3\xa9"};
	for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
		char s[CLUSTER_SUBJECT_MAX + 1], t[256];
		int n = cluster_subject("p", topics[i], strlen(topics[i]), s,
					sizeof(s));
		CHECK(n > 2);
		int tn = cluster_topic(s + 2, (size_t)n - 2, t, sizeof(t));
		CHECK_EQ(tn, (int)strlen(topics[i]));
		CHECK(!memcmp(t, topics[i], (size_t)tn));
	}
	char t[16];
	CHECK_EQ(cluster_topic("a..b", 4, t, sizeof(t)), -1);
	CHECK_EQ(cluster_topic("a%2", 3, t, sizeof(t)), -1);
	CHECK_EQ(cluster_topic("a%zz", 4, t, sizeof(t)), -1);
	CHECK_EQ(cluster_topic("a*", 2, t, sizeof(t)), -1);
}

TEST(cluster_filter_subjects_follow_mqtt_wildcards)
{
	char out[2][CLUSTER_SUBJECT_MAX + 1];
	CHECK_EQ(cluster_filter_subjects("k", "a/+/c", 5, out), 1);
	CHECK_STR(out[0], "k.a.*.c");
	CHECK_EQ(cluster_filter_subjects("k", "#", 1, out), 1);
	CHECK_STR(out[0], "k.>");
	/* "a/#" matches "a" too. */
	CHECK_EQ(cluster_filter_subjects("k", "a/#", 3, out), 2);
	CHECK_STR(out[0], "k.a.>");
	CHECK_STR(out[1], "k.a");
	CHECK_EQ(cluster_filter_subjects("k", "+/#", 3, out), 2);
	CHECK_STR(out[0], "k.*.>");
	CHECK_STR(out[1], "k.*");
	CHECK_EQ(cluster_filter_subjects("k", "a.b/*", 5, out), 1);
	CHECK_STR(out[0], "k.a%2Eb.%2A");
	CHECK_EQ(cluster_filter_subjects("k", "a/#/b", 5, out), -1);
	CHECK_EQ(cluster_filter_subjects("k", "a+/b", 4, out), -1);
}

TEST(cluster_subject_refuses_what_nats_would_refuse)
{
	static char topic[CLUSTER_SUBJECT_MAX];
	memset(topic, '.', sizeof(topic)); /* each becomes 3 bytes */
	char out[CLUSTER_SUBJECT_MAX + 1];
	CHECK_EQ(cluster_subject("k", topic, sizeof(topic), out, sizeof(out)), -1);
}

TEST(cluster_envelope_round_trip_and_garbage)
{
	uint8_t buf[64];
	struct cluster_envelope e = {.qos = 2, .retain = true, .origin = 0x1122334455667788ull,
				     .seq = 42, .expiry_s = 7, .props_len = 3};
	cluster_envelope_header(&e, buf);
	memcpy(buf + CLUSTER_ENVELOPE_HEADER, "\x01\x01\x00pay", 6);
	struct cluster_envelope d;
	CHECK_EQ(cluster_envelope_parse(buf, CLUSTER_ENVELOPE_HEADER + 6, &d), 0);
	CHECK_EQ(d.qos, 2);
	CHECK(d.retain);
	CHECK_EQ(d.origin, e.origin);
	CHECK_EQ(d.seq, 42u);
	CHECK_EQ(d.expiry_s, 7u);
	CHECK_EQ(d.props_len, 3u);
	CHECK_EQ(d.payload_len, 3u);
	CHECK(!memcmp(d.payload, "pay", 3));
	CHECK_EQ(cluster_envelope_parse(buf, 10, &d), -1);
	buf[1] = 3; /* QoS 3 */
	CHECK_EQ(cluster_envelope_parse(buf, CLUSTER_ENVELOPE_HEADER + 6, &d), -1);
	buf[1] = 0;
	buf[22] = 0xff; /* properties longer than the message */
	CHECK_EQ(cluster_envelope_parse(buf, CLUSTER_ENVELOPE_HEADER + 6, &d), -1);
}

TEST(cluster_handover_items_round_trip_and_refuse_garbage)
{
	struct cluster_handover_item it = {
		.kind = HANDOVER_INFLIGHT, .state = 1, .pid = 0x1234, .dqos = 2,
		.dretain = true, .nsub = 2, .sub = {7, 0x10203},
		.has_msg = true, .qos = 2, .retain = false, .expiry_s = 60,
		.topic = (const uint8_t *)"a/b", .topic_len = 3,
		.props = (const uint8_t *)"\x01\x01", .props_len = 2,
		.payload = (const uint8_t *)"hello", .payload_len = 5};
	uint8_t buf[128];
	size_t n = cluster_handover_item_size(&it);
	CHECK(n < sizeof(buf));
	cluster_handover_item_write(&it, buf);
	struct cluster_handover_item d;
	CHECK_EQ(cluster_handover_item_parse(buf, n, &d), (long)n);
	CHECK_EQ(d.kind, HANDOVER_INFLIGHT);
	CHECK_EQ(d.state, 1);
	CHECK_EQ(d.pid, 0x1234);
	CHECK_EQ(d.dqos, 2);
	CHECK(d.dretain);
	CHECK_EQ(d.nsub, 2);
	CHECK_EQ(d.sub[1], 0x10203u);
	CHECK(d.has_msg);
	CHECK_EQ(d.expiry_s, 60u);
	CHECK(!memcmp(d.topic, "a/b", 3));
	CHECK(!memcmp(d.props, "\x01\x01", 2));
	CHECK_EQ(d.payload_len, 5u);
	CHECK(!memcmp(d.payload, "hello", 5));
	/* Every cut is refused, never read past. */
	for (size_t cut = 0; cut < n; cut++)
		CHECK_EQ(cluster_handover_item_parse(buf, cut, &d), -1);
	buf[6] = 9; /* more subscription ids than a delivery has */
	CHECK_EQ(cluster_handover_item_parse(buf, n, &d), -1);
	/* PUBREL sent, only PUBCOMP left: no message. */
	struct cluster_handover_item rel = {.kind = HANDOVER_INFLIGHT, .state = 2,
					    .pid = 9, .dqos = 2};
	n = cluster_handover_item_size(&rel);
	cluster_handover_item_write(&rel, buf);
	CHECK_EQ(cluster_handover_item_parse(buf, n, &d), (long)n);
	CHECK(!d.has_msg);
	uint8_t flags;
	uint32_t count;
	cluster_handover_chunk_header(buf, CLUSTER_HANDOVER_END, 50);
	CHECK_EQ(cluster_handover_chunk_parse(buf, CLUSTER_HANDOVER_CHUNK_HEADER,
					      &flags, &count), 0);
	CHECK_EQ(flags, CLUSTER_HANDOVER_END);
	CHECK_EQ(count, 50u);
	CHECK_EQ(cluster_handover_chunk_parse(buf, 3, &flags, &count), -1);
	buf[0] = 7;
	CHECK_EQ(cluster_handover_chunk_parse(buf, CLUSTER_HANDOVER_CHUNK_HEADER,
					      &flags, &count), -1);
}
