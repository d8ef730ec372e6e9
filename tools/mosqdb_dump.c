/* mosquitto.db as text; the line format is in mosqdb_dump.h. */
#include "tools/mosqdb_dump.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void dump_escaped(FILE *out, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t b = p[i];
		bool plain = b > ' ' && b <= '~' && !strchr("%=:,", b);
		if (plain)
			fputc(b, out);
		else
			fprintf(out, "%%%02X", b);
	}
}

static void dump_field(FILE *out, const char *key, struct mqtt_bytes b)
{
	fprintf(out, " %s=", key);
	dump_escaped(out, b.ptr, b.len);
}

static void dump_props(FILE *out, const struct mqtt_props *p)
{
#define HAS(id) (p->present & MQTT_PROP_BIT(MQTT_PROP_##id))
	if (HAS(PAYLOAD_FORMAT_INDICATOR))
		fprintf(out, " payload_format=%u", p->payload_format_indicator);
	if (HAS(MESSAGE_EXPIRY_INTERVAL))
		fprintf(out, " message_expiry=%" PRIu32,
			p->message_expiry_interval);
	if (HAS(CONTENT_TYPE))
		dump_field(out, "content_type", p->content_type);
	if (HAS(RESPONSE_TOPIC))
		dump_field(out, "response_topic", p->response_topic);
	if (HAS(CORRELATION_DATA))
		dump_field(out, "correlation_data", p->correlation_data);
	if (HAS(SUBSCRIPTION_IDENTIFIER))
		fprintf(out, " subscription_id=%" PRIu32,
			p->subscription_identifier);
	if (HAS(TOPIC_ALIAS))
		fprintf(out, " topic_alias=%u", p->topic_alias);
#undef HAS
	uint32_t cursor = 0;
	struct mqtt_bytes k, v;
	while (mqtt_user_props_next(p, &cursor, &k, &v)) {
		dump_field(out, "user_property", k);
		fputc(':', out);
		dump_escaped(out, v.ptr, v.len);
	}
}

static int header_cb(void *ctx, const struct mosqdb_header *h)
{
	fprintf(ctx, "header version=%" PRIu32 " crc=%" PRIu32 "\n", h->version,
		h->crc);
	return 0;
}

static int cfg_cb(void *ctx, const struct mosqdb_cfg *c)
{
	fprintf(ctx, "cfg offset=%zu last_db_id=%" PRIu64 " shutdown=%d\n",
		c->offset, c->last_db_id, c->shutdown);
	return 0;
}

static int msg_cb(void *ctx, const struct mosqdb_msg *m)
{
	FILE *out = ctx;

	fprintf(out, "msg offset=%zu store_id=%" PRIu64 " qos=%u retain=%d",
		m->offset, m->store_id, m->qos, m->retain);
	dump_field(out, "topic", m->topic);
	dump_field(out, "payload", m->payload);
	dump_field(out, "source_id", m->source_id);
	dump_field(out, "source_username", m->source_username);
	fprintf(out, " source_port=%u source_mid=%u expiry_time=%" PRId64,
		m->source_port, m->source_mid, m->expiry_time);
	dump_props(out, &m->props);
	fputc('\n', out);
	return 0;
}

static int retain_cb(void *ctx, const struct mosqdb_retain *r)
{
	fprintf(ctx, "retain offset=%zu store_id=%" PRIu64 "\n", r->offset,
		r->store_id);
	return 0;
}

static int client_cb(void *ctx, const struct mosqdb_client *c)
{
	FILE *out = ctx;

	fprintf(out, "client offset=%zu", c->offset);
	dump_field(out, "id", c->client_id);
	dump_field(out, "username", c->username);
	fprintf(out, " session_expiry_interval=%" PRIu32
		" session_expiry_time=%" PRId64 " last_mid=%u listener_port=%u\n",
		c->session_expiry_interval, c->session_expiry_time, c->last_mid,
		c->listener_port);
	return 0;
}

static int sub_cb(void *ctx, const struct mosqdb_sub *s)
{
	FILE *out = ctx;

	fprintf(out, "sub offset=%zu", s->offset);
	dump_field(out, "client_id", s->client_id);
	dump_field(out, "filter", s->filter);
	fprintf(out, " qos=%u no_local=%d retain_as_published=%d "
		"options=0x%02x identifier=%" PRIu32 "\n", s->qos, s->no_local,
		s->retain_as_published, s->options, s->identifier);
	return 0;
}

static int client_msg_cb(void *ctx, const struct mosqdb_client_msg *m)
{
	FILE *out = ctx;

	fprintf(out, "client_msg offset=%zu", m->offset);
	dump_field(out, "client_id", m->client_id);
	fprintf(out, " store_id=%" PRIu64 " mid=%u qos=%u retain=%d dup=%d "
		"direction=%s state=%s", m->store_id, m->mid, m->qos, m->retain,
		m->dup, m->direction == MOSQDB_DIR_IN ? "in" : "out",
		mosqdb_state_name(m->state));
	dump_props(out, &m->props);
	fputc('\n', out);
	return 0;
}

static int unknown_cb(void *ctx, const struct mosqdb_unknown *u)
{
	fprintf(ctx, "unknown offset=%zu type=%" PRIu32 " length=%" PRIu32 "\n",
		u->offset, u->type, u->length);
	return 0;
}

int mosqdb_dump(FILE *out, const uint8_t *buf, size_t len,
		struct mosqdb_status *st)
{
	static const struct mosqdb_visitor dump_visitor = {
		.header_cb = header_cb,
		.cfg_cb = cfg_cb,
		.msg_cb = msg_cb,
		.retain_cb = retain_cb,
		.client_cb = client_cb,
		.sub_cb = sub_cb,
		.client_msg_cb = client_msg_cb,
		.unknown_cb = unknown_cb,
	};
	int rc = mosqdb_read(buf, len, &dump_visitor, out, st);

	fprintf(out, "end rc=%s offset=%zu chunks=%" PRIu32 "\n",
		mosqdb_rc_name(rc), st->offset, st->chunks);
	return rc;
}

/* The whole file in memory: what it holds, never what it announces. */
static uint8_t *file_slurp(int fd, size_t *len)
{
	struct stat sb;

	if (fstat(fd, &sb) < 0)
		return NULL;
	if (!S_ISREG(sb.st_mode)) {
		errno = S_ISDIR(sb.st_mode) ? EISDIR : EINVAL;
		return NULL;
	}
	size_t size = (size_t)sb.st_size, got = 0;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return NULL;
	while (got < size) {
		ssize_t n = read(fd, buf + got, size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			return NULL;
		}
		if (n == 0)
			break; /* shrank while we read: take what is there */
		got += (size_t)n;
	}
	*len = got;
	return buf;
}

int mosqdb_dump_main(int argc, char **argv)
{
	const char *name = argc > 0 ? argv[0] : "mosqdb-dump";
	struct mosqdb_status st;
	size_t len = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: %s FILE\n", name);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	uint8_t *buf = fd < 0 ? NULL : file_slurp(fd, &len);
	int err = errno;
	if (fd >= 0)
		close(fd);
	if (!buf) {
		fprintf(stderr, "%s: %s: %s\n", name, argv[1], strerror(err));
		return 1;
	}
	int rc = mosqdb_dump(stdout, buf, len, &st);
	free(buf);
	if (fflush(stdout) != 0) {
		fprintf(stderr, "%s: stdout: %s\n", name, strerror(errno));
		return 1;
	}
	if (rc != MOSQDB_OK) {
		fprintf(stderr, "%s: %s: %s: %s\n", name, argv[1],
			mosqdb_rc_name(rc), st.err);
		return 1;
	}
	return 0;
}
