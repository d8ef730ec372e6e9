/* mosquitto.db reader; the contract and the format are in mosqdb.h.
 *
 * Each chunk is read through a cursor bounded by the chunk's own length,
 * which was first checked against the bytes left in the file: a length
 * the file announces is only ever compared, never trusted. Written from
 * the layout of Mosquitto's PF_* structs (src/persist.h), no code taken. */
#include "core/mosqdb.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define MAGIC_LEN 15u
#define CRC_OFFSET MAGIC_LEN
#define VERSION_OFFSET (MAGIC_LEN + 4u)

static const uint8_t mosqdb_magic[MAGIC_LEN] = {
	0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u', 'i', 't', 't', 'o', ' ', 'd', 'b',
};

/* Fixed parts as Mosquitto's structs lay them out on LP64: explicit
 * fields, then the padding the compiler adds (8-byte alignment of the
 * uint64_t members). 32-bit x86 aligns those to 4, which shortens CFG and
 * CLIENT v6 by 4 bytes; the other structs come out the same. */
#define CFG_FIELDS 10u
#define CFG_LEN 16u
#define CFG_LEN_I386 12u
#define MSG_STORE_FIXED 32u
#define CLIENT_MSG_FIXED 16u
#define RETAIN_LEN 8u
#define SUB_FIXED 12u /* 10 bytes of fields, 2 of padding */
#define CLIENT_V5_FIXED 16u
#define CLIENT_V6_FIELDS 20u
#define CLIENT_V6_PAD 4u
#define DBID_SIZE 8u

/* Mosquitto refuses larger payloads (MQTT_MAX_PAYLOAD), as MQTT does. */
#define MSG_PAYLOAD_MAX MQTT_VARINT_MAX

static_assert(MOSQDB_HEADER_LEN == MAGIC_LEN + 4u + 4u,
	      "magic, CRC, version");
static_assert(MSG_STORE_FIXED == 8 + 8 + 4 + 5 * 2 + 2, "PF_msg_store");
static_assert(CLIENT_MSG_FIXED == 8 + 2 * 2 + 4, "PF_client_msg");
static_assert(CLIENT_V6_FIELDS == CLIENT_V5_FIXED + 2 * 2, "PF_client");
static_assert(MOSQDB_STATE_QUEUED == 11, "Mosquitto's mosq_ms_queued");

struct reader {
	const uint8_t *buf;
	size_t len;
	uint32_t version;
	const struct mosqdb_visitor *v;
	void *ctx;
	struct mosqdb_status *st;
};

/* One chunk's body, read front to back; offsets are from the file start. */
struct chunk {
	const struct reader *r;
	uint32_t type;
	uint32_t length;
	size_t start; /* its header */
	size_t pos;
	size_t end;
};

/* ---- bytes ---------------------------------------------------------------- */

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* ---- errors --------------------------------------------------------------- */

static int status_fail(struct mosqdb_status *st, int rc, size_t at,
		       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int status_fail(struct mosqdb_status *st, int rc, size_t at,
		       const char *fmt, ...)
{
	char what[240];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(st->err, sizeof(st->err), "offset %zu: %s", at, what);
	return rc;
}

static int chunk_fail(const struct chunk *c, int rc, size_t at,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Names the chunk around the reason, so a log line alone locates it. */
static int chunk_fail(const struct chunk *c, int rc, size_t at,
		      const char *fmt, ...)
{
	char what[160], name[24];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (c->type >= MOSQDB_CHUNK_CFG && c->type <= MOSQDB_CHUNK_CLIENT)
		snprintf(name, sizeof(name), "%s", mosqdb_chunk_name(c->type));
	else
		snprintf(name, sizeof(name), "type %" PRIu32, c->type);
	return status_fail(c->r->st, rc, at, "%s chunk at %zu (%" PRIu32
			   " bytes): %s", name, c->start, c->length, what);
}

/* Offset in the file of byte `field` of the chunk's fixed part. */
static size_t chunk_at(const struct chunk *c, size_t field)
{
	return c->start + MOSQDB_CHUNK_HEADER_LEN + field;
}

static int chunk_visited(const struct chunk *c, int cb_rc)
{
	if (cb_rc == 0)
		return MOSQDB_OK;
	c->r->st->cb_rc = cb_rc;
	return chunk_fail(c, MOSQDB_STOPPED, c->start,
			  "the visitor stopped the read (%d)", cb_rc);
}

/* ---- fields --------------------------------------------------------------- */

/* The first n bytes of the body: the fixed part. */
static int chunk_fixed(struct chunk *c, size_t n, const uint8_t **out)
{
	if (c->end - c->pos < n)
		return chunk_fail(c, MOSQDB_CORRUPT, c->pos,
				  "shorter than its %zu-byte fixed part", n);
	*out = c->r->buf + c->pos;
	c->pos += n;
	return MOSQDB_OK;
}

static int chunk_take(struct chunk *c, size_t n, const char *what,
		      struct mqtt_bytes *out)
{
	size_t left = c->end - c->pos;

	if (n > left)
		return chunk_fail(c, MOSQDB_CORRUPT, c->pos,
				  "%s of %zu bytes overruns the chunk (%zu left)",
				  what, n, left);
	out->ptr = c->r->buf + c->pos;
	out->len = (uint32_t)n;
	c->pos += n;
	return MOSQDB_OK;
}

static int chunk_client_id(struct chunk *c, size_t n, struct mqtt_bytes *out)
{
	size_t at = c->pos;
	int rc = chunk_take(c, n, "client id", out);

	if (rc != MOSQDB_OK)
		return rc;
	if (n == 0)
		return chunk_fail(c, MOSQDB_CORRUPT, at, "empty client id");
	if (!mqtt_utf8_valid(out->ptr, out->len))
		return chunk_fail(c, MOSQDB_CORRUPT, at,
				  "client id of %zu bytes is not MQTT UTF-8", n);
	return MOSQDB_OK;
}

/* What is left of the chunk is an MQTT 5 property block (with its
 * length), or nothing. */
static int chunk_props(struct chunk *c, struct mqtt_props *out)
{
	size_t at = c->pos, left = c->end - c->pos, used = 0;

	if (left == 0) {
		memset(out, 0, sizeof(*out));
		out->raw.ptr = c->r->buf + at;
		return MOSQDB_OK;
	}
	enum mqtt_rc rc = mqtt_props_decode(c->r->buf + at, left,
					    MQTT_PROPS_PUBLISH, out, &used);
	if (rc != MQTT_RC_SUCCESS)
		return chunk_fail(c, MOSQDB_CORRUPT, at,
				  "property block of %zu bytes is not valid "
				  "for a PUBLISH (reason 0x%02x)", left, rc);
	if (used != left)
		return chunk_fail(c, MOSQDB_CORRUPT, at + used,
				  "%zu bytes after the property block",
				  left - used);
	c->pos = c->end;
	return MOSQDB_OK;
}

static int chunk_done(const struct chunk *c)
{
	if (c->pos != c->end)
		return chunk_fail(c, MOSQDB_CORRUPT, c->pos,
				  "%zu bytes left over after the last field",
				  c->end - c->pos);
	return MOSQDB_OK;
}

static int check_qos(const struct chunk *c, size_t field, uint8_t qos)
{
	if (qos > 2)
		return chunk_fail(c, MOSQDB_CORRUPT, chunk_at(c, field),
				  "QoS %u", qos);
	return MOSQDB_OK;
}

static int check_store_id(const struct chunk *c, uint64_t id)
{
	/* Mosquitto numbers messages from 1. */
	if (id == 0)
		return chunk_fail(c, MOSQDB_CORRUPT, chunk_at(c, 0),
				  "store id 0");
	return MOSQDB_OK;
}

/* ---- chunks --------------------------------------------------------------- */

static int cfg_read(struct chunk *c)
{
	const struct mosqdb_visitor *v = c->r->v;
	struct mosqdb_cfg cfg = {.offset = c->start};
	const uint8_t *f = NULL;

	if (c->length != CFG_LEN && c->length != CFG_LEN_I386)
		return chunk_fail(c, MOSQDB_CORRUPT, c->pos,
				  "expected %u bytes (%u from 32-bit x86)",
				  CFG_LEN, CFG_LEN_I386);
	int rc = chunk_fixed(c, c->length, &f);
	if (rc != MOSQDB_OK)
		return rc;
	static_assert(CFG_FIELDS <= CFG_LEN_I386, "fields before padding");
	if (f[9] != DBID_SIZE)
		return chunk_fail(c, MOSQDB_UNSUPPORTED, chunk_at(c, 9),
				  "store ids of %u bytes (only %u is known)",
				  f[9], DBID_SIZE);
	cfg.last_db_id = le64(f);
	cfg.shutdown = f[8] != 0;
	return chunk_visited(c, v && v->cfg_cb ? v->cfg_cb(c->r->ctx, &cfg) : 0);
}

static int msg_fixed_check(const struct chunk *c, const uint8_t *f)
{
	int rc = check_store_id(c, le64(f));

	if (rc != MOSQDB_OK)
		return rc;
	if (be32(f + 16) > MSG_PAYLOAD_MAX)
		return chunk_fail(c, MOSQDB_CORRUPT, chunk_at(c, 16),
				  "payload of %" PRIu32 " bytes is larger than "
				  "MQTT allows", be32(f + 16));
	if ((rc = check_qos(c, 30, f[30])) != MOSQDB_OK)
		return rc;
	if (f[31] > 1)
		return chunk_fail(c, MOSQDB_CORRUPT, chunk_at(c, 31),
				  "retain flag %u", f[31]);
	return MOSQDB_OK;
}

/* Variable part: source id, source username, topic, payload, properties. */
static int msg_fields_read(struct chunk *c, const uint8_t *f,
			   struct mosqdb_msg *m)
{
	int rc;

	if ((rc = chunk_take(c, be16(f + 22), "source client id",
			     &m->source_id)) != MOSQDB_OK ||
	    (rc = chunk_take(c, be16(f + 24), "source username",
			     &m->source_username)) != MOSQDB_OK)
		return rc;
	size_t topic_at = c->pos;
	if ((rc = chunk_take(c, be16(f + 26), "topic", &m->topic)) != MOSQDB_OK)
		return rc;
	if (!mqtt_topic_name_valid(m->topic.ptr, m->topic.len))
		return chunk_fail(c, MOSQDB_CORRUPT, topic_at,
				  "topic of %" PRIu32 " bytes is not a valid "
				  "topic name", m->topic.len);
	if ((rc = chunk_take(c, be32(f + 16), "payload", &m->payload)) !=
	    MOSQDB_OK)
		return rc;
	return chunk_props(c, &m->props);
}

static int msg_store_read(struct chunk *c)
{
	const struct mosqdb_visitor *v = c->r->v;
	struct mosqdb_msg m = {.offset = c->start};
	const uint8_t *f = NULL;
	int rc;

	if ((rc = chunk_fixed(c, MSG_STORE_FIXED, &f)) != MOSQDB_OK ||
	    (rc = msg_fixed_check(c, f)) != MOSQDB_OK ||
	    (rc = msg_fields_read(c, f, &m)) != MOSQDB_OK)
		return rc;
	m.store_id = le64(f);
	m.expiry_time = (int64_t)le64(f + 8);
	m.source_mid = be16(f + 20);
	m.source_port = be16(f + 28);
	m.qos = f[30];
	m.retain = f[31];
	return chunk_visited(c, v && v->msg_cb ? v->msg_cb(c->r->ctx, &m) : 0);
}

static int client_msg_fixed_check(const struct chunk *c, const uint8_t *f)
{
	int rc = check_store_id(c, le64(f));

	if (rc != MOSQDB_OK || (rc = check_qos(c, 12, f[12])) != MOSQDB_OK)
		return rc;
	if (f[13] > MOSQDB_STATE_QUEUED)
		return chunk_fail(c, MOSQDB_CORRUPT, chunk_at(c, 13),
				  "message state %u", f[13]);
	/* retain in the high nibble, dup in the low one */
	if ((f[14] >> 4) > 1 || (f[14] & 0x0f) > 1)
		return chunk_fail(c, MOSQDB_CORRUPT, chunk_at(c, 14),
				  "retain/dup byte 0x%02x", f[14]);
	if (f[15] > MOSQDB_DIR_OUT)
		return chunk_fail(c, MOSQDB_CORRUPT, chunk_at(c, 15),
				  "direction %u", f[15]);
	return MOSQDB_OK;
}

static int client_msg_read(struct chunk *c)
{
	const struct mosqdb_visitor *v = c->r->v;
	struct mosqdb_client_msg m = {.offset = c->start};
	const uint8_t *f = NULL;
	int rc;

	if ((rc = chunk_fixed(c, CLIENT_MSG_FIXED, &f)) != MOSQDB_OK ||
	    (rc = client_msg_fixed_check(c, f)) != MOSQDB_OK ||
	    (rc = chunk_client_id(c, be16(f + 10), &m.client_id)) != MOSQDB_OK ||
	    (rc = chunk_props(c, &m.props)) != MOSQDB_OK)
		return rc;
	m.store_id = le64(f);
	m.mid = be16(f + 8);
	m.qos = f[12];
	m.state = f[13];
	m.retain = f[14] >> 4;
	m.dup = f[14] & 0x0f;
	m.direction = f[15];
	return chunk_visited(c, v && v->client_msg_cb
					? v->client_msg_cb(c->r->ctx, &m)
					: 0);
}

static int retain_read(struct chunk *c)
{
	const struct mosqdb_visitor *v = c->r->v;
	struct mosqdb_retain ret = {.offset = c->start};
	const uint8_t *f = NULL;
	int rc;

	if ((rc = chunk_fixed(c, RETAIN_LEN, &f)) != MOSQDB_OK ||
	    (rc = chunk_done(c)) != MOSQDB_OK ||
	    (rc = check_store_id(c, le64(f))) != MOSQDB_OK)
		return rc;
	ret.store_id = le64(f);
	return chunk_visited(c, v && v->retain_cb ? v->retain_cb(c->r->ctx, &ret)
						  : 0);
}

static int sub_fixed_check(const struct chunk *c, const uint8_t *f)
{
	if (be32(f) > MQTT_VARINT_MAX)
		return chunk_fail(c, MOSQDB_CORRUPT, chunk_at(c, 0),
				  "subscription identifier %" PRIu32
				  " is larger than MQTT allows", be32(f));
	return check_qos(c, 8, f[8]);
}

static int sub_read(struct chunk *c)
{
	const struct mosqdb_visitor *v = c->r->v;
	struct mosqdb_sub s = {.offset = c->start};
	const uint8_t *f = NULL;
	int rc;

	if ((rc = chunk_fixed(c, SUB_FIXED, &f)) != MOSQDB_OK ||
	    (rc = sub_fixed_check(c, f)) != MOSQDB_OK ||
	    (rc = chunk_client_id(c, be16(f + 4), &s.client_id)) != MOSQDB_OK)
		return rc;
	size_t filter_at = c->pos;
	if ((rc = chunk_take(c, be16(f + 6), "topic filter", &s.filter)) !=
		    MOSQDB_OK ||
	    (rc = chunk_done(c)) != MOSQDB_OK)
		return rc;
	if (!mqtt_topic_filter_valid(s.filter.ptr, s.filter.len))
		return chunk_fail(c, MOSQDB_CORRUPT, filter_at,
				  "topic filter of %" PRIu32 " bytes is not "
				  "valid", s.filter.len);
	s.identifier = be32(f);
	s.qos = f[8];
	s.options = f[9];
	s.no_local = f[9] & 0x04;
	s.retain_as_published = f[9] & 0x08;
	return chunk_visited(c, v && v->sub_cb ? v->sub_cb(c->r->ctx, &s) : 0);
}

/* A version 6 CLIENT's fixed part is 24 bytes on LP64 and 20 on 32-bit
 * x86; which one is told by the chunk length once the string lengths
 * (inside the first 20) are known. */
static int client_fixed_len(const struct chunk *c, size_t *out)
{
	if (c->r->version == 5) {
		*out = CLIENT_V5_FIXED;
		return MOSQDB_OK;
	}
	if (c->length < CLIENT_V6_FIELDS)
		return chunk_fail(c, MOSQDB_CORRUPT, c->pos,
				  "shorter than its %u-byte fixed part",
				  CLIENT_V6_FIELDS);
	const uint8_t *f = c->r->buf + c->pos;
	size_t strings = (size_t)be16(f + 14) + be16(f + 18);
	size_t fixed = c->length >= strings ? c->length - strings : 0;
	if (fixed != CLIENT_V6_FIELDS + CLIENT_V6_PAD &&
	    fixed != CLIENT_V6_FIELDS)
		return chunk_fail(c, MOSQDB_CORRUPT, c->pos,
				  "length does not match a %u-byte fixed part "
				  "(%u from 32-bit x86) with a %u-byte client "
				  "id and a %u-byte username",
				  CLIENT_V6_FIELDS + CLIENT_V6_PAD,
				  CLIENT_V6_FIELDS, be16(f + 14), be16(f + 18));
	*out = fixed;
	return MOSQDB_OK;
}

static int client_read(struct chunk *c)
{
	const struct mosqdb_visitor *v = c->r->v;
	struct mosqdb_client cl = {.offset = c->start};
	bool v6 = c->r->version == 6;
	const uint8_t *f = NULL;
	size_t fixed = 0;
	int rc;

	if ((rc = client_fixed_len(c, &fixed)) != MOSQDB_OK ||
	    (rc = chunk_fixed(c, fixed, &f)) != MOSQDB_OK ||
	    (rc = chunk_client_id(c, be16(f + 14), &cl.client_id)) != MOSQDB_OK ||
	    (rc = chunk_take(c, v6 ? be16(f + 18) : 0, "username",
			     &cl.username)) != MOSQDB_OK ||
	    (rc = chunk_done(c)) != MOSQDB_OK)
		return rc;
	cl.session_expiry_time = (int64_t)le64(f);
	cl.session_expiry_interval = be32(f + 8);
	cl.last_mid = be16(f + 12);
	cl.listener_port = v6 ? be16(f + 16) : 0;
	return chunk_visited(c, v && v->client_cb ? v->client_cb(c->r->ctx, &cl)
						  : 0);
}

static int unknown_read(struct chunk *c)
{
	const struct mosqdb_visitor *v = c->r->v;
	struct mosqdb_unknown u = {c->start, c->type, c->length};

	c->pos = c->end;
	return chunk_visited(c, v && v->unknown_cb ? v->unknown_cb(c->r->ctx, &u)
						   : 0);
}

static int chunk_dispatch(struct chunk *c)
{
	switch (c->type) {
	case MOSQDB_CHUNK_CFG:
		return cfg_read(c);
	case MOSQDB_CHUNK_MSG_STORE:
		return msg_store_read(c);
	case MOSQDB_CHUNK_CLIENT_MSG:
		return client_msg_read(c);
	case MOSQDB_CHUNK_RETAIN:
		return retain_read(c);
	case MOSQDB_CHUNK_SUB:
		return sub_read(c);
	case MOSQDB_CHUNK_CLIENT:
		return client_read(c);
	default:
		return unknown_read(c);
	}
}

/* Reads the chunk at st->offset and moves past it. */
static int chunk_next(const struct reader *r)
{
	struct mosqdb_status *st = r->st;
	size_t at = st->offset, left = r->len - at;

	if (left < MOSQDB_CHUNK_HEADER_LEN)
		return status_fail(st, MOSQDB_TRUNCATED, r->len,
				   "the file ends %zu bytes into the chunk "
				   "header at %zu (%u bytes)", left, at,
				   MOSQDB_CHUNK_HEADER_LEN);
	struct chunk c = {
		.r = r,
		.type = be32(r->buf + at),
		.length = be32(r->buf + at + 4),
		.start = at,
		.pos = at + MOSQDB_CHUNK_HEADER_LEN,
	};
	left -= MOSQDB_CHUNK_HEADER_LEN;
	if (c.length > left)
		return chunk_fail(&c, MOSQDB_TRUNCATED, r->len,
				  "the file ends %zu bytes into it", left);
	c.end = c.pos + c.length;
	int rc = chunk_dispatch(&c);
	if (rc != MOSQDB_OK)
		return rc;
	assert(c.pos == c.end);
	st->offset = c.end;
	st->chunks++;
	return MOSQDB_OK;
}

static int magic_check(const struct reader *r)
{
	size_t n = r->len < MAGIC_LEN ? r->len : MAGIC_LEN;

	if (r->len == 0)
		return status_fail(r->st, MOSQDB_TRUNCATED, 0, "the file is empty");
	for (size_t i = 0; i < n; i++) {
		if (r->buf[i] != mosqdb_magic[i])
			return status_fail(r->st, MOSQDB_NOT_MOSQDB, i,
					   "not a mosquitto.db: byte 0x%02x "
					   "where its magic has 0x%02x",
					   r->buf[i], mosqdb_magic[i]);
	}
	if (r->len < MOSQDB_HEADER_LEN)
		return status_fail(r->st, MOSQDB_TRUNCATED, r->len,
				   "the file ends inside its %u-byte header",
				   MOSQDB_HEADER_LEN);
	return MOSQDB_OK;
}

static int header_read(struct reader *r)
{
	struct mosqdb_status *st = r->st;
	int rc = magic_check(r);

	if (rc != MOSQDB_OK)
		return rc;
	struct mosqdb_header h = {
		.version = be32(r->buf + VERSION_OFFSET),
		.crc = be32(r->buf + CRC_OFFSET),
	};
	if (h.version >= 2 && h.version <= 4)
		return status_fail(st, MOSQDB_UNSUPPORTED, VERSION_OFFSET,
				   "format version %" PRIu32 " (Mosquitto 1.5 "
				   "or older) is not supported: Mosquitto 1.6 "
				   "or 2.0 rewrites it as version 6 when it "
				   "next saves", h.version);
	if (h.version != 5 && h.version != 6)
		return status_fail(st, MOSQDB_UNSUPPORTED, VERSION_OFFSET,
				   "unknown format version %" PRIu32
				   " (5 and 6 are known)", h.version);
	r->version = st->version = h.version;
	int cb_rc = r->v && r->v->header_cb ? r->v->header_cb(r->ctx, &h) : 0;
	if (cb_rc != 0) {
		st->cb_rc = cb_rc;
		return status_fail(st, MOSQDB_STOPPED, 0,
				   "the visitor stopped the read at the header "
				   "(%d)", cb_rc);
	}
	st->offset = MOSQDB_HEADER_LEN;
	return MOSQDB_OK;
}

int mosqdb_read(const uint8_t *buf, size_t len, const struct mosqdb_visitor *v,
		void *ctx, struct mosqdb_status *st)
{
	assert(st && (buf || len == 0));
	memset(st, 0, sizeof(*st));
	struct reader r = {.buf = buf, .len = len, .v = v, .ctx = ctx, .st = st};

	int rc = header_read(&r);
	while (rc == MOSQDB_OK && st->offset < len)
		rc = chunk_next(&r);
	assert(rc != MOSQDB_OK || st->offset == len);
	return rc;
}

/* ---- names ---------------------------------------------------------------- */

const char *mosqdb_chunk_name(uint32_t type)
{
	static const char *const names[] = {
		[MOSQDB_CHUNK_CFG] = "CFG",
		[MOSQDB_CHUNK_MSG_STORE] = "MSG_STORE",
		[MOSQDB_CHUNK_CLIENT_MSG] = "CLIENT_MSG",
		[MOSQDB_CHUNK_RETAIN] = "RETAIN",
		[MOSQDB_CHUNK_SUB] = "SUB",
		[MOSQDB_CHUNK_CLIENT] = "CLIENT",
	};

	if (type < ARRAY_LEN(names) && names[type])
		return names[type];
	return "unknown";
}

const char *mosqdb_state_name(uint8_t state)
{
	static const char *const names[] = {
		[MOSQDB_STATE_INVALID] = "invalid",
		[MOSQDB_STATE_PUBLISH_QOS0] = "publish_qos0",
		[MOSQDB_STATE_PUBLISH_QOS1] = "publish_qos1",
		[MOSQDB_STATE_WAIT_FOR_PUBACK] = "wait_for_puback",
		[MOSQDB_STATE_PUBLISH_QOS2] = "publish_qos2",
		[MOSQDB_STATE_WAIT_FOR_PUBREC] = "wait_for_pubrec",
		[MOSQDB_STATE_RESEND_PUBREL] = "resend_pubrel",
		[MOSQDB_STATE_WAIT_FOR_PUBREL] = "wait_for_pubrel",
		[MOSQDB_STATE_RESEND_PUBCOMP] = "resend_pubcomp",
		[MOSQDB_STATE_WAIT_FOR_PUBCOMP] = "wait_for_pubcomp",
		[MOSQDB_STATE_SEND_PUBREC] = "send_pubrec",
		[MOSQDB_STATE_QUEUED] = "queued",
	};

	return state < ARRAY_LEN(names) ? names[state] : "unknown";
}

const char *mosqdb_rc_name(int rc)
{
	switch (rc) {
	case MOSQDB_OK:
		return "ok";
	case MOSQDB_NOT_MOSQDB:
		return "not a mosquitto.db";
	case MOSQDB_UNSUPPORTED:
		return "unsupported";
	case MOSQDB_TRUNCATED:
		return "truncated";
	case MOSQDB_CORRUPT:
		return "corrupt";
	case MOSQDB_STOPPED:
		return "stopped";
	}
	return "unknown";
}
