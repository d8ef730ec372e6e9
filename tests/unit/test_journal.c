/* core/crc32c and core/journal: the persistence log's checksum and format,
 * and what a reader does with a torn or damaged file. */
#include <stdlib.h>
#include <string.h>

#include "core/crc32c.h"
#include "core/journal.h"
#include "tests/unit/runner.h"

TEST(crc32c_known_vectors)
{
	/* RFC 3720 B.4 and the usual check value. */
	CHECK_EQ(crc32c(0, "123456789", 9), 0xe3069283u);
	uint8_t zeros[32] = {0}, ones[32], inc[32];
	memset(ones, 0xff, sizeof(ones));
	for (int i = 0; i < 32; i++)
		inc[i] = (uint8_t)i;
	CHECK_EQ(crc32c(0, zeros, 32), 0x8a9136aau);
	CHECK_EQ(crc32c(0, ones, 32), 0x62a8ab43u);
	CHECK_EQ(crc32c(0, inc, 32), 0x46dd794eu);
	CHECK_EQ(crc32c(0, "", 0), 0u);
}

TEST(crc32c_hardware_and_table_agree)
{
	uint8_t buf[1031];
	srand(7);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)rand();
	for (size_t off = 0; off < 9; off++)
		for (size_t len = 0; len + off <= sizeof(buf); len += 37)
			CHECK_EQ(crc32c(0, buf + off, len),
				 crc32c_table(0, buf + off, len));
	/* Continuing a checksum equals checksumming the whole. */
	CHECK_EQ(crc32c(crc32c(0, buf, 500), buf + 500, 531),
		 crc32c(0, buf, 1031));
}

static struct journal_bytes B(const char *s)
{
	return (struct journal_bytes){(const uint8_t *)s, (uint32_t)strlen(s)};
}

#define NSAMPLE 15

/* An ACKS list: two sessions' acks of one message, then an older one. */
static struct journal_bytes persist_acks3(void)
{
	static uint8_t list[3 * JOURNAL_ACK_LEN_MAX];
	struct journal_ack prev = {0};
	size_t n = journal_ack_encode(list, &prev, 9, 0x0100000000000077ull);
	n += journal_ack_encode(list + n, &prev, 12, 0x0100000000000077ull);
	n += journal_ack_encode(list + n, &prev, 3, 0x0100000000000070ull);
	return (struct journal_bytes){list, (uint32_t)n};
}

/* A SENT list: a QoS 2 retained delivery with four subscription ids to a
 * session whose key is a two-byte varint, then a plain one to a lower
 * key. */
static const struct journal_sent sent2_v[2] = {
	{.key = 300, .qos = 2, .retain = true, .nsub = 4, .pid = 65535,
	 .sub = {1, 127, 128, UINT32_MAX}},
	{.key = 7, .qos = 1, .pid = 1},
};

static struct journal_bytes sent2(void)
{
	static uint8_t list[2 * JOURNAL_SENT_LEN_MAX];
	uint64_t prev = 0;
	size_t n = journal_sent_encode(list, &prev, &sent2_v[0]);
	n += journal_sent_encode(list + n, &prev, &sent2_v[1]);
	return (struct journal_bytes){list, (uint32_t)n};
}

/* One record of every type, with distinct values. */
static int sample(struct journal_record *out)
{
	struct journal_record r[NSAMPLE];
	memset(r, 0, sizeof(r));
	r[0].type = JOURNAL_SESSION;
	r[0].session.key = 0x0102030405060708ull;
	r[0].session.expiry_s = UINT32_MAX;
	r[0].session.offline_wall_ms = 1700000000999ull;
	r[0].session.protocol = 5;
	r[0].session.listener = 3;
	r[0].session.has_username = true;
	r[0].session.client_id = B("Device123");
	r[0].session.username = B("gw1");
	r[1].type = JOURNAL_SUB;
	r[1].sub.key = 9;
	r[1].sub.options = 0x2e;
	r[1].sub.sub_id = 268435455;
	r[1].sub.filter = B("device/+/x");
	r[2].type = JOURNAL_MSG;
	r[2].msg.id = 77;
	r[2].msg.qos = 2;
	r[2].msg.retain = true;
	r[2].msg.expiry_s = 60;
	r[2].msg.created_wall_ms = 1700000000123ull;
	r[2].msg.topic = B("device/a/x");
	r[2].msg.payload = B("");
	r[2].msg.props = B("\x03\x00\x04text");
	r[3].type = JOURNAL_QUEUE;
	r[3].queue.key = 9;
	r[3].queue.msg_id = 77;
	r[3].queue.qos = 1;
	r[3].queue.nsub = 4;
	for (int i = 0; i < 4; i++)
		r[3].queue.sub[i] = 100u + (uint32_t)i;
	r[4].type = JOURNAL_OUT;
	r[4].out.key = 9;
	r[4].out.msg_id = 77;
	r[4].out.pid = 65535;
	r[4].out.state = JOURNAL_WAIT_PUBCOMP;
	r[5].type = JOURNAL_DONE;
	r[5].done.key = 9;
	r[5].done.msg_id = 77;
	r[6].type = JOURNAL_QOS2_IN;
	r[6].qos2_in.key = 9;
	r[6].qos2_in.msg_id = 78;
	r[6].qos2_in.pid = 1;
	r[7].type = JOURNAL_QOS2_REL;
	r[7].qos2_rel.key = 9;
	r[7].qos2_rel.pid = 1;
	r[8].type = JOURNAL_RETAIN;
	r[8].retain.msg_id = 0;
	r[8].retain.seq = 5;
	r[8].retain.topic = B("status/a");
	r[9].type = JOURNAL_WILL;
	r[9].will.key = 9;
	r[9].will.msg_id = 79;
	r[9].will.at_wall_ms = 1700000060000ull;
	r[10].type = JOURNAL_UNSUB;
	r[10].unsub.key = 9;
	r[10].unsub.filter = B("device/+/x");
	r[11].type = JOURNAL_SESSION_END;
	r[11].session_end.key = 9;
	r[12].type = JOURNAL_RETAIN; /* with who published it */
	r[12].retain.msg_id = 80;
	r[12].retain.seq = 6;
	r[12].retain.topic = B("status/b");
	r[12].retain.has_source = true;
	r[12].retain.source_listener = 2;
	r[12].retain.source_has_username = true;
	r[12].retain.source_client_id = B("sensor-1");
	r[12].retain.source_username = B("alice");
	r[13].type = JOURNAL_SENT;
	r[13].sent.msg_id = 0x0200000000000001ull;
	r[13].sent.n = 2;
	r[13].sent.list = sent2();
	r[14].type = JOURNAL_ACKS;
	r[14].acks.n = 3;
	r[14].acks.list = persist_acks3();
	memcpy(out, r, sizeof(r));
	return NSAMPLE;
}

static bool bytes_eq(struct journal_bytes a, struct journal_bytes b)
{
	return a.len == b.len && (!a.len || !memcmp(a.ptr, b.ptr, a.len));
}

/* Field-by-field equality (pointers differ after a round trip). */
static bool record_eq(const struct journal_record *a,
		      const struct journal_record *b)
{
	if (a->type != b->type)
		return false;
	switch (a->type) {
	case JOURNAL_SESSION:
		return a->session.key == b->session.key &&
		       a->session.expiry_s == b->session.expiry_s &&
		       a->session.offline_wall_ms == b->session.offline_wall_ms &&
		       a->session.protocol == b->session.protocol &&
		       a->session.listener == b->session.listener &&
		       a->session.has_username == b->session.has_username &&
		       bytes_eq(a->session.client_id, b->session.client_id) &&
		       bytes_eq(a->session.username, b->session.username);
	case JOURNAL_SUB:
		return a->sub.key == b->sub.key && a->sub.options == b->sub.options &&
		       a->sub.sub_id == b->sub.sub_id &&
		       bytes_eq(a->sub.filter, b->sub.filter);
	case JOURNAL_MSG:
		return a->msg.id == b->msg.id && a->msg.qos == b->msg.qos &&
		       a->msg.retain == b->msg.retain &&
		       a->msg.expiry_s == b->msg.expiry_s &&
		       a->msg.created_wall_ms == b->msg.created_wall_ms &&
		       bytes_eq(a->msg.topic, b->msg.topic) &&
		       bytes_eq(a->msg.payload, b->msg.payload) &&
		       bytes_eq(a->msg.props, b->msg.props);
	case JOURNAL_QUEUE:
		return !memcmp(&a->queue, &b->queue, sizeof(a->queue));
	case JOURNAL_OUT:
		return a->out.key == b->out.key && a->out.msg_id == b->out.msg_id &&
		       a->out.pid == b->out.pid && a->out.state == b->out.state;
	case JOURNAL_DONE:
		return !memcmp(&a->done, &b->done, sizeof(a->done));
	case JOURNAL_QOS2_IN:
		return a->qos2_in.key == b->qos2_in.key &&
		       a->qos2_in.msg_id == b->qos2_in.msg_id &&
		       a->qos2_in.pid == b->qos2_in.pid;
	case JOURNAL_QOS2_REL:
		return a->qos2_rel.key == b->qos2_rel.key &&
		       a->qos2_rel.pid == b->qos2_rel.pid;
	case JOURNAL_RETAIN:
		return a->retain.msg_id == b->retain.msg_id &&
		       a->retain.seq == b->retain.seq &&
		       bytes_eq(a->retain.topic, b->retain.topic) &&
		       a->retain.has_source == b->retain.has_source &&
		       a->retain.source_listener == b->retain.source_listener &&
		       a->retain.source_has_username ==
			       b->retain.source_has_username &&
		       bytes_eq(a->retain.source_client_id,
				b->retain.source_client_id) &&
		       bytes_eq(a->retain.source_username,
				b->retain.source_username);
	case JOURNAL_WILL:
		return !memcmp(&a->will, &b->will, sizeof(a->will));
	case JOURNAL_UNSUB:
		return a->unsub.key == b->unsub.key &&
		       bytes_eq(a->unsub.filter, b->unsub.filter);
	case JOURNAL_SESSION_END:
		return a->session_end.key == b->session_end.key;
	case JOURNAL_SENT:
		return a->sent.msg_id == b->sent.msg_id && a->sent.n == b->sent.n &&
		       bytes_eq(a->sent.list, b->sent.list);
	case JOURNAL_ACKS:
		return a->acks.n == b->acks.n && bytes_eq(a->acks.list, b->acks.list);
	}
	return false;
}

TEST(journal_every_record_round_trips)
{
	struct journal_record in[NSAMPLE], got;
	int n = sample(in);
	struct journal_buf b = {0};
	for (int i = 0; i < n; i++)
		CHECK_EQ(journal_put(&b, &in[i]), 0);
	struct journal_reader rd;
	journal_reader_init(&rd, b.data, b.len);
	for (int i = 0; i < n; i++) {
		CHECK_EQ(journal_next(&rd, &got), 1);
		CHECK(record_eq(&in[i], &got));
	}
	CHECK_EQ(journal_next(&rd, &got), 0);
	CHECK(!rd.torn);
	CHECK_EQ(rd.skipped, 0);
	journal_buf_free(&b);
}

TEST(journal_header_checks_magic_and_version)
{
	uint8_t h[JOURNAL_HEADER_LEN];
	uint32_t shard;
	uint64_t gen;
	const char *why = NULL;
	journal_header(h, 3, 42);
	CHECK_EQ(journal_header_check(h, sizeof(h), &shard, &gen, &why), 0);
	CHECK_EQ(shard, 3);
	CHECK_EQ(gen, 42);
	CHECK_EQ(journal_header_check(h, 10, &shard, &gen, &why), -1);
	h[8] = 9;
	CHECK_EQ(journal_header_check(h, sizeof(h), &shard, &gen, &why), -1);
	CHECK(why && strstr(why, "version"));
	h[0] = 'X';
	CHECK_EQ(journal_header_check(h, sizeof(h), &shard, &gen, &why), -1);
	CHECK(why && strstr(why, "magic"));
}

/* A crash can stop a write anywhere: every record before the cut is read,
 * the cut one and nothing after it, and the reader says where. */
TEST(journal_torn_tail_at_every_offset)
{
	struct journal_record in[NSAMPLE], got;
	int n = sample(in);
	struct journal_buf b = {0};
	size_t ends[NSAMPLE];
	for (int i = 0; i < n; i++) {
		CHECK_EQ(journal_put(&b, &in[i]), 0);
		ends[i] = b.len;
	}
	for (size_t cut = 0; cut <= b.len; cut++) {
		uint8_t *copy = malloc(cut ? cut : 1);
		memcpy(copy, b.data, cut);
		struct journal_reader rd;
		journal_reader_init(&rd, copy, cut);
		int whole = 0;
		while (whole < n && ends[whole] <= cut)
			whole++;
		int read = 0;
		while (journal_next(&rd, &got) == 1) {
			CHECK(record_eq(&in[read], &got));
			read++;
		}
		CHECK_EQ(read, whole);
		bool at_boundary = cut == 0 || (whole && ends[whole - 1] == cut);
		CHECK_EQ(rd.torn, !at_boundary);
		if (rd.torn)
			CHECK_EQ(rd.torn_at, whole ? ends[whole - 1] : 0);
		CHECK_EQ(rd.skipped, 0);
		free(copy);
	}
	journal_buf_free(&b);
}

/* A flipped byte inside a record's body fails its checksum: that record
 * is skipped, the others are read. A flipped length tears the tail. */
TEST(journal_flipped_bytes_skip_only_that_record)
{
	struct journal_record in[NSAMPLE], got;
	int n = sample(in);
	struct journal_buf b = {0};
	size_t starts[NSAMPLE];
	for (int i = 0; i < n; i++) {
		starts[i] = b.len;
		CHECK_EQ(journal_put(&b, &in[i]), 0);
	}
	for (int victim = 0; victim < n; victim++) {
		size_t end = victim + 1 < n ? starts[victim + 1] : b.len;
		for (size_t at = starts[victim] + 4; at < end; at++) {
			b.data[at] ^= 0x40;
			struct journal_reader rd;
			journal_reader_init(&rd, b.data, b.len);
			int read = 0, want = 0;
			while (journal_next(&rd, &got) == 1) {
				if (want == victim)
					want++;
				CHECK(record_eq(&in[want], &got));
				want++;
				read++;
			}
			CHECK_EQ(read, n - 1);
			CHECK_EQ(rd.skipped, 1);
			CHECK(!rd.torn);
			b.data[at] ^= 0x40;
		}
	}
	journal_buf_free(&b);
}

TEST(journal_decode_refuses_trailing_or_bad_fields)
{
	struct journal_record r;
	/* QUEUE with five subscription ids, OUT with packet id 0, a byte too
	 * many, an unknown type. */
	uint8_t q[1 + 8 + 8 + 3 + 20] = {JOURNAL_QUEUE};
	q[1 + 16 + 2] = 5;
	CHECK(!journal_decode(q, sizeof(q), &r));
	uint8_t o[1 + 8 + 8 + 2 + 1] = {JOURNAL_OUT};
	o[sizeof(o) - 1] = JOURNAL_WAIT_PUBACK;
	CHECK(!journal_decode(o, sizeof(o), &r));
	o[17] = 1;
	CHECK(journal_decode(o, sizeof(o), &r));
	uint8_t longer[sizeof(o) + 1];
	memcpy(longer, o, sizeof(o));
	longer[sizeof(o)] = 0;
	CHECK(!journal_decode(longer, sizeof(longer), &r));
	uint8_t unknown[] = {0xee, 0, 0};
	CHECK(!journal_decode(unknown, sizeof(unknown), &r));
	/* A byte string announcing more than the record holds. */
	uint8_t u[1 + 8 + 4] = {JOURNAL_UNSUB};
	u[9] = 0xff;
	u[12] = 0x7f;
	CHECK(!journal_decode(u, sizeof(u), &r));
}

/* Every version a kite wrote is read: version 1 logs (before SENT and
 * ACKS) are the same records. */
TEST(journal_header_reads_version_1)
{
	uint8_t h[JOURNAL_HEADER_LEN];
	uint32_t shard;
	uint64_t gen;
	const char *why = NULL;
	journal_header(h, 1, 7);
	CHECK_EQ(h[8], JOURNAL_VERSION);
	h[8] = 1;
	CHECK_EQ(journal_header_check(h, sizeof(h), &shard, &gen, &why), 0);
	h[8] = 0;
	CHECK_EQ(journal_header_check(h, sizeof(h), &shard, &gen, &why), -1);
	h[8] = JOURNAL_VERSION + 1;
	CHECK_EQ(journal_header_check(h, sizeof(h), &shard, &gen, &why), -1);
}

/* Deltas both ways and at the ends of the range come back exact. */
TEST(journal_ack_list_round_trips_any_values)
{
	static const struct journal_ack v[] = {
		{1, 0x0100000000000001ull}, {1, 0x0100000000000001ull},
		{0, 0},			     {UINT64_MAX, UINT64_MAX},
		{0, 1},			     {5, 0x7f00000000000000ull},
		{4, 0x0100000000000000ull},
	};
	enum { N = sizeof(v) / sizeof(v[0]) };
	uint8_t list[N * JOURNAL_ACK_LEN_MAX];
	struct journal_ack prev = {0};
	size_t len = 0;
	for (int i = 0; i < N; i++) {
		size_t n = journal_ack_encode(list + len, &prev, v[i].key,
					      v[i].msg_id);
		CHECK(n >= 2 && n <= JOURNAL_ACK_LEN_MAX);
		len += n;
	}
	/* The same message again to a nearby session: 2 bytes. */
	uint8_t one[JOURNAL_ACK_LEN_MAX];
	CHECK_EQ(journal_ack_encode(one, &(struct journal_ack){7, 99}, 8, 99), 2);
	struct journal_record r = {.type = JOURNAL_ACKS}, got;
	r.acks.n = N;
	r.acks.list = (struct journal_bytes){list, (uint32_t)len};
	struct journal_buf b = {0};
	CHECK_EQ(journal_put(&b, &r), 0);
	struct journal_reader rd;
	journal_reader_init(&rd, b.data, b.len);
	CHECK_EQ(journal_next(&rd, &got), 1);
	CHECK_EQ(got.acks.n, N);
	struct journal_bytes l = got.acks.list;
	struct journal_ack a = {0};
	for (int i = 0; i < N; i++) {
		CHECK(journal_ack_next(&l, &a));
		CHECK_EQ(a.key, v[i].key);
		CHECK_EQ(a.msg_id, v[i].msg_id);
	}
	CHECK(!journal_ack_next(&l, &a));
	journal_buf_free(&b);
}

/* A fan-out's deliveries read back from one SENT record, entry by
 * entry; each costs a few bytes, not the 56 of QUEUE and OUT. */
TEST(journal_sent_list_round_trips_and_is_small)
{
	struct journal_record in[NSAMPLE], got;
	sample(in);
	struct journal_buf b = {0};
	CHECK_EQ(journal_put(&b, &in[13]), 0);
	struct journal_reader rd;
	journal_reader_init(&rd, b.data, b.len);
	CHECK_EQ(journal_next(&rd, &got), 1);
	CHECK_EQ(got.sent.msg_id, 0x0200000000000001ull);
	struct journal_bytes l = got.sent.list;
	uint64_t key = 0;
	struct journal_sent e;
	for (int i = 0; i < 2; i++) {
		const struct journal_sent *w = &sent2_v[i];
		CHECK(journal_sent_next(&l, &key, &e));
		CHECK(e.key == w->key && e.qos == w->qos &&
		      e.retain == w->retain && e.nsub == w->nsub &&
		      e.pid == w->pid);
		for (unsigned j = 0; j < w->nsub; j++)
			CHECK_EQ(e.sub[j], w->sub[j]);
	}
	CHECK(!journal_sent_next(&l, &key, &e));
	journal_buf_free(&b);
	/* 1000 sessions, keys 1000 apart: 5 bytes each (key delta 2,
	 * flags, packet id). */
	uint8_t list[1000 * 5];
	size_t len = 0;
	key = 0;
	for (uint32_t i = 0; i < 1000; i++) {
		struct journal_sent x = {.key = 1000u * (i + 1), .qos = 1,
					 .pid = (uint16_t)(i + 1)};
		len += journal_sent_encode(list + len, &key, &x);
	}
	CHECK_EQ(len, 5000);
}

TEST(journal_decode_refuses_bad_sent_and_acks)
{
	struct journal_record r;
	/* SENT: id 0x0100000000000000 (rotated: 1), n 1, key 1, flags, pid 7. */
	uint8_t s[] = {JOURNAL_SENT, 1, 1, 2, 1, 7, 0};
	CHECK(journal_decode(s, sizeof(s), &r));
	CHECK_EQ(r.sent.msg_id, 0x0100000000000000ull);
	CHECK_EQ(r.sent.n, 1);
	s[4] = 0; /* QoS 0 is never logged */
	CHECK(!journal_decode(s, sizeof(s), &r));
	s[4] = 3;
	CHECK(!journal_decode(s, sizeof(s), &r));
	s[4] = 0x41; /* a reserved bit */
	CHECK(!journal_decode(s, sizeof(s), &r));
	s[4] = 1 | 5 << 3; /* five subscription ids */
	CHECK(!journal_decode(s, sizeof(s), &r));
	s[4] = 1;
	s[5] = 0; /* packet id 0 */
	CHECK(!journal_decode(s, sizeof(s), &r));
	s[5] = 7;
	s[2] = 0; /* no entries */
	CHECK(!journal_decode(s, sizeof(s), &r));
	s[2] = 2; /* more than there are */
	CHECK(!journal_decode(s, sizeof(s), &r));
	/* A varint with a needless zero byte (0x81 0x00 is 1). */
	uint8_t s2[] = {JOURNAL_SENT, 0x81, 0x00, 1, 2, 1, 7, 0};
	CHECK(!journal_decode(s2, sizeof(s2), &r));
	/* More than 64 bits. */
	uint8_t big[1 + 11] = {JOURNAL_ACKS, 1};
	memset(big + 2, 0xff, 9);
	big[11] = 0x02;
	CHECK(!journal_decode(big, sizeof(big), &r));
	big[11] = 0x01; /* exactly 64 bits, then no id */
	CHECK(!journal_decode(big, sizeof(big), &r));
	/* ACKS: none listed, more than allowed, fewer than said, more. */
	uint8_t a0[] = {JOURNAL_ACKS, 0};
	CHECK(!journal_decode(a0, sizeof(a0), &r));
	uint8_t a1[] = {JOURNAL_ACKS, 1, 2, 4};
	CHECK(journal_decode(a1, sizeof(a1), &r));
	CHECK_EQ(r.acks.n, 1);
	uint8_t a2[] = {JOURNAL_ACKS, 2, 2, 4};
	CHECK(!journal_decode(a2, sizeof(a2), &r));
	uint8_t a3[] = {JOURNAL_ACKS, 1, 2, 4, 0};
	CHECK(!journal_decode(a3, sizeof(a3), &r));
	uint8_t many[] = {JOURNAL_ACKS, 0x81, 0x02}; /* 257 */
	CHECK(!journal_decode(many, sizeof(many), &r));
}
