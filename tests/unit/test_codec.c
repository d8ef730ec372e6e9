/* Unit tests for core/codec.c: every decoder's refusals, one behaviour per
 * test, and encoders checked byte for byte or by decoding their output. */
#include "runner.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/codec.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- packet building helpers -------------------------------------------- */

struct buf {
	uint8_t b[4096];
	size_t n;
};

static void put(struct buf *p, const void *d, size_t n)
{
	memcpy(p->b + p->n, d, n);
	p->n += n;
}

static void put_u8(struct buf *p, uint8_t v)
{
	p->b[p->n++] = v;
}

static void put_u16(struct buf *p, uint16_t v)
{
	put_u8(p, (uint8_t)(v >> 8));
	put_u8(p, (uint8_t)v);
}

static void put_u32(struct buf *p, uint32_t v)
{
	put_u16(p, (uint16_t)(v >> 16));
	put_u16(p, (uint16_t)v);
}

static void put_varint(struct buf *p, uint32_t v)
{
	p->n += mqtt_varint_encode(p->b + p->n, v);
}

static void put_bin(struct buf *p, const void *s, size_t n)
{
	put_u16(p, (uint16_t)n);
	put(p, s, n);
}

static void put_str(struct buf *p, const char *s)
{
	put_bin(p, s, strlen(s));
}

/* A property block: length, then the bytes of `props`. */
static void put_props(struct buf *p, const struct buf *props)
{
	put_varint(p, (uint32_t)props->n);
	put(p, props->b, props->n);
}

static void put_empty_props(struct buf *p)
{
	put_u8(p, 0);
}

static bool bytes_eq(struct mqtt_bytes b, const char *s)
{
	size_t n = strlen(s);
	return b.len == n && (n == 0 || memcmp(b.ptr, s, n) == 0);
}

static bool bytes_same(struct mqtt_bytes a, struct mqtt_bytes b)
{
	return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* Decodes a property block built in `p` for `where`. */
static enum mqtt_rc props_rc(const struct buf *p, enum mqtt_props_where where)
{
	struct buf block = {.n = 0};
	struct mqtt_props props;
	size_t used;

	put_props(&block, p);
	return mqtt_props_decode(block.b, block.n, where, &props, &used);
}

/* ---- framing ----------------------------------------------------------- */

TEST(codec_frame_needs_more_without_length_byte)
{
	struct mqtt_fixed_header fh;
	const uint8_t b[] = {0x30, 0x80, 0x80};

	CHECK_EQ(mqtt_frame_parse(b, 0, &fh), MQTT_FRAME_NEED_MORE);
	CHECK_EQ(mqtt_frame_parse(b, 1, &fh), MQTT_FRAME_NEED_MORE);
	CHECK_EQ(mqtt_frame_parse(b, 3, &fh), MQTT_FRAME_NEED_MORE);
}

TEST(codec_frame_parses_type_flags_and_length)
{
	struct mqtt_fixed_header fh;
	const uint8_t b[] = {0x3b, 0xc1, 0x02};

	CHECK_EQ(mqtt_frame_parse(b, sizeof(b), &fh), MQTT_FRAME_OK);
	CHECK_EQ(fh.type, MQTT_PUBLISH);
	CHECK_EQ(fh.flags, 0xb);
	CHECK_EQ(fh.header_len, 3);
	CHECK_EQ(fh.remaining_len, 321);
}

TEST(codec_frame_v31_keeps_the_flags_it_accepts)
{
	struct mqtt_fixed_header fh;
	const uint8_t pubrel_dup[] = {0x6a, 0x02, 0x00, 0x01};
	const uint8_t reserved[] = {0x0a, 0x00};
	const uint8_t publish_q3[] = {0x36, 0x00};
	const uint8_t partial[] = {0x6a, 0x80};

	CHECK_EQ(mqtt_frame_parse(pubrel_dup, sizeof(pubrel_dup), &fh),
		 MQTT_FRAME_MALFORMED);
	CHECK_EQ(mqtt_frame_parse_v31(pubrel_dup, sizeof(pubrel_dup), &fh),
		 MQTT_FRAME_OK);
	CHECK_EQ(fh.type, MQTT_PUBREL);
	CHECK_EQ(fh.flags, 0xa);
	CHECK_EQ(fh.remaining_len, 2);
	CHECK_EQ(mqtt_frame_parse_v31(reserved, sizeof(reserved), &fh),
		 MQTT_FRAME_MALFORMED);
	CHECK_EQ(mqtt_frame_parse_v31(publish_q3, sizeof(publish_q3), &fh),
		 MQTT_FRAME_MALFORMED);
	CHECK_EQ(mqtt_frame_parse_v31(partial, sizeof(partial), &fh),
		 MQTT_FRAME_NEED_MORE);
}

TEST(codec_frame_accepts_four_length_bytes_up_to_max)
{
	struct mqtt_fixed_header fh;
	const uint8_t b[] = {0xc0, 0xff, 0xff, 0xff, 0x7f};

	CHECK_EQ(mqtt_frame_parse(b, sizeof(b), &fh), MQTT_FRAME_OK);
	CHECK_EQ(fh.header_len, 5);
	CHECK_EQ(fh.remaining_len, MQTT_VARINT_MAX);
}

TEST(codec_frame_rejects_fifth_length_byte)
{
	struct mqtt_fixed_header fh;
	const uint8_t b[] = {0xc0, 0xff, 0xff, 0xff, 0xff, 0x01};

	CHECK_EQ(mqtt_frame_parse(b, sizeof(b), &fh), MQTT_FRAME_MALFORMED);
	/* Known malformed before the fifth byte even arrives. */
	CHECK_EQ(mqtt_frame_parse(b, 5, &fh), MQTT_FRAME_MALFORMED);
}

TEST(codec_frame_accepts_non_minimal_remaining_length_like_mosquitto)
{
	struct mqtt_fixed_header fh;
	const uint8_t b[] = {0xc0, 0x80, 0x80, 0x00};

	CHECK_EQ(mqtt_frame_parse(b, sizeof(b), &fh), MQTT_FRAME_OK);
	CHECK_EQ(fh.header_len, 4);
	CHECK_EQ(fh.remaining_len, 0);
}

TEST(codec_frame_rejects_packet_type_zero)
{
	struct mqtt_fixed_header fh;
	const uint8_t b[] = {0x00, 0x00};

	CHECK_EQ(mqtt_frame_parse(b, sizeof(b), &fh), MQTT_FRAME_MALFORMED);
}

TEST(codec_frame_rejects_wrong_reserved_flags_for_every_type)
{
	struct mqtt_fixed_header fh;

	for (uint8_t type = 1; type < 16; type++) {
		if (type == MQTT_PUBLISH)
			continue;
		uint8_t want = (type == MQTT_PUBREL || type == MQTT_SUBSCRIBE ||
				type == MQTT_UNSUBSCRIBE) ? 2 : 0;
		for (uint8_t flags = 0; flags < 16; flags++) {
			uint8_t b[] = {(uint8_t)(type << 4 | flags), 0};
			enum mqtt_frame_status st = mqtt_frame_parse(b, 2, &fh);
			CHECK_EQ(st, flags == want ? MQTT_FRAME_OK
						   : MQTT_FRAME_MALFORMED);
		}
	}
}

TEST(codec_frame_rejects_publish_qos3_accepts_other_flags)
{
	struct mqtt_fixed_header fh;

	for (uint8_t flags = 0; flags < 16; flags++) {
		uint8_t b[] = {(uint8_t)(0x30 | flags), 0};
		bool qos3 = (flags & 0x6) == 0x6;
		CHECK_EQ(mqtt_frame_parse(b, 2, &fh),
			 qos3 ? MQTT_FRAME_MALFORMED : MQTT_FRAME_OK);
	}
}

/* ---- UTF-8 ------------------------------------------------------------ */

static bool utf8(const char *s)
{
	return mqtt_utf8_valid((const uint8_t *)s, strlen(s));
}

TEST(codec_utf8_accepts_ascii_multibyte_and_boundaries)
{
	CHECK(mqtt_utf8_valid((const uint8_t *)"", 0));
	CHECK(utf8("hello/world"));
	CHECK(utf8("\xc2\xa0"));	     /* U+00A0, first after C1 */
	CHECK(utf8("\xdf\xbf"));	     /* U+07FF */
	CHECK(utf8("\xe0\xa0\x80"));	     /* U+0800 */
	CHECK(utf8("\xed\x9f\xbf"));	     /* U+D7FF */
	CHECK(utf8("\xee\x80\x80"));	     /* U+E000 */
	CHECK(utf8("\xef\xbf\xbd"));	     /* U+FFFD */
	CHECK(utf8("\xf0\x90\x80\x80"));     /* U+10000 */
	CHECK(utf8("\xf4\x8f\xbf\xbd"));     /* U+10FFFD */
	CHECK(utf8("caf\xc3\xa9 \xe2\x82\xac")); /* "café €" */
}

TEST(codec_utf8_rejects_nul)
{
	CHECK(!mqtt_utf8_valid((const uint8_t *)"a\0b", 3));
}

TEST(codec_utf8_rejects_control_characters_like_mosquitto)
{
	for (uint8_t c = 1; c < 0x20; c++)
		CHECK(!mqtt_utf8_valid(&c, 1));
	CHECK(!utf8("\x7f"));
	for (uint8_t c = 0x80; c <= 0x9f; c++) {
		uint8_t s[] = {0xc2, c}; /* U+0080..U+009F */
		CHECK(!mqtt_utf8_valid(s, 2));
	}
}

TEST(codec_utf8_rejects_noncharacters_like_mosquitto)
{
	CHECK(!utf8("\xef\xb7\x90"));	  /* U+FDD0 */
	CHECK(!utf8("\xef\xb7\xaf"));	  /* U+FDEF */
	CHECK(!utf8("\xef\xbf\xbe"));	  /* U+FFFE */
	CHECK(!utf8("\xef\xbf\xbf"));	  /* U+FFFF */
	CHECK(!utf8("\xf0\x9f\xbf\xbf")); /* U+1FFFF */
	CHECK(!utf8("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
}

TEST(codec_utf8_rejects_overlong_encodings)
{
	CHECK(!utf8("\xc0\x80"));
	CHECK(!utf8("\xc1\xbf"));
	CHECK(!utf8("\xe0\x80\x80"));
	CHECK(!utf8("\xe0\x9f\xbf"));
	CHECK(!utf8("\xf0\x80\x80\x80"));
	CHECK(!utf8("\xf0\x8f\xbf\xbf"));
}

TEST(codec_utf8_rejects_surrogates)
{
	CHECK(!utf8("\xed\xa0\x80"));
	CHECK(!utf8("\xed\xbf\xbf"));
}

TEST(codec_utf8_rejects_code_points_above_10ffff)
{
	CHECK(!utf8("\xf4\x90\x80\x80"));
	CHECK(!utf8("\xf5\x80\x80\x80"));
	CHECK(!utf8("\xff"));
}

TEST(codec_utf8_rejects_truncated_and_stray_continuation_bytes)
{
	CHECK(!utf8("\xc3"));
	CHECK(!utf8("a\xe2\x82"));
	CHECK(!utf8("\xf0\x90\x80"));
	CHECK(!utf8("\x80"));
	CHECK(!utf8("\xc3\x28"));
	CHECK(!utf8("\xe2\x28\xa1"));
}

/* ---- topics ------------------------------------------------------------ */

static bool name_ok(const char *s)
{
	return mqtt_topic_name_valid((const uint8_t *)s, strlen(s));
}

static bool filter_ok(const char *s)
{
	return mqtt_topic_filter_valid((const uint8_t *)s, strlen(s));
}

TEST(codec_topic_name_rejects_wildcards_empty_and_bad_utf8)
{
	CHECK(name_ok("a/b/c"));
	CHECK(name_ok("/"));
	CHECK(name_ok("$SYS/x"));
	CHECK(!name_ok(""));
	CHECK(!name_ok("a/+/c"));
	CHECK(!name_ok("a/#"));
	CHECK(!name_ok("a+b"));
	CHECK(!name_ok("a\xc0\x80"));
}

TEST(codec_topic_filter_accepts_whole_level_wildcards)
{
	const char *ok[] = {"#", "+", "/", "a/b", "+/+", "a/+/c", "a/#",
			    "/#", "//", "+/#", "$SYS/#", "a//b",
			    "$share/g/a/b", "$share/g/#", "$share/g/+/x",
			    "$share/g//", "$share", "$sharex/a"};
	for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
		if (!filter_ok(ok[i]))
			fprintf(stderr, "  rejected %s\n", ok[i]);
		CHECK(filter_ok(ok[i]));
	}
}

TEST(codec_topic_filter_rejects_partial_level_wildcards)
{
	const char *bad[] = {"", "a+", "+a", "a/b+", "a/+b/c", "#a", "a#",
			     "a/b#", "++", "##", "a\xc0\x80"};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		if (filter_ok(bad[i]))
			fprintf(stderr, "  accepted %s\n", bad[i]);
		CHECK(!filter_ok(bad[i]));
	}
}

TEST(codec_topic_filter_rejects_hash_before_last_level)
{
	CHECK(!filter_ok("#/a"));
	CHECK(!filter_ok("a/#/b"));
	CHECK(!filter_ok("#/"));
}

TEST(codec_topic_filter_enforces_shared_subscription_rules)
{
	const char *bad[] = {"$share/", "$share//a", "$share/g", "$share/g/",
			     "$share/+/a", "$share/#/a", "$share/g+/a",
			     "$share/g#/a", "$share/g/a+", "$share/g/#/a"};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		if (filter_ok(bad[i]))
			fprintf(stderr, "  accepted %s\n", bad[i]);
		CHECK(!filter_ok(bad[i]));
	}
}

/* ---- properties -------------------------------------------------------- */

TEST(codec_props_decode_every_connack_property)
{
	struct buf p = {.n = 0}, block = {.n = 0};
	put_u8(&p, MQTT_PROP_SESSION_EXPIRY_INTERVAL), put_u32(&p, 3600);
	put_u8(&p, MQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER), put_str(&p, "auto-1");
	put_u8(&p, MQTT_PROP_SERVER_KEEP_ALIVE), put_u16(&p, 30);
	put_u8(&p, MQTT_PROP_AUTHENTICATION_METHOD), put_str(&p, "SCRAM");
	put_u8(&p, MQTT_PROP_AUTHENTICATION_DATA), put_bin(&p, "\0\1", 2);
	put_u8(&p, MQTT_PROP_RESPONSE_INFORMATION), put_str(&p, "resp");
	put_u8(&p, MQTT_PROP_SERVER_REFERENCE), put_str(&p, "other");
	put_u8(&p, MQTT_PROP_REASON_STRING), put_str(&p, "why");
	put_u8(&p, MQTT_PROP_RECEIVE_MAXIMUM), put_u16(&p, 10);
	put_u8(&p, MQTT_PROP_TOPIC_ALIAS_MAXIMUM), put_u16(&p, 5);
	put_u8(&p, MQTT_PROP_MAXIMUM_QOS), put_u8(&p, 1);
	put_u8(&p, MQTT_PROP_RETAIN_AVAILABLE), put_u8(&p, 0);
	put_u8(&p, MQTT_PROP_USER_PROPERTY), put_str(&p, "k"), put_str(&p, "v");
	put_u8(&p, MQTT_PROP_MAXIMUM_PACKET_SIZE), put_u32(&p, 1u << 20);
	put_u8(&p, MQTT_PROP_WILDCARD_SUBSCRIPTION_AVAILABLE), put_u8(&p, 1);
	put_u8(&p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER_AVAILABLE), put_u8(&p, 0);
	put_u8(&p, MQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE), put_u8(&p, 1);
	put_props(&block, &p);
	put_u8(&block, 0xee); /* what follows the block is not consumed */

	struct mqtt_props props;
	size_t used;
	CHECK_EQ(mqtt_props_decode(block.b, block.n, MQTT_PROPS_CONNACK,
				   &props, &used), MQTT_RC_SUCCESS);
	CHECK_EQ(used, block.n - 1);
	CHECK_EQ(props.raw.len, p.n);
	CHECK_EQ(props.session_expiry_interval, 3600);
	CHECK(bytes_eq(props.assigned_client_identifier, "auto-1"));
	CHECK_EQ(props.server_keep_alive, 30);
	CHECK(bytes_eq(props.authentication_method, "SCRAM"));
	CHECK_EQ(props.authentication_data.len, 2);
	CHECK(bytes_eq(props.response_information, "resp"));
	CHECK(bytes_eq(props.server_reference, "other"));
	CHECK(bytes_eq(props.reason_string, "why"));
	CHECK_EQ(props.receive_maximum, 10);
	CHECK_EQ(props.topic_alias_maximum, 5);
	CHECK_EQ(props.maximum_qos, 1);
	CHECK_EQ(props.retain_available, 0);
	CHECK(props.present & MQTT_PROP_BIT(MQTT_PROP_RETAIN_AVAILABLE));
	CHECK_EQ(props.user_property_count, 1);
	CHECK_EQ(props.maximum_packet_size, 1u << 20);
	CHECK_EQ(props.wildcard_subscription_available, 1);
	CHECK_EQ(props.subscription_identifier_available, 0);
	CHECK_EQ(props.shared_subscription_available, 1);
	CHECK_EQ(__builtin_popcountll(props.present), 17);
}

TEST(codec_props_decode_every_publish_and_connect_property)
{
	struct buf p = {.n = 0}, block = {.n = 0};
	put_u8(&p, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR), put_u8(&p, 1);
	put_u8(&p, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL), put_u32(&p, 7);
	put_u8(&p, MQTT_PROP_CONTENT_TYPE), put_str(&p, "text/plain");
	put_u8(&p, MQTT_PROP_RESPONSE_TOPIC), put_str(&p, "r/t");
	put_u8(&p, MQTT_PROP_CORRELATION_DATA), put_bin(&p, "\xff\x00", 2);
	put_u8(&p, MQTT_PROP_TOPIC_ALIAS), put_u16(&p, 3);
	put_u8(&p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER), put_varint(&p, 300);
	put_props(&block, &p);

	struct mqtt_props props;
	size_t used;
	CHECK_EQ(mqtt_props_decode(block.b, block.n, MQTT_PROPS_PUBLISH,
				   &props, &used), MQTT_RC_SUCCESS);
	CHECK_EQ(props.payload_format_indicator, 1);
	CHECK_EQ(props.message_expiry_interval, 7);
	CHECK(bytes_eq(props.content_type, "text/plain"));
	CHECK(bytes_eq(props.response_topic, "r/t"));
	CHECK_EQ(props.correlation_data.len, 2);
	CHECK_EQ(props.topic_alias, 3);
	CHECK_EQ(props.subscription_identifier, 300);

	struct buf c = {.n = 0};
	put_u8(&c, MQTT_PROP_REQUEST_PROBLEM_INFORMATION), put_u8(&c, 0);
	put_u8(&c, MQTT_PROP_REQUEST_RESPONSE_INFORMATION), put_u8(&c, 1);
	CHECK_EQ(props_rc(&c, MQTT_PROPS_CONNECT), MQTT_RC_SUCCESS);
	struct buf w = {.n = 0};
	put_u8(&w, MQTT_PROP_WILL_DELAY_INTERVAL), put_u32(&w, 9);
	CHECK_EQ(props_rc(&w, MQTT_PROPS_WILL), MQTT_RC_SUCCESS);
}

TEST(codec_props_empty_block_decodes)
{
	const uint8_t b[] = {0x00};
	struct mqtt_props props;
	size_t used;

	CHECK_EQ(mqtt_props_decode(b, 1, MQTT_PROPS_AUTH, &props, &used),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(used, 1);
	CHECK_EQ(props.present, 0);
}

TEST(codec_props_unknown_identifier_is_malformed)
{
	const uint8_t ids[] = {0x00, 0x04, 0x0a, 0x14, 0x1b, 0x20, 0x2b, 0x7f,
			       0x80};
	for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
		struct buf p = {.n = 0};
		put_u8(&p, ids[i]);
		put_u8(&p, 0);
		CHECK_EQ(props_rc(&p, MQTT_PROPS_PUBLISH),
			 MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_props_identifier_not_allowed_at_where_is_malformed)
{
	static const struct {
		uint8_t id;
		enum mqtt_props_where where;
	} cases[] = {
		{MQTT_PROP_REQUEST_PROBLEM_INFORMATION, MQTT_PROPS_PUBLISH},
		{MQTT_PROP_REQUEST_PROBLEM_INFORMATION, MQTT_PROPS_CONNACK},
		{MQTT_PROP_TOPIC_ALIAS, MQTT_PROPS_CONNECT},
		{MQTT_PROP_TOPIC_ALIAS, MQTT_PROPS_WILL},
		{MQTT_PROP_WILL_DELAY_INTERVAL, MQTT_PROPS_CONNECT},
		{MQTT_PROP_SESSION_EXPIRY_INTERVAL, MQTT_PROPS_WILL},
		{MQTT_PROP_SUBSCRIPTION_IDENTIFIER, MQTT_PROPS_CONNECT},
		{MQTT_PROP_SUBSCRIPTION_IDENTIFIER, MQTT_PROPS_UNSUBSCRIBE},
		{MQTT_PROP_REASON_STRING, MQTT_PROPS_PUBLISH},
		{MQTT_PROP_REASON_STRING, MQTT_PROPS_CONNECT},
		{MQTT_PROP_REASON_STRING, MQTT_PROPS_WILL},
		{MQTT_PROP_REASON_STRING, MQTT_PROPS_SUBSCRIBE},
		{MQTT_PROP_MAXIMUM_QOS, MQTT_PROPS_CONNECT},
		{MQTT_PROP_RECEIVE_MAXIMUM, MQTT_PROPS_DISCONNECT},
		{MQTT_PROP_SERVER_REFERENCE, MQTT_PROPS_CONNECT},
		{MQTT_PROP_AUTHENTICATION_METHOD, MQTT_PROPS_DISCONNECT},
		{MQTT_PROP_CONTENT_TYPE, MQTT_PROPS_PUBACK},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf p = {.n = 0};
		put_u8(&p, cases[i].id);
		switch (cases[i].id) {
		case MQTT_PROP_REASON_STRING:
		case MQTT_PROP_SERVER_REFERENCE:
		case MQTT_PROP_AUTHENTICATION_METHOD:
		case MQTT_PROP_CONTENT_TYPE:
			put_str(&p, "x");
			break;
		case MQTT_PROP_TOPIC_ALIAS:
		case MQTT_PROP_RECEIVE_MAXIMUM:
			put_u16(&p, 1);
			break;
		case MQTT_PROP_WILL_DELAY_INTERVAL:
		case MQTT_PROP_SESSION_EXPIRY_INTERVAL:
			put_u32(&p, 1);
			break;
		default:
			put_u8(&p, 1); /* byte value, or varint 1 */
			break;
		}
		enum mqtt_rc rc = props_rc(&p, cases[i].where);
		if (rc != MQTT_RC_MALFORMED_PACKET)
			fprintf(stderr, "  case %zu: id 0x%02x\n", i,
				cases[i].id);
		CHECK_EQ(rc, MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_props_user_property_allowed_everywhere)
{
	struct buf p = {.n = 0};
	put_u8(&p, MQTT_PROP_USER_PROPERTY), put_str(&p, "k"), put_str(&p, "v");
	for (int w = MQTT_PROPS_CONNECT; w <= MQTT_PROPS_AUTH; w++)
		CHECK_EQ(props_rc(&p, (enum mqtt_props_where)w),
			 MQTT_RC_SUCCESS);
}

TEST(codec_props_duplicate_is_protocol_error)
{
	struct buf p = {.n = 0};
	put_u8(&p, MQTT_PROP_SESSION_EXPIRY_INTERVAL), put_u32(&p, 1);
	put_u8(&p, MQTT_PROP_SESSION_EXPIRY_INTERVAL), put_u32(&p, 2);
	CHECK_EQ(props_rc(&p, MQTT_PROPS_CONNECT), MQTT_RC_PROTOCOL_ERROR);

	struct buf s = {.n = 0};
	put_u8(&s, MQTT_PROP_REASON_STRING), put_str(&s, "a");
	put_u8(&s, MQTT_PROP_REASON_STRING), put_str(&s, "b");
	CHECK_EQ(props_rc(&s, MQTT_PROPS_PUBACK), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_props_repeated_user_property_is_counted)
{
	struct buf p = {.n = 0}, block = {.n = 0};
	put_u8(&p, MQTT_PROP_USER_PROPERTY), put_str(&p, "a"), put_str(&p, "1");
	put_u8(&p, MQTT_PROP_USER_PROPERTY), put_str(&p, "a"), put_str(&p, "2");
	put_props(&block, &p);
	struct mqtt_props props;
	size_t used;

	CHECK_EQ(mqtt_props_decode(block.b, block.n, MQTT_PROPS_CONNECT,
				   &props, &used), MQTT_RC_SUCCESS);
	CHECK_EQ(props.user_property_count, 2);
}

TEST(codec_props_subscription_identifier_repeats_only_in_publish)
{
	struct buf p = {.n = 0}, block = {.n = 0};
	put_u8(&p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER), put_varint(&p, 5);
	put_u8(&p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER), put_varint(&p, 9);
	put_props(&block, &p);
	struct mqtt_props props;
	size_t used;

	CHECK_EQ(mqtt_props_decode(block.b, block.n, MQTT_PROPS_PUBLISH,
				   &props, &used), MQTT_RC_SUCCESS);
	CHECK_EQ(props.subscription_identifier, 5);
	CHECK_EQ(props_rc(&p, MQTT_PROPS_SUBSCRIBE), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_props_out_of_range_value_is_protocol_error)
{
	static const struct {
		uint8_t id;
		uint8_t width; /* 1, 2, 4 or 0 for varint */
		uint32_t value;
		enum mqtt_props_where where;
	} cases[] = {
		{MQTT_PROP_RECEIVE_MAXIMUM, 2, 0, MQTT_PROPS_CONNECT},
		{MQTT_PROP_MAXIMUM_PACKET_SIZE, 4, 0, MQTT_PROPS_CONNECT},
		{MQTT_PROP_PAYLOAD_FORMAT_INDICATOR, 1, 2, MQTT_PROPS_PUBLISH},
		{MQTT_PROP_REQUEST_PROBLEM_INFORMATION, 1, 2, MQTT_PROPS_CONNECT},
		{MQTT_PROP_REQUEST_RESPONSE_INFORMATION, 1, 2, MQTT_PROPS_CONNECT},
		{MQTT_PROP_MAXIMUM_QOS, 1, 2, MQTT_PROPS_CONNACK},
		{MQTT_PROP_RETAIN_AVAILABLE, 1, 2, MQTT_PROPS_CONNACK},
		{MQTT_PROP_WILDCARD_SUBSCRIPTION_AVAILABLE, 1, 2,
		 MQTT_PROPS_CONNACK},
		{MQTT_PROP_SUBSCRIPTION_IDENTIFIER_AVAILABLE, 1, 255,
		 MQTT_PROPS_CONNACK},
		{MQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE, 1, 2,
		 MQTT_PROPS_CONNACK},
		{MQTT_PROP_SUBSCRIPTION_IDENTIFIER, 0, 0, MQTT_PROPS_SUBSCRIBE},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf p = {.n = 0};
		put_u8(&p, cases[i].id);
		if (cases[i].width == 1)
			put_u8(&p, (uint8_t)cases[i].value);
		else if (cases[i].width == 2)
			put_u16(&p, (uint16_t)cases[i].value);
		else if (cases[i].width == 4)
			put_u32(&p, cases[i].value);
		else
			put_varint(&p, cases[i].value);
		CHECK_EQ(props_rc(&p, cases[i].where), MQTT_RC_PROTOCOL_ERROR);
	}
}

TEST(codec_props_topic_alias_zero_is_left_to_the_broker)
{
	struct buf p = {.n = 0};
	put_u8(&p, MQTT_PROP_TOPIC_ALIAS), put_u16(&p, 0);
	CHECK_EQ(props_rc(&p, MQTT_PROPS_PUBLISH), MQTT_RC_SUCCESS);
}

TEST(codec_props_truncated_block_is_malformed)
{
	struct buf p = {.n = 0}, block = {.n = 0};
	put_u8(&p, MQTT_PROP_CONTENT_TYPE), put_str(&p, "abc");
	put_u8(&p, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL), put_u32(&p, 1);
	put_props(&block, &p);
	struct mqtt_props props;
	size_t used;

	/* Every cut of the buffer, and every block length that ends inside
	 * a property (6 would end cleanly after the content type). */
	for (size_t n = 0; n < block.n; n++)
		CHECK_EQ(mqtt_props_decode(block.b, n, MQTT_PROPS_PUBLISH,
					   &props, &used),
			 MQTT_RC_MALFORMED_PACKET);
	for (uint8_t lie = 1; lie < p.n; lie++) {
		if (lie == 6)
			continue;
		block.b[0] = lie;
		CHECK_EQ(mqtt_props_decode(block.b, block.n, MQTT_PROPS_PUBLISH,
					   &props, &used),
			 MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_props_overlong_block_length_is_malformed)
{
	const uint8_t b[] = {0x80, 0x00};
	struct mqtt_props props;
	size_t used;

	CHECK_EQ(mqtt_props_decode(b, sizeof(b), MQTT_PROPS_PUBLISH, &props,
				   &used), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_props_overlong_subscription_identifier_is_malformed)
{
	struct buf p = {.n = 0};
	put_u8(&p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER);
	put_u8(&p, 0x81), put_u8(&p, 0x00);
	CHECK_EQ(props_rc(&p, MQTT_PROPS_SUBSCRIBE), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_props_invalid_utf8_string_is_malformed)
{
	struct buf p = {.n = 0};
	put_u8(&p, MQTT_PROP_REASON_STRING), put_str(&p, "a\xc0\x80");
	CHECK_EQ(props_rc(&p, MQTT_PROPS_PUBACK), MQTT_RC_MALFORMED_PACKET);

	struct buf u = {.n = 0};
	put_u8(&u, MQTT_PROP_USER_PROPERTY), put_str(&u, "k");
	put_str(&u, "\x01");
	CHECK_EQ(props_rc(&u, MQTT_PROPS_PUBACK), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_props_binary_data_is_not_utf8_checked)
{
	struct buf p = {.n = 0};
	put_u8(&p, MQTT_PROP_CORRELATION_DATA), put_bin(&p, "\0\xff\xc0", 3);
	CHECK_EQ(props_rc(&p, MQTT_PROPS_PUBLISH), MQTT_RC_SUCCESS);
}

TEST(codec_props_malformed_wins_over_earlier_protocol_error)
{
	struct buf p = {.n = 0};
	put_u8(&p, MQTT_PROP_TOPIC_ALIAS), put_u16(&p, 1); /* not in CONNECT */
	put_u8(&p, 0x7f), put_u8(&p, 0);		    /* unknown id */
	CHECK_EQ(props_rc(&p, MQTT_PROPS_CONNECT), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_props_user_props_iterate_in_wire_order)
{
	struct buf p = {.n = 0}, block = {.n = 0};
	put_u8(&p, MQTT_PROP_USER_PROPERTY), put_str(&p, "b"), put_str(&p, "2");
	put_u8(&p, MQTT_PROP_CONTENT_TYPE), put_str(&p, "t");
	put_u8(&p, MQTT_PROP_USER_PROPERTY), put_str(&p, "a"), put_str(&p, "1");
	put_u8(&p, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL), put_u32(&p, 1);
	put_u8(&p, MQTT_PROP_USER_PROPERTY), put_str(&p, "b"), put_str(&p, "");
	put_props(&block, &p);
	struct mqtt_props props;
	size_t used;
	CHECK_EQ(mqtt_props_decode(block.b, block.n, MQTT_PROPS_PUBLISH,
				   &props, &used), MQTT_RC_SUCCESS);

	const char *want[][2] = {{"b", "2"}, {"a", "1"}, {"b", ""}};
	uint32_t cursor = 0;
	struct mqtt_bytes k, v;
	for (size_t i = 0; i < ARRAY_LEN(want); i++) {
		CHECK(mqtt_user_props_next(&props, &cursor, &k, &v));
		CHECK(bytes_eq(k, want[i][0]));
		CHECK(bytes_eq(v, want[i][1]));
	}
	CHECK(!mqtt_user_props_next(&props, &cursor, &k, &v));
	CHECK(!mqtt_user_props_next(&props, &cursor, &k, &v));
}

TEST(codec_props_encode_writes_ascending_ids_then_user_props)
{
	struct mqtt_props props = {0};
	props.present = MQTT_PROP_BIT(MQTT_PROP_TOPIC_ALIAS) |
			MQTT_PROP_BIT(MQTT_PROP_PAYLOAD_FORMAT_INDICATOR) |
			MQTT_PROP_BIT(MQTT_PROP_SUBSCRIPTION_IDENTIFIER);
	props.topic_alias = 0x0102;
	props.payload_format_indicator = 1;
	props.subscription_identifier = 128;

	struct buf up = {.n = 0}, block = {.n = 0};
	put_u8(&up, MQTT_PROP_USER_PROPERTY), put_str(&up, "k"), put_str(&up, "v");
	put_u8(&up, MQTT_PROP_REASON_STRING), put_str(&up, "skip me");
	put_props(&block, &up);
	struct mqtt_props from;
	size_t used;
	CHECK_EQ(mqtt_props_decode(block.b, block.n, MQTT_PROPS_PUBACK, &from,
				   &used), MQTT_RC_SUCCESS);

	const uint8_t want[] = {15, 0x01, 1, 0x0b, 0x80, 0x01, 0x23, 0x01, 0x02,
				0x26, 0, 1, 'k', 0, 1, 'v'};
	uint8_t out[64];
	CHECK_EQ(mqtt_props_size(&props, &from), sizeof(want));
	CHECK_EQ(mqtt_props_encode(out, sizeof(out), &props, &from),
		 sizeof(want));
	CHECK(memcmp(out, want, sizeof(want)) == 0);
}

TEST(codec_props_encode_null_is_empty_block)
{
	uint8_t out[4];
	CHECK_EQ(mqtt_props_size(NULL, NULL), 1);
	CHECK_EQ(mqtt_props_encode(out, sizeof(out), NULL, NULL), 1);
	CHECK_EQ(out[0], 0);
}

TEST(codec_props_encode_round_trips_every_property)
{
	struct buf p = {.n = 0}, block = {.n = 0};
	put_u8(&p, MQTT_PROP_USER_PROPERTY), put_str(&p, "x"), put_str(&p, "y");
	put_u8(&p, MQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE), put_u8(&p, 1);
	put_u8(&p, MQTT_PROP_SESSION_EXPIRY_INTERVAL), put_u32(&p, 0xdeadbeef);
	put_u8(&p, MQTT_PROP_REASON_STRING), put_str(&p, "r");
	put_u8(&p, MQTT_PROP_AUTHENTICATION_DATA), put_bin(&p, "\0", 1);
	put_u8(&p, MQTT_PROP_RECEIVE_MAXIMUM), put_u16(&p, 65535);
	put_props(&block, &p);
	struct mqtt_props a, b;
	size_t used;
	CHECK_EQ(mqtt_props_decode(block.b, block.n, MQTT_PROPS_CONNACK, &a,
				   &used), MQTT_RC_SUCCESS);

	uint8_t out[128];
	size_t n = mqtt_props_encode(out, sizeof(out), &a, &a);
	CHECK_EQ(n, block.n);
	CHECK_EQ(mqtt_props_decode(out, n, MQTT_PROPS_CONNACK, &b, &used),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(b.present, a.present);
	CHECK_EQ(b.shared_subscription_available, 1);
	CHECK_EQ(b.session_expiry_interval, 0xdeadbeef);
	CHECK(bytes_same(a.reason_string, b.reason_string));
	CHECK(bytes_same(a.authentication_data, b.authentication_data));
	CHECK_EQ(b.receive_maximum, 65535);
	CHECK_EQ(b.user_property_count, 1);
}

TEST(codec_props_encode_returns_zero_when_cap_too_small)
{
	struct mqtt_props props = {0};
	props.present = MQTT_PROP_BIT(MQTT_PROP_CONTENT_TYPE);
	props.content_type = (struct mqtt_bytes){(const uint8_t *)"abc", 3};
	uint8_t out[16];
	size_t need = mqtt_props_size(&props, NULL);

	CHECK_EQ(need, 7);
	for (size_t cap = 0; cap < need; cap++)
		CHECK_EQ(mqtt_props_encode(out, cap, &props, NULL), 0);
	CHECK_EQ(mqtt_props_encode(out, need, &props, NULL), need);
}

/* ---- CONNECT ----------------------------------------------------------- */

/* Protocol name, level, flags, keepalive 60 and (5.0) an empty CONNECT
 * property block. */
static void connect_head(struct buf *p, uint8_t level, uint8_t flags)
{
	put_str(p, level == MQTT_V31 ? "MQIsdp" : "MQTT");
	put_u8(p, level);
	put_u8(p, flags);
	put_u16(p, 60);
	if (level == MQTT_V5)
		put_empty_props(p);
}

static enum mqtt_rc connect_rc(const struct buf *p)
{
	struct mqtt_connect c;
	return mqtt_decode_connect(p->b, p->n, &c);
}

TEST(codec_connect_v311_minimal_decodes)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V311, 0x02);
	put_str(&p, "client-1");
	struct mqtt_connect c;

	CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c), MQTT_RC_SUCCESS);
	CHECK_EQ(c.version, MQTT_V311);
	CHECK(c.clean_start);
	CHECK_EQ(c.keepalive_s, 60);
	CHECK(bytes_eq(c.client_id, "client-1"));
	CHECK(!c.has_will && !c.has_username && !c.has_password);
}

TEST(codec_connect_empty_client_id_v311_is_accepted_by_decoder)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V311, 0x00);
	put_str(&p, "");
	CHECK_EQ(connect_rc(&p), MQTT_RC_SUCCESS);
}

TEST(codec_connect_mqisdp_v31_decodes)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V31, 0x02);
	put_str(&p, "old");
	struct mqtt_connect c;

	CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c), MQTT_RC_SUCCESS);
	CHECK_EQ(c.version, MQTT_V31);
}

TEST(codec_connect_v5_with_will_credentials_and_props_decodes)
{
	struct buf p = {.n = 0}, cp = {.n = 0}, wp = {.n = 0};
	put_str(&p, "MQTT");
	put_u8(&p, 5);
	put_u8(&p, 0x80 | 0x40 | 0x20 | 0x10 | 0x04 | 0x02);
	put_u16(&p, 10);
	put_u8(&cp, MQTT_PROP_SESSION_EXPIRY_INTERVAL), put_u32(&cp, 100);
	put_u8(&cp, MQTT_PROP_USER_PROPERTY), put_str(&cp, "k"), put_str(&cp, "v");
	put_props(&p, &cp);
	put_str(&p, "id");
	put_u8(&wp, MQTT_PROP_WILL_DELAY_INTERVAL), put_u32(&wp, 5);
	put_u8(&wp, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR), put_u8(&wp, 1);
	put_props(&p, &wp);
	put_str(&p, "will/t");
	put_str(&p, "bye");
	put_str(&p, "user");
	put_bin(&p, "\0pw", 3);
	struct mqtt_connect c;

	CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c), MQTT_RC_SUCCESS);
	CHECK_EQ(c.version, MQTT_V5);
	CHECK_EQ(c.keepalive_s, 10);
	CHECK_EQ(c.props.session_expiry_interval, 100);
	CHECK_EQ(c.props.user_property_count, 1);
	CHECK(bytes_eq(c.client_id, "id"));
	CHECK(c.has_will);
	CHECK_EQ(c.will.qos, 2);
	CHECK(c.will.retain);
	CHECK_EQ(c.will.props.will_delay_interval, 5);
	CHECK(bytes_eq(c.will.topic, "will/t"));
	CHECK(bytes_eq(c.will.payload, "bye"));
	CHECK(bytes_eq(c.username, "user"));
	CHECK_EQ(c.password.len, 3);
}

TEST(codec_connect_unknown_protocol_name_is_unsupported_version)
{
	struct buf p = {.n = 0};
	put_str(&p, "HTTP");
	put_u8(&p, 4);
	put_u8(&p, 0);
	put_u16(&p, 0);
	put_str(&p, "x");
	struct mqtt_connect c;

	CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c),
		 MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
	CHECK_EQ(c.version, 4);
}

TEST(codec_connect_bridge_bit_on_3x_levels_is_a_bridge)
{
	const uint8_t levels[] = {0x84, 0x04};
	for (size_t i = 0; i < ARRAY_LEN(levels); i++) {
		struct buf p = {.n = 0};
		put_str(&p, "MQTT");
		put_u8(&p, levels[i]);
		put_u8(&p, 2);
		put_u16(&p, 0);
		put_str(&p, "x");
		struct mqtt_connect c;
		CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c), MQTT_RC_SUCCESS);
		CHECK_EQ(c.version, MQTT_V311);
		CHECK_EQ(c.bridge, levels[i] == 0x84);
	}
}

TEST(codec_connect_unknown_level_is_unsupported_version_with_level_kept)
{
	const uint8_t levels[] = {0, 1, 2, 3, 6, 0x86, 0xff};
	for (size_t i = 0; i < ARRAY_LEN(levels); i++) {
		struct buf p = {.n = 0};
		put_str(&p, "MQTT");
		put_u8(&p, levels[i]);
		put_u8(&p, 0);
		put_u16(&p, 0);
		put_str(&p, "x");
		struct mqtt_connect c;
		CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c),
			 MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
		CHECK_EQ(c.version, levels[i]);
	}
}

TEST(codec_connect_bridge_bit_is_accepted_as_mosquitto_does)
{
	static const struct {
		const char *name;
		uint8_t level, version;
		bool bridge;
	} cases[] = {
		{"MQTT", 0x84, 4, true},
		{"MQIsdp", 0x83, 3, true},
		{"MQTT", 0x85, 5, false},
		{"MQTT", 4, 4, false},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf p = {.n = 0};
		put_str(&p, cases[i].name);
		put_u8(&p, cases[i].level);
		put_u8(&p, 0x02);
		put_u16(&p, 0);
		if (cases[i].version == 5)
			put_u8(&p, 0); /* no properties */
		put_str(&p, "x");
		struct mqtt_connect c;
		CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c), MQTT_RC_SUCCESS);
		CHECK_EQ(c.version, cases[i].version);
		CHECK(c.bridge == cases[i].bridge);
	}
}

TEST(codec_connect_mqisdp_with_level_4_is_unsupported_version)
{
	struct buf p = {.n = 0};
	put_str(&p, "MQIsdp");
	put_u8(&p, 4);
	put_u8(&p, 0);
	put_u16(&p, 0);
	put_str(&p, "x");
	CHECK_EQ(connect_rc(&p), MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
}

TEST(codec_connect_reserved_flag_is_malformed)
{
	for (uint8_t level = MQTT_V31; level <= MQTT_V5; level++) {
		struct buf p = {.n = 0};
		connect_head(&p, level, 0x03);
		put_str(&p, "x");
		CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_connect_will_qos_without_will_is_malformed)
{
	for (uint8_t level = MQTT_V31; level <= MQTT_V5; level++) {
		struct buf p = {.n = 0};
		connect_head(&p, level, 0x08);
		put_str(&p, "x");
		CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_connect_will_retain_without_will_is_malformed)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V5, 0x20);
	put_str(&p, "x");
	CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_will_qos3_is_malformed)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V311, 0x04 | 0x18);
	put_str(&p, "x");
	put_str(&p, "w");
	put_str(&p, "");
	CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_password_without_username_v311_is_malformed)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V311, 0x40);
	put_str(&p, "x");
	put_str(&p, "pw");
	CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_password_without_username_v5_is_accepted)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V5, 0x40);
	put_str(&p, "x");
	put_str(&p, "pw");
	struct mqtt_connect c;

	CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c), MQTT_RC_SUCCESS);
	CHECK(c.has_password && !c.has_username);
	CHECK(bytes_eq(c.password, "pw"));
}

TEST(codec_connect_invalid_utf8_client_id_is_malformed)
{
	const char *ids[] = {"a\xc0\x80", "\x01", "a\xed\xa0\x80"};
	for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
		struct buf p = {.n = 0};
		connect_head(&p, MQTT_V311, 0);
		put_str(&p, ids[i]);
		CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
	}
}

static enum mqtt_rc connect_with_will_topic(uint8_t level, const char *topic)
{
	struct buf p = {.n = 0};
	connect_head(&p, level, 0x04);
	put_str(&p, "x");
	if (level == MQTT_V5)
		put_empty_props(&p);
	put_str(&p, topic);
	put_str(&p, "payload");
	return connect_rc(&p);
}

TEST(codec_connect_valid_will_topic_decodes_in_both_versions)
{
	CHECK_EQ(connect_with_will_topic(MQTT_V311, "w/t"), MQTT_RC_SUCCESS);
	CHECK_EQ(connect_with_will_topic(MQTT_V5, "w/t"), MQTT_RC_SUCCESS);
}

TEST(codec_connect_invalid_utf8_will_topic_is_malformed)
{
	CHECK_EQ(connect_with_will_topic(MQTT_V311, "w\xc0\x80"),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_wildcard_will_topic_is_malformed)
{
	CHECK_EQ(connect_with_will_topic(MQTT_V311, "w/+"),
		 MQTT_RC_MALFORMED_PACKET);
	CHECK_EQ(connect_with_will_topic(MQTT_V5, "w/#"),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_empty_will_topic_is_malformed)
{
	CHECK_EQ(connect_with_will_topic(MQTT_V311, ""),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_will_payload_format_violation_is_payload_format_invalid)
{
	struct buf p = {.n = 0}, wp = {.n = 0};
	connect_head(&p, MQTT_V5, 0x04);
	put_str(&p, "x");
	put_u8(&wp, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR), put_u8(&wp, 1);
	put_props(&p, &wp);
	put_str(&p, "w");
	put_bin(&p, "\xff", 1);
	CHECK_EQ(connect_rc(&p), MQTT_RC_PAYLOAD_FORMAT_INVALID);
}

TEST(codec_connect_invalid_utf8_username_is_malformed)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V311, 0x80);
	put_str(&p, "x");
	put_str(&p, "u\xff");
	CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_trailing_bytes_are_malformed)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V311, 0x02);
	put_str(&p, "x");
	put_u8(&p, 0);
	CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);

	/* A username without its flag is trailing data too. */
	struct buf q = {.n = 0};
	connect_head(&q, MQTT_V5, 0x02);
	put_str(&q, "x");
	put_str(&q, "user");
	CHECK_EQ(connect_rc(&q), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_truncated_at_any_byte_is_malformed)
{
	struct buf p = {.n = 0};
	connect_head(&p, MQTT_V5, 0xc4);
	put_str(&p, "id");
	put_empty_props(&p);
	put_str(&p, "w");
	put_str(&p, "pl");
	put_str(&p, "u");
	put_str(&p, "p");
	struct mqtt_connect c;

	CHECK_EQ(mqtt_decode_connect(p.b, p.n, &c), MQTT_RC_SUCCESS);
	for (size_t n = 0; n < p.n; n++)
		CHECK_EQ(mqtt_decode_connect(p.b, n, &c),
			 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_v5_property_not_allowed_is_malformed)
{
	struct buf p = {.n = 0}, cp = {.n = 0};
	put_str(&p, "MQTT");
	put_u8(&p, 5);
	put_u8(&p, 0);
	put_u16(&p, 0);
	put_u8(&cp, MQTT_PROP_WILL_DELAY_INTERVAL), put_u32(&cp, 1);
	put_props(&p, &cp);
	put_str(&p, "x");
	CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_v5_will_property_not_allowed_is_malformed)
{
	struct buf p = {.n = 0}, wp = {.n = 0};
	connect_head(&p, MQTT_V5, 0x04);
	put_str(&p, "x");
	put_u8(&wp, MQTT_PROP_SESSION_EXPIRY_INTERVAL), put_u32(&wp, 1);
	put_props(&p, &wp);
	put_str(&p, "w");
	put_str(&p, "");
	CHECK_EQ(connect_rc(&p), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_connect_encode_round_trips_all_versions)
{
	for (uint8_t v = MQTT_V31; v <= MQTT_V5; v++) {
		struct buf cp = {.n = 0}, block = {.n = 0};
		put_u8(&cp, MQTT_PROP_RECEIVE_MAXIMUM), put_u16(&cp, 7);
		put_u8(&cp, MQTT_PROP_USER_PROPERTY), put_str(&cp, "a");
		put_str(&cp, "b");
		put_props(&block, &cp);

		struct mqtt_connect in = {0}, out;
		size_t used;
		in.version = v;
		in.clean_start = true;
		in.keepalive_s = 1234;
		in.client_id = (struct mqtt_bytes){(const uint8_t *)"cid", 3};
		in.has_will = in.has_username = in.has_password = true;
		in.will.qos = 1;
		in.will.retain = true;
		in.will.topic = (struct mqtt_bytes){(const uint8_t *)"w/t", 3};
		in.will.payload = (struct mqtt_bytes){(const uint8_t *)"\0", 1};
		in.username = (struct mqtt_bytes){(const uint8_t *)"u", 1};
		in.password = (struct mqtt_bytes){(const uint8_t *)"", 0};
		if (v == MQTT_V5) {
			CHECK_EQ(mqtt_props_decode(block.b, block.n,
						   MQTT_PROPS_CONNECT,
						   &in.props, &used),
				 MQTT_RC_SUCCESS);
			in.will.props.present =
				MQTT_PROP_BIT(MQTT_PROP_WILL_DELAY_INTERVAL);
			in.will.props.will_delay_interval = 3;
		}

		uint8_t b[256];
		struct mqtt_fixed_header fh;
		size_t n = mqtt_encode_connect(b, sizeof(b), &in);
		CHECK(n > 0);
		CHECK_EQ(mqtt_frame_parse(b, n, &fh), MQTT_FRAME_OK);
		CHECK_EQ(fh.type, MQTT_CONNECT);
		CHECK_EQ(fh.header_len + fh.remaining_len, n);
		CHECK_EQ(mqtt_decode_connect(b + fh.header_len,
					     fh.remaining_len, &out),
			 MQTT_RC_SUCCESS);
		CHECK_EQ(out.version, v);
		CHECK(out.clean_start);
		CHECK_EQ(out.keepalive_s, 1234);
		CHECK(bytes_same(out.client_id, in.client_id));
		CHECK(out.has_will && out.has_username && out.has_password);
		CHECK_EQ(out.will.qos, 1);
		CHECK(out.will.retain);
		CHECK(bytes_same(out.will.topic, in.will.topic));
		CHECK(bytes_same(out.will.payload, in.will.payload));
		CHECK(bytes_same(out.username, in.username));
		CHECK(bytes_same(out.password, in.password));
		CHECK_EQ(out.props.present, in.props.present);
		CHECK_EQ(out.props.receive_maximum, in.props.receive_maximum);
		CHECK_EQ(out.props.user_property_count,
			 in.props.user_property_count);
		CHECK_EQ(out.will.props.will_delay_interval,
			 in.will.props.will_delay_interval);
		for (size_t cap = 0; cap < n; cap++)
			CHECK_EQ(mqtt_encode_connect(b, cap, &in), 0);
	}
}

/* ---- PUBLISH ----------------------------------------------------------- */

static enum mqtt_rc publish_rc(uint8_t flags, const struct buf *p,
			       uint8_t version)
{
	struct mqtt_publish pub;
	return mqtt_decode_publish(flags, p->b, p->n, version, &pub);
}

TEST(codec_publish_qos0_decodes_topic_and_payload)
{
	struct buf p = {.n = 0};
	put_str(&p, "a/b");
	put(&p, "hello", 5);
	struct mqtt_publish pub;

	CHECK_EQ(mqtt_decode_publish(0x1, p.b, p.n, MQTT_V311, &pub),
		 MQTT_RC_SUCCESS);
	CHECK(bytes_eq(pub.topic, "a/b"));
	CHECK(bytes_eq(pub.payload, "hello"));
	CHECK_EQ(pub.qos, 0);
	CHECK(pub.retain && !pub.dup);
	CHECK_EQ(pub.packet_id, 0);
}

TEST(codec_publish_qos1_v5_decodes_packet_id_and_props)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_str(&p, "t");
	put_u16(&p, 77);
	put_u8(&pp, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL), put_u32(&pp, 9);
	put_props(&p, &pp);
	put(&p, "x", 1);
	struct mqtt_publish pub;

	CHECK_EQ(mqtt_decode_publish(0xa, p.b, p.n, MQTT_V5, &pub),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(pub.qos, 1);
	CHECK(pub.dup);
	CHECK_EQ(pub.packet_id, 77);
	CHECK_EQ(pub.props.message_expiry_interval, 9);
	CHECK(bytes_eq(pub.payload, "x"));
}

TEST(codec_publish_empty_payload_is_allowed)
{
	struct buf p = {.n = 0};
	put_str(&p, "t");
	struct mqtt_publish pub;

	CHECK_EQ(mqtt_decode_publish(0, p.b, p.n, MQTT_V311, &pub),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(pub.payload.len, 0);
	put_empty_props(&p);
	CHECK_EQ(mqtt_decode_publish(0, p.b, p.n, MQTT_V5, &pub),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(pub.payload.len, 0);
}

TEST(codec_publish_packet_id_zero_is_protocol_error)
{
	struct buf p = {.n = 0};
	put_str(&p, "t");
	put_u16(&p, 0);
	CHECK_EQ(publish_rc(0x2, &p, MQTT_V311), MQTT_RC_PROTOCOL_ERROR);
	CHECK_EQ(publish_rc(0x4, &p, MQTT_V311), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_publish_dup_with_qos0_is_malformed)
{
	struct buf p = {.n = 0};
	put_str(&p, "t");
	CHECK_EQ(publish_rc(0x8, &p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_publish_qos3_is_malformed)
{
	struct buf p = {.n = 0};
	put_str(&p, "t");
	put_u16(&p, 1);
	CHECK_EQ(publish_rc(0x6, &p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_publish_wildcard_topic_is_protocol_error)
{
	const char *topics[] = {"a/+", "#", "a+b"};
	for (size_t i = 0; i < ARRAY_LEN(topics); i++) {
		struct buf p = {.n = 0};
		put_str(&p, topics[i]);
		CHECK_EQ(publish_rc(0, &p, MQTT_V311),
			 MQTT_RC_PROTOCOL_ERROR);
		put_empty_props(&p);
		CHECK_EQ(publish_rc(0, &p, MQTT_V5), MQTT_RC_PROTOCOL_ERROR);
	}
}

TEST(codec_publish_invalid_utf8_topic_is_malformed)
{
	struct buf p = {.n = 0};
	put_str(&p, "a\xc0\xaf");
	CHECK_EQ(publish_rc(0, &p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_publish_empty_topic_v311_is_malformed)
{
	struct buf p = {.n = 0};
	put_str(&p, "");
	put(&p, "x", 1);
	CHECK_EQ(publish_rc(0, &p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_publish_empty_topic_v5_without_alias_is_protocol_error)
{
	struct buf p = {.n = 0};
	put_str(&p, "");
	put_empty_props(&p);
	CHECK_EQ(publish_rc(0, &p, MQTT_V5), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_publish_empty_topic_v5_with_alias_is_accepted)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_str(&p, "");
	put_u8(&pp, MQTT_PROP_TOPIC_ALIAS), put_u16(&pp, 4);
	put_props(&p, &pp);
	struct mqtt_publish pub;

	CHECK_EQ(mqtt_decode_publish(0, p.b, p.n, MQTT_V5, &pub),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(pub.topic.len, 0);
	CHECK_EQ(pub.props.topic_alias, 4);
}

TEST(codec_publish_subscription_identifier_from_client_is_protocol_error)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_str(&p, "t");
	put_u8(&pp, MQTT_PROP_SUBSCRIPTION_IDENTIFIER), put_varint(&pp, 1);
	put_props(&p, &pp);
	CHECK_EQ(publish_rc(0, &p, MQTT_V5), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_publish_property_not_allowed_is_malformed)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_str(&p, "t");
	put_u8(&pp, MQTT_PROP_RECEIVE_MAXIMUM), put_u16(&pp, 1);
	put_props(&p, &pp);
	CHECK_EQ(publish_rc(0, &p, MQTT_V5), MQTT_RC_MALFORMED_PACKET);
}

static enum mqtt_rc publish_with_format(const void *payload, size_t n)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_str(&p, "t");
	put_u8(&pp, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR), put_u8(&pp, 1);
	put_props(&p, &pp);
	put(&p, payload, n);
	return publish_rc(0, &p, MQTT_V5);
}

TEST(codec_publish_payload_format_violation_is_payload_format_invalid)
{
	CHECK_EQ(publish_with_format("ok \xff", 4),
		 MQTT_RC_PAYLOAD_FORMAT_INVALID);
	CHECK_EQ(publish_with_format("0123456789abcdef\xed\xa0\x80", 19),
		 MQTT_RC_PAYLOAD_FORMAT_INVALID);
}

TEST(codec_publish_payload_format_allows_control_characters)
{
	/* Payloads are plain Unicode UTF-8, not MQTT strings. */
	CHECK_EQ(publish_with_format("{\"a\":1}\n\t\0", 10), MQTT_RC_SUCCESS);
	CHECK_EQ(publish_with_format("caf\xc3\xa9", 5), MQTT_RC_SUCCESS);
}

TEST(codec_publish_truncated_is_malformed)
{
	struct buf p = {.n = 0};
	put_str(&p, "topic");
	put_u16(&p, 5);
	struct buf pp = {.n = 0};
	put_u8(&pp, MQTT_PROP_CONTENT_TYPE), put_str(&pp, "x");
	put_props(&p, &pp);
	struct mqtt_publish pub;

	CHECK_EQ(mqtt_decode_publish(0x2, p.b, p.n, MQTT_V5, &pub),
		 MQTT_RC_SUCCESS);
	for (size_t n = 0; n < p.n; n++)
		CHECK_EQ(mqtt_decode_publish(0x2, p.b, n, MQTT_V5, &pub),
			 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_publish_encode_round_trips_versions_and_qos)
{
	for (uint8_t v = MQTT_V311; v <= MQTT_V5; v++) {
		for (uint8_t qos = 0; qos <= 2; qos++) {
			struct mqtt_publish in = {0}, out;
			struct mqtt_props props = {0};
			in.topic = (struct mqtt_bytes){(const uint8_t *)"a/b", 3};
			in.payload = (struct mqtt_bytes){(const uint8_t *)"pl", 2};
			in.qos = qos;
			in.retain = true;
			in.dup = qos > 0;
			in.packet_id = qos ? 513 : 0;
			props.present = MQTT_PROP_BIT(MQTT_PROP_CONTENT_TYPE);
			props.content_type =
				(struct mqtt_bytes){(const uint8_t *)"ct", 2};

			uint8_t b[64];
			struct mqtt_fixed_header fh;
			size_t n = mqtt_encode_publish(b, sizeof(b), v, &in,
						       &props);
			CHECK(n > 0);
			CHECK_EQ(mqtt_frame_parse(b, n, &fh), MQTT_FRAME_OK);
			CHECK_EQ(fh.header_len + fh.remaining_len, n);
			CHECK_EQ(mqtt_decode_publish(fh.flags,
						     b + fh.header_len,
						     fh.remaining_len, v, &out),
				 MQTT_RC_SUCCESS);
			CHECK(bytes_same(out.topic, in.topic));
			CHECK(bytes_same(out.payload, in.payload));
			CHECK_EQ(out.qos, qos);
			CHECK(out.retain);
			CHECK_EQ(out.dup, in.dup);
			CHECK_EQ(out.packet_id, in.packet_id);
			if (v == MQTT_V5)
				CHECK(bytes_eq(out.props.content_type, "ct"));
			else
				CHECK_EQ(out.props.present, 0);
			for (size_t cap = 0; cap < n; cap++)
				CHECK_EQ(mqtt_encode_publish(b, cap, v, &in,
							     &props), 0);
		}
	}
}

TEST(codec_publish_encode_v311_qos0_exact_bytes)
{
	struct mqtt_publish in = {0};
	in.topic = (struct mqtt_bytes){(const uint8_t *)"t", 1};
	in.payload = (struct mqtt_bytes){(const uint8_t *)"x", 1};
	const uint8_t want[] = {0x30, 4, 0, 1, 't', 'x'};
	uint8_t b[16];

	CHECK_EQ(mqtt_encode_publish(b, sizeof(b), MQTT_V311, &in, NULL),
		 sizeof(want));
	CHECK(memcmp(b, want, sizeof(want)) == 0);
}

/* ---- PUBACK / PUBREC / PUBREL / PUBCOMP --------------------------------- */

TEST(codec_ack_v311_decodes_packet_id)
{
	const uint8_t b[] = {0x12, 0x34};
	struct mqtt_ack ack;

	CHECK_EQ(mqtt_decode_ack(b, 2, MQTT_V311, &ack), MQTT_RC_SUCCESS);
	CHECK_EQ(ack.packet_id, 0x1234);
	CHECK_EQ(ack.reason, 0);
}

TEST(codec_ack_v311_length_other_than_two_is_malformed)
{
	const uint8_t b[] = {0x00, 0x01, 0x00, 0x00};
	struct mqtt_ack ack;

	CHECK_EQ(mqtt_decode_ack(b, 0, MQTT_V311, &ack),
		 MQTT_RC_MALFORMED_PACKET);
	CHECK_EQ(mqtt_decode_ack(b, 1, MQTT_V311, &ack),
		 MQTT_RC_MALFORMED_PACKET);
	CHECK_EQ(mqtt_decode_ack(b, 3, MQTT_V311, &ack),
		 MQTT_RC_MALFORMED_PACKET);
	CHECK_EQ(mqtt_decode_ack(b, 4, MQTT_V311, &ack),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_ack_packet_id_zero_is_protocol_error)
{
	const uint8_t b[] = {0x00, 0x00};
	struct mqtt_ack ack;

	CHECK_EQ(mqtt_decode_ack(b, 2, MQTT_V311, &ack),
		 MQTT_RC_PROTOCOL_ERROR);
	CHECK_EQ(mqtt_decode_ack(b, 2, MQTT_V5, &ack), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_ack_v5_short_and_long_forms_decode)
{
	struct mqtt_ack ack;
	const uint8_t two[] = {0, 9};
	const uint8_t three[] = {0, 9, MQTT_RC_NO_MATCHING_SUBSCRIBERS};
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u16(&p, 9);
	put_u8(&p, MQTT_RC_QUOTA_EXCEEDED);
	put_u8(&pp, MQTT_PROP_REASON_STRING), put_str(&pp, "full");
	put_props(&p, &pp);

	CHECK_EQ(mqtt_decode_ack(two, 2, MQTT_V5, &ack), MQTT_RC_SUCCESS);
	CHECK_EQ(ack.reason, 0);
	CHECK_EQ(mqtt_decode_ack(three, 3, MQTT_V5, &ack), MQTT_RC_SUCCESS);
	CHECK_EQ(ack.reason, MQTT_RC_NO_MATCHING_SUBSCRIBERS);
	CHECK_EQ(mqtt_decode_ack(p.b, p.n, MQTT_V5, &ack), MQTT_RC_SUCCESS);
	CHECK_EQ(ack.reason, MQTT_RC_QUOTA_EXCEEDED);
	CHECK(bytes_eq(ack.props.reason_string, "full"));
}

TEST(codec_ack_id_answers_as_the_full_decoder)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u16(&p, 9);
	put_u8(&p, MQTT_RC_QUOTA_EXCEEDED);
	put_u8(&pp, MQTT_PROP_REASON_STRING), put_str(&pp, "full");
	put_props(&p, &pp);
	const uint8_t two[] = {0, 9}, zero[] = {0, 0}, one[] = {0};
	const uint8_t three[] = {0, 9, MQTT_RC_NO_MATCHING_SUBSCRIBERS};
	const uint8_t unknown[] = {0, 9, 0x81};
	const uint8_t bad_props[] = {0, 9, 0, 3, 0x01};
	const struct {
		const uint8_t *b;
		size_t n;
	} in[] = {{two, 2}, {zero, 2}, {one, 1}, {three, 3}, {unknown, 3},
		  {bad_props, 5}, {p.b, p.n}};
	const uint8_t versions[] = {MQTT_V311, MQTT_V5};
	for (size_t v = 0; v < ARRAY_LEN(versions); v++) {
		for (size_t i = 0; i < ARRAY_LEN(in); i++) {
			struct mqtt_ack ack;
			uint16_t id;
			uint8_t reason;
			enum mqtt_rc rc = mqtt_decode_ack(in[i].b, in[i].n,
							  versions[v], &ack);
			CHECK_EQ(mqtt_decode_ack_id(in[i].b, in[i].n,
						    versions[v], &id, &reason),
				 rc);
			if (rc == MQTT_RC_SUCCESS) {
				CHECK_EQ(id, ack.packet_id);
				CHECK_EQ(reason, ack.reason);
			}
		}
	}
}

TEST(codec_ack_v5_reason_no_ack_may_carry_is_protocol_error)
{
	const uint8_t bad[] = {0x01, 0x04, 0x81, 0x82, 0x8e, 0x93, 0xff};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		const uint8_t b[] = {0, 1, bad[i]};
		struct mqtt_ack ack;
		CHECK_EQ(mqtt_decode_ack(b, 3, MQTT_V5, &ack),
			 MQTT_RC_PROTOCOL_ERROR);
	}
}

TEST(codec_ack_v5_trailing_bytes_after_props_are_malformed)
{
	const uint8_t b[] = {0, 1, 0, 0, 0xaa};
	struct mqtt_ack ack;

	CHECK_EQ(mqtt_decode_ack(b, sizeof(b), MQTT_V5, &ack),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_ack_v5_property_not_allowed_is_malformed)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u16(&p, 1);
	put_u8(&p, 0);
	put_u8(&pp, MQTT_PROP_TOPIC_ALIAS), put_u16(&pp, 1);
	put_props(&p, &pp);
	struct mqtt_ack ack;

	CHECK_EQ(mqtt_decode_ack(p.b, p.n, MQTT_V5, &ack),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_ack_encode_forms_per_version)
{
	uint8_t b[32];
	struct mqtt_props props = {0};
	props.present = MQTT_PROP_BIT(MQTT_PROP_REASON_STRING);
	props.reason_string = (struct mqtt_bytes){(const uint8_t *)"r", 1};

	const uint8_t v311[] = {0x62, 2, 0x01, 0x02};
	CHECK_EQ(mqtt_encode_ack(b, sizeof(b), MQTT_PUBREL, MQTT_V311, 0x102,
				 0x92, &props), 4);
	CHECK(memcmp(b, v311, 4) == 0);

	const uint8_t short5[] = {0x40, 2, 0, 7};
	CHECK_EQ(mqtt_encode_ack(b, sizeof(b), MQTT_PUBACK, MQTT_V5, 7, 0,
				 NULL), 4);
	CHECK(memcmp(b, short5, 4) == 0);

	const uint8_t reason5[] = {0x50, 3, 0, 7, 0x10};
	CHECK_EQ(mqtt_encode_ack(b, sizeof(b), MQTT_PUBREC, MQTT_V5, 7, 0x10,
				 NULL), 5);
	CHECK(memcmp(b, reason5, 5) == 0);

	const uint8_t props5[] = {0x70, 8, 0, 7, 0, 4, 0x1f, 0, 1, 'r'};
	CHECK_EQ(mqtt_encode_ack(b, sizeof(b), MQTT_PUBCOMP, MQTT_V5, 7, 0,
				 &props), sizeof(props5));
	CHECK(memcmp(b, props5, sizeof(props5)) == 0);

	for (size_t cap = 0; cap < sizeof(props5); cap++)
		CHECK_EQ(mqtt_encode_ack(b, cap, MQTT_PUBCOMP, MQTT_V5, 7, 0,
					 &props), 0);
}

/* ---- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------- */

static enum mqtt_rc subscribe_rc(const struct buf *p, uint8_t version)
{
	struct mqtt_subscribe sub;
	return mqtt_decode_subscribe(p->b, p->n, version, &sub);
}

/* A SUBSCRIBE body with one entry. */
static void sub_one(struct buf *p, uint8_t version, const char *filter,
		    uint8_t opts)
{
	put_u16(p, 1);
	if (version == MQTT_V5)
		put_empty_props(p);
	put_str(p, filter);
	put_u8(p, opts);
}

TEST(codec_subscribe_v311_decodes_entries)
{
	struct buf p = {.n = 0};
	put_u16(&p, 10);
	put_str(&p, "a/#");
	put_u8(&p, 1);
	put_str(&p, "b/+");
	put_u8(&p, 2);
	struct mqtt_subscribe sub;
	struct mqtt_sub_entry e;
	uint32_t cursor = 0;

	CHECK_EQ(mqtt_decode_subscribe(p.b, p.n, MQTT_V311, &sub),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(sub.packet_id, 10);
	CHECK_EQ(sub.count, 2);
	CHECK(mqtt_subscribe_next(&sub, &cursor, &e));
	CHECK(bytes_eq(e.filter, "a/#"));
	CHECK_EQ(e.qos, 1);
	CHECK(mqtt_subscribe_next(&sub, &cursor, &e));
	CHECK(bytes_eq(e.filter, "b/+"));
	CHECK_EQ(e.qos, 2);
	CHECK(!mqtt_subscribe_next(&sub, &cursor, &e));
}

TEST(codec_subscribe_v5_decodes_options_and_props)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u16(&p, 3);
	put_u8(&pp, MQTT_PROP_SUBSCRIPTION_IDENTIFIER), put_varint(&pp, 1000);
	put_u8(&pp, MQTT_PROP_USER_PROPERTY), put_str(&pp, "k"), put_str(&pp, "v");
	put_props(&p, &pp);
	put_str(&p, "x/y");
	put_u8(&p, 0x2d); /* RH 2, RAP, no local, QoS 1 */
	struct mqtt_subscribe sub;
	struct mqtt_sub_entry e;
	uint32_t cursor = 0;

	CHECK_EQ(mqtt_decode_subscribe(p.b, p.n, MQTT_V5, &sub),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(sub.props.subscription_identifier, 1000);
	CHECK_EQ(sub.props.user_property_count, 1);
	CHECK_EQ(sub.count, 1);
	CHECK(mqtt_subscribe_next(&sub, &cursor, &e));
	CHECK_EQ(e.qos, 1);
	CHECK(e.no_local);
	CHECK(e.retain_as_published);
	CHECK_EQ(e.retain_handling, 2);
}

TEST(codec_subscribe_without_entries_is_malformed_like_mosquitto)
{
	struct buf p = {.n = 0};
	put_u16(&p, 1);
	CHECK_EQ(subscribe_rc(&p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
	put_empty_props(&p);
	CHECK_EQ(subscribe_rc(&p, MQTT_V5), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_subscribe_packet_id_zero_is_malformed)
{
	struct buf p = {.n = 0};
	put_u16(&p, 0);
	put_str(&p, "a");
	put_u8(&p, 0);
	CHECK_EQ(subscribe_rc(&p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_subscribe_v311_reserved_option_bits_are_malformed)
{
	for (int bit = 2; bit < 8; bit++) {
		struct buf p = {.n = 0};
		sub_one(&p, MQTT_V311, "a", (uint8_t)(1u << bit));
		CHECK_EQ(subscribe_rc(&p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_subscribe_qos3_is_malformed)
{
	for (uint8_t v = MQTT_V311; v <= MQTT_V5; v++) {
		struct buf p = {.n = 0};
		sub_one(&p, v, "a", 3);
		CHECK_EQ(subscribe_rc(&p, v), MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_subscribe_v5_reserved_option_bits_are_malformed)
{
	for (int bit = 6; bit < 8; bit++) {
		struct buf p = {.n = 0};
		sub_one(&p, MQTT_V5, "a", (uint8_t)(1u << bit));
		CHECK_EQ(subscribe_rc(&p, MQTT_V5), MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_subscribe_v5_retain_handling_3_is_protocol_error)
{
	struct buf p = {.n = 0};
	sub_one(&p, MQTT_V5, "a", 0x30);
	CHECK_EQ(subscribe_rc(&p, MQTT_V5), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_subscribe_invalid_filter_is_malformed)
{
	const char *bad[] = {"", "a+", "#/a", "a\xc0\x80", "$share/g",
			     "$share//a"};
	for (uint8_t v = MQTT_V311; v <= MQTT_V5; v++) {
		for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
			struct buf p = {.n = 0};
			sub_one(&p, v, bad[i], 0);
			CHECK_EQ(subscribe_rc(&p, v), MQTT_RC_MALFORMED_PACKET);
		}
	}
}

TEST(codec_subscribe_v5_no_local_on_shared_is_protocol_error)
{
	struct buf p = {.n = 0};
	sub_one(&p, MQTT_V5, "$share/g/a", 0x04);
	CHECK_EQ(subscribe_rc(&p, MQTT_V5), MQTT_RC_PROTOCOL_ERROR);
	struct buf q = {.n = 0};
	sub_one(&q, MQTT_V5, "$share/g/a", 0x01);
	CHECK_EQ(subscribe_rc(&q, MQTT_V5), MQTT_RC_SUCCESS);
}

TEST(codec_subscribe_v5_subscription_identifier_zero_is_protocol_error)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u16(&p, 1);
	put_u8(&pp, MQTT_PROP_SUBSCRIPTION_IDENTIFIER), put_varint(&pp, 0);
	put_props(&p, &pp);
	put_str(&p, "a");
	put_u8(&p, 0);
	CHECK_EQ(subscribe_rc(&p, MQTT_V5), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_subscribe_missing_options_byte_is_malformed)
{
	struct buf p = {.n = 0};
	put_u16(&p, 1);
	put_str(&p, "a");
	CHECK_EQ(subscribe_rc(&p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
	put_u8(&p, 0);
	put_u8(&p, 0); /* half a length of a second entry */
	CHECK_EQ(subscribe_rc(&p, MQTT_V311), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_subscribe_encode_round_trips)
{
	struct mqtt_sub_entry in[3] = {
		{{(const uint8_t *)"a/#", 3}, 2, false, false, 0},
		{{(const uint8_t *)"$share/g/x", 10}, 1, false, true, 1},
		{{(const uint8_t *)"+", 1}, 0, true, false, 2},
	};
	struct mqtt_props props = {0};
	props.present = MQTT_PROP_BIT(MQTT_PROP_SUBSCRIPTION_IDENTIFIER);
	props.subscription_identifier = MQTT_VARINT_MAX;

	uint8_t b[128];
	struct mqtt_fixed_header fh;
	struct mqtt_subscribe sub;
	size_t n = mqtt_encode_subscribe(b, sizeof(b), MQTT_V5, 42, in, 3,
					 &props);
	CHECK(n > 0);
	CHECK_EQ(mqtt_frame_parse(b, n, &fh), MQTT_FRAME_OK);
	CHECK_EQ(b[0], 0x82);
	CHECK_EQ(mqtt_decode_subscribe(b + fh.header_len, fh.remaining_len,
				       MQTT_V5, &sub), MQTT_RC_SUCCESS);
	CHECK_EQ(sub.packet_id, 42);
	CHECK_EQ(sub.count, 3);
	CHECK_EQ(sub.props.subscription_identifier, MQTT_VARINT_MAX);
	uint32_t cursor = 0;
	struct mqtt_sub_entry e;
	for (size_t i = 0; i < 3; i++) {
		CHECK(mqtt_subscribe_next(&sub, &cursor, &e));
		CHECK(bytes_same(e.filter, in[i].filter));
		CHECK_EQ(e.qos, in[i].qos);
		CHECK_EQ(e.no_local, in[i].no_local);
		CHECK_EQ(e.retain_as_published, in[i].retain_as_published);
		CHECK_EQ(e.retain_handling, in[i].retain_handling);
	}
	for (size_t cap = 0; cap < n; cap++)
		CHECK_EQ(mqtt_encode_subscribe(b, cap, MQTT_V5, 42, in, 3,
					       &props), 0);

	/* 3.1.1 carries only the QoS of each entry. */
	n = mqtt_encode_subscribe(b, sizeof(b), MQTT_V311, 42, in, 1, &props);
	const uint8_t want[] = {0x82, 8, 0, 42, 0, 3, 'a', '/', '#', 2};
	CHECK_EQ(n, sizeof(want));
	CHECK(memcmp(b, want, sizeof(want)) == 0);
}

TEST(codec_unsubscribe_decodes_filters)
{
	struct buf p = {.n = 0};
	put_u16(&p, 5);
	put_empty_props(&p);
	put_str(&p, "a/+");
	put_str(&p, "$share/g/#");
	struct mqtt_subscribe u;
	struct mqtt_bytes f;
	uint32_t cursor = 0;

	CHECK_EQ(mqtt_decode_unsubscribe(p.b, p.n, MQTT_V5, &u),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(u.packet_id, 5);
	CHECK_EQ(u.count, 2);
	CHECK(mqtt_unsubscribe_next(&u, &cursor, &f));
	CHECK(bytes_eq(f, "a/+"));
	CHECK(mqtt_unsubscribe_next(&u, &cursor, &f));
	CHECK(bytes_eq(f, "$share/g/#"));
	CHECK(!mqtt_unsubscribe_next(&u, &cursor, &f));
}

TEST(codec_unsubscribe_without_entries_is_malformed)
{
	struct buf p = {.n = 0};
	struct mqtt_subscribe u;
	put_u16(&p, 5);
	CHECK_EQ(mqtt_decode_unsubscribe(p.b, p.n, MQTT_V311, &u),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_unsubscribe_packet_id_zero_is_malformed)
{
	struct buf p = {.n = 0};
	struct mqtt_subscribe u;
	put_u16(&p, 0);
	put_str(&p, "a");
	CHECK_EQ(mqtt_decode_unsubscribe(p.b, p.n, MQTT_V311, &u),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_unsubscribe_invalid_filter_is_malformed)
{
	const char *bad[] = {"", "a#", "a\xff"};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		struct buf p = {.n = 0};
		struct mqtt_subscribe u;
		put_u16(&p, 1);
		put_str(&p, bad[i]);
		CHECK_EQ(mqtt_decode_unsubscribe(p.b, p.n, MQTT_V311, &u),
			 MQTT_RC_MALFORMED_PACKET);
	}
}

TEST(codec_unsubscribe_v5_subscription_identifier_is_malformed)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	struct mqtt_subscribe u;
	put_u16(&p, 1);
	put_u8(&pp, MQTT_PROP_SUBSCRIPTION_IDENTIFIER), put_varint(&pp, 1);
	put_props(&p, &pp);
	put_str(&p, "a");
	CHECK_EQ(mqtt_decode_unsubscribe(p.b, p.n, MQTT_V5, &u),
		 MQTT_RC_MALFORMED_PACKET);
}

/* ---- DISCONNECT / AUTH ---------------------------------------------------- */

TEST(codec_disconnect_v311_body_must_be_empty)
{
	const uint8_t b[] = {0};
	struct mqtt_disconnect d;

	CHECK_EQ(mqtt_decode_disconnect(NULL, 0, MQTT_V311, &d),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(mqtt_decode_disconnect(b, 1, MQTT_V311, &d),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_disconnect_v5_optional_reason_and_props_decode)
{
	struct mqtt_disconnect d;
	const uint8_t one[] = {MQTT_RC_DISCONNECT_WITH_WILL};
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u8(&p, MQTT_RC_SERVER_MOVED);
	put_u8(&pp, MQTT_PROP_SERVER_REFERENCE), put_str(&pp, "h:1");
	put_u8(&pp, MQTT_PROP_SESSION_EXPIRY_INTERVAL), put_u32(&pp, 0);
	put_props(&p, &pp);

	CHECK_EQ(mqtt_decode_disconnect(NULL, 0, MQTT_V5, &d), MQTT_RC_SUCCESS);
	CHECK_EQ(d.reason, 0);
	CHECK_EQ(mqtt_decode_disconnect(one, 1, MQTT_V5, &d), MQTT_RC_SUCCESS);
	CHECK_EQ(d.reason, MQTT_RC_DISCONNECT_WITH_WILL);
	CHECK_EQ(mqtt_decode_disconnect(p.b, p.n, MQTT_V5, &d),
		 MQTT_RC_SUCCESS);
	CHECK_EQ(d.reason, MQTT_RC_SERVER_MOVED);
	CHECK(bytes_eq(d.props.server_reference, "h:1"));
}

TEST(codec_disconnect_v5_trailing_bytes_are_malformed)
{
	const uint8_t b[] = {0, 0, 1};
	struct mqtt_disconnect d;

	CHECK_EQ(mqtt_decode_disconnect(b, sizeof(b), MQTT_V5, &d),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_disconnect_v5_property_not_allowed_is_malformed)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u8(&p, 0);
	put_u8(&pp, MQTT_PROP_TOPIC_ALIAS), put_u16(&pp, 1);
	put_props(&p, &pp);
	struct mqtt_disconnect d;

	CHECK_EQ(mqtt_decode_disconnect(p.b, p.n, MQTT_V5, &d),
		 MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_disconnect_encode_forms)
{
	uint8_t b[32];
	struct mqtt_props props = {0};
	props.present = MQTT_PROP_BIT(MQTT_PROP_SESSION_EXPIRY_INTERVAL);
	props.session_expiry_interval = 1;

	CHECK_EQ(mqtt_encode_disconnect(b, sizeof(b), MQTT_V311, 0, NULL), 0);
	const uint8_t empty[] = {0xe0, 0};
	CHECK_EQ(mqtt_encode_disconnect(b, sizeof(b), MQTT_V5, 0, NULL), 2);
	CHECK(memcmp(b, empty, 2) == 0);
	const uint8_t reason[] = {0xe0, 1, 0x8b};
	CHECK_EQ(mqtt_encode_disconnect(b, sizeof(b), MQTT_V5, 0x8b, NULL), 3);
	CHECK(memcmp(b, reason, 3) == 0);
	const uint8_t full[] = {0xe0, 7, 0, 5, 0x11, 0, 0, 0, 1};
	CHECK_EQ(mqtt_encode_disconnect(b, sizeof(b), MQTT_V5, 0, &props), 9);
	CHECK(memcmp(b, full, 9) == 0);
	CHECK_EQ(mqtt_encode_disconnect(b, 8, MQTT_V5, 0, &props), 0);
}

TEST(codec_auth_empty_body_is_success_reason)
{
	struct mqtt_disconnect a;
	CHECK_EQ(mqtt_decode_auth(NULL, 0, &a), MQTT_RC_SUCCESS);
	CHECK_EQ(a.reason, MQTT_RC_SUCCESS);
}

TEST(codec_auth_reason_without_props_is_malformed)
{
	const uint8_t b[] = {MQTT_RC_CONTINUE_AUTH};
	struct mqtt_disconnect a;
	CHECK_EQ(mqtt_decode_auth(b, 1, &a), MQTT_RC_MALFORMED_PACKET);
}

TEST(codec_auth_continue_with_method_and_data_decodes)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u8(&p, MQTT_RC_CONTINUE_AUTH);
	put_u8(&pp, MQTT_PROP_AUTHENTICATION_METHOD), put_str(&pp, "SCRAM");
	put_u8(&pp, MQTT_PROP_AUTHENTICATION_DATA), put_bin(&pp, "\x01\x02", 2);
	put_props(&p, &pp);
	struct mqtt_disconnect a;

	CHECK_EQ(mqtt_decode_auth(p.b, p.n, &a), MQTT_RC_SUCCESS);
	CHECK_EQ(a.reason, MQTT_RC_CONTINUE_AUTH);
	CHECK(bytes_eq(a.props.authentication_method, "SCRAM"));
	CHECK_EQ(a.props.authentication_data.len, 2);
}

TEST(codec_auth_reason_outside_auth_codes_is_protocol_error)
{
	const uint8_t b[] = {MQTT_RC_NOT_AUTHORIZED, 0};
	struct mqtt_disconnect a;
	CHECK_EQ(mqtt_decode_auth(b, 2, &a), MQTT_RC_PROTOCOL_ERROR);
}

TEST(codec_auth_property_not_allowed_is_malformed)
{
	struct buf p = {.n = 0}, pp = {.n = 0};
	put_u8(&p, MQTT_RC_REAUTHENTICATE);
	put_u8(&pp, MQTT_PROP_SESSION_EXPIRY_INTERVAL), put_u32(&pp, 1);
	put_props(&p, &pp);
	struct mqtt_disconnect a;
	CHECK_EQ(mqtt_decode_auth(p.b, p.n, &a), MQTT_RC_MALFORMED_PACKET);
}

/* ---- other encoders ------------------------------------------------------ */

TEST(codec_varint_encode_boundaries_round_trip_through_frame_parse)
{
	const uint32_t values[] = {0, 127, 128, 16383, 16384, 2097151, 2097152,
				   MQTT_VARINT_MAX};
	for (size_t i = 0; i < ARRAY_LEN(values); i++) {
		uint8_t b[8] = {0xc0};
		size_t n = mqtt_varint_encode(b + 1, values[i]);
		struct mqtt_fixed_header fh;
		CHECK_EQ(n, mqtt_varint_size(values[i]));
		CHECK_EQ(n, i / 2 + 1);
		CHECK_EQ(mqtt_frame_parse(b, n + 1, &fh), MQTT_FRAME_OK);
		CHECK_EQ(fh.remaining_len, values[i]);
		CHECK_EQ(fh.header_len, n + 1);
	}
}

TEST(codec_connack_encode_v311_and_v5_bytes)
{
	uint8_t b[32];
	const uint8_t v311[] = {0x20, 2, 1, MQTT_V3_CONNACK_BAD_CREDENTIALS};
	CHECK_EQ(mqtt_encode_connack(b, sizeof(b), MQTT_V311, true,
				     MQTT_V3_CONNACK_BAD_CREDENTIALS, NULL), 4);
	CHECK(memcmp(b, v311, 4) == 0);

	const uint8_t v5[] = {0x20, 3, 0, 0, 0};
	CHECK_EQ(mqtt_encode_connack(b, sizeof(b), MQTT_V5, false, 0, NULL), 5);
	CHECK(memcmp(b, v5, 5) == 0);

	struct mqtt_props props = {0};
	props.present = MQTT_PROP_BIT(MQTT_PROP_MAXIMUM_QOS) |
			MQTT_PROP_BIT(MQTT_PROP_RETAIN_AVAILABLE);
	props.maximum_qos = 1;
	/* Mosquitto 2.0's CONNACK order, not the ids': retain available
	 * before maximum QoS. */
	const uint8_t v5p[] = {0x20, 7, 0, 0x80, 4, 0x25, 0, 0x24, 1};
	CHECK_EQ(mqtt_encode_connack(b, sizeof(b), MQTT_V5, false, 0x80,
				     &props), sizeof(v5p));
	CHECK(memcmp(b, v5p, sizeof(v5p)) == 0);
	for (size_t cap = 0; cap < sizeof(v5p); cap++)
		CHECK_EQ(mqtt_encode_connack(b, cap, MQTT_V5, false, 0x80,
					     &props), 0);

	/* Everything kite may send, in Mosquitto's order. */
	props = (struct mqtt_props){0};
	props.present = MQTT_PROP_BIT(MQTT_PROP_RECEIVE_MAXIMUM) |
			MQTT_PROP_BIT(MQTT_PROP_TOPIC_ALIAS_MAXIMUM) |
			MQTT_PROP_BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE) |
			MQTT_PROP_BIT(MQTT_PROP_SERVER_KEEP_ALIVE) |
			MQTT_PROP_BIT(MQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER);
	props.receive_maximum = 20;
	props.topic_alias_maximum = 10;
	props.maximum_packet_size = 1000;
	props.server_keep_alive = 60;
	props.assigned_client_identifier = (struct mqtt_bytes){(const uint8_t *)"id", 2};
	const uint8_t all[] = {0x20, 22, 0, 0, 19, 0x22, 0, 10, 0x12, 0, 2, 'i', 'd',
			       0x13, 0, 60, 0x27, 0, 0, 3, 0xe8, 0x21, 0, 20};
	CHECK_EQ(mqtt_encode_connack(b, sizeof(b), MQTT_V5, false, 0, &props),
		 sizeof(all));
	CHECK(memcmp(b, all, sizeof(all)) == 0);
}

TEST(codec_suback_encode_v311_and_v5_bytes)
{
	uint8_t b[32];
	const uint8_t reasons[] = {0, 1, 0x80};

	const uint8_t sub311[] = {0x90, 5, 0, 9, 0, 1, 0x80};
	CHECK_EQ(mqtt_encode_suback(b, sizeof(b), MQTT_SUBACK, MQTT_V311, 9,
				    reasons, 3, NULL), sizeof(sub311));
	CHECK(memcmp(b, sub311, sizeof(sub311)) == 0);

	const uint8_t sub5[] = {0x90, 6, 0, 9, 0, 0, 1, 0x80};
	CHECK_EQ(mqtt_encode_suback(b, sizeof(b), MQTT_SUBACK, MQTT_V5, 9,
				    reasons, 3, NULL), sizeof(sub5));
	CHECK(memcmp(b, sub5, sizeof(sub5)) == 0);

	const uint8_t unsub5[] = {0xb0, 4, 0, 9, 0, 0x11};
	const uint8_t unreason[] = {MQTT_RC_NO_SUBSCRIPTION_EXISTED};
	CHECK_EQ(mqtt_encode_suback(b, sizeof(b), MQTT_UNSUBACK, MQTT_V5, 9,
				    unreason, 1, NULL), sizeof(unsub5));
	CHECK(memcmp(b, unsub5, sizeof(unsub5)) == 0);

	for (size_t cap = 0; cap < sizeof(sub5); cap++)
		CHECK_EQ(mqtt_encode_suback(b, cap, MQTT_SUBACK, MQTT_V5, 9,
					    reasons, 3, NULL), 0);
}

TEST(codec_unsuback_encode_v311_omits_reasons)
{
	uint8_t b[16];
	const uint8_t reasons[] = {0x11, 0x11};
	const uint8_t want[] = {0xb0, 2, 0, 9};

	CHECK_EQ(mqtt_encode_suback(b, sizeof(b), MQTT_UNSUBACK, MQTT_V311, 9,
				    reasons, 2, NULL), sizeof(want));
	CHECK(memcmp(b, want, sizeof(want)) == 0);
}

TEST(codec_pingresp_encode_bytes)
{
	uint8_t b[2];
	CHECK_EQ(mqtt_encode_pingresp(b, 2), 2);
	CHECK_EQ(b[0], 0xd0);
	CHECK_EQ(b[1], 0);
	CHECK_EQ(mqtt_encode_pingresp(b, 1), 0);
}
