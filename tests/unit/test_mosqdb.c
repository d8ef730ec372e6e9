/* Unit tests for core/mosqdb.c on hand-built mosquitto.db images laid out
 * as Mosquitto's persist_write*.c writes them: every chunk type and field,
 * truncation at every byte, wrong magic, unknown versions, flipped bytes,
 * and one precise refusal per kind of inconsistency. Images are read from
 * heap copies of exactly their length, so ASan sees any over-read. */
#include "runner.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/mosqdb.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define IMG_CHUNKS_MAX 32

/* ---- image building ------------------------------------------------------ */

struct img {
	uint8_t b[8192];
	size_t n;
	size_t ends[IMG_CHUNKS_MAX]; /* where each chunk ends */
	size_t nchunks;
	size_t open; /* where the open chunk's header starts */
};

static void put(struct img *m, const void *d, size_t n)
{
	if (n)
		memcpy(m->b + m->n, d, n);
	m->n += n;
}

static void put_u8(struct img *m, uint8_t v)
{
	m->b[m->n++] = v;
}

static void put_be16(struct img *m, uint16_t v)
{
	put_u8(m, (uint8_t)(v >> 8));
	put_u8(m, (uint8_t)v);
}

static void put_be32(struct img *m, uint32_t v)
{
	put_be16(m, (uint16_t)(v >> 16));
	put_be16(m, (uint16_t)v);
}

/* Mosquitto writes its 64-bit ids and times in host order: x86's. */
static void put_le64(struct img *m, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		put_u8(m, (uint8_t)(v >> (8 * i)));
}

static void put_zeros(struct img *m, size_t n)
{
	memset(m->b + m->n, 0, n);
	m->n += n;
}

static void set_be32(struct img *m, size_t at, uint32_t v)
{
	m->b[at] = (uint8_t)(v >> 24);
	m->b[at + 1] = (uint8_t)(v >> 16);
	m->b[at + 2] = (uint8_t)(v >> 8);
	m->b[at + 3] = (uint8_t)v;
}

static void img_header(struct img *m, uint32_t version)
{
	static const uint8_t magic[15] = {0x00, 0xB5, 0x00, 'm', 'o', 's', 'q',
					  'u',	'i',  't',  't', 'o', ' ', 'd', 'b'};

	memset(m, 0, sizeof(*m));
	put(m, magic, sizeof(magic));
	put_be32(m, 0); /* CRC: Mosquitto never fills it in */
	put_be32(m, version);
}

static void chunk_begin(struct img *m, uint32_t type)
{
	m->open = m->n;
	put_be32(m, type);
	put_be32(m, 0); /* length, set by chunk_end */
}

static void chunk_end(struct img *m)
{
	set_be32(m, m->open + 4, (uint32_t)(m->n - m->open - 8));
	m->ends[m->nchunks++] = m->n;
}

static void add_cfg(struct img *m, uint64_t last_db_id, bool i386)
{
	chunk_begin(m, MOSQDB_CHUNK_CFG);
	put_le64(m, last_db_id);
	put_u8(m, 1); /* shutdown */
	put_u8(m, 8); /* dbid size */
	put_zeros(m, i386 ? 2 : 6);
	chunk_end(m);
}

struct msg_spec {
	uint64_t store_id;
	int64_t expiry_time;
	const char *topic;
	const char *payload;
	const char *source_id;
	const char *source_username;
	uint16_t source_mid, source_port;
	uint8_t qos, retain;
	const uint8_t *props; /* with its length prefix */
	size_t props_len;
};

static void add_msg(struct img *m, const struct msg_spec *s)
{
	size_t id = strlen(s->source_id), user = strlen(s->source_username);
	size_t topic = strlen(s->topic), payload = strlen(s->payload);

	chunk_begin(m, MOSQDB_CHUNK_MSG_STORE);
	put_le64(m, s->store_id);
	put_le64(m, (uint64_t)s->expiry_time);
	put_be32(m, (uint32_t)payload);
	put_be16(m, s->source_mid);
	put_be16(m, (uint16_t)id);
	put_be16(m, (uint16_t)user);
	put_be16(m, (uint16_t)topic);
	put_be16(m, s->source_port);
	put_u8(m, s->qos);
	put_u8(m, s->retain);
	put(m, s->source_id, id);
	put(m, s->source_username, user);
	put(m, s->topic, topic);
	put(m, s->payload, payload);
	put(m, s->props, s->props_len);
	chunk_end(m);
}

static void add_client(struct img *m, uint32_t version, const char *id,
		       const char *user, size_t user_len, bool i386)
{
	chunk_begin(m, MOSQDB_CHUNK_CLIENT);
	put_le64(m, 1700007200);
	put_be32(m, 7200);
	put_be16(m, 9); /* last mid */
	put_be16(m, (uint16_t)strlen(id));
	if (version == 6) {
		put_be16(m, 1883);
		put_be16(m, (uint16_t)user_len);
		if (!i386)
			put_zeros(m, 4);
	}
	put(m, id, strlen(id));
	if (version == 6)
		put(m, user, user_len);
	chunk_end(m);
}

static void add_client_msg(struct img *m, const char *id, uint64_t store_id,
			   uint8_t state, uint8_t direction, uint32_t sub_id)
{
	chunk_begin(m, MOSQDB_CHUNK_CLIENT_MSG);
	put_le64(m, store_id);
	put_be16(m, 7); /* mid */
	put_be16(m, (uint16_t)strlen(id));
	put_u8(m, 1);	 /* qos */
	put_u8(m, state);
	put_u8(m, 0x01); /* retain 0, dup 1 */
	put_u8(m, direction);
	put(m, id, strlen(id));
	if (sub_id) {
		put_u8(m, 2); /* property length */
		put_u8(m, MQTT_PROP_SUBSCRIPTION_IDENTIFIER);
		put_u8(m, (uint8_t)sub_id);
	}
	chunk_end(m);
}

static void add_sub(struct img *m, const char *id, const char *filter,
		    uint32_t identifier, uint8_t qos, uint8_t options)
{
	chunk_begin(m, MOSQDB_CHUNK_SUB);
	put_be32(m, identifier);
	put_be16(m, (uint16_t)strlen(id));
	put_be16(m, (uint16_t)strlen(filter));
	put_u8(m, qos);
	put_u8(m, options);
	put_zeros(m, 2);
	put(m, id, strlen(id));
	put(m, filter, strlen(filter));
	chunk_end(m);
}

static void add_retain(struct img *m, uint64_t store_id)
{
	chunk_begin(m, MOSQDB_CHUNK_RETAIN);
	put_le64(m, store_id);
	chunk_end(m);
}

static void add_unknown(struct img *m, uint32_t type, size_t n)
{
	chunk_begin(m, type);
	for (size_t i = 0; i < n; i++)
		put_u8(m, (uint8_t)(0xA0 + i));
	chunk_end(m);
}

/* payload format 1, content type, user property k=v */
static const uint8_t msg_props[] = {
	16,   MQTT_PROP_PAYLOAD_FORMAT_INDICATOR, 1,   MQTT_PROP_CONTENT_TYPE,
	0,    4,   't', 'e', 'x', 't', MQTT_PROP_USER_PROPERTY, 0,   1,
	'k',  0,   1,   'v',
};

static const struct msg_spec retained = {
	.store_id = 53, .expiry_time = 1700003600, .topic = "r/q1",
	.payload = "hello", .source_id = "pub", .source_username = "alice",
	.source_mid = 3, .source_port = 1883, .qos = 1, .retain = 1,
	.props = msg_props, .props_len = sizeof(msg_props),
};

static const struct msg_spec queued = {
	.store_id = 54, .topic = "q/5/x", .payload = "", .source_id = "",
	.source_username = "", .qos = 2,
};

/* What Mosquitto 2.0 writes, in its order: CFG, messages, each client
 * with its messages, subscriptions, retained. Plus a chunk type from
 * the future, which is skipped. */
static void img_full(struct img *m)
{
	img_header(m, 6);
	add_cfg(m, 54, false);
	add_msg(m, &retained);
	add_msg(m, &queued);
	add_client(m, 6, "alice", "alice", 5, false);
	add_client_msg(m, "alice", 54, MOSQDB_STATE_QUEUED, MOSQDB_DIR_OUT, 42);
	add_unknown(m, 99, 3);
	add_sub(m, "alice", "q/5/+", 42, 2, 0x0c);
	add_retain(m, 53);
}

/* ---- recording visitor ---------------------------------------------------- */

struct rec {
	int header, cfg, msg, retain, client, sub, client_msg, unknown;
	int calls;
	int stop_at; /* the call that returns non-zero; 0: none */
	struct mosqdb_header h;
	struct mosqdb_cfg c;
	struct mosqdb_msg msgs[2];
	struct mosqdb_retain r;
	struct mosqdb_client cl;
	struct mosqdb_sub s;
	struct mosqdb_client_msg cm;
	struct mosqdb_unknown u;
};

static int rec_call(struct rec *r)
{
	return ++r->calls == r->stop_at ? 7 : 0;
}

static int rec_header(void *ctx, const struct mosqdb_header *h)
{
	struct rec *r = ctx;
	r->header++;
	r->h = *h;
	return rec_call(r);
}

static int rec_cfg(void *ctx, const struct mosqdb_cfg *c)
{
	struct rec *r = ctx;
	r->cfg++;
	r->c = *c;
	return rec_call(r);
}

static int rec_msg(void *ctx, const struct mosqdb_msg *m)
{
	struct rec *r = ctx;
	if ((size_t)r->msg < ARRAY_LEN(r->msgs))
		r->msgs[r->msg] = *m;
	r->msg++;
	return rec_call(r);
}

static int rec_retain(void *ctx, const struct mosqdb_retain *x)
{
	struct rec *r = ctx;
	r->retain++;
	r->r = *x;
	return rec_call(r);
}

static int rec_client(void *ctx, const struct mosqdb_client *x)
{
	struct rec *r = ctx;
	r->client++;
	r->cl = *x;
	return rec_call(r);
}

static int rec_sub(void *ctx, const struct mosqdb_sub *x)
{
	struct rec *r = ctx;
	r->sub++;
	r->s = *x;
	return rec_call(r);
}

static int rec_client_msg(void *ctx, const struct mosqdb_client_msg *x)
{
	struct rec *r = ctx;
	r->client_msg++;
	r->cm = *x;
	return rec_call(r);
}

static int rec_unknown(void *ctx, const struct mosqdb_unknown *x)
{
	struct rec *r = ctx;
	r->unknown++;
	r->u = *x;
	return rec_call(r);
}

static const struct mosqdb_visitor rec_visitor = {
	.header_cb = rec_header,
	.cfg_cb = rec_cfg,
	.msg_cb = rec_msg,
	.retain_cb = rec_retain,
	.client_cb = rec_client,
	.sub_cb = rec_sub,
	.client_msg_cb = rec_client_msg,
	.unknown_cb = rec_unknown,
};

static int rec_chunks(const struct rec *r)
{
	return r->cfg + r->msg + r->retain + r->client + r->sub +
	       r->client_msg + r->unknown;
}

/* Reads the first n bytes of an image from a heap copy of exactly n. */
static int read_n(const uint8_t *b, size_t n, struct rec *r,
		  struct mosqdb_status *st)
{
	uint8_t *copy = malloc(n ? n : 1);
	memcpy(copy, b, n);
	int rc = mosqdb_read(copy, n, &rec_visitor, r, st);
	free(copy);
	return rc;
}

static bool bytes_eq(struct mqtt_bytes b, const char *s)
{
	return b.len == strlen(s) && (b.len == 0 || !memcmp(b.ptr, s, b.len));
}

static bool err_has(const struct mosqdb_status *st, const char *s)
{
	if (strstr(st->err, s))
		return true;
	fprintf(stderr, "  error \"%s\" lacks \"%s\"\n", st->err, s);
	return false;
}

/* ---- every chunk type ----------------------------------------------------- */

TEST(mosqdb_reads_every_chunk_type_of_a_version_6_file)
{
	struct img m;
	struct rec r = {0};
	struct mosqdb_status st;

	img_full(&m);
	int rc = mosqdb_read(m.b, m.n, &rec_visitor, &r, &st);
	CHECK_EQ(rc, MOSQDB_OK);
	CHECK_STR(st.err, "");
	CHECK_EQ(st.offset, m.n);
	CHECK_EQ(st.chunks, m.nchunks);
	CHECK_EQ(st.version, 6);
	CHECK(r.header == 1 && r.h.version == 6 && r.h.crc == 0);

	CHECK(r.cfg == 1 && r.c.last_db_id == 54 && r.c.shutdown);
	CHECK_EQ(r.c.offset, MOSQDB_HEADER_LEN);

	CHECK_EQ(r.msg, 2);
	const struct mosqdb_msg *a = &r.msgs[0], *b = &r.msgs[1];
	CHECK(a->store_id == 53 && a->expiry_time == 1700003600);
	CHECK(bytes_eq(a->topic, "r/q1") && bytes_eq(a->payload, "hello"));
	CHECK(bytes_eq(a->source_id, "pub") &&
	      bytes_eq(a->source_username, "alice"));
	CHECK(a->source_mid == 3 && a->source_port == 1883);
	CHECK(a->qos == 1 && a->retain);
	CHECK_EQ(a->props.raw.len, sizeof(msg_props) - 1);
	CHECK_EQ(a->props.payload_format_indicator, 1);
	CHECK(bytes_eq(a->props.content_type, "text"));
	CHECK_EQ(a->props.user_property_count, 1);
	CHECK(b->store_id == 54 && b->expiry_time == 0 && b->qos == 2 &&
	      !b->retain);
	CHECK(bytes_eq(b->topic, "q/5/x") && b->payload.len == 0);
	CHECK(b->source_id.len == 0 && b->source_username.len == 0);
	CHECK(b->props.present == 0 && b->props.raw.len == 0);

	CHECK_EQ(r.client, 1);
	CHECK(bytes_eq(r.cl.client_id, "alice") && bytes_eq(r.cl.username, "alice"));
	CHECK(r.cl.session_expiry_time == 1700007200 &&
	      r.cl.session_expiry_interval == 7200);
	CHECK(r.cl.last_mid == 9 && r.cl.listener_port == 1883);

	CHECK_EQ(r.client_msg, 1);
	CHECK(bytes_eq(r.cm.client_id, "alice") && r.cm.store_id == 54);
	CHECK(r.cm.mid == 7 && r.cm.qos == 1 && !r.cm.retain && r.cm.dup);
	CHECK(r.cm.direction == MOSQDB_DIR_OUT &&
	      r.cm.state == MOSQDB_STATE_QUEUED);
	CHECK_EQ(r.cm.props.subscription_identifier, 42);

	CHECK(r.unknown == 1 && r.u.type == 99 && r.u.length == 3);

	CHECK_EQ(r.sub, 1);
	CHECK(bytes_eq(r.s.client_id, "alice") && bytes_eq(r.s.filter, "q/5/+"));
	CHECK(r.s.identifier == 42 && r.s.qos == 2 && r.s.options == 0x0c);
	CHECK(r.s.no_local && r.s.retain_as_published);

	CHECK(r.retain == 1 && r.r.store_id == 53);
	CHECK_EQ(r.r.offset, m.ends[m.nchunks - 2]);
}

TEST(mosqdb_reads_version_5_clients_without_username_or_port)
{
	struct img m;
	struct rec r = {0};
	struct mosqdb_status st;

	img_header(&m, 5);
	add_cfg(&m, 1, false);
	add_client(&m, 5, "old", "", 0, false);
	add_sub(&m, "old", "a/#", 0, 1, 0);
	CHECK_EQ(mosqdb_read(m.b, m.n, &rec_visitor, &r, &st), MOSQDB_OK);
	CHECK_EQ(st.version, 5);
	CHECK(r.client == 1 && bytes_eq(r.cl.client_id, "old"));
	CHECK(r.cl.username.len == 0 && r.cl.listener_port == 0);
	CHECK(r.cl.last_mid == 9 && r.cl.session_expiry_interval == 7200);
	CHECK(r.sub == 1 && bytes_eq(r.s.filter, "a/#") && r.s.identifier == 0);
}

TEST(mosqdb_reads_the_shorter_structs_of_32_bit_x86)
{
	struct img m;
	struct rec r = {0};
	struct mosqdb_status st;

	img_header(&m, 6);
	add_cfg(&m, 77, true);
	add_client(&m, 6, "c1", "u", 1, true);
	add_client(&m, 6, "c2", "", 0, true);
	CHECK_EQ(mosqdb_read(m.b, m.n, &rec_visitor, &r, &st), MOSQDB_OK);
	CHECK(r.cfg == 1 && r.c.last_db_id == 77);
	CHECK_EQ(r.client, 2);
	CHECK(bytes_eq(r.cl.client_id, "c2") && r.cl.username.len == 0);
	CHECK_EQ(r.cl.listener_port, 1883);
}

/* Mosquitto 2.0.11 keeps the previous client's username length (byte-
 * swapped) for a client without one and writes the bytes that follow the
 * previous username in its heap; the chunk length agrees, so it reads. */
TEST(mosqdb_reads_a_username_mosquitto_2_0_11_filled_with_heap_bytes)
{
	static const char garbage[256] = "alice\0\x01\x02";
	struct img m;
	struct rec r = {0};
	struct mosqdb_status st;

	img_header(&m, 6);
	add_client(&m, 6, "alice", "alice", 5, false);
	add_client(&m, 6, "bob", garbage, sizeof(garbage), false);
	CHECK_EQ(mosqdb_read(m.b, m.n, &rec_visitor, &r, &st), MOSQDB_OK);
	CHECK(bytes_eq(r.cl.client_id, "bob"));
	CHECK_EQ(r.cl.username.len, 256);
	CHECK(r.cl.username.ptr && !memcmp(r.cl.username.ptr, "alice", 6));
}

TEST(mosqdb_header_only_file_is_complete)
{
	struct img m;
	struct rec r = {0};
	struct mosqdb_status st;

	img_header(&m, 6);
	CHECK_EQ(read_n(m.b, m.n, &r, &st), MOSQDB_OK);
	CHECK(r.header == 1 && rec_chunks(&r) == 0 && st.chunks == 0);
	CHECK_EQ(st.offset, MOSQDB_HEADER_LEN);
}

TEST(mosqdb_null_visitor_only_validates)
{
	struct img m;
	struct mosqdb_status st;

	img_full(&m);
	CHECK_EQ(mosqdb_read(m.b, m.n, NULL, NULL, &st), MOSQDB_OK);
	CHECK_EQ(st.chunks, m.nchunks);
	m.b[m.ends[1] - 1] = 0x11; /* the first message's last property byte */
	CHECK_EQ(mosqdb_read(m.b, m.n, NULL, NULL, &st), MOSQDB_CORRUPT);
}

/* ---- truncation ----------------------------------------------------------- */

/* Complete chunks before the cut are delivered, then TRUNCATED at the
 * cut; a cut exactly between chunks cannot be seen and reads as OK. */
TEST(mosqdb_truncation_at_every_offset_delivers_complete_chunks)
{
	struct img m;

	img_full(&m);
	for (size_t cut = 0; cut < m.n; cut++) {
		struct rec r = {0};
		struct mosqdb_status st;
		size_t done = cut >= MOSQDB_HEADER_LEN ? MOSQDB_HEADER_LEN : 0;
		int complete = 0;
		for (size_t i = 0; i < m.nchunks && m.ends[i] <= cut; i++) {
			done = m.ends[i];
			complete++;
		}
		int rc = read_n(m.b, cut, &r, &st);
		CHECK_EQ(rec_chunks(&r), complete);
		CHECK_EQ(st.chunks, complete);
		CHECK_EQ(st.offset, done);
		CHECK_EQ(r.header, cut >= MOSQDB_HEADER_LEN);
		if (cut == done && cut >= MOSQDB_HEADER_LEN) {
			CHECK_EQ(rc, MOSQDB_OK);
			continue;
		}
		CHECK_EQ(rc, MOSQDB_TRUNCATED);
		char want[32];
		snprintf(want, sizeof(want), "offset %zu: ", cut);
		if (strncmp(st.err, want, strlen(want)) != 0) {
			fprintf(stderr, "  cut %zu: \"%s\"\n", cut, st.err);
			CHECK(false);
		}
	}
}

TEST(mosqdb_truncation_names_the_cut_chunk)
{
	struct img m;
	struct rec r = {0};
	struct mosqdb_status st;

	img_full(&m);
	size_t cut = m.ends[1] + 20; /* inside the second message */
	CHECK_EQ(read_n(m.b, cut, &r, &st), MOSQDB_TRUNCATED);
	char want[96];
	snprintf(want, sizeof(want), "offset %zu: MSG_STORE chunk at %zu", cut,
		 m.ends[1]);
	CHECK(err_has(&st, want));
	CHECK(err_has(&st, "the file ends 12 bytes into it"));
	CHECK_EQ(r.msg, 1);

	/* The sixth chunk is of type 99: named by its number. */
	snprintf(want, sizeof(want), "type 99 chunk at %zu (3 bytes): the file "
		 "ends 1 bytes into it", m.ends[4]);
	CHECK_EQ(read_n(m.b, m.ends[4] + 9, &r, &st), MOSQDB_TRUNCATED);
	CHECK(err_has(&st, want));

	CHECK_EQ(read_n(m.b, m.ends[1] + 3, &r, &st), MOSQDB_TRUNCATED);
	CHECK(err_has(&st, "3 bytes into the chunk header"));
	CHECK_EQ(read_n(m.b, 0, &r, &st), MOSQDB_TRUNCATED);
	CHECK(err_has(&st, "offset 0: the file is empty"));
	CHECK_EQ(read_n(m.b, 20, &r, &st), MOSQDB_TRUNCATED);
	CHECK(err_has(&st, "offset 20: the file ends inside its 23-byte header"));
}

/* ---- garbage -------------------------------------------------------------- */

TEST(mosqdb_refuses_a_wrong_magic_at_every_byte)
{
	struct img m;

	img_full(&m);
	for (size_t i = 0; i < 15; i++) {
		struct rec r = {0};
		struct mosqdb_status st;
		m.b[i] ^= 0x20;
		CHECK_EQ(read_n(m.b, m.n, &r, &st), MOSQDB_NOT_MOSQDB);
		CHECK_EQ(r.calls, 0);
		char want[64];
		snprintf(want, sizeof(want), "offset %zu: not a mosquitto.db", i);
		CHECK(err_has(&st, want));
		/* A short file that is not a prefix of the magic is garbage
		 * too, not a truncated mosquitto.db. */
		CHECK_EQ(read_n(m.b, i + 1, &r, &st), MOSQDB_NOT_MOSQDB);
		m.b[i] ^= 0x20;
	}
	struct rec r = {0};
	struct mosqdb_status st;
	const char *text = "listener 1883\n";
	CHECK_EQ(read_n((const uint8_t *)text, strlen(text), &r, &st),
		 MOSQDB_NOT_MOSQDB);
}

TEST(mosqdb_refuses_unknown_versions)
{
	static const uint32_t versions[] = {0, 1, 2, 3, 4, 7, 0x06000000u,
					    UINT32_MAX};
	struct img m;

	for (size_t i = 0; i < ARRAY_LEN(versions); i++) {
		struct rec r = {0};
		struct mosqdb_status st;
		img_header(&m, versions[i]);
		add_cfg(&m, 1, false);
		CHECK_EQ(read_n(m.b, m.n, &r, &st), MOSQDB_UNSUPPORTED);
		CHECK_EQ(r.calls, 0);
		CHECK_EQ(st.offset, 0);
		CHECK(err_has(&st, "offset 19: "));
		if (versions[i] >= 2 && versions[i] <= 4)
			CHECK(err_has(&st, "Mosquitto 1.5 or older"));
		else
			CHECK(err_has(&st, "unknown format version"));
	}
}

TEST(mosqdb_flipped_bytes_never_crash_and_always_say_where)
{
	static const uint8_t masks[] = {0x01, 0x04, 0x10, 0x80, 0xff};
	struct img m;

	img_full(&m);
	for (size_t i = 0; i < m.n; i++) {
		for (size_t k = 0; k < ARRAY_LEN(masks); k++) {
			struct rec r = {0};
			struct mosqdb_status st;
			m.b[i] ^= masks[k];
			int rc = read_n(m.b, m.n, &r, &st);
			m.b[i] ^= masks[k];
			CHECK(rc <= MOSQDB_OK && rc >= MOSQDB_CORRUPT);
			CHECK_EQ(rec_chunks(&r), st.chunks);
			CHECK(st.offset <= m.n);
			if (rc == MOSQDB_OK)
				CHECK(st.err[0] == '\0' && st.offset == m.n);
			else
				CHECK(strncmp(st.err, "offset ", 7) == 0);
		}
	}
}

/* ---- one refusal per inconsistency --------------------------------------- */

struct corruption {
	const char *name;
	void (*build)(struct img *m); /* the image, then the mutation */
	int rc;
	const char *says;
};

static void bad_msg_qos(struct img *m)
{
	img_full(m);
	m->b[m->ends[0] + 8 + 30] = 3;
}

static void bad_msg_retain(struct img *m)
{
	img_full(m);
	m->b[m->ends[0] + 8 + 31] = 2;
}

static void bad_msg_store_id(struct img *m)
{
	img_full(m);
	memset(m->b + m->ends[0] + 8, 0, 8);
}

static void bad_msg_topic_len(struct img *m)
{
	img_full(m);
	m->b[m->ends[0] + 8 + 27] = 70; /* topic length 4 -> 70 */
}

static void bad_msg_topic(struct img *m)
{
	struct msg_spec s = retained;

	img_header(m, 6);
	s.topic = "a/+";
	add_msg(m, &s);
}

static void bad_msg_payload_len(struct img *m)
{
	img_full(m);
	set_be32(m, m->ends[0] + 8 + 16, 0x10000000u);
}

static void bad_msg_props(struct img *m)
{
	static const uint8_t props[] = {5, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
					0, 0, 0, 1};
	struct msg_spec s = retained;

	img_header(m, 6);
	s.props = props;
	s.props_len = sizeof(props);
	add_msg(m, &s);
}

static void bad_msg_props_trailing(struct img *m)
{
	static const uint8_t props[] = {2, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR,
					1, 0x55};
	struct msg_spec s = retained;

	img_header(m, 6);
	s.props = props;
	s.props_len = sizeof(props);
	add_msg(m, &s);
}

static void bad_msg_short(struct img *m)
{
	img_header(m, 6);
	chunk_begin(m, MOSQDB_CHUNK_MSG_STORE);
	put_zeros(m, 20);
	chunk_end(m);
}

static void bad_cfg_dbid_size(struct img *m)
{
	img_full(m);
	m->b[MOSQDB_HEADER_LEN + 8 + 9] = 4;
}

static void bad_cfg_length(struct img *m)
{
	img_header(m, 6);
	chunk_begin(m, MOSQDB_CHUNK_CFG);
	put_zeros(m, 10);
	chunk_end(m);
}

static void bad_client_empty_id(struct img *m)
{
	img_header(m, 6);
	add_client(m, 6, "", "", 0, false);
}

static void bad_client_id_utf8(struct img *m)
{
	img_header(m, 6);
	add_client(m, 6, "a\xc3(", "", 0, false);
}

static void bad_client_length(struct img *m)
{
	img_header(m, 6);
	add_client(m, 6, "alice", "", 0, false);
	put_u8(m, 0);
	chunk_end(m); /* one byte more than the fields */
}

static void bad_client_msg_state(struct img *m)
{
	img_header(m, 6);
	add_client_msg(m, "a", 1, 12, MOSQDB_DIR_OUT, 0);
}

static void bad_client_msg_direction(struct img *m)
{
	img_header(m, 6);
	add_client_msg(m, "a", 1, MOSQDB_STATE_QUEUED, 2, 0);
}

static void bad_client_msg_retain_dup(struct img *m)
{
	img_header(m, 6);
	add_client_msg(m, "a", 1, MOSQDB_STATE_QUEUED, MOSQDB_DIR_OUT, 0);
	m->b[MOSQDB_HEADER_LEN + 8 + 14] = 0x21;
}

static void bad_client_msg_id_len(struct img *m)
{
	img_header(m, 6);
	add_client_msg(m, "a", 1, MOSQDB_STATE_QUEUED, MOSQDB_DIR_OUT, 0);
	m->b[MOSQDB_HEADER_LEN + 8 + 11] = 2; /* client id length 1 -> 2 */
}

static void bad_client_msg_sub_id_zero(struct img *m)
{
	img_header(m, 6);
	add_client_msg(m, "a", 1, MOSQDB_STATE_QUEUED, MOSQDB_DIR_OUT, 5);
	m->b[m->n - 1] = 0;
}

static void bad_sub_filter(struct img *m)
{
	img_header(m, 6);
	add_sub(m, "a", "a/#/b", 0, 0, 0);
}

static void bad_sub_qos(struct img *m)
{
	img_header(m, 6);
	add_sub(m, "a", "a/b", 0, 3, 0);
}

static void bad_sub_identifier(struct img *m)
{
	img_header(m, 6);
	add_sub(m, "a", "a/b", MQTT_VARINT_MAX + 1, 0, 0);
}

static void bad_retain_length(struct img *m)
{
	img_header(m, 6);
	add_retain(m, 1);
	put_u8(m, 0);
	chunk_end(m);
}

static void bad_retain_store_id(struct img *m)
{
	img_header(m, 6);
	add_retain(m, 0);
}

static void bad_chunk_length(struct img *m)
{
	img_full(m);
	set_be32(m, m->ends[2] + 4, 0xfffffff0u);
}

static const struct corruption corruptions[] = {
	{"msg qos", bad_msg_qos, MOSQDB_CORRUPT, "offset 85: MSG_STORE chunk at 47 (66 bytes): QoS 3"},
	{"msg retain", bad_msg_retain, MOSQDB_CORRUPT, "offset 86: MSG_STORE chunk at 47 (66 bytes): retain flag 2"},
	{"msg store id", bad_msg_store_id, MOSQDB_CORRUPT, "offset 55: MSG_STORE chunk at 47 (66 bytes): store id 0"},
	{"msg topic length", bad_msg_topic_len, MOSQDB_CORRUPT, "offset 95: MSG_STORE chunk at 47 (66 bytes): topic of 70 bytes overruns the chunk (26 left)"},
	{"msg topic", bad_msg_topic, MOSQDB_CORRUPT, "topic of 3 bytes is not a valid topic name"},
	{"msg payload length", bad_msg_payload_len, MOSQDB_CORRUPT, "offset 71: MSG_STORE chunk at 47 (66 bytes): payload of 268435456 bytes is larger than MQTT allows"},
	{"msg props", bad_msg_props, MOSQDB_CORRUPT, "property block of 6 bytes is not valid for a PUBLISH (reason 0x81)"},
	{"msg props trailing", bad_msg_props_trailing, MOSQDB_CORRUPT, "1 bytes after the property block"},
	{"msg short", bad_msg_short, MOSQDB_CORRUPT, "offset 31: MSG_STORE chunk at 23 (20 bytes): shorter than its 32-byte fixed part"},
	{"cfg dbid size", bad_cfg_dbid_size, MOSQDB_UNSUPPORTED, "offset 40: CFG chunk at 23 (16 bytes): store ids of 4 bytes (only 8 is known)"},
	{"cfg length", bad_cfg_length, MOSQDB_CORRUPT, "CFG chunk at 23 (10 bytes): expected 16 bytes (12 from 32-bit x86)"},
	{"client empty id", bad_client_empty_id, MOSQDB_CORRUPT, "CLIENT chunk at 23 (24 bytes): empty client id"},
	{"client id utf8", bad_client_id_utf8, MOSQDB_CORRUPT, "client id of 3 bytes is not MQTT UTF-8"},
	{"client length", bad_client_length, MOSQDB_CORRUPT, "length does not match a 24-byte fixed part (20 from 32-bit x86) with a 5-byte client id and a 0-byte username"},
	{"client msg state", bad_client_msg_state, MOSQDB_CORRUPT, "offset 44: CLIENT_MSG chunk at 23 (17 bytes): message state 12"},
	{"client msg direction", bad_client_msg_direction, MOSQDB_CORRUPT, "direction 2"},
	{"client msg retain/dup", bad_client_msg_retain_dup, MOSQDB_CORRUPT, "retain/dup byte 0x21"},
	{"client msg id length", bad_client_msg_id_len, MOSQDB_CORRUPT, "client id of 2 bytes overruns the chunk (1 left)"},
	{"client msg sub id 0", bad_client_msg_sub_id_zero, MOSQDB_CORRUPT, "property block of 3 bytes is not valid for a PUBLISH (reason 0x82)"},
	{"sub filter", bad_sub_filter, MOSQDB_CORRUPT, "offset 44: SUB chunk at 23 (18 bytes): topic filter of 5 bytes is not valid"},
	{"sub qos", bad_sub_qos, MOSQDB_CORRUPT, "QoS 3"},
	{"sub identifier", bad_sub_identifier, MOSQDB_CORRUPT, "subscription identifier 268435456 is larger than MQTT allows"},
	{"retain length", bad_retain_length, MOSQDB_CORRUPT, "offset 39: RETAIN chunk at 23 (9 bytes): 1 bytes left over after the last field"},
	{"retain store id", bad_retain_store_id, MOSQDB_CORRUPT, "store id 0"},
	{"chunk length", bad_chunk_length, MOSQDB_TRUNCATED, "offset 297: CLIENT chunk at 166 (4294967280 bytes): the file ends 123 bytes into it"},
};

TEST(mosqdb_refuses_each_inconsistency_with_offset_chunk_and_reason)
{
	for (size_t i = 0; i < ARRAY_LEN(corruptions); i++) {
		const struct corruption *c = &corruptions[i];
		struct img m;
		struct rec r = {0};
		struct mosqdb_status st;
		c->build(&m);
		int rc = read_n(m.b, m.n, &r, &st);
		if (rc != c->rc || !strstr(st.err, c->says)) {
			fprintf(stderr, "  %s: rc %d, \"%s\"\n", c->name, rc,
				st.err);
			CHECK(false);
		}
	}
}

TEST(mosqdb_unknown_chunk_is_skipped_and_reading_goes_on)
{
	struct img m;
	struct rec r = {0};
	struct mosqdb_status st;

	img_header(&m, 6);
	add_unknown(&m, 0, 0);
	add_unknown(&m, 7, 40);
	add_retain(&m, 5);
	CHECK_EQ(read_n(m.b, m.n, &r, &st), MOSQDB_OK);
	CHECK(r.unknown == 2 && r.u.type == 7 && r.u.length == 40);
	CHECK_EQ(r.u.offset, m.ends[0]);
	CHECK(r.retain == 1 && r.r.store_id == 5);
}

/* ---- the visitor ------------------------------------------------------------ */

TEST(mosqdb_visitor_stops_the_read)
{
	struct img m;

	img_full(&m);
	/* Call 1 is the header, call 3 the first message. */
	for (int stop = 1; stop <= 3; stop += 2) {
		struct rec r = {.stop_at = stop};
		struct mosqdb_status st;
		CHECK_EQ(read_n(m.b, m.n, &r, &st), MOSQDB_STOPPED);
		CHECK_EQ(st.cb_rc, 7);
		CHECK_EQ(r.calls, stop);
		CHECK(err_has(&st, "the visitor stopped the read"));
		CHECK_EQ(st.offset, stop == 1 ? 0 : m.ends[0]);
		CHECK_EQ(st.chunks, stop == 1 ? 0 : 1);
	}
}

TEST(mosqdb_names)
{
	CHECK_STR(mosqdb_chunk_name(MOSQDB_CHUNK_CLIENT_MSG), "CLIENT_MSG");
	CHECK_STR(mosqdb_chunk_name(0), "unknown");
	CHECK_STR(mosqdb_chunk_name(7), "unknown");
	CHECK_STR(mosqdb_state_name(MOSQDB_STATE_WAIT_FOR_PUBREL),
		  "wait_for_pubrel");
	CHECK_STR(mosqdb_state_name(12), "unknown");
	CHECK_STR(mosqdb_rc_name(MOSQDB_TRUNCATED), "truncated");
	CHECK_STR(mosqdb_rc_name(42), "unknown");
}
