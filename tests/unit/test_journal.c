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

/* One record of every type, with distinct values. */
static int sample(struct journal_record *out)
{
	struct journal_record r[13];
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
	memcpy(out, r, sizeof(r));
	return 13;
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
	}
	return false;
}

TEST(journal_every_record_round_trips)
{
	struct journal_record in[13], got;
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
	struct journal_record in[13], got;
	int n = sample(in);
	struct journal_buf b = {0};
	size_t ends[13];
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
	struct journal_record in[13], got;
	int n = sample(in);
	struct journal_buf b = {0};
	size_t starts[13];
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
