/* libFuzzer target for core/mosqdb.c (the mosquitto.db reader).
 *
 * Every input is read twice: as it is, and behind a valid header (format
 * 6 or 5, picked by the first byte) so that mutations reach the chunks
 * without first rediscovering the magic. Checked, beyond memory safety:
 * everything handed to the visitor points inside the input and holds the
 * values mosqdb.h promises; the outcome and its report agree; the
 * visitor does not change the outcome; and the complete chunks before an
 * error form a file that reads OK on its own. The text dump runs too.
 * Only our own bugs abort; hostile input never does. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mosqdb.h"
#include "tools/mosqdb_dump.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                    \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "fuzz_mosqdb: %s:%d: %s\n", __FILE__, \
				__LINE__, #cond);                             \
			abort();                                              \
		}                                                             \
	} while (0)

struct seen {
	const uint8_t *buf;
	size_t len;
	uint32_t items;
};

static void check_in(const struct seen *s, struct mqtt_bytes b)
{
	if (b.len == 0)
		return;
	uintptr_t lo = (uintptr_t)s->buf, p = (uintptr_t)b.ptr;
	FUZZ_ASSERT(p >= lo && b.len <= s->len && p - lo <= s->len - b.len);
}

static void check_props(const struct seen *s, const struct mqtt_props *p)
{
	check_in(s, p->raw);
	check_in(s, p->content_type);
	check_in(s, p->response_topic);
	check_in(s, p->correlation_data);
	FUZZ_ASSERT(p->subscription_identifier <= MQTT_VARINT_MAX);
	uint32_t cursor = 0;
	struct mqtt_bytes k, v;
	while (mqtt_user_props_next(p, &cursor, &k, &v)) {
		check_in(s, k);
		check_in(s, v);
	}
}

static void check_client_id(const struct seen *s, struct mqtt_bytes id)
{
	check_in(s, id);
	FUZZ_ASSERT(id.len > 0 && mqtt_utf8_valid(id.ptr, id.len));
}

static void check_offset(const struct seen *s, size_t offset)
{
	FUZZ_ASSERT(offset >= MOSQDB_HEADER_LEN && offset < s->len);
}

static int header_cb(void *ctx, const struct mosqdb_header *h)
{
	FUZZ_ASSERT(h->version == 5 || h->version == 6);
	return 0;
}

static int cfg_cb(void *ctx, const struct mosqdb_cfg *c)
{
	struct seen *s = ctx;
	check_offset(s, c->offset);
	s->items++;
	return 0;
}

static int msg_cb(void *ctx, const struct mosqdb_msg *m)
{
	struct seen *s = ctx;
	check_offset(s, m->offset);
	FUZZ_ASSERT(m->store_id != 0 && m->qos <= 2);
	check_in(s, m->topic);
	FUZZ_ASSERT(mqtt_topic_name_valid(m->topic.ptr, m->topic.len));
	check_in(s, m->payload);
	check_in(s, m->source_id);
	check_in(s, m->source_username);
	check_props(s, &m->props);
	s->items++;
	return 0;
}

static int retain_cb(void *ctx, const struct mosqdb_retain *r)
{
	struct seen *s = ctx;
	check_offset(s, r->offset);
	FUZZ_ASSERT(r->store_id != 0);
	s->items++;
	return 0;
}

static int client_cb(void *ctx, const struct mosqdb_client *c)
{
	struct seen *s = ctx;
	check_offset(s, c->offset);
	check_client_id(s, c->client_id);
	check_in(s, c->username);
	s->items++;
	return 0;
}

static int sub_cb(void *ctx, const struct mosqdb_sub *x)
{
	struct seen *s = ctx;
	check_offset(s, x->offset);
	check_client_id(s, x->client_id);
	check_in(s, x->filter);
	FUZZ_ASSERT(mqtt_topic_filter_valid(x->filter.ptr, x->filter.len));
	FUZZ_ASSERT(x->qos <= 2 && x->identifier <= MQTT_VARINT_MAX);
	s->items++;
	return 0;
}

static int client_msg_cb(void *ctx, const struct mosqdb_client_msg *m)
{
	struct seen *s = ctx;
	check_offset(s, m->offset);
	check_client_id(s, m->client_id);
	FUZZ_ASSERT(m->store_id != 0 && m->qos <= 2);
	FUZZ_ASSERT(m->direction <= MOSQDB_DIR_OUT);
	FUZZ_ASSERT(m->state <= MOSQDB_STATE_QUEUED);
	check_props(s, &m->props);
	s->items++;
	return 0;
}

static int unknown_cb(void *ctx, const struct mosqdb_unknown *u)
{
	struct seen *s = ctx;
	check_offset(s, u->offset);
	FUZZ_ASSERT(u->type < MOSQDB_CHUNK_CFG || u->type > MOSQDB_CHUNK_CLIENT);
	FUZZ_ASSERT(u->length <= s->len - u->offset - MOSQDB_CHUNK_HEADER_LEN);
	s->items++;
	return 0;
}

static const struct mosqdb_visitor checking_visitor = {
	.header_cb = header_cb,
	.cfg_cb = cfg_cb,
	.msg_cb = msg_cb,
	.retain_cb = retain_cb,
	.client_cb = client_cb,
	.sub_cb = sub_cb,
	.client_msg_cb = client_msg_cb,
	.unknown_cb = unknown_cb,
};

static void check_status(int rc, const struct mosqdb_status *st, size_t len)
{
	FUZZ_ASSERT(rc <= MOSQDB_OK && rc >= MOSQDB_CORRUPT);
	FUZZ_ASSERT(rc != MOSQDB_STOPPED);
	FUZZ_ASSERT(memchr(st->err, '\0', sizeof(st->err)));
	FUZZ_ASSERT(st->offset <= len);
	if (rc == MOSQDB_OK) {
		FUZZ_ASSERT(st->err[0] == '\0' && st->offset == len);
		return;
	}
	FUZZ_ASSERT(strncmp(st->err, "offset ", 7) == 0);
	if (rc == MOSQDB_NOT_MOSQDB)
		FUZZ_ASSERT(st->chunks == 0 && st->offset == 0);
}

static FILE *dev_null(void)
{
	static FILE *f;

	if (!f)
		f = fopen("/dev/null", "w");
	FUZZ_ASSERT(f);
	return f;
}

/* buf is a heap block of exactly len bytes, so ASan sees an over-read. */
static void fuzz_image(const uint8_t *buf, size_t len)
{
	struct seen s = {buf, len, 0};
	struct mosqdb_status st, st2;

	int rc = mosqdb_read(buf, len, &checking_visitor, &s, &st);
	check_status(rc, &st, len);
	FUZZ_ASSERT(s.items == st.chunks);

	/* The visitor only watches. */
	int rc2 = mosqdb_read(buf, len, NULL, NULL, &st2);
	FUZZ_ASSERT(rc2 == rc && st2.offset == st.offset &&
		    st2.chunks == st.chunks && !strcmp(st2.err, st.err));

	/* What was complete before an error is a file by itself. */
	if (rc != MOSQDB_OK && st.offset >= MOSQDB_HEADER_LEN) {
		rc2 = mosqdb_read(buf, st.offset, NULL, NULL, &st2);
		FUZZ_ASSERT(rc2 == MOSQDB_OK && st2.chunks == st.chunks);
	}

	FUZZ_ASSERT(mosqdb_dump(dev_null(), buf, len, &st2) == rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t header[MOSQDB_HEADER_LEN] = {
		0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u', 'i', 't', 't', 'o',
		' ',  'd',  'b',  0,   0,   0,   0,   0,   0,   0,   6,
	};
	uint8_t *copy = malloc(size ? size : 1);

	FUZZ_ASSERT(copy);
	memcpy(copy, data, size);
	fuzz_image(copy, size);
	free(copy);

	if (size == 0)
		return 0;
	size_t len = sizeof(header) + size - 1;
	uint8_t *framed = malloc(len);
	FUZZ_ASSERT(framed);
	memcpy(framed, header, sizeof(header));
	framed[MOSQDB_HEADER_LEN - 1] = data[0] & 1 ? 5 : 6;
	memcpy(framed + sizeof(header), data + 1, size - 1);
	fuzz_image(framed, len);
	free(framed);
	return 0;
}
