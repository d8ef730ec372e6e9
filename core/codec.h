/* MQTT packet codec: bytes in, structs out; structs in, bytes out.
 *
 * Decoding is in place: every struct mqtt_bytes points into the caller's
 * buffer, which must outlive the decoded struct. Nothing here allocates,
 * touches a socket, or keeps state between calls, so the decoder can be fed
 * straight from an io_uring provided buffer and fuzzed in isolation.
 *
 * Every decoder validates completely (lengths, reserved bits, UTF-8, topic
 * rules, property rules) and answers with an enum mqtt_rc: MQTT_RC_SUCCESS,
 * or the reason the connection must be closed with. For MQTT 3.1.1 the
 * caller just closes; for 5.0 it sends DISCONNECT with that reason. */
#ifndef KITE_CODEC_H
#define KITE_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt.h"

struct mqtt_bytes {
	const uint8_t *ptr;
	uint32_t len;
};

/* ---- framing ---------------------------------------------------------- */

struct mqtt_fixed_header {
	uint8_t type;		/* enum mqtt_packet_type */
	uint8_t flags;		/* low nibble of byte 0 */
	uint8_t header_len;	/* 2..5: byte 0 plus the remaining-length bytes */
	uint32_t remaining_len;
};

enum mqtt_frame_status {
	MQTT_FRAME_NEED_MORE = 0, /* buf holds no complete fixed header yet */
	MQTT_FRAME_OK = 1,	  /* *out is valid; the packet is
				     header_len + remaining_len bytes long and
				     may not all be in buf yet */
	MQTT_FRAME_MALFORMED = -1,
};

/* Parses the fixed header. MALFORMED for: packet type 0, a remaining
 * length longer than 4 bytes, reserved flag bits that are wrong for the
 * type (PUBREL/SUBSCRIBE/UNSUBSCRIBE must have 0x2, all others except
 * PUBLISH 0x0), PUBLISH with QoS 3. */
enum mqtt_frame_status mqtt_frame_parse(const uint8_t *buf, size_t len,
					struct mqtt_fixed_header *out);

/* The same for MQTT 3.1 (protocol level 3), which fixes no flags but
 * PUBLISH's: its clients set DUP and QoS on PUBREL, SUBSCRIBE and
 * UNSUBSCRIBE (a resent PUBREL carries DUP), and Mosquitto accepts them. */
enum mqtt_frame_status mqtt_frame_parse_v31(const uint8_t *buf, size_t len,
					    struct mqtt_fixed_header *out);

/* ---- MQTT 5 properties ------------------------------------------------- */

/* Bit (1u << id) set in mqtt_props.present for each property seen; ids are
 * < 64 so a uint64_t covers them. */
#define MQTT_PROP_BIT(id) (1ull << (id))

struct mqtt_props {
	uint64_t present;
	uint8_t payload_format_indicator;
	uint8_t request_problem_information;
	uint8_t request_response_information;
	uint8_t maximum_qos;
	uint8_t retain_available;
	uint8_t wildcard_subscription_available;
	uint8_t subscription_identifier_available;
	uint8_t shared_subscription_available;
	uint16_t server_keep_alive;
	uint16_t receive_maximum;
	uint16_t topic_alias_maximum;
	uint16_t topic_alias;
	uint32_t message_expiry_interval;
	uint32_t session_expiry_interval;
	uint32_t will_delay_interval;
	uint32_t maximum_packet_size;
	uint32_t subscription_identifier; /* the first one, if several */
	struct mqtt_bytes content_type;
	struct mqtt_bytes response_topic;
	struct mqtt_bytes correlation_data;
	struct mqtt_bytes assigned_client_identifier;
	struct mqtt_bytes authentication_method;
	struct mqtt_bytes authentication_data;
	struct mqtt_bytes response_information;
	struct mqtt_bytes server_reference;
	struct mqtt_bytes reason_string;
	/* Every user property, in wire order, as the raw encoded run of
	 * (0x26, key, value) triples interleaved with other properties
	 * skipped: iterate with mqtt_user_props_next. */
	struct mqtt_bytes raw; /* the whole property block, without its length */
	uint16_t user_property_count;
};

/* Where a property block sits; decides which properties are allowed. */
enum mqtt_props_where {
	MQTT_PROPS_CONNECT,
	MQTT_PROPS_WILL,
	MQTT_PROPS_CONNACK,
	MQTT_PROPS_PUBLISH,
	MQTT_PROPS_PUBACK, /* also PUBREC, PUBREL, PUBCOMP */
	MQTT_PROPS_SUBSCRIBE,
	MQTT_PROPS_SUBACK,
	MQTT_PROPS_UNSUBSCRIBE,
	MQTT_PROPS_UNSUBACK,
	MQTT_PROPS_DISCONNECT,
	MQTT_PROPS_AUTH,
};

/* Decodes a property block starting at its variable-byte length.
 * *consumed is the block's total size including the length. Errors:
 * MALFORMED for truncation, bad UTF-8, an unknown identifier, or one not
 * allowed at `where` (spec 2.2.2.2); PROTOCOL_ERROR (as the spec says) for
 * a property that appears twice where the spec forbids it, or a value
 * outside its range (receive maximum 0, maximum packet size 0, payload
 * format > 1, ...). */
enum mqtt_rc mqtt_props_decode(const uint8_t *buf, size_t len,
			       enum mqtt_props_where where,
			       struct mqtt_props *out, size_t *consumed);

/* Walks the user properties of a decoded block in wire order. *cursor
 * starts at 0. Returns false when there are no more. */
bool mqtt_user_props_next(const struct mqtt_props *props, uint32_t *cursor,
			  struct mqtt_bytes *key, struct mqtt_bytes *value);

/* Copies the properties of a decoded block whose bit is in keep
 * (MQTT_PROP_BIT; user properties too), in wire order, to out (cap: at
 * least props->raw.len). Returns the bytes written. Mosquitto forwards a
 * message's properties in the order they came, and clients compare. */
size_t mqtt_props_select(const struct mqtt_props *props, uint64_t keep,
			 uint8_t *out, size_t cap);

/* ---- packets a client sends ------------------------------------------- */

struct mqtt_will {
	struct mqtt_bytes topic;
	struct mqtt_bytes payload;
	uint8_t qos;
	bool retain;
	struct mqtt_props props;
};

struct mqtt_connect {
	uint8_t version; /* enum mqtt_version */
	/* 3.1/3.1.1 level with 0x80 set: Mosquitto's mark of a bridge (a
	 * broker connecting as a client). version is without it. */
	bool bridge;
	bool clean_start; /* "clean session" in 3.1.1 */
	uint16_t keepalive_s;
	struct mqtt_bytes client_id; /* may be empty */
	bool has_will, has_username, has_password;
	struct mqtt_will will;
	struct mqtt_bytes username;
	struct mqtt_bytes password;
	struct mqtt_props props;
};

/* body/len: the variable header and payload (after the fixed header).
 * UNSUPPORTED_PROTOCOL_VERSION when the protocol name/level is not
 * "MQIsdp"/3, "MQTT"/4 or "MQTT"/5 (out->version is then still set to the
 * level byte seen, so the caller can answer in the right dialect).
 * CLIENT_ID_NOT_VALID when the client id is not valid UTF-8.
 * MALFORMED for everything else that breaks the spec: reserved flag set,
 * will flags without will, password without username in 3.1.1, will QoS 3,
 * invalid UTF-8 in will topic/username, wildcards in the will topic,
 * trailing bytes. */
enum mqtt_rc mqtt_decode_connect(const uint8_t *body, size_t len,
				 struct mqtt_connect *out);

struct mqtt_publish {
	struct mqtt_bytes topic; /* may be empty in 5.0 with a topic alias */
	struct mqtt_bytes payload;
	uint8_t qos;
	bool retain, dup;
	uint16_t packet_id; /* 0 for QoS 0 */
	struct mqtt_props props;
};

/* flags: the fixed header's low nibble. MALFORMED for: truncation,
 * packet id 0 with QoS > 0, invalid UTF-8 in the topic, an empty topic in
 * 3.1.1 (in 5.0 PROTOCOL_ERROR, and only when no topic alias is given),
 * DUP set with QoS 0. TOPIC_NAME_INVALID for
 * '+' or '#' in the topic. With version 5 the property block is decoded
 * (MQTT_PROPS_PUBLISH) and a subscription identifier from a client is a
 * PROTOCOL_ERROR. A payload format indicator of 1 with a payload that is
 * not UTF-8 is PAYLOAD_FORMAT_INVALID. */
enum mqtt_rc mqtt_decode_publish(uint8_t flags, const uint8_t *body,
				 size_t len, uint8_t version,
				 struct mqtt_publish *out);

/* PUBACK, PUBREC, PUBREL, PUBCOMP. A 5.0 body may stop after the packet id
 * (reason 0) or after the reason (no properties). */
struct mqtt_ack {
	uint16_t packet_id;
	uint8_t reason;
	struct mqtt_props props;
};
enum mqtt_rc mqtt_decode_ack(const uint8_t *body, size_t len, uint8_t version,
			     struct mqtt_ack *out);
/* The same checks and answers, keeping only the packet id and reason: a
 * broker handles one per delivery at QoS 1 and 2, and filling the
 * property table (over 200 bytes) would cost more than the rest. */
enum mqtt_rc mqtt_decode_ack_id(const uint8_t *body, size_t len,
				uint8_t version, uint16_t *packet_id,
				uint8_t *reason);

/* SUBSCRIBE and UNSUBSCRIBE are decoded and fully validated in one pass
 * (at least one entry; every filter non-empty, valid UTF-8, wildcards
 * whole levels, '#' last; requested QoS <= 2 and reserved option bits 0;
 * in 5.0 retain handling <= 2, and no_local on a shared subscription is a
 * PROTOCOL_ERROR); then the entries are walked with the _next functions,
 * which cannot fail. A bad filter is MALFORMED in both versions: the spec
 * makes a malformed filter a malformed packet. */
struct mqtt_subscribe {
	uint16_t packet_id;
	struct mqtt_props props;
	struct mqtt_bytes entries; /* raw entry list */
	uint16_t count;
};

struct mqtt_sub_entry {
	struct mqtt_bytes filter;
	uint8_t qos;
	bool no_local;		/* 5.0 */
	bool retain_as_published; /* 5.0 */
	uint8_t retain_handling;  /* 5.0: 0, 1 or 2 */
};

enum mqtt_rc mqtt_decode_subscribe(const uint8_t *body, size_t len,
				   uint8_t version, struct mqtt_subscribe *out);
bool mqtt_subscribe_next(const struct mqtt_subscribe *sub, uint32_t *cursor,
			 struct mqtt_sub_entry *entry);

enum mqtt_rc mqtt_decode_unsubscribe(const uint8_t *body, size_t len,
				     uint8_t version,
				     struct mqtt_subscribe *out);
bool mqtt_unsubscribe_next(const struct mqtt_subscribe *unsub,
			   uint32_t *cursor, struct mqtt_bytes *filter);

/* DISCONNECT (5.0: optional reason and properties; 3.1.1: empty body) and
 * AUTH (5.0 only). */
struct mqtt_disconnect {
	uint8_t reason;
	struct mqtt_props props;
};
enum mqtt_rc mqtt_decode_disconnect(const uint8_t *body, size_t len,
				    uint8_t version,
				    struct mqtt_disconnect *out);
enum mqtt_rc mqtt_decode_auth(const uint8_t *body, size_t len,
			      struct mqtt_disconnect *out);

/* ---- validation helpers ------------------------------------------------ */

/* MQTT UTF-8 rules (spec 1.5.4): well-formed, no surrogates, no U+0000.
 * Like Mosquitto, also refuses the control characters U+0001..U+001F and
 * U+007F..U+009F, and the non-characters U+FDD0..U+FDEF and U+xFFFE/F. */
bool mqtt_utf8_valid(const uint8_t *s, size_t len);
/* A topic name a client may publish to: 1..65535 bytes, valid UTF-8, no
 * '+' or '#'. */
bool mqtt_topic_name_valid(const uint8_t *s, size_t len);
/* A topic filter: non-empty, valid UTF-8, '+' and '#' occupy whole levels,
 * '#' only as the last level. $share/GROUP/FILTER is accepted here when
 * GROUP is non-empty without wildcards and FILTER is itself valid. */
bool mqtt_topic_filter_valid(const uint8_t *s, size_t len);

/* ---- encoding ---------------------------------------------------------- */

/* Writes the variable byte integer; returns its length (1..4). v must be
 * <= MQTT_VARINT_MAX. */
size_t mqtt_varint_encode(uint8_t *buf, uint32_t v);
size_t mqtt_varint_size(uint32_t v);

/* Encoders write into buf (cap bytes) and return the packet's length, or 0
 * if it does not fit. `props` may be NULL (no properties); for version < 5
 * properties and reason codes beyond what 3.1.1 carries are left out. */

/* Properties are encoded from a struct mqtt_props: every field whose bit
 * is in `present` is written, then the raw user properties of
 * `user_props_from` (may be NULL), which is how a broker passes a
 * publisher's user properties through untouched. Returns the encoded
 * block size including its length prefix, or 0 if cap is too small. */
size_t mqtt_props_encode(uint8_t *buf, size_t cap,
			 const struct mqtt_props *props,
			 const struct mqtt_props *user_props_from);
size_t mqtt_props_size(const struct mqtt_props *props,
		       const struct mqtt_props *user_props_from);

/* CONNACK: for 3.1.1 `reason` must be an enum mqtt_v3_connack. */
size_t mqtt_encode_connack(uint8_t *buf, size_t cap, uint8_t version,
			   bool session_present, uint8_t reason,
			   const struct mqtt_props *props);
/* PUBACK/PUBREC/PUBREL/PUBCOMP: type picks which; in 5.0 a SUCCESS reason
 * with no properties is sent in the short 2-byte form. */
size_t mqtt_encode_ack(uint8_t *buf, size_t cap, uint8_t type,
		       uint8_t version, uint16_t packet_id, uint8_t reason,
		       const struct mqtt_props *props);
/* SUBACK/UNSUBACK: one reason (granted QoS or failure) per entry. For
 * UNSUBACK with version < 5 the reasons are not sent. */
size_t mqtt_encode_suback(uint8_t *buf, size_t cap, uint8_t type,
			  uint8_t version, uint16_t packet_id,
			  const uint8_t *reasons, size_t count,
			  const struct mqtt_props *props);
size_t mqtt_encode_pingresp(uint8_t *buf, size_t cap);
/* DISCONNECT from the server: 5.0 only (3.1.1 has none); returns 0 for
 * version < 5. */
size_t mqtt_encode_disconnect(uint8_t *buf, size_t cap, uint8_t version,
			      uint8_t reason, const struct mqtt_props *props);
/* A complete PUBLISH (what a client would send; the broker's fan-out path
 * builds its packets from pieces, see io/). */
size_t mqtt_encode_publish(uint8_t *buf, size_t cap, uint8_t version,
			   const struct mqtt_publish *pub,
			   const struct mqtt_props *props);
/* A complete CONNECT, for the bench client and tests. */
size_t mqtt_encode_connect(uint8_t *buf, size_t cap,
			   const struct mqtt_connect *c);
size_t mqtt_encode_subscribe(uint8_t *buf, size_t cap, uint8_t version,
			     uint16_t packet_id,
			     const struct mqtt_sub_entry *entries, size_t count,
			     const struct mqtt_props *props);

#endif
