/* The packet handlers driven through tests/io/harness.h: scripted bytes
 * in, the bytes the shard sends out compared exactly. No socket, no
 * thread; the shard's clock is set by the test. */
#include "tests/io/harness.h"
#include "tests/unit/runner.h"

#include <stdarg.h>
#include <string.h>

static const char config[] = "listener 1883 127.0.0.1\n"
			     "allow_anonymous true\n"
			     "log_type error\n";

/* Starts a harness or skips the test (no io_uring here). */
#define HARNESS_START(h, text)                                               \
	do {                                                                  \
		char err_[256];                                               \
		int rc_ = harness_init(h, text, err_, sizeof(err_));          \
		if (rc_ > 0) {                                                \
			harness_fini(h);                                      \
			SKIP("%s", err_);                                     \
		}                                                             \
		if (rc_ < 0)                                                  \
			fprintf(stderr, "  harness: %s\n", err_);             \
		CHECK(rc_ == 0);                                              \
		if (rc_ < 0)                                                  \
			return;                                               \
	} while (0)

/* Output equals the expected bytes; prints both when not. */
static bool out_is(struct harness *h, struct hconn *hc, const void *want,
		   size_t wlen)
{
	const uint8_t *got;
	size_t n = harness_output(h, hc, &got);

	if (n == wlen && memcmp(got, want, n) == 0)
		return true;
	fprintf(stderr, "  got %zu bytes:", n);
	for (size_t i = 0; i < n && i < 64; i++)
		fprintf(stderr, " %02x", got[i]);
	fprintf(stderr, "\n  want %zu bytes:", wlen);
	for (size_t i = 0; i < wlen && i < 64; i++)
		fprintf(stderr, " %02x", ((const uint8_t *)want)[i]);
	fprintf(stderr, "\n");
	return false;
}

#define IN(h, hc, ...)                                                       \
	do {                                                                  \
		static const uint8_t b_[] = {__VA_ARGS__};                    \
		harness_input(h, hc, b_, sizeof(b_));                         \
	} while (0)

#define OUT_IS(h, hc, ...)                                                   \
	do {                                                                  \
		static const uint8_t w_[] = {__VA_ARGS__};                    \
		CHECK(out_is(h, hc, w_, sizeof(w_)));                         \
	} while (0)

#define OUT_NONE(h, hc) CHECK(out_is(h, hc, "", 0))

/* MQTT 3.1.1 CONNECT, clean session, keepalive 60, client id "cN". */
static void connect311(struct harness *h, struct hconn *hc, char n)
{
	const uint8_t b[] = {0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02,
			     0, 60, 0, 2, 'c', (uint8_t)n};
	harness_input(h, hc, b, sizeof(b));
}

TEST(io_connect_311_gets_connack_accepted)
{
	static struct harness h;
	HARNESS_START(&h, config);
	struct hconn *a = harness_connect(&h);
	CHECK(a != NULL);
	connect311(&h, a, '1');
	OUT_IS(&h, a, 0x20, 0x02, 0x00, 0x00);
	CHECK(harness_conn(&h, a) != NULL);
	harness_fini(&h);
}

TEST(io_pingreq_gets_pingresp)
{
	static struct harness h;
	HARNESS_START(&h, config);
	struct hconn *a = harness_connect(&h);
	connect311(&h, a, '1');
	OUT_IS(&h, a, 0x20, 0x02, 0x00, 0x00);
	IN(&h, a, 0xc0, 0x00);
	OUT_IS(&h, a, 0xd0, 0x00);
	harness_fini(&h);
}

TEST(io_first_packet_not_connect_closes_without_answer)
{
	static struct harness h;
	HARNESS_START(&h, config);
	struct hconn *a = harness_connect(&h);
	IN(&h, a, 0xc0, 0x00);
	OUT_NONE(&h, a);
	CHECK(harness_conn(&h, a) == NULL);
	CHECK(a->shutdown);
	harness_fini(&h);
}

TEST(io_subscribe_then_publish_is_delivered_with_puback)
{
	static struct harness h;
	HARNESS_START(&h, config);
	struct hconn *sub = harness_connect(&h);
	connect311(&h, sub, 's');
	OUT_IS(&h, sub, 0x20, 0x02, 0x00, 0x00);
	/* SUBSCRIBE id 1, "a/+" QoS 1 */
	IN(&h, sub, 0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 'a', '/', '+', 0x01);
	OUT_IS(&h, sub, 0x90, 0x03, 0x00, 0x01, 0x01);

	struct hconn *pub = harness_connect(&h);
	connect311(&h, pub, 'p');
	OUT_IS(&h, pub, 0x20, 0x02, 0x00, 0x00);
	/* PUBLISH QoS 1 id 7 "a/b" "hi" */
	IN(&h, pub, 0x32, 0x09, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x07, 'h',
	   'i');
	OUT_IS(&h, pub, 0x40, 0x02, 0x00, 0x07);
	/* to the subscriber at QoS 1 with its own packet id */
	OUT_IS(&h, sub, 0x32, 0x09, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x01,
	       'h', 'i');
	/* a topic it does not match */
	IN(&h, pub, 0x30, 0x05, 0x00, 0x01, 'x', 'h', 'i');
	OUT_NONE(&h, sub);
	harness_fini(&h);
}

/* MQTT 5 CONNECT, clean start, keepalive 60, no properties, id "vN". */
static void connect5(struct harness *h, struct hconn *hc, char n)
{
	const uint8_t b[] = {0x10, 15, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02,
			     0, 60, 0, 0, 2, 'v', (uint8_t)n};
	const uint8_t *out;
	harness_input(h, hc, b, sizeof(b));
	/* CONNACK with the broker's properties: only its start matters */
	size_t len = harness_output(h, hc, &out);
	if (len < 4 || out[0] != 0x20 || out[2] != 0 || out[3] != 0)
		fprintf(stderr, "  CONNECT %c refused\n", n);
}

/* The Message Expiry Interval runs on the shard's clock, which the test
 * sets: a retained message for 10 s is delivered 5 s later with 5 s
 * left, and not at all 11 s later. */
TEST(io_retained_message_expiry_follows_the_shard_clock)
{
	static struct harness h;
	HARNESS_START(&h, config);
	uint64_t t0 = 5000000;
	harness_set_now(&h, t0);
	struct hconn *pub = harness_connect(&h);
	connect5(&h, pub, 'p');
	/* PUBLISH retain QoS 0 "r/x", expiry 10 s, payload "v" */
	IN(&h, pub, 0x31, 12, 0, 3, 'r', '/', 'x', 5, 0x02, 0, 0, 0, 10, 'v');
	OUT_NONE(&h, pub);

	harness_set_now(&h, t0 + 5000);
	struct hconn *early = harness_connect(&h);
	connect5(&h, early, 'e');
	/* SUBSCRIBE id 1, no properties, "r/#" QoS 0 */
	IN(&h, early, 0x82, 9, 0, 1, 0, 0, 3, 'r', '/', '#', 0);
	OUT_IS(&h, early, 0x90, 4, 0, 1, 0, 0, /* SUBACK */
	       0x31, 12, 0, 3, 'r', '/', 'x', 5, 0x02, 0, 0, 0, 5, 'v');

	harness_set_now(&h, t0 + 11000);
	struct hconn *late = harness_connect(&h);
	connect5(&h, late, 'l');
	IN(&h, late, 0x82, 9, 0, 1, 0, 0, 3, 'r', '/', '#', 0);
	OUT_IS(&h, late, 0x90, 4, 0, 1, 0, 0);
	harness_fini(&h);
}

/* A packet split anywhere arrives whole: every split point of a
 * SUBSCRIBE gives the same SUBACK. */
TEST(io_subscribe_split_at_every_byte_gets_one_suback)
{
	static const uint8_t subscribe[] = {0x82, 0x08, 0x00, 0x05, 0x00, 0x03,
					    'a', '/', '#', 0x02};
	for (size_t cut = 1; cut < sizeof(subscribe); cut++) {
		static struct harness h;
		HARNESS_START(&h, config);
		struct hconn *a = harness_connect(&h);
		connect311(&h, a, '1');
		OUT_IS(&h, a, 0x20, 0x02, 0x00, 0x00);
		harness_input(&h, a, subscribe, cut);
		OUT_NONE(&h, a);
		harness_input(&h, a, subscribe + cut, sizeof(subscribe) - cut);
		OUT_IS(&h, a, 0x90, 0x03, 0x00, 0x05, 0x02);
		harness_fini(&h);
	}
}

/* MQTT-3.8.3-3: a SUBSCRIBE without a topic filter is a protocol
 * violation: the connection closes without a SUBACK. */
TEST(io_subscribe_without_filters_closes_the_connection)
{
	static struct harness h;
	HARNESS_START(&h, config);
	struct hconn *a = harness_connect(&h);
	connect311(&h, a, '1');
	OUT_IS(&h, a, 0x20, 0x02, 0x00, 0x00);
	IN(&h, a, 0x82, 0x02, 0x00, 0x01);
	OUT_NONE(&h, a);
	CHECK(harness_conn(&h, a) == NULL);
	CHECK(a->shutdown);
	harness_fini(&h);
}

/* Subscriber 's' on "a/#" at QoS 2 and a publisher 'p', both 3.1.1. */
static void sub_and_pub(struct harness *h, struct hconn **sub,
			struct hconn **pub, uint8_t qos)
{
	const uint8_t subscribe[] = {0x82, 0x08, 0x00, 0x01, 0x00, 0x03,
				     'a', '/', '#', qos};
	const uint8_t *out;
	*sub = harness_connect(h);
	connect311(h, *sub, 's');
	harness_input(h, *sub, subscribe, sizeof(subscribe));
	(void)harness_output(h, *sub, &out); /* CONNACK, SUBACK */
	*pub = harness_connect(h);
	connect311(h, *pub, 'p');
	(void)harness_output(h, *pub, &out);
}

TEST(io_qos2_publish_is_recorded_released_and_delivered_once)
{
	static struct harness h;
	struct hconn *sub, *pub;
	uint8_t got[64];
	size_t n = 0;
	const uint8_t *out;
	HARNESS_START(&h, config);
	sub_and_pub(&h, &sub, &pub, 2);
	/* PUBLISH QoS 2 id 9 "a/b" "x" */
	IN(&h, pub, 0x34, 0x08, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x09, 'x');
	OUT_IS(&h, pub, 0x50, 0x02, 0x00, 0x09); /* PUBREC */
	size_t k = harness_output(&h, sub, &out);
	memcpy(got, out, k < sizeof(got) ? k : sizeof(got));
	n = k < sizeof(got) ? k : sizeof(got);
	/* the same PUBLISH again before PUBREL: recorded once */
	IN(&h, pub, 0x3c, 0x08, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x09, 'x');
	OUT_IS(&h, pub, 0x50, 0x02, 0x00, 0x09);
	IN(&h, pub, 0x62, 0x02, 0x00, 0x09); /* PUBREL */
	OUT_IS(&h, pub, 0x70, 0x02, 0x00, 0x09); /* PUBCOMP */
	k = harness_output(&h, sub, &out);
	if (n + k <= sizeof(got)) {
		memcpy(got + n, out, k);
		n += k;
	}
	/* the subscriber got it once, at QoS 2 with its own id */
	static const uint8_t want[] = {0x34, 0x08, 0x00, 0x03, 'a', '/',
				       'b', 0x00, 0x01, 'x'};
	CHECK(n == sizeof(want) && memcmp(got, want, n) == 0);
	harness_fini(&h);
}

TEST(io_unsubscribe_gets_unsuback_and_stops_deliveries)
{
	static struct harness h;
	struct hconn *sub, *pub;
	HARNESS_START(&h, config);
	sub_and_pub(&h, &sub, &pub, 0);
	IN(&h, pub, 0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'x');
	OUT_IS(&h, sub, 0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'x');
	/* UNSUBSCRIBE id 2 "a/#" */
	IN(&h, sub, 0xa2, 0x07, 0x00, 0x02, 0x00, 0x03, 'a', '/', '#');
	OUT_IS(&h, sub, 0xb0, 0x02, 0x00, 0x02);
	IN(&h, pub, 0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'y');
	OUT_NONE(&h, sub);
	harness_fini(&h);
}

/* 3.1.2.5: the will goes out when the connection ends without a
 * DISCONNECT (here a protocol error), never after one. */
TEST(io_will_is_published_on_a_protocol_error_not_after_disconnect)
{
	static const uint8_t will_connect[] = {
		0x10, 24, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 60, /* will */
		0, 2, 'w', '1', 0, 3, 'a', '/', 'w', 0, 3, 'b', 'y', 'e'};
	for (int clean = 0; clean < 2; clean++) {
		static struct harness h;
		struct hconn *sub, *pub;
		HARNESS_START(&h, config);
		sub_and_pub(&h, &sub, &pub, 0);
		struct hconn *w = harness_connect(&h);
		harness_input(&h, w, will_connect, sizeof(will_connect));
		OUT_IS(&h, w, 0x20, 0x02, 0x00, 0x00);
		if (clean)
			IN(&h, w, 0xe0, 0x00); /* DISCONNECT */
		else
			IN(&h, w, 0x00, 0x00); /* reserved type 0 */
		CHECK(harness_conn(&h, w) == NULL);
		if (clean)
			OUT_NONE(&h, sub);
		else
			OUT_IS(&h, sub, 0x30, 0x08, 0x00, 0x03, 'a', '/', 'w',
			       'b', 'y', 'e');
		harness_fini(&h);
	}
}

/* Keepalive runs on the shard's clock and its tick: a client with a
 * 10 s keepalive is served until 1.5 times that passes without a packet
 * from it (MQTT 3.1.2.10), each packet starting the wait again; then an
 * MQTT 5 client gets DISCONNECT 0x8D (keep alive timeout), its will goes
 * out, and the connection closes. */
TEST(io_keepalive_expires_on_the_shard_clock_with_its_will)
{
	static const uint8_t connect_ka10_will[] = {
		0x10, 25, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x06, 0, 10, 0, /* will */
		0, 2, 'k', 'a', 0, 0, 3, 'a', '/', 'k', 0, 2, 'g', 'o'};
	static struct harness h;
	struct hconn *sub, *pub;
	HARNESS_START(&h, config);
	uint64_t t0 = 7000000;
	harness_set_now(&h, t0);
	sub_and_pub(&h, &sub, &pub, 0);
	struct hconn *k = harness_connect(&h);
	harness_input(&h, k, connect_ka10_will, sizeof(connect_ka10_will));
	const uint8_t *out;
	size_t n = harness_output(&h, k, &out);
	CHECK(n >= 4 && out[0] == 0x20 && out[3] == 0); /* CONNACK success */

	harness_set_now(&h, t0 + 14000);
	harness_tick(&h);
	OUT_NONE(&h, k);
	IN(&h, k, 0xc0, 0x00); /* PINGREQ at 14 s: the wait starts again */
	OUT_IS(&h, k, 0xd0, 0x00);
	harness_set_now(&h, t0 + 28000);
	harness_tick(&h);
	OUT_NONE(&h, k);
	CHECK(harness_conn(&h, k) != NULL);
	OUT_NONE(&h, sub);

	harness_set_now(&h, t0 + 29001); /* 15.001 s after the PINGREQ */
	harness_tick(&h);
	OUT_IS(&h, k, 0xe0, 0x01, 0x8d); /* no properties: length omitted */
	CHECK(harness_conn(&h, k) == NULL);
	OUT_IS(&h, sub, 0x30, 0x07, 0x00, 0x03, 'a', '/', 'k', 'g', 'o');
	harness_fini(&h);
}

/* One PUBLISH of `payload` bytes of `fill` on "a/b" (3.1.1), QoS 0 or
 * QoS 1 with packet id pid; returns its length. */
static size_t publish311(uint8_t *b, uint8_t qos, uint16_t pid,
			 size_t payload, uint8_t fill)
{
	size_t body = 5 + (qos ? 2 : 0) + payload, n = 0;
	b[n++] = (uint8_t)(0x30 | qos << 1);
	do {
		b[n] = (uint8_t)(body & 0x7f);
		body >>= 7;
		b[n++] |= body ? 0x80 : 0;
	} while (body);
	memcpy(b + n, "\0\3a/b", 5);
	n += 5;
	if (qos) {
		b[n++] = (uint8_t)(pid >> 8);
		b[n++] = (uint8_t)pid;
	}
	memset(b + n, fill, payload);
	return n + payload;
}

/* A socket that takes only part of a send: what the kernel did not take
 * goes out next, so the subscriber reads every packet whole and in
 * order, whether the turn's packets were copied into one buffer (up to
 * 2 KiB, up to 16 KiB) or sent from the wire queue as iovecs (a larger
 * backlog). */
TEST(io_partial_sends_deliver_every_byte_in_order)
{
	static const size_t send_max[] = {0, 1, 3, 1000, 7001};
	static const size_t payload[] = {1, 200, 3000, 9000};
	static uint8_t in[3 * 9100], want[3 * 9100];
	for (unsigned i = 0; i < sizeof(send_max) / sizeof(send_max[0]); i++)
		for (unsigned j = 0; j < sizeof(payload) / sizeof(payload[0]); j++) {
			static struct harness h;
			struct hconn *sub, *pub;
			size_t nin = 0, nwant = 0;
			HARNESS_START(&h, config);
			sub_and_pub(&h, &sub, &pub, 1);
			sub->send_max = send_max[i];
			/* QoS 0, QoS 1 (id 5: the subscriber's first id is 1),
			 * QoS 0, in one receive */
			nin += publish311(in + nin, 0, 0, payload[j], 'x');
			nin += publish311(in + nin, 1, 5, payload[j], 'y');
			nin += publish311(in + nin, 0, 0, payload[j], 'z');
			nwant += publish311(want + nwant, 0, 0, payload[j], 'x');
			nwant += publish311(want + nwant, 1, 1, payload[j], 'y');
			nwant += publish311(want + nwant, 0, 0, payload[j], 'z');
			harness_input(&h, pub, in, nin);
			bool same = out_is(&h, sub, want, nwant);
			if (!same)
				fprintf(stderr, "  send_max %zu, payload %zu\n",
					send_max[i], payload[j]);
			CHECK(same);
			CHECK(harness_conn(&h, sub) != NULL);
			harness_fini(&h);
		}
}

/* QoS 0 fan-out: subscribers whose queues hold the same messages send
 * one buffer gathered once; one whose queue differs (an extra message)
 * gets its own, and a subscriber whose socket takes a few bytes at a
 * time still reads every packet whole while the others share it. */
TEST(io_fanout_subscribers_each_get_their_own_queue_whole)
{
	static struct harness h;
	static const uint8_t sub_a[] = {0x82, 0x08, 0x00, 0x01, 0x00, 0x03,
					'a', '/', '#', 0x00};
	static const uint8_t sub_all[] = {0x82, 0x06, 0x00, 0x01, 0x00, 0x01,
					  '#', 0x00};
	const uint8_t *out;
	HARNESS_START(&h, config);
	struct hconn *s[3];
	for (unsigned i = 0; i < 3; i++) {
		s[i] = harness_connect(&h);
		connect311(&h, s[i], (char)('1' + i));
		if (i < 2)
			harness_input(&h, s[i], sub_a, sizeof(sub_a));
		else
			harness_input(&h, s[i], sub_all, sizeof(sub_all));
		(void)harness_output(&h, s[i], &out); /* CONNACK, SUBACK */
	}
	s[1]->send_max = 3;
	struct hconn *pub = harness_connect(&h);
	connect311(&h, pub, 'p');
	(void)harness_output(&h, pub, &out);
	/* "a/b" x, "a/b" y, "z" w in one receive */
	IN(&h, pub, 0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'x',
	   0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'y',
	   0x30, 0x04, 0x00, 0x01, 'z', 'w');
	OUT_IS(&h, s[0], 0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'x',
	       0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'y');
	OUT_IS(&h, s[1], 0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'x',
	       0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'y');
	OUT_IS(&h, s[2], 0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'x',
	       0x30, 0x06, 0x00, 0x03, 'a', '/', 'b', 'y',
	       0x30, 0x04, 0x00, 0x01, 'z', 'w');
	/* the next turn: as many messages as the last buffer built, other
	 * ones, other bytes */
	IN(&h, pub, 0x30, 0x06, 0x00, 0x03, 'a', '/', 'c', 'q',
	   0x30, 0x06, 0x00, 0x03, 'a', '/', 'c', 'r',
	   0x30, 0x06, 0x00, 0x03, 'a', '/', 'c', 't');
	for (unsigned i = 0; i < 3; i++)
		OUT_IS(&h, s[i], 0x30, 0x06, 0x00, 0x03, 'a', '/', 'c', 'q',
		       0x30, 0x06, 0x00, 0x03, 'a', '/', 'c', 'r',
		       0x30, 0x06, 0x00, 0x03, 'a', '/', 'c', 't');
	harness_fini(&h);
}
