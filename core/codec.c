/* MQTT 3.1.1 / 5.0 packet codec; the contract is in codec.h.
 *
 * Decoders read through a bounds-checked cursor (struct rd) so no length
 * taken from the wire is trusted before it is compared with what is left.
 * Encoders first compute the exact packet size, refuse when it exceeds
 * `cap`, then write through a cursor (struct wr) that asserts it never
 * passes that size: overrunning it would be our bug, not the peer's.
 *
 * Where the spec leaves room, behaviour follows Mosquitto 2.0
 * (lib/utf8_mosq.c, lib/property_mosq.c, src/handle_*.c). */
#include "core/codec.h"

#include <assert.h>
#include <stddef.h>
#include <string.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* More entries than this in one SUBSCRIBE/UNSUBSCRIBE cannot be counted in
 * struct mqtt_subscribe.count (nor answered with one reason each). */
#define CODEC_ENTRIES_MAX UINT16_MAX

static_assert(MQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE < 64,
	      "property ids must fit the uint64_t present mask");
static_assert(MQTT_PROPS_AUTH < 16, "where bits must fit a uint16_t");
static_assert(MQTT_VARINT_MAX == (1u << 28) - 1, "4 bytes of 7 bits");

/* ---- reading ------------------------------------------------------------ */

struct rd {
	const uint8_t *p;
	size_t len;
	size_t pos;
};

static size_t rd_left(const struct rd *r)
{
	return r->len - r->pos;
}

static bool rd_u8(struct rd *r, uint8_t *v)
{
	if (rd_left(r) < 1)
		return false;
	*v = r->p[r->pos++];
	return true;
}

static bool rd_u16(struct rd *r, uint16_t *v)
{
	if (rd_left(r) < 2)
		return false;
	*v = (uint16_t)(r->p[r->pos] << 8 | r->p[r->pos + 1]);
	r->pos += 2;
	return true;
}

static bool rd_u32(struct rd *r, uint32_t *v)
{
	if (rd_left(r) < 4)
		return false;
	const uint8_t *p = r->p + r->pos;
	*v = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	     (uint32_t)p[2] << 8 | p[3];
	r->pos += 4;
	return true;
}

static bool rd_bytes(struct rd *r, size_t n, struct mqtt_bytes *out)
{
	if (rd_left(r) < n)
		return false;
	out->ptr = r->p + r->pos;
	out->len = (uint32_t)n;
	r->pos += n;
	return true;
}

/* Two-byte length followed by that many bytes (spec 1.5.6). */
static bool rd_bin(struct rd *r, struct mqtt_bytes *out)
{
	uint16_t n;
	return rd_u16(r, &n) && rd_bytes(r, n, out);
}

/* 1: *v and *n set; 0: buffer ends inside the integer; -1: malformed.
 * With `minimal`, a longer encoding than needed (a zero last byte after
 * others) is malformed: spec 1.5.5 asks senders for the shortest form and
 * Mosquitto's packet__read_varint enforces it inside packets, while its
 * fixed-header reader does not. */
static int varint_parse(const uint8_t *p, size_t len, bool minimal,
			uint32_t *v, size_t *n)
{
	uint32_t value = 0;

	for (size_t i = 0; i < 4; i++) {
		if (i >= len)
			return 0;
		value |= (uint32_t)(p[i] & 0x7f) << (7 * i);
		if (p[i] & 0x80)
			continue;
		if (minimal && i > 0 && p[i] == 0)
			return -1;
		*v = value;
		*n = i + 1;
		return 1;
	}
	return -1;
}

static bool rd_varint(struct rd *r, uint32_t *v)
{
	size_t n;

	if (rd_left(r) == 0)
		return false;
	if (varint_parse(r->p + r->pos, rd_left(r), true, v, &n) != 1)
		return false;
	r->pos += n;
	return true;
}

/* ---- UTF-8 --------------------------------------------------------------- */

/* Length of the sequence led by byte c, 0 if c cannot lead one. C0/C1
 * would only make overlong 2-byte forms, F5..FF code points > U+10FFFF. */
static size_t utf8_seq_len(uint8_t c)
{
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return 2;
	if ((c & 0xf0) == 0xe0)
		return 3;
	if (c >= 0xf0 && c <= 0xf4)
		return 4;
	return 0;
}

/* MQTT strings additionally refuse what spec 1.5.4 lets a receiver refuse
 * and Mosquitto's mosquitto_validate_utf8 does refuse: U+0000, control
 * characters and Unicode non-characters. */
static bool utf8_mqtt_allowed(uint32_t cp)
{
	if (cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f))
		return false;
	if (cp >= 0xfdd0 && cp <= 0xfdef)
		return false;
	return (cp & 0xfffe) != 0xfffe;
}

/* Decodes one multi-byte sequence at s[0..n) into *cp; false if it is not
 * well-formed (bad continuation, overlong, surrogate, > U+10FFFF). */
static bool utf8_decode_seq(const uint8_t *s, size_t n, uint32_t *cp)
{
	static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
	uint32_t v = s[0] & (0x7f >> n);

	for (size_t k = 1; k < n; k++) {
		if ((s[k] & 0xc0) != 0x80)
			return false;
		v = v << 6 | (s[k] & 0x3f);
	}
	if (v < min_cp[n] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return false;
	*cp = v;
	return true;
}

/* Plain well-formed UTF-8 (payload format indicator 1) when !mqtt; the
 * MQTT string rules on top when mqtt. */
static bool utf8_check(const uint8_t *s, size_t len, bool mqtt)
{
	size_t i = 0;

	while (i < len) {
		uint8_t c = s[i];
		if (c >= 0x20 && c < 0x7f) {
			i++;
			continue;
		}
		size_t n = utf8_seq_len(c);
		uint32_t cp = c;
		if (n == 0 || len - i < n)
			return false;
		if (n > 1 && !utf8_decode_seq(s + i, n, &cp))
			return false;
		if (mqtt && !utf8_mqtt_allowed(cp))
			return false;
		i += n;
	}
	return true;
}

bool mqtt_utf8_valid(const uint8_t *s, size_t len)
{
	assert(s || len == 0);
	return utf8_check(s, len, true);
}

/* Payloads are usually long: skip 8 ASCII bytes at a time before the
 * byte-wise check. */
static bool utf8_payload_valid(const uint8_t *s, size_t len)
{
	size_t i = 0;

	for (; len - i >= 8; i += 8) {
		uint64_t w;
		memcpy(&w, s + i, sizeof(w));
		if (w & 0x8080808080808080ull)
			break;
	}
	return utf8_check(s + i, len - i, false);
}

/* ---- topics -------------------------------------------------------------- */

bool mqtt_topic_name_valid(const uint8_t *s, size_t len)
{
	assert(s || len == 0);
	if (len == 0 || len > MQTT_TOPIC_MAX)
		return false;
	if (memchr(s, '+', len) || memchr(s, '#', len))
		return false;
	return mqtt_utf8_valid(s, len);
}

/* Wildcard placement only (spec 4.7.1): '+' and '#' fill a whole level,
 * '#' only as the last one. */
static bool filter_levels_valid(const uint8_t *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (s[i] != '+' && s[i] != '#')
			continue;
		bool starts = i == 0 || s[i - 1] == '/';
		bool ends = i + 1 == len || s[i + 1] == '/';
		if (!starts || !ends)
			return false;
		if (s[i] == '#' && i + 1 != len)
			return false;
	}
	return true;
}

/* $share/GROUP/FILTER (spec 4.8.2): GROUP is at least one character
 * without '/', '+' or '#'; FILTER is a non-empty valid filter. */
static bool shared_filter_valid(const uint8_t *s, size_t len)
{
	const uint8_t *slash = memchr(s, '/', len);

	if (!slash || slash == s)
		return false;
	size_t group_len = (size_t)(slash - s);
	if (memchr(s, '+', group_len) || memchr(s, '#', group_len))
		return false;
	size_t rest = len - group_len - 1;
	return rest > 0 && filter_levels_valid(slash + 1, rest);
}

#define SHARE_PREFIX "$share/"
#define SHARE_PREFIX_LEN (sizeof(SHARE_PREFIX) - 1)

static bool filter_is_shared(const uint8_t *s, size_t len)
{
	return len >= SHARE_PREFIX_LEN &&
	       memcmp(s, SHARE_PREFIX, SHARE_PREFIX_LEN) == 0;
}

bool mqtt_topic_filter_valid(const uint8_t *s, size_t len)
{
	assert(s || len == 0);
	if (len == 0 || len > MQTT_TOPIC_MAX || !mqtt_utf8_valid(s, len))
		return false;
	if (filter_is_shared(s, len))
		return shared_filter_valid(s + SHARE_PREFIX_LEN,
					   len - SHARE_PREFIX_LEN);
	return filter_levels_valid(s, len);
}

/* ---- framing ------------------------------------------------------------- */

/* Required low nibble per packet type (spec 2.1.3); PUBLISH is checked
 * separately since its flags carry DUP/QoS/RETAIN. */
static const uint8_t frame_flags[16] = {
	[MQTT_PUBREL] = 0x2,
	[MQTT_SUBSCRIBE] = 0x2,
	[MQTT_UNSUBSCRIBE] = 0x2,
};

enum mqtt_frame_status mqtt_frame_parse(const uint8_t *buf, size_t len,
					struct mqtt_fixed_header *out)
{
	assert(out && (buf || len == 0));
	if (len < 1)
		return MQTT_FRAME_NEED_MORE;

	/* Type and flags are judged from byte 0 alone, so garbage is
	 * refused before its length bytes arrive. */
	uint8_t type = buf[0] >> 4, flags = buf[0] & 0x0f;
	if (type == 0)
		return MQTT_FRAME_MALFORMED;
	if (type == MQTT_PUBLISH ? (flags & 0x6) == 0x6
				 : flags != frame_flags[type])
		return MQTT_FRAME_MALFORMED;

	uint32_t remaining;
	size_t n;
	int st = varint_parse(buf + 1, len - 1, false, &remaining, &n);
	if (st == 0)
		return MQTT_FRAME_NEED_MORE;
	if (st < 0)
		return MQTT_FRAME_MALFORMED;

	out->type = type;
	out->flags = flags;
	out->header_len = (uint8_t)(1 + n);
	out->remaining_len = remaining;
	return MQTT_FRAME_OK;
}

enum mqtt_frame_status mqtt_frame_parse_v31(const uint8_t *buf, size_t len,
					    struct mqtt_fixed_header *out)
{
	assert(out && (buf || len == 0));
	if (len < 1)
		return MQTT_FRAME_NEED_MORE;
	uint8_t type = buf[0] >> 4;
	if (type == 0 || type == MQTT_PUBLISH)
		return mqtt_frame_parse(buf, len, out);
	/* Judge the rest with the flags the type requires, then keep the
	 * ones the peer sent. */
	uint8_t head[5];
	size_t n = len < sizeof(head) ? len : sizeof(head);
	memcpy(head, buf, n);
	head[0] = (uint8_t)(type << 4 | frame_flags[type]);
	enum mqtt_frame_status st = mqtt_frame_parse(head, n, out);
	if (st == MQTT_FRAME_OK)
		out->flags = buf[0] & 0x0f;
	return st;
}

/* ---- properties ---------------------------------------------------------- */

enum prop_type {
	PT_NONE, /* not a property identifier */
	PT_BYTE,
	PT_U16,
	PT_U32,
	PT_VARINT,
	PT_STR,
	PT_BIN,
	PT_PAIR,
};

struct prop_info {
	uint8_t type;	 /* enum prop_type */
	uint16_t where;	 /* bit (1 << enum mqtt_props_where) where allowed */
	uint16_t offset; /* of the field in struct mqtt_props */
};

#define W(w) (1u << MQTT_PROPS_##w)
#define W_ALL ((1u << (MQTT_PROPS_AUTH + 1)) - 1)
#define W_MSG (W(PUBLISH) | W(WILL))
#define W_ACKS                                                               \
	(W(CONNACK) | W(PUBACK) | W(SUBACK) | W(UNSUBACK) | W(DISCONNECT) |   \
	 W(AUTH))
#define PROP(id, t, w, field)                                                \
	[MQTT_PROP_##id] = {t, w, offsetof(struct mqtt_props, field)}

/* Spec 2.2.2.2, the table of identifiers, types and packets. */
static const struct prop_info prop_table[] = {
	PROP(PAYLOAD_FORMAT_INDICATOR, PT_BYTE, W_MSG, payload_format_indicator),
	PROP(MESSAGE_EXPIRY_INTERVAL, PT_U32, W_MSG, message_expiry_interval),
	PROP(CONTENT_TYPE, PT_STR, W_MSG, content_type),
	PROP(RESPONSE_TOPIC, PT_STR, W_MSG, response_topic),
	PROP(CORRELATION_DATA, PT_BIN, W_MSG, correlation_data),
	PROP(SUBSCRIPTION_IDENTIFIER, PT_VARINT, W(PUBLISH) | W(SUBSCRIBE),
	     subscription_identifier),
	PROP(SESSION_EXPIRY_INTERVAL, PT_U32,
	     W(CONNECT) | W(CONNACK) | W(DISCONNECT), session_expiry_interval),
	PROP(ASSIGNED_CLIENT_IDENTIFIER, PT_STR, W(CONNACK),
	     assigned_client_identifier),
	PROP(SERVER_KEEP_ALIVE, PT_U16, W(CONNACK), server_keep_alive),
	PROP(AUTHENTICATION_METHOD, PT_STR, W(CONNECT) | W(CONNACK) | W(AUTH),
	     authentication_method),
	PROP(AUTHENTICATION_DATA, PT_BIN, W(CONNECT) | W(CONNACK) | W(AUTH),
	     authentication_data),
	PROP(REQUEST_PROBLEM_INFORMATION, PT_BYTE, W(CONNECT),
	     request_problem_information),
	PROP(WILL_DELAY_INTERVAL, PT_U32, W(WILL), will_delay_interval),
	PROP(REQUEST_RESPONSE_INFORMATION, PT_BYTE, W(CONNECT),
	     request_response_information),
	PROP(RESPONSE_INFORMATION, PT_STR, W(CONNACK), response_information),
	PROP(SERVER_REFERENCE, PT_STR, W(CONNACK) | W(DISCONNECT),
	     server_reference),
	PROP(REASON_STRING, PT_STR, W_ACKS, reason_string),
	PROP(RECEIVE_MAXIMUM, PT_U16, W(CONNECT) | W(CONNACK), receive_maximum),
	PROP(TOPIC_ALIAS_MAXIMUM, PT_U16, W(CONNECT) | W(CONNACK),
	     topic_alias_maximum),
	PROP(TOPIC_ALIAS, PT_U16, W(PUBLISH), topic_alias),
	PROP(MAXIMUM_QOS, PT_BYTE, W(CONNACK), maximum_qos),
	PROP(RETAIN_AVAILABLE, PT_BYTE, W(CONNACK), retain_available),
	[MQTT_PROP_USER_PROPERTY] = {PT_PAIR, W_ALL, 0},
	PROP(MAXIMUM_PACKET_SIZE, PT_U32, W(CONNECT) | W(CONNACK),
	     maximum_packet_size),
	PROP(WILDCARD_SUBSCRIPTION_AVAILABLE, PT_BYTE, W(CONNACK),
	     wildcard_subscription_available),
	PROP(SUBSCRIPTION_IDENTIFIER_AVAILABLE, PT_BYTE, W(CONNACK),
	     subscription_identifier_available),
	PROP(SHARED_SUBSCRIPTION_AVAILABLE, PT_BYTE, W(CONNACK),
	     shared_subscription_available),
};

static_assert(ARRAY_LEN(prop_table) == MQTT_PROP_SHARED_SUBSCRIPTION_AVAILABLE + 1,
	      "prop_table covers every identifier");

static const struct prop_info *prop_lookup(uint8_t id)
{
	if (id >= ARRAY_LEN(prop_table) || prop_table[id].type == PT_NONE)
		return NULL;
	return &prop_table[id];
}

/* A property value: numbers in num, strings/binary in a, a pair in a+b. */
struct prop_val {
	uint32_t num;
	struct mqtt_bytes a, b;
};

static bool rd_str(struct rd *r, struct mqtt_bytes *out, bool check_utf8)
{
	if (!rd_bin(r, out))
		return false;
	return !check_utf8 || mqtt_utf8_valid(out->ptr, out->len);
}

/* false on truncation or, with check_utf8, a string that is not MQTT
 * UTF-8: both make the packet malformed. */
static bool prop_read_value(struct rd *r, uint8_t type, struct prop_val *v,
			    bool check_utf8)
{
	uint8_t u8;
	uint16_t u16;

	switch (type) {
	case PT_BYTE:
		if (!rd_u8(r, &u8))
			return false;
		v->num = u8;
		return true;
	case PT_U16:
		if (!rd_u16(r, &u16))
			return false;
		v->num = u16;
		return true;
	case PT_U32:
		return rd_u32(r, &v->num);
	case PT_VARINT:
		return rd_varint(r, &v->num);
	case PT_STR:
		return rd_str(r, &v->a, check_utf8);
	case PT_BIN:
		return rd_bin(r, &v->a);
	case PT_PAIR:
		return rd_str(r, &v->a, check_utf8) &&
		       rd_str(r, &v->b, check_utf8);
	}
	return false;
}

/* Values the spec calls a Protocol Error (Mosquitto's
 * mosquitto_property_check_all agrees, except that it also refuses topic
 * alias 0, which kite leaves to the broker's alias check). */
static bool prop_value_in_range(uint8_t id, uint8_t type, uint32_t num)
{
	/* All eight one-byte properties take only 0 or 1 (a maximum QoS
	 * of 2 is said by leaving the property out). */
	if (type == PT_BYTE)
		return num <= 1;
	switch (id) {
	case MQTT_PROP_RECEIVE_MAXIMUM:
	case MQTT_PROP_MAXIMUM_PACKET_SIZE:
	case MQTT_PROP_SUBSCRIPTION_IDENTIFIER:
		return num != 0;
	}
	return true;
}

static bool prop_may_repeat(uint8_t id, enum mqtt_props_where where)
{
	/* A server's PUBLISH carries one subscription identifier per
	 * matching subscription (spec 3.3.2.3.8). */
	return id == MQTT_PROP_USER_PROPERTY ||
	       (id == MQTT_PROP_SUBSCRIPTION_IDENTIFIER &&
		where == MQTT_PROPS_PUBLISH);
}

static void prop_store(struct mqtt_props *out, uint8_t id,
		       const struct prop_info *info, const struct prop_val *v)
{
	uint8_t *field = (uint8_t *)out + info->offset;

	if (info->type == PT_PAIR) {
		if (out->user_property_count < UINT16_MAX)
			out->user_property_count++;
		out->present |= MQTT_PROP_BIT(id);
		return;
	}
	/* Only a repeatable subscription identifier gets here twice; the
	 * struct keeps the first. */
	if (out->present & MQTT_PROP_BIT(id))
		return;
	out->present |= MQTT_PROP_BIT(id);
	switch (info->type) {
	case PT_BYTE:
		*field = (uint8_t)v->num;
		break;
	case PT_U16:
		*(uint16_t *)(void *)field = (uint16_t)v->num;
		break;
	case PT_U32:
	case PT_VARINT:
		*(uint32_t *)(void *)field = v->num;
		break;
	default:
		*(struct mqtt_bytes *)(void *)field = v->a;
		break;
	}
}

/* Reads one property. MALFORMED ends the block at once; any other error
 * is a protocol error the caller reports only if the rest of the block
 * is well formed (Mosquitto parses the whole block before checking it). */
static enum mqtt_rc prop_decode_one(struct rd *r, enum mqtt_props_where where,
				    struct mqtt_props *out)
{
	uint8_t id;
	struct prop_val v = {0};

	/* Identifiers are varints, but every defined one is < 0x80, so a
	 * first byte with the top bit set is unknown either way. */
	if (!rd_u8(r, &id))
		return MQTT_RC_MALFORMED_PACKET;
	const struct prop_info *info = prop_lookup(id);
	if (!info || !prop_read_value(r, info->type, &v, true))
		return MQTT_RC_MALFORMED_PACKET;
	/* MQTT 5 2.2.2.2: an identifier not valid for the packet type makes
	 * a Malformed Packet (Mosquitto answers 0x81 too). */
	if (!(info->where & (1u << where)))
		return MQTT_RC_MALFORMED_PACKET;
	if ((out->present & MQTT_PROP_BIT(id)) && !prop_may_repeat(id, where))
		return MQTT_RC_PROTOCOL_ERROR;
	if (!prop_value_in_range(id, info->type, v.num))
		return MQTT_RC_PROTOCOL_ERROR;
	prop_store(out, id, info, &v);
	return MQTT_RC_SUCCESS;
}

enum mqtt_rc mqtt_props_decode(const uint8_t *buf, size_t len,
			       enum mqtt_props_where where,
			       struct mqtt_props *out, size_t *consumed)
{
	assert(out && consumed && (buf || len == 0));
	assert((unsigned)where <= MQTT_PROPS_AUTH);
	memset(out, 0, sizeof(*out));
	*consumed = 0;

	struct rd r = {buf, len, 0};
	uint32_t block_len;
	if (!rd_varint(&r, &block_len) || block_len > rd_left(&r))
		return MQTT_RC_MALFORMED_PACKET;
	out->raw.ptr = buf + r.pos;
	out->raw.len = block_len;

	struct rd block = {out->raw.ptr, block_len, 0};
	enum mqtt_rc first_error = MQTT_RC_SUCCESS;
	while (rd_left(&block) > 0) {
		enum mqtt_rc rc = prop_decode_one(&block, where, out);
		if (rc == MQTT_RC_MALFORMED_PACKET)
			return rc;
		if (first_error == MQTT_RC_SUCCESS)
			first_error = rc;
	}
	if (first_error != MQTT_RC_SUCCESS)
		return first_error;
	*consumed = r.pos + block_len;
	return MQTT_RC_SUCCESS;
}

bool mqtt_user_props_next(const struct mqtt_props *props, uint32_t *cursor,
			  struct mqtt_bytes *key, struct mqtt_bytes *value)
{
	assert(props && cursor && key && value);
	assert(*cursor <= props->raw.len);
	struct rd r = {props->raw.ptr, props->raw.len, *cursor};

	/* raw was validated by mqtt_props_decode: a failure to walk it
	 * means the caller handed us a block we never decoded. */
	while (rd_left(&r) > 0) {
		uint8_t id = 0;
		struct prop_val v = {0};
		(void)rd_u8(&r, &id);
		const struct prop_info *info = prop_lookup(id);
		assert(info);
		bool ok = info && prop_read_value(&r, info->type, &v, false);
		assert(ok);
		if (!ok)
			break;
		if (id == MQTT_PROP_USER_PROPERTY) {
			*key = v.a;
			*value = v.b;
			*cursor = (uint32_t)r.pos;
			return true;
		}
	}
	*cursor = (uint32_t)r.len;
	return false;
}

size_t mqtt_props_select(const struct mqtt_props *props, uint64_t keep,
			 uint8_t *out, size_t cap)
{
	assert(props && cap >= props->raw.len);
	struct rd r = {props->raw.ptr, props->raw.len, 0};
	size_t n = 0;
	while (rd_left(&r) > 0) {
		size_t start = r.pos;
		uint8_t id = 0;
		struct prop_val v = {0};
		(void)rd_u8(&r, &id);
		const struct prop_info *info = prop_lookup(id);
		assert(info); /* raw was validated by mqtt_props_decode */
		bool ok = info && prop_read_value(&r, info->type, &v, false);
		assert(ok);
		if (!ok)
			break;
		if (keep & MQTT_PROP_BIT(id)) {
			memcpy(out + n, props->raw.ptr + start, r.pos - start);
			n += r.pos - start;
		}
	}
	return n;
}

/* ---- decoding packets ---------------------------------------------------- */

/* Decodes a property block when the version has them; `rd` moves past it.
 * For 3.1.1 `out` stays zeroed. */
static enum mqtt_rc rd_props(struct rd *r, uint8_t version,
			     enum mqtt_props_where where,
			     struct mqtt_props *out)
{
	size_t used;

	if (version < MQTT_V5) {
		memset(out, 0, sizeof(*out));
		return MQTT_RC_SUCCESS;
	}
	enum mqtt_rc rc = mqtt_props_decode(r->p + r->pos, rd_left(r), where,
					    out, &used);
	if (rc == MQTT_RC_SUCCESS)
		r->pos += used;
	return rc;
}

static void assert_version(uint8_t version)
{
	assert(version == MQTT_V31 || version == MQTT_V311 ||
	       version == MQTT_V5);
	(void)version;
}

#define CONNECT_FLAG_RESERVED 0x01
#define CONNECT_FLAG_CLEAN 0x02
#define CONNECT_FLAG_WILL 0x04
#define CONNECT_FLAG_WILL_QOS_SHIFT 3
#define CONNECT_FLAG_WILL_RETAIN 0x20
#define CONNECT_FLAG_PASSWORD 0x40
#define CONNECT_FLAG_USERNAME 0x80

/* Protocol name and level (spec 3.1.2.1-2). */
static enum mqtt_rc connect_protocol(struct rd *r, struct mqtt_connect *out)
{
	struct mqtt_bytes name;
	uint8_t level;

	if (!rd_bin(r, &name) || !rd_u8(r, &level))
		return MQTT_RC_MALFORMED_PACKET;
	/* Mosquitto accepts its bridge bit on 3.1 and 3.1.1, and ignores it
	 * on 5.0 (whose bridges say so with no-local instead). */
	out->bridge = (level & 0x80) && (level & 0x7F) != MQTT_V5;
	if ((level & 0x7F) == MQTT_V31 || (level & 0x7F) == MQTT_V311 ||
	    (level & 0x7F) == MQTT_V5)
		level &= 0x7F;
	out->version = level;
	bool mqtt = name.len == 4 && memcmp(name.ptr, "MQTT", 4) == 0;
	bool mqisdp = name.len == 6 && memcmp(name.ptr, "MQIsdp", 6) == 0;
	if ((mqtt && (level == MQTT_V311 || level == MQTT_V5)) ||
	    (mqisdp && level == MQTT_V31))
		return MQTT_RC_SUCCESS;
	return MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION;
}

/* Connect flags (spec 3.1.2.3-8); the same rules for 3.1 as for 3.1.1. */
static enum mqtt_rc connect_flags(uint8_t flags, struct mqtt_connect *out)
{
	uint8_t will_qos = (flags >> CONNECT_FLAG_WILL_QOS_SHIFT) & 0x3;
	bool will_retain = flags & CONNECT_FLAG_WILL_RETAIN;

	if (flags & CONNECT_FLAG_RESERVED)
		return MQTT_RC_MALFORMED_PACKET;
	out->clean_start = flags & CONNECT_FLAG_CLEAN;
	out->has_will = flags & CONNECT_FLAG_WILL;
	out->has_username = flags & CONNECT_FLAG_USERNAME;
	out->has_password = flags & CONNECT_FLAG_PASSWORD;
	if (!out->has_will && (will_qos != 0 || will_retain))
		return MQTT_RC_MALFORMED_PACKET;
	if (will_qos == 3)
		return MQTT_RC_MALFORMED_PACKET;
	if (out->version < MQTT_V5 && out->has_password && !out->has_username)
		return MQTT_RC_MALFORMED_PACKET;
	out->will.qos = will_qos;
	out->will.retain = will_retain;
	return MQTT_RC_SUCCESS;
}

/* Will properties, topic and payload (spec 3.1.3.2-4). */
static enum mqtt_rc connect_will(struct rd *r, struct mqtt_connect *out)
{
	struct mqtt_will *will = &out->will;
	enum mqtt_rc rc = rd_props(r, out->version, MQTT_PROPS_WILL,
				   &will->props);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	if (!rd_bin(r, &will->topic) || !rd_bin(r, &will->payload))
		return MQTT_RC_MALFORMED_PACKET;
	if (!mqtt_topic_name_valid(will->topic.ptr, will->topic.len))
		return MQTT_RC_MALFORMED_PACKET;
	if (will->props.payload_format_indicator == 1 &&
	    !utf8_payload_valid(will->payload.ptr, will->payload.len))
		return MQTT_RC_PAYLOAD_FORMAT_INVALID;
	return MQTT_RC_SUCCESS;
}

static enum mqtt_rc connect_credentials(struct rd *r, struct mqtt_connect *out)
{
	if (out->has_username) {
		if (!rd_bin(r, &out->username) ||
		    !mqtt_utf8_valid(out->username.ptr, out->username.len))
			return MQTT_RC_MALFORMED_PACKET;
	}
	if (out->has_password && !rd_bin(r, &out->password))
		return MQTT_RC_MALFORMED_PACKET;
	return MQTT_RC_SUCCESS;
}

enum mqtt_rc mqtt_decode_connect(const uint8_t *body, size_t len,
				 struct mqtt_connect *out)
{
	assert(out && (body || len == 0));
	memset(out, 0, sizeof(*out));
	struct rd r = {body, len, 0};
	uint8_t flags;

	enum mqtt_rc rc = connect_protocol(&r, out);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	if (!rd_u8(&r, &flags))
		return MQTT_RC_MALFORMED_PACKET;
	rc = connect_flags(flags, out);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	if (!rd_u16(&r, &out->keepalive_s))
		return MQTT_RC_MALFORMED_PACKET;
	rc = rd_props(&r, out->version, MQTT_PROPS_CONNECT, &out->props);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	if (!rd_bin(&r, &out->client_id))
		return MQTT_RC_MALFORMED_PACKET;
	/* Not a valid MQTT string: malformed, closed without a CONNACK
	 * (Mosquitto's answer too), not "identifier rejected". */
	if (!mqtt_utf8_valid(out->client_id.ptr, out->client_id.len))
		return MQTT_RC_MALFORMED_PACKET;
	if (out->has_will && (rc = connect_will(&r, out)) != MQTT_RC_SUCCESS)
		return rc;
	rc = connect_credentials(&r, out);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	return rd_left(&r) == 0 ? MQTT_RC_SUCCESS : MQTT_RC_MALFORMED_PACKET;
}

/* Mosquitto's TOPIC_HIERARCHY_LIMIT: a topic or filter with more than 200
 * separators is refused (its test suite checks it), which also keeps the
 * level trees' walks short. */
#define TOPIC_SEPARATORS_MAX 200u

static bool topic_depth_ok(const uint8_t *s, size_t len)
{
	size_t n = 0;
	for (const uint8_t *p = s, *end = s + len;
	     (p = memchr(p, '/', (size_t)(end - p))); p++)
		if (++n > TOPIC_SEPARATORS_MAX)
			return false;
	return true;
}

/* Topic rules that need the properties (spec 3.3.2.1, 3.3.2.3.4). */
static enum mqtt_rc publish_topic_check(const struct mqtt_publish *out,
					uint8_t version)
{
	if (out->topic.len == 0) {
		if (version < MQTT_V5)
			return MQTT_RC_MALFORMED_PACKET;
		if (!(out->props.present & MQTT_PROP_BIT(MQTT_PROP_TOPIC_ALIAS)))
			return MQTT_RC_PROTOCOL_ERROR;
		return MQTT_RC_SUCCESS;
	}
	/* Wildcards in a topic name: Mosquitto answers protocol error
	 * (not 0x90), and its suite checks it. */
	if (memchr(out->topic.ptr, '+', out->topic.len) ||
	    memchr(out->topic.ptr, '#', out->topic.len))
		return MQTT_RC_PROTOCOL_ERROR;
	if (!topic_depth_ok(out->topic.ptr, out->topic.len))
		return MQTT_RC_PROTOCOL_ERROR;
	return MQTT_RC_SUCCESS;
}

enum mqtt_rc mqtt_decode_publish(uint8_t flags, const uint8_t *body,
				 size_t len, uint8_t version,
				 struct mqtt_publish *out)
{
	assert(out && (body || len == 0));
	assert_version(version);
	memset(out, 0, sizeof(*out));
	struct rd r = {body, len, 0};

	out->qos = (flags >> 1) & 0x3;
	out->dup = flags & 0x8;
	out->retain = flags & 0x1;
	/* Spec 3.3.1-2: DUP must be 0 for QoS 0 (Mosquitto: malformed). */
	if (out->qos == 3 || (out->dup && out->qos == 0))
		return MQTT_RC_MALFORMED_PACKET;
	if (!rd_bin(&r, &out->topic) ||
	    !mqtt_utf8_valid(out->topic.ptr, out->topic.len))
		return MQTT_RC_MALFORMED_PACKET;
	if (out->qos > 0 && !rd_u16(&r, &out->packet_id))
		return MQTT_RC_MALFORMED_PACKET;
	/* Packet id 0 (spec 2.2.1): Mosquitto answers protocol error. */
	if (out->qos > 0 && out->packet_id == 0)
		return MQTT_RC_PROTOCOL_ERROR;
	enum mqtt_rc rc = rd_props(&r, version, MQTT_PROPS_PUBLISH, &out->props);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	/* Spec 3.3.4-6: only the server sends subscription identifiers. */
	if (out->props.present & MQTT_PROP_BIT(MQTT_PROP_SUBSCRIPTION_IDENTIFIER))
		return MQTT_RC_PROTOCOL_ERROR;
	rc = publish_topic_check(out, version);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	(void)rd_bytes(&r, rd_left(&r), &out->payload);
	if (out->props.payload_format_indicator == 1 &&
	    !utf8_payload_valid(out->payload.ptr, out->payload.len))
		return MQTT_RC_PAYLOAD_FORMAT_INVALID;
	return MQTT_RC_SUCCESS;
}

/* Every reason code some PUBACK/PUBREC/PUBREL/PUBCOMP may carry (spec
 * 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1). Without the packet type only codes
 * outside all four lists can be refused here. */
static bool ack_reason_known(uint8_t reason)
{
	switch (reason) {
	case MQTT_RC_SUCCESS:
	case MQTT_RC_NO_MATCHING_SUBSCRIBERS:
	case MQTT_RC_UNSPECIFIED:
	case MQTT_RC_IMPL_SPECIFIC:
	case MQTT_RC_NOT_AUTHORIZED:
	case MQTT_RC_TOPIC_NAME_INVALID:
	case MQTT_RC_PACKET_ID_IN_USE:
	case MQTT_RC_PACKET_ID_NOT_FOUND:
	case MQTT_RC_QUOTA_EXCEEDED:
	case MQTT_RC_PAYLOAD_FORMAT_INVALID:
		return true;
	}
	return false;
}

/* props: where the properties go, or NULL to check them and drop them
 * (then only a body that has some pays for a table). */
static enum mqtt_rc decode_ack(const uint8_t *body, size_t len,
			       uint8_t version, uint16_t *packet_id,
			       uint8_t *reason, struct mqtt_props *props)
{
	assert(packet_id && reason && (body || len == 0));
	assert_version(version);
	struct rd r = {body, len, 0};

	*packet_id = 0;
	*reason = 0;
	if (!rd_u16(&r, packet_id))
		return MQTT_RC_MALFORMED_PACKET;
	if (version < MQTT_V5 && len != 2)
		return MQTT_RC_MALFORMED_PACKET;
	/* Mosquitto (handle__pubackcomp) answers a zero id with a protocol
	 * error. */
	if (*packet_id == 0)
		return MQTT_RC_PROTOCOL_ERROR;
	if (rd_left(&r) == 0)
		return MQTT_RC_SUCCESS;
	(void)rd_u8(&r, reason);
	if (rd_left(&r) > 0) {
		struct mqtt_props dropped;
		enum mqtt_rc rc = rd_props(&r, version, MQTT_PROPS_PUBACK,
					   props ? props : &dropped);
		if (rc != MQTT_RC_SUCCESS)
			return rc;
		if (rd_left(&r) != 0)
			return MQTT_RC_MALFORMED_PACKET;
	}
	return ack_reason_known(*reason) ? MQTT_RC_SUCCESS
					 : MQTT_RC_PROTOCOL_ERROR;
}

enum mqtt_rc mqtt_decode_ack(const uint8_t *body, size_t len, uint8_t version,
			     struct mqtt_ack *out)
{
	assert(out);
	memset(out, 0, sizeof(*out));
	return decode_ack(body, len, version, &out->packet_id, &out->reason,
			  &out->props);
}

enum mqtt_rc mqtt_decode_ack_id(const uint8_t *body, size_t len,
				uint8_t version, uint16_t *packet_id,
				uint8_t *reason)
{
	return decode_ack(body, len, version, packet_id, reason, NULL);
}

#define SUB_OPT_QOS 0x03
#define SUB_OPT_NO_LOCAL 0x04
#define SUB_OPT_RAP 0x08
#define SUB_OPT_RH_SHIFT 4
#define SUB_OPT_V5_RESERVED 0xc0

/* One SUBSCRIBE entry (spec 3.8.3). Mosquitto's handle__subscribe gives
 * the same answers, except that it calls retain handling 3 malformed where
 * the spec calls it a protocol error. */
static enum mqtt_rc subscribe_entry_check(struct rd *r, uint8_t version)
{
	struct mqtt_bytes filter;
	uint8_t opts;

	if (!rd_bin(r, &filter) ||
	    !mqtt_topic_filter_valid(filter.ptr, filter.len) ||
	    !topic_depth_ok(filter.ptr, filter.len) ||
	    !rd_u8(r, &opts))
		return MQTT_RC_MALFORMED_PACKET;
	if ((opts & SUB_OPT_QOS) == 3)
		return MQTT_RC_MALFORMED_PACKET;
	if (version < MQTT_V5)
		return (opts & ~SUB_OPT_QOS) ? MQTT_RC_MALFORMED_PACKET
					     : MQTT_RC_SUCCESS;
	if (opts & SUB_OPT_V5_RESERVED)
		return MQTT_RC_MALFORMED_PACKET;
	if ((opts >> SUB_OPT_RH_SHIFT) == 3)
		return MQTT_RC_PROTOCOL_ERROR;
	if ((opts & SUB_OPT_NO_LOCAL) && filter_is_shared(filter.ptr, filter.len))
		return MQTT_RC_PROTOCOL_ERROR;
	return MQTT_RC_SUCCESS;
}

static enum mqtt_rc unsubscribe_entry_check(struct rd *r, uint8_t version)
{
	struct mqtt_bytes filter;

	if (!rd_bin(r, &filter) ||
	    !mqtt_topic_filter_valid(filter.ptr, filter.len))
		return MQTT_RC_MALFORMED_PACKET;
	return MQTT_RC_SUCCESS;
}

/* The common shape of SUBSCRIBE and UNSUBSCRIBE: packet id, properties,
 * then entries validated one by one. Mosquitto calls a zero packet id and
 * an empty entry list malformed in both packets. */
static enum mqtt_rc decode_sub_common(
	const uint8_t *body, size_t len, uint8_t version,
	enum mqtt_props_where where, struct mqtt_subscribe *out,
	enum mqtt_rc (*entry_check)(struct rd *, uint8_t))
{
	assert(out && (body || len == 0));
	assert_version(version);
	memset(out, 0, sizeof(*out));
	struct rd r = {body, len, 0};

	if (!rd_u16(&r, &out->packet_id) || out->packet_id == 0)
		return MQTT_RC_MALFORMED_PACKET;
	enum mqtt_rc rc = rd_props(&r, version, where, &out->props);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	(void)rd_bytes(&r, rd_left(&r), &out->entries);
	struct rd e = {out->entries.ptr, out->entries.len, 0};
	if (rd_left(&e) == 0)
		return MQTT_RC_MALFORMED_PACKET;
	while (rd_left(&e) > 0) {
		if (out->count == CODEC_ENTRIES_MAX)
			return MQTT_RC_IMPL_SPECIFIC;
		rc = entry_check(&e, version);
		if (rc != MQTT_RC_SUCCESS)
			return rc;
		out->count++;
	}
	return MQTT_RC_SUCCESS;
}

enum mqtt_rc mqtt_decode_subscribe(const uint8_t *body, size_t len,
				   uint8_t version, struct mqtt_subscribe *out)
{
	return decode_sub_common(body, len, version, MQTT_PROPS_SUBSCRIBE, out,
				 subscribe_entry_check);
}

enum mqtt_rc mqtt_decode_unsubscribe(const uint8_t *body, size_t len,
				     uint8_t version,
				     struct mqtt_subscribe *out)
{
	return decode_sub_common(body, len, version, MQTT_PROPS_UNSUBSCRIBE,
				 out, unsubscribe_entry_check);
}

bool mqtt_subscribe_next(const struct mqtt_subscribe *sub, uint32_t *cursor,
			 struct mqtt_sub_entry *entry)
{
	assert(sub && cursor && entry);
	assert(*cursor <= sub->entries.len);
	struct rd r = {sub->entries.ptr, sub->entries.len, *cursor};
	uint8_t opts = 0;

	if (rd_left(&r) == 0)
		return false;
	/* Validated by mqtt_decode_subscribe; 3.1.1 options have only QoS
	 * bits set, so reading them as 5.0 options gives the same answer. */
	bool ok = rd_bin(&r, &entry->filter) && rd_u8(&r, &opts);
	assert(ok);
	(void)ok;
	entry->qos = opts & SUB_OPT_QOS;
	entry->no_local = opts & SUB_OPT_NO_LOCAL;
	entry->retain_as_published = opts & SUB_OPT_RAP;
	entry->retain_handling = (opts >> SUB_OPT_RH_SHIFT) & 0x3;
	*cursor = (uint32_t)r.pos;
	return true;
}

bool mqtt_unsubscribe_next(const struct mqtt_subscribe *unsub,
			   uint32_t *cursor, struct mqtt_bytes *filter)
{
	assert(unsub && cursor && filter);
	assert(*cursor <= unsub->entries.len);
	struct rd r = {unsub->entries.ptr, unsub->entries.len, *cursor};

	if (rd_left(&r) == 0)
		return false;
	bool ok = rd_bin(&r, filter);
	assert(ok);
	(void)ok;
	*cursor = (uint32_t)r.pos;
	return true;
}

/* Reason code, then properties, each optional from the end (spec
 * 3.14.2.1 and 3.14.2.2.1 for DISCONNECT). */
static enum mqtt_rc decode_reason_props(struct rd *r, uint8_t version,
					enum mqtt_props_where where,
					struct mqtt_disconnect *out)
{
	if (rd_left(r) == 0)
		return MQTT_RC_SUCCESS;
	(void)rd_u8(r, &out->reason);
	if (rd_left(r) == 0)
		return MQTT_RC_SUCCESS;
	enum mqtt_rc rc = rd_props(r, version, where, &out->props);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	return rd_left(r) == 0 ? MQTT_RC_SUCCESS : MQTT_RC_MALFORMED_PACKET;
}

enum mqtt_rc mqtt_decode_disconnect(const uint8_t *body, size_t len,
				    uint8_t version,
				    struct mqtt_disconnect *out)
{
	assert(out && (body || len == 0));
	assert_version(version);
	memset(out, 0, sizeof(*out));
	struct rd r = {body, len, 0};

	if (version < MQTT_V5)
		return len == 0 ? MQTT_RC_SUCCESS : MQTT_RC_MALFORMED_PACKET;
	return decode_reason_props(&r, version, MQTT_PROPS_DISCONNECT, out);
}

enum mqtt_rc mqtt_decode_auth(const uint8_t *body, size_t len,
			      struct mqtt_disconnect *out)
{
	assert(out && (body || len == 0));
	memset(out, 0, sizeof(*out));

	/* Spec 3.15.2.2: only reason and properties together may be left
	 * out; Mosquitto's handle__auth reads both once there is a body. */
	if (len == 1)
		return MQTT_RC_MALFORMED_PACKET;
	struct rd r = {body, len, 0};
	enum mqtt_rc rc = decode_reason_props(&r, MQTT_V5, MQTT_PROPS_AUTH, out);
	if (rc != MQTT_RC_SUCCESS)
		return rc;
	switch (out->reason) {
	case MQTT_RC_SUCCESS:
	case MQTT_RC_CONTINUE_AUTH:
	case MQTT_RC_REAUTHENTICATE:
		return MQTT_RC_SUCCESS;
	}
	return MQTT_RC_PROTOCOL_ERROR;
}

/* ---- writing ------------------------------------------------------------- */

struct wr {
	uint8_t *p;
	size_t cap;
	size_t pos;
};

static void wr_u8(struct wr *w, uint8_t v)
{
	assert(w->pos < w->cap);
	w->p[w->pos++] = v;
}

static void wr_u16(struct wr *w, uint16_t v)
{
	wr_u8(w, (uint8_t)(v >> 8));
	wr_u8(w, (uint8_t)v);
}

static void wr_u32(struct wr *w, uint32_t v)
{
	wr_u16(w, (uint16_t)(v >> 16));
	wr_u16(w, (uint16_t)v);
}

static void wr_mem(struct wr *w, const uint8_t *src, size_t n)
{
	assert(n <= w->cap - w->pos);
	if (n)
		memcpy(w->p + w->pos, src, n);
	w->pos += n;
}

static void wr_varint(struct wr *w, uint32_t v)
{
	assert(w->cap - w->pos >= mqtt_varint_size(v));
	w->pos += mqtt_varint_encode(w->p + w->pos, v);
}

/* A string or binary field: callers never hand us more than a u16. */
static void wr_bin(struct wr *w, struct mqtt_bytes b)
{
	assert(b.len <= UINT16_MAX);
	wr_u16(w, (uint16_t)b.len);
	wr_mem(w, b.ptr, b.len);
}

static size_t bin_size(struct mqtt_bytes b)
{
	assert(b.len <= UINT16_MAX);
	return 2 + (size_t)b.len;
}

size_t mqtt_varint_size(uint32_t v)
{
	assert(v <= MQTT_VARINT_MAX);
	return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

size_t mqtt_varint_encode(uint8_t *buf, uint32_t v)
{
	assert(buf && v <= MQTT_VARINT_MAX);
	size_t n = 0;

	do {
		uint8_t b = v & 0x7f;
		v >>= 7;
		buf[n++] = (uint8_t)(v ? b | 0x80 : b);
	} while (v);
	return n;
}

/* ---- encoding properties ------------------------------------------------- */

static uint64_t props_present(const struct mqtt_props *props)
{
	if (!props)
		return 0;
	/* A bit for an identifier the spec does not define is our bug. */
	assert((props->present >> ARRAY_LEN(prop_table)) == 0);
	for (uint8_t id = 0; id < ARRAY_LEN(prop_table); id++)
		assert(!(props->present & MQTT_PROP_BIT(id)) ||
		       prop_table[id].type != PT_NONE);
	/* User properties live in raw; their bit is only a summary. */
	return props->present & ~MQTT_PROP_BIT(MQTT_PROP_USER_PROPERTY);
}

static uint32_t prop_num(const struct mqtt_props *props,
			 const struct prop_info *info)
{
	const uint8_t *field = (const uint8_t *)props + info->offset;

	switch (info->type) {
	case PT_BYTE:
		return *field;
	case PT_U16:
		return *(const uint16_t *)(const void *)field;
	default:
		return *(const uint32_t *)(const void *)field;
	}
}

static struct mqtt_bytes prop_bytes(const struct mqtt_props *props,
				    const struct prop_info *info)
{
	const uint8_t *field = (const uint8_t *)props + info->offset;
	return *(const struct mqtt_bytes *)(const void *)field;
}

static size_t prop_value_size(const struct mqtt_props *props,
			      const struct prop_info *info)
{
	switch (info->type) {
	case PT_BYTE:
		return 1;
	case PT_U16:
		return 2;
	case PT_U32:
		return 4;
	case PT_VARINT:
		return mqtt_varint_size(prop_num(props, info));
	default:
		return bin_size(prop_bytes(props, info));
	}
}

/* Bytes of the block body (no length prefix). */
static size_t props_body_size(const struct mqtt_props *props,
			      const struct mqtt_props *user_props_from)
{
	uint64_t present = props_present(props);
	size_t size = 0;

	for (uint8_t id = 1; id < ARRAY_LEN(prop_table); id++) {
		if (present & MQTT_PROP_BIT(id))
			size += 1 + prop_value_size(props, &prop_table[id]);
	}
	if (user_props_from) {
		uint32_t cursor = 0;
		struct mqtt_bytes k, v;
		while (mqtt_user_props_next(user_props_from, &cursor, &k, &v))
			size += 1 + bin_size(k) + bin_size(v);
	}
	return size;
}

static void wr_prop_value(struct wr *w, const struct mqtt_props *props,
			  const struct prop_info *info)
{
	uint32_t num = info->type <= PT_VARINT ? prop_num(props, info) : 0;

	switch (info->type) {
	case PT_BYTE:
		wr_u8(w, (uint8_t)num);
		break;
	case PT_U16:
		wr_u16(w, (uint16_t)num);
		break;
	case PT_U32:
		wr_u32(w, num);
		break;
	case PT_VARINT:
		wr_varint(w, num);
		break;
	default:
		wr_bin(w, prop_bytes(props, info));
		break;
	}
}

/* Writes the block with its length; body is props_body_size(). The ids
 * in `first` (0-terminated, may be NULL) go first in that order, the rest
 * in id order. */
static void wr_props(struct wr *w, const struct mqtt_props *props,
		     const struct mqtt_props *user_props_from, size_t body,
		     const uint8_t *first)
{
	uint64_t present = props_present(props);
	size_t start;

	wr_varint(w, (uint32_t)body);
	start = w->pos;
	for (; first && *first; first++) {
		if (!(present & MQTT_PROP_BIT(*first)))
			continue;
		wr_u8(w, *first);
		wr_prop_value(w, props, &prop_table[*first]);
		present &= ~MQTT_PROP_BIT(*first);
	}
	for (uint8_t id = 1; id < ARRAY_LEN(prop_table); id++) {
		if (!(present & MQTT_PROP_BIT(id)))
			continue;
		wr_u8(w, id);
		wr_prop_value(w, props, &prop_table[id]);
	}
	if (user_props_from) {
		uint32_t cursor = 0;
		struct mqtt_bytes k, v;
		while (mqtt_user_props_next(user_props_from, &cursor, &k, &v)) {
			wr_u8(w, MQTT_PROP_USER_PROPERTY);
			wr_bin(w, k);
			wr_bin(w, v);
		}
	}
	assert(w->pos - start == body);
}

size_t mqtt_props_size(const struct mqtt_props *props,
		       const struct mqtt_props *user_props_from)
{
	size_t body = props_body_size(props, user_props_from);

	if (body > MQTT_VARINT_MAX)
		return 0;
	return mqtt_varint_size((uint32_t)body) + body;
}

size_t mqtt_props_encode(uint8_t *buf, size_t cap,
			 const struct mqtt_props *props,
			 const struct mqtt_props *user_props_from)
{
	assert(buf);
	size_t body = props_body_size(props, user_props_from);
	if (body > MQTT_VARINT_MAX)
		return 0;
	size_t total = mqtt_varint_size((uint32_t)body) + body;
	if (total > cap)
		return 0;

	struct wr w = {buf, cap, 0};
	wr_props(&w, props, user_props_from, body, NULL);
	assert(w.pos == total);
	return total;
}

/* ---- encoding packets ---------------------------------------------------- */

/* Packet encoders write a props struct together with its own user
 * properties (a decoded struct re-encodes to the same properties). */
struct props_plan {
	const struct mqtt_props *props;
	size_t body;	/* property bytes after the length */
	size_t size;	/* whole block, 0 when the version has none */
};

static struct props_plan props_plan(const struct mqtt_props *props,
				    uint8_t version)
{
	struct props_plan p = {props, 0, 0};

	if (version < MQTT_V5)
		return p;
	p.body = props_body_size(props, props);
	/* Too big for any packet: a size wr_begin() refuses that still
	 * cannot overflow when added to the rest of the packet. */
	p.size = p.body > MQTT_VARINT_MAX
			 ? (size_t)MQTT_VARINT_MAX + 1
			 : mqtt_varint_size((uint32_t)p.body) + p.body;
	return p;
}

static void wr_plan_ordered(struct wr *w, const struct props_plan *p,
			    const uint8_t *first)
{
	if (p->size)
		wr_props(w, p->props, p->props, p->body, first);
}

static void wr_plan(struct wr *w, const struct props_plan *p)
{
	wr_plan_ordered(w, p, NULL);
}

/* Starts a packet whose variable part is `body` bytes: returns the total
 * size, or 0 if it cannot be sent or does not fit `cap`. */
static size_t wr_begin(struct wr *w, uint8_t *buf, size_t cap, uint8_t byte0,
		       size_t body)
{
	assert(buf);
	if (body > MQTT_VARINT_MAX)
		return 0;
	size_t total = 1 + mqtt_varint_size((uint32_t)body) + body;
	if (total > cap)
		return 0;
	*w = (struct wr){buf, total, 0};
	wr_u8(w, byte0);
	wr_varint(w, (uint32_t)body);
	return total;
}

size_t mqtt_encode_connack(uint8_t *buf, size_t cap, uint8_t version,
			   bool session_present, uint8_t reason,
			   const struct mqtt_props *props)
{
	assert_version(version);
	struct props_plan pp = props_plan(props, version);
	struct wr w;
	size_t total = wr_begin(&w, buf, cap, MQTT_CONNACK << 4, 2 + pp.size);

	if (!total)
		return 0;
	/* Mosquitto 2.0's order (clients and its test suite compare bytes):
	 * what the CONNECT decided, then the broker's limits. */
	static const uint8_t connack_order[] = {
		MQTT_PROP_TOPIC_ALIAS_MAXIMUM, MQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER,
		MQTT_PROP_SERVER_KEEP_ALIVE, MQTT_PROP_RETAIN_AVAILABLE,
		MQTT_PROP_MAXIMUM_PACKET_SIZE, MQTT_PROP_RECEIVE_MAXIMUM,
		MQTT_PROP_MAXIMUM_QOS, 0,
	};
	wr_u8(&w, session_present ? 1 : 0);
	wr_u8(&w, reason);
	wr_plan_ordered(&w, &pp, connack_order);
	assert(w.pos == total);
	return total;
}

size_t mqtt_encode_ack(uint8_t *buf, size_t cap, uint8_t type,
		       uint8_t version, uint16_t packet_id, uint8_t reason,
		       const struct mqtt_props *props)
{
	assert(type >= MQTT_PUBACK && type <= MQTT_PUBCOMP);
	assert_version(version);
	struct props_plan pp = props_plan(props, version);
	/* Spec 3.4.2.1/3.4.2.2.1: reason and properties may each be left
	 * off from the end when they carry nothing. */
	bool with_props = pp.body > 0;
	bool with_reason = version >= MQTT_V5 && (reason != 0 || with_props);
	size_t body = 2 + (with_reason ? 1 : 0) + (with_props ? pp.size : 0);
	uint8_t byte0 = (uint8_t)(type << 4 | frame_flags[type]);
	struct wr w;
	size_t total = wr_begin(&w, buf, cap, byte0, body);

	if (!total)
		return 0;
	wr_u16(&w, packet_id);
	if (with_reason)
		wr_u8(&w, reason);
	if (with_props)
		wr_plan(&w, &pp);
	assert(w.pos == total);
	return total;
}

size_t mqtt_encode_suback(uint8_t *buf, size_t cap, uint8_t type,
			  uint8_t version, uint16_t packet_id,
			  const uint8_t *reasons, size_t count,
			  const struct mqtt_props *props)
{
	assert(type == MQTT_SUBACK || type == MQTT_UNSUBACK);
	assert(reasons || count == 0);
	assert_version(version);
	/* A 3.1.1 UNSUBACK is the packet id alone (spec 3.11). */
	if (type == MQTT_UNSUBACK && version < MQTT_V5)
		count = 0;
	struct props_plan pp = props_plan(props, version);
	if (count > MQTT_VARINT_MAX)
		return 0;
	struct wr w;
	size_t total = wr_begin(&w, buf, cap, (uint8_t)(type << 4),
				2 + pp.size + count);

	if (!total)
		return 0;
	wr_u16(&w, packet_id);
	wr_plan(&w, &pp);
	wr_mem(&w, reasons, count);
	assert(w.pos == total);
	return total;
}

size_t mqtt_encode_pingresp(uint8_t *buf, size_t cap)
{
	struct wr w;
	return wr_begin(&w, buf, cap, MQTT_PINGRESP << 4, 0);
}

size_t mqtt_encode_disconnect(uint8_t *buf, size_t cap, uint8_t version,
			      uint8_t reason, const struct mqtt_props *props)
{
	assert_version(version);
	if (version < MQTT_V5)
		return 0;
	struct props_plan pp = props_plan(props, version);
	/* Spec 3.14.2.1: an empty body means reason 0 and no properties. */
	bool with_props = pp.body > 0;
	bool with_reason = reason != 0 || with_props;
	size_t body = (with_reason ? 1 : 0) + (with_props ? pp.size : 0);
	struct wr w;
	size_t total = wr_begin(&w, buf, cap, MQTT_DISCONNECT << 4, body);

	if (!total)
		return 0;
	if (with_reason)
		wr_u8(&w, reason);
	if (with_props)
		wr_plan(&w, &pp);
	assert(w.pos == total);
	return total;
}

size_t mqtt_encode_publish(uint8_t *buf, size_t cap, uint8_t version,
			   const struct mqtt_publish *pub,
			   const struct mqtt_props *props)
{
	assert(pub && pub->qos <= 2);
	assert(pub->payload.ptr || pub->payload.len == 0);
	assert_version(version);
	struct props_plan pp = props_plan(props, version);
	size_t body = bin_size(pub->topic) + (pub->qos ? 2 : 0) + pp.size +
		      pub->payload.len;
	uint8_t byte0 = (uint8_t)(MQTT_PUBLISH << 4 | (pub->dup ? 0x8 : 0) |
				  pub->qos << 1 | (pub->retain ? 0x1 : 0));
	struct wr w;
	size_t total = wr_begin(&w, buf, cap, byte0, body);

	if (!total)
		return 0;
	wr_bin(&w, pub->topic);
	if (pub->qos)
		wr_u16(&w, pub->packet_id);
	wr_plan(&w, &pp);
	wr_mem(&w, pub->payload.ptr, pub->payload.len);
	assert(w.pos == total);
	return total;
}

static uint8_t connect_flags_byte(const struct mqtt_connect *c)
{
	uint8_t f = 0;

	if (c->clean_start)
		f |= CONNECT_FLAG_CLEAN;
	if (c->has_will) {
		f |= CONNECT_FLAG_WILL;
		f |= (uint8_t)(c->will.qos << CONNECT_FLAG_WILL_QOS_SHIFT);
		if (c->will.retain)
			f |= CONNECT_FLAG_WILL_RETAIN;
	}
	if (c->has_username)
		f |= CONNECT_FLAG_USERNAME;
	if (c->has_password)
		f |= CONNECT_FLAG_PASSWORD;
	return f;
}

static struct mqtt_bytes connect_protocol_name(uint8_t version)
{
	static const uint8_t mqtt[] = "MQTT", mqisdp[] = "MQIsdp";

	if (version == MQTT_V31)
		return (struct mqtt_bytes){mqisdp, 6};
	return (struct mqtt_bytes){mqtt, 4};
}

/* Variable header and payload size after the connect properties. */
static size_t connect_payload_size(const struct mqtt_connect *c,
				   const struct props_plan *will_pp)
{
	size_t size = bin_size(c->client_id);

	if (c->has_will)
		size += will_pp->size + bin_size(c->will.topic) +
			bin_size(c->will.payload);
	if (c->has_username)
		size += bin_size(c->username);
	if (c->has_password)
		size += bin_size(c->password);
	return size;
}

size_t mqtt_encode_connect(uint8_t *buf, size_t cap,
			   const struct mqtt_connect *c)
{
	assert(c && c->will.qos <= 2);
	assert_version(c->version);
	struct mqtt_bytes name = connect_protocol_name(c->version);
	struct props_plan pp = props_plan(&c->props, c->version);
	struct props_plan will_pp = props_plan(&c->will.props, c->version);
	size_t body = bin_size(name) + 1 + 1 + 2 + pp.size +
		      connect_payload_size(c, &will_pp);
	struct wr w;
	size_t total = wr_begin(&w, buf, cap, MQTT_CONNECT << 4, body);

	if (!total)
		return 0;
	wr_bin(&w, name);
	wr_u8(&w, c->version);
	wr_u8(&w, connect_flags_byte(c));
	wr_u16(&w, c->keepalive_s);
	wr_plan(&w, &pp);
	wr_bin(&w, c->client_id);
	if (c->has_will) {
		wr_plan(&w, &will_pp);
		wr_bin(&w, c->will.topic);
		wr_bin(&w, c->will.payload);
	}
	if (c->has_username)
		wr_bin(&w, c->username);
	if (c->has_password)
		wr_bin(&w, c->password);
	assert(w.pos == total);
	return total;
}

static uint8_t sub_options_byte(const struct mqtt_sub_entry *e,
				uint8_t version)
{
	assert(e->qos <= 2 && e->retain_handling <= 2);
	uint8_t opts = e->qos;

	if (version < MQTT_V5)
		return opts;
	if (e->no_local)
		opts |= SUB_OPT_NO_LOCAL;
	if (e->retain_as_published)
		opts |= SUB_OPT_RAP;
	return (uint8_t)(opts | e->retain_handling << SUB_OPT_RH_SHIFT);
}

size_t mqtt_encode_subscribe(uint8_t *buf, size_t cap, uint8_t version,
			     uint16_t packet_id,
			     const struct mqtt_sub_entry *entries, size_t count,
			     const struct mqtt_props *props)
{
	assert(entries || count == 0);
	assert_version(version);
	struct props_plan pp = props_plan(props, version);
	size_t body = 2 + pp.size;

	for (size_t i = 0; i < count && body <= MQTT_VARINT_MAX; i++)
		body += bin_size(entries[i].filter) + 1;
	struct wr w;
	size_t total = wr_begin(&w, buf, cap,
				MQTT_SUBSCRIBE << 4 | frame_flags[MQTT_SUBSCRIBE],
				body);
	if (!total)
		return 0;
	wr_u16(&w, packet_id);
	wr_plan(&w, &pp);
	for (size_t i = 0; i < count; i++) {
		wr_bin(&w, entries[i].filter);
		wr_u8(&w, sub_options_byte(&entries[i], version));
	}
	assert(w.pos == total);
	return total;
}
