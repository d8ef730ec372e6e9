/* libFuzzer target for core/codec.c.
 *
 * Every input goes through mqtt_frame_parse, then (framed or not) through
 * every decoder for MQTT 3.1.1 and 5.0. What a decoder accepts must point
 * inside the input, and what it accepts must survive a round trip through
 * the matching encoder: encode, frame, decode again, same fields.
 * mqtt_utf8_valid is also checked against an independent table-driven
 * reference. Only our own bugs abort; hostile input never does. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                    \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "fuzz_codec: %s:%d: %s\n", __FILE__,  \
				__LINE__, #cond);                             \
			abort();                                              \
		}                                                             \
	} while (0)

/* Re-encoded packets are never much larger than the input (encoding is
 * minimal); inputs beyond this are only decoded. */
#define FUZZ_RT_MAX (1u << 16)
#define FUZZ_ENTRIES_MAX 4096

static uint8_t enc_buf[2 * FUZZ_RT_MAX + 64];

/* The input region decoded bytes must point into. */
struct span {
	const uint8_t *ptr;
	size_t len;
};

static void check_in(struct span s, struct mqtt_bytes b)
{
	if (b.len == 0)
		return;
	uintptr_t lo = (uintptr_t)s.ptr, p = (uintptr_t)b.ptr;
	FUZZ_ASSERT(p >= lo && b.len <= s.len && p - lo <= s.len - b.len);
}

static bool bytes_same(struct mqtt_bytes a, struct mqtt_bytes b)
{
	return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* ---- properties ---------------------------------------------------------- */

static void check_props(struct span s, const struct mqtt_props *p)
{
	const struct mqtt_bytes *fields[] = {
		&p->content_type, &p->response_topic, &p->correlation_data,
		&p->assigned_client_identifier, &p->authentication_method,
		&p->authentication_data, &p->response_information,
		&p->server_reference, &p->reason_string,
	};
	struct span raw = {p->raw.ptr, p->raw.len};

	check_in(s, p->raw);
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		check_in(raw, *fields[i]);

	uint32_t cursor = 0, n = 0;
	struct mqtt_bytes k, v;
	while (mqtt_user_props_next(p, &cursor, &k, &v)) {
		check_in(raw, k);
		check_in(raw, v);
		FUZZ_ASSERT(mqtt_utf8_valid(k.ptr, k.len));
		FUZZ_ASSERT(mqtt_utf8_valid(v.ptr, v.len));
		n++;
	}
	FUZZ_ASSERT(cursor == p->raw.len);
	/* The count saturates rather than wraps. */
	FUZZ_ASSERT(n == p->user_property_count ||
		    (p->user_property_count == UINT16_MAX && n > UINT16_MAX));
	FUZZ_ASSERT(!!n == !!(p->present & MQTT_PROP_BIT(MQTT_PROP_USER_PROPERTY)));
}

static bool user_props_same(const struct mqtt_props *a,
			    const struct mqtt_props *b)
{
	uint32_t ca = 0, cb = 0;
	struct mqtt_bytes ka, va, kb, vb;

	for (;;) {
		bool more_a = mqtt_user_props_next(a, &ca, &ka, &va);
		bool more_b = mqtt_user_props_next(b, &cb, &kb, &vb);
		if (more_a != more_b)
			return false;
		if (!more_a)
			return true;
		if (!bytes_same(ka, kb) || !bytes_same(va, vb))
			return false;
	}
}

static bool props_same(const struct mqtt_props *a, const struct mqtt_props *b)
{
	return a->present == b->present &&
	       a->payload_format_indicator == b->payload_format_indicator &&
	       a->request_problem_information == b->request_problem_information &&
	       a->request_response_information == b->request_response_information &&
	       a->maximum_qos == b->maximum_qos &&
	       a->retain_available == b->retain_available &&
	       a->wildcard_subscription_available == b->wildcard_subscription_available &&
	       a->subscription_identifier_available == b->subscription_identifier_available &&
	       a->shared_subscription_available == b->shared_subscription_available &&
	       a->server_keep_alive == b->server_keep_alive &&
	       a->receive_maximum == b->receive_maximum &&
	       a->topic_alias_maximum == b->topic_alias_maximum &&
	       a->topic_alias == b->topic_alias &&
	       a->message_expiry_interval == b->message_expiry_interval &&
	       a->session_expiry_interval == b->session_expiry_interval &&
	       a->will_delay_interval == b->will_delay_interval &&
	       a->maximum_packet_size == b->maximum_packet_size &&
	       a->subscription_identifier == b->subscription_identifier &&
	       bytes_same(a->content_type, b->content_type) &&
	       bytes_same(a->response_topic, b->response_topic) &&
	       bytes_same(a->correlation_data, b->correlation_data) &&
	       bytes_same(a->assigned_client_identifier, b->assigned_client_identifier) &&
	       bytes_same(a->authentication_method, b->authentication_method) &&
	       bytes_same(a->authentication_data, b->authentication_data) &&
	       bytes_same(a->response_information, b->response_information) &&
	       bytes_same(a->server_reference, b->server_reference) &&
	       bytes_same(a->reason_string, b->reason_string) &&
	       a->user_property_count == b->user_property_count &&
	       user_props_same(a, b);
}

static void fuzz_props(const uint8_t *buf, size_t len)
{
	struct span s = {buf, len};

	for (int w = MQTT_PROPS_CONNECT; w <= MQTT_PROPS_AUTH; w++) {
		struct mqtt_props a, b;
		size_t used, used2;
		enum mqtt_props_where where = (enum mqtt_props_where)w;
		if (mqtt_props_decode(buf, len, where, &a, &used) != MQTT_RC_SUCCESS)
			continue;
		FUZZ_ASSERT(used <= len && used >= 1 + a.raw.len);
		check_props(s, &a);
		if (len > FUZZ_RT_MAX)
			continue;
		size_t n = mqtt_props_encode(enc_buf, sizeof(enc_buf), &a, &a);
		FUZZ_ASSERT(n > 0 && n == mqtt_props_size(&a, &a));
		FUZZ_ASSERT(mqtt_props_decode(enc_buf, n, where, &b, &used2) ==
			    MQTT_RC_SUCCESS);
		FUZZ_ASSERT(used2 == n);
		FUZZ_ASSERT(props_same(&a, &b));
	}
}

/* Frames an encoder's output and returns its body. */
static struct span frame_of(size_t n, uint8_t want_type,
			    struct mqtt_fixed_header *fh)
{
	FUZZ_ASSERT(n > 0 && n <= sizeof(enc_buf));
	FUZZ_ASSERT(mqtt_frame_parse(enc_buf, n, fh) == MQTT_FRAME_OK);
	FUZZ_ASSERT(fh->type == want_type);
	FUZZ_ASSERT((size_t)fh->header_len + fh->remaining_len == n);
	return (struct span){enc_buf + fh->header_len, fh->remaining_len};
}

/* ---- packets --------------------------------------------------------------- */

static void fuzz_connect(const uint8_t *body, size_t len)
{
	struct span s = {body, len};
	struct mqtt_connect a, b;
	struct mqtt_fixed_header fh;

	if (mqtt_decode_connect(body, len, &a) != MQTT_RC_SUCCESS)
		return;
	FUZZ_ASSERT(a.version >= MQTT_V31 && a.version <= MQTT_V5);
	check_in(s, a.client_id);
	check_in(s, a.will.topic);
	check_in(s, a.will.payload);
	check_in(s, a.username);
	check_in(s, a.password);
	check_props(s, &a.props);
	check_props(s, &a.will.props);
	if (len > FUZZ_RT_MAX)
		return;

	struct span e = frame_of(mqtt_encode_connect(enc_buf, sizeof(enc_buf), &a),
				 MQTT_CONNECT, &fh);
	FUZZ_ASSERT(mqtt_decode_connect(e.ptr, e.len, &b) == MQTT_RC_SUCCESS);
	FUZZ_ASSERT(a.version == b.version && a.clean_start == b.clean_start);
	FUZZ_ASSERT(a.keepalive_s == b.keepalive_s);
	FUZZ_ASSERT(a.has_will == b.has_will && a.has_username == b.has_username &&
		    a.has_password == b.has_password);
	FUZZ_ASSERT(bytes_same(a.client_id, b.client_id));
	FUZZ_ASSERT(a.will.qos == b.will.qos && a.will.retain == b.will.retain);
	FUZZ_ASSERT(bytes_same(a.will.topic, b.will.topic));
	FUZZ_ASSERT(bytes_same(a.will.payload, b.will.payload));
	FUZZ_ASSERT(bytes_same(a.username, b.username));
	FUZZ_ASSERT(bytes_same(a.password, b.password));
	FUZZ_ASSERT(props_same(&a.props, &b.props));
	FUZZ_ASSERT(props_same(&a.will.props, &b.will.props));
}

static void fuzz_publish(uint8_t flags, const uint8_t *body, size_t len,
			 uint8_t version)
{
	struct span s = {body, len};
	struct mqtt_publish a, b;
	struct mqtt_fixed_header fh;

	if (mqtt_decode_publish(flags, body, len, version, &a) != MQTT_RC_SUCCESS)
		return;
	FUZZ_ASSERT(a.qos <= 2 && (a.qos == 0) == (a.packet_id == 0));
	FUZZ_ASSERT(a.topic.len > 0 || version == MQTT_V5);
	check_in(s, a.topic);
	check_in(s, a.payload);
	check_props(s, &a.props);
	if (a.payload.len)
		FUZZ_ASSERT(a.payload.ptr + a.payload.len == body + len);
	if (len > FUZZ_RT_MAX)
		return;

	size_t n = mqtt_encode_publish(enc_buf, sizeof(enc_buf), version, &a,
				       &a.props);
	struct span e = frame_of(n, MQTT_PUBLISH, &fh);
	FUZZ_ASSERT(fh.flags == (flags & 0xf));
	FUZZ_ASSERT(mqtt_decode_publish(fh.flags, e.ptr, e.len, version, &b) ==
		    MQTT_RC_SUCCESS);
	FUZZ_ASSERT(bytes_same(a.topic, b.topic));
	FUZZ_ASSERT(bytes_same(a.payload, b.payload));
	FUZZ_ASSERT(a.qos == b.qos && a.retain == b.retain && a.dup == b.dup);
	FUZZ_ASSERT(a.packet_id == b.packet_id);
	FUZZ_ASSERT(props_same(&a.props, &b.props));
}

static void fuzz_ack(const uint8_t *body, size_t len, uint8_t version)
{
	struct span s = {body, len};
	struct mqtt_ack a, b;
	struct mqtt_fixed_header fh;
	uint16_t id;
	uint8_t reason;

	/* The broker's decoder (no property table) answers as the full one. */
	enum mqtt_rc rc = mqtt_decode_ack(body, len, version, &a);
	FUZZ_ASSERT(mqtt_decode_ack_id(body, len, version, &id, &reason) == rc);
	if (rc != MQTT_RC_SUCCESS)
		return;
	FUZZ_ASSERT(id == a.packet_id && reason == a.reason);
	FUZZ_ASSERT(a.packet_id != 0);
	check_props(s, &a.props);
	if (len > FUZZ_RT_MAX)
		return;

	for (uint8_t type = MQTT_PUBACK; type <= MQTT_PUBCOMP; type++) {
		size_t n = mqtt_encode_ack(enc_buf, sizeof(enc_buf), type,
					   version, a.packet_id, a.reason,
					   &a.props);
		struct span e = frame_of(n, type, &fh);
		FUZZ_ASSERT(mqtt_decode_ack(e.ptr, e.len, version, &b) ==
			    MQTT_RC_SUCCESS);
		FUZZ_ASSERT(a.packet_id == b.packet_id && a.reason == b.reason);
		FUZZ_ASSERT(props_same(&a.props, &b.props));
	}
}

static struct mqtt_sub_entry entries_a[FUZZ_ENTRIES_MAX];

static void fuzz_subscribe(const uint8_t *body, size_t len, uint8_t version)
{
	struct span s = {body, len};
	struct mqtt_subscribe a, b;
	struct mqtt_fixed_header fh;
	struct mqtt_sub_entry e;
	uint32_t cursor = 0;
	size_t count = 0;

	if (mqtt_decode_subscribe(body, len, version, &a) != MQTT_RC_SUCCESS)
		return;
	FUZZ_ASSERT(a.packet_id != 0 && a.count > 0);
	check_in(s, a.entries);
	check_props(s, &a.props);
	while (mqtt_subscribe_next(&a, &cursor, &e)) {
		check_in(s, e.filter);
		FUZZ_ASSERT(mqtt_topic_filter_valid(e.filter.ptr, e.filter.len));
		FUZZ_ASSERT(e.qos <= 2 && e.retain_handling <= 2);
		if (count < FUZZ_ENTRIES_MAX)
			entries_a[count] = e;
		count++;
	}
	FUZZ_ASSERT(count == a.count && cursor == a.entries.len);
	if (len > FUZZ_RT_MAX || count > FUZZ_ENTRIES_MAX)
		return;

	size_t n = mqtt_encode_subscribe(enc_buf, sizeof(enc_buf), version,
					 a.packet_id, entries_a, count, &a.props);
	struct span enc = frame_of(n, MQTT_SUBSCRIBE, &fh);
	FUZZ_ASSERT(mqtt_decode_subscribe(enc.ptr, enc.len, version, &b) ==
		    MQTT_RC_SUCCESS);
	FUZZ_ASSERT(b.packet_id == a.packet_id && b.count == a.count);
	FUZZ_ASSERT(props_same(&a.props, &b.props));
	cursor = 0;
	for (size_t i = 0; i < count; i++) {
		FUZZ_ASSERT(mqtt_subscribe_next(&b, &cursor, &e));
		FUZZ_ASSERT(bytes_same(e.filter, entries_a[i].filter));
		FUZZ_ASSERT(e.qos == entries_a[i].qos &&
			    e.no_local == entries_a[i].no_local &&
			    e.retain_as_published ==
				    entries_a[i].retain_as_published &&
			    e.retain_handling == entries_a[i].retain_handling);
	}
	FUZZ_ASSERT(!mqtt_subscribe_next(&b, &cursor, &e));
}

static void fuzz_unsubscribe(const uint8_t *body, size_t len, uint8_t version)
{
	struct span s = {body, len};
	struct mqtt_subscribe a;
	struct mqtt_bytes f;
	uint32_t cursor = 0, count = 0;

	if (mqtt_decode_unsubscribe(body, len, version, &a) != MQTT_RC_SUCCESS)
		return;
	FUZZ_ASSERT(a.packet_id != 0 && a.count > 0);
	check_in(s, a.entries);
	check_props(s, &a.props);
	while (mqtt_unsubscribe_next(&a, &cursor, &f)) {
		check_in(s, f);
		FUZZ_ASSERT(mqtt_topic_filter_valid(f.ptr, f.len));
		count++;
	}
	FUZZ_ASSERT(count == a.count && cursor == a.entries.len);
}

static void fuzz_disconnect_auth(const uint8_t *body, size_t len,
				 uint8_t version)
{
	struct span s = {body, len};
	struct mqtt_disconnect a, b;
	struct mqtt_fixed_header fh;

	if (mqtt_decode_auth(body, len, &a) == MQTT_RC_SUCCESS)
		check_props(s, &a.props);
	if (mqtt_decode_disconnect(body, len, version, &a) != MQTT_RC_SUCCESS)
		return;
	check_props(s, &a.props);
	if (version < MQTT_V5) {
		FUZZ_ASSERT(len == 0);
		FUZZ_ASSERT(mqtt_encode_disconnect(enc_buf, sizeof(enc_buf),
						   version, 0, NULL) == 0);
		return;
	}
	if (len > FUZZ_RT_MAX)
		return;
	size_t n = mqtt_encode_disconnect(enc_buf, sizeof(enc_buf), version,
					  a.reason, &a.props);
	struct span e = frame_of(n, MQTT_DISCONNECT, &fh);
	FUZZ_ASSERT(mqtt_decode_disconnect(e.ptr, e.len, version, &b) ==
		    MQTT_RC_SUCCESS);
	FUZZ_ASSERT(a.reason == b.reason && props_same(&a.props, &b.props));
}

/* Every decoder, both versions, on one body. */
static void fuzz_all_decoders(uint8_t flags, const uint8_t *body, size_t len)
{
	static const uint8_t versions[] = {MQTT_V311, MQTT_V5};

	fuzz_connect(body, len);
	fuzz_props(body, len);
	for (size_t i = 0; i < sizeof(versions); i++) {
		uint8_t v = versions[i];
		fuzz_publish(flags, body, len, v);
		fuzz_ack(body, len, v);
		fuzz_subscribe(body, len, v);
		fuzz_unsubscribe(body, len, v);
		fuzz_disconnect_auth(body, len, v);
	}
}

/* ---- UTF-8 and topics ------------------------------------------------------ */

/* Unicode Table 3-7 (well-formed byte sequences) as ranges, then the MQTT
 * exclusions: an implementation independent of codec.c's. */
static size_t ref_utf8_seq(const uint8_t *s, size_t left, uint32_t *cp)
{
	static const struct {
		uint8_t lead_lo, lead_hi, n, second_lo, second_hi;
	} rows[] = {
		{0x00, 0x7f, 1, 0, 0},	      {0xc2, 0xdf, 2, 0x80, 0xbf},
		{0xe0, 0xe0, 3, 0xa0, 0xbf}, {0xe1, 0xec, 3, 0x80, 0xbf},
		{0xed, 0xed, 3, 0x80, 0x9f}, {0xee, 0xef, 3, 0x80, 0xbf},
		{0xf0, 0xf0, 4, 0x90, 0xbf}, {0xf1, 0xf3, 4, 0x80, 0xbf},
		{0xf4, 0xf4, 4, 0x80, 0x8f},
	};
	for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
		if (s[0] < rows[r].lead_lo || s[0] > rows[r].lead_hi)
			continue;
		size_t n = rows[r].n;
		if (left < n)
			return 0;
		if (n > 1 && (s[1] < rows[r].second_lo || s[1] > rows[r].second_hi))
			return 0;
		uint32_t v = n == 1 ? s[0] : s[0] & (0xff >> (n + 1));
		for (size_t k = 1; k < n; k++) {
			if (k > 1 && (s[k] < 0x80 || s[k] > 0xbf))
				return 0;
			v = v << 6 | (s[k] & 0x3f);
		}
		*cp = v;
		return n;
	}
	return 0;
}

static bool ref_mqtt_utf8(const uint8_t *s, size_t len)
{
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		size_t n = ref_utf8_seq(s + i, len - i, &cp);
		if (n == 0)
			return false;
		if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0))
			return false;
		if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xffff) >= 0xfffe)
			return false;
		i += n;
	}
	return true;
}

static void fuzz_strings(const uint8_t *s, size_t len)
{
	bool utf8 = mqtt_utf8_valid(s, len);

	FUZZ_ASSERT(utf8 == ref_mqtt_utf8(s, len));
	if (mqtt_topic_name_valid(s, len))
		FUZZ_ASSERT(utf8 && len > 0 && !memchr(s, '+', len) &&
			    !memchr(s, '#', len));
	if (mqtt_topic_filter_valid(s, len))
		FUZZ_ASSERT(utf8 && len > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mqtt_fixed_header fh;
	enum mqtt_frame_status st = mqtt_frame_parse(data, size, &fh);

	FUZZ_ASSERT(st == MQTT_FRAME_OK || st == MQTT_FRAME_NEED_MORE ||
		    st == MQTT_FRAME_MALFORMED);
	if (st == MQTT_FRAME_OK) {
		FUZZ_ASSERT(fh.header_len >= 2 && fh.header_len <= 5);
		FUZZ_ASSERT(fh.header_len <= size);
		FUZZ_ASSERT(fh.type >= 1 && fh.type <= 15);
		FUZZ_ASSERT(fh.remaining_len <= MQTT_VARINT_MAX);
		/* Non-minimal lengths are accepted, never shorter ones. */
		FUZZ_ASSERT(mqtt_varint_size(fh.remaining_len) <=
			    (size_t)fh.header_len - 1);
		size_t end = (size_t)fh.header_len + fh.remaining_len;
		if (end <= size)
			fuzz_all_decoders(fh.flags, data + fh.header_len,
					  fh.remaining_len);
	}
	/* Unframed too, so decoders see bodies framing would refuse. */
	if (size > 0)
		fuzz_all_decoders(data[0] & 0x0f, data + 1, size - 1);
	fuzz_strings(data, size);
	return 0;
}
