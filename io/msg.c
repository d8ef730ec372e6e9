#include "io/msg.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "core/hash.h"
#include "core/mqtt.h"

/* Live messages. A message is often born on one shard and freed on
 * another: one shared counter would be a cache line every shard writes
 * for every message. Each thread counts in a line of its own instead
 * (single writer: a relaxed load and store), and the count is the sum;
 * threads past the slots share the last one with locked adds. */
#define MSG_LIVE_SLOTS 64
struct live_slot {
	_Alignas(64) _Atomic int64_t n;
};
static struct live_slot live_slots[MSG_LIVE_SLOTS];
static _Atomic unsigned live_next;
static _Thread_local struct live_slot *live_mine;
static _Thread_local bool live_shared;

static void msg_live_add(int64_t d)
{
	struct live_slot *sl = live_mine;
	if (!sl) {
		unsigned i = atomic_fetch_add(&live_next, 1);
		live_shared = i >= MSG_LIVE_SLOTS - 1;
		sl = live_mine = &live_slots[live_shared ? MSG_LIVE_SLOTS - 1 : i];
	}
	if (live_shared)
		atomic_fetch_add_explicit(&sl->n, d, memory_order_relaxed);
	else
		atomic_store_explicit(&sl->n, atomic_load_explicit(&sl->n, memory_order_relaxed) + d,
				      memory_order_relaxed);
}

struct msg *msg_new(const uint8_t *topic, uint16_t topic_len,
		    const uint8_t *payload, uint32_t payload_len, uint8_t qos,
		    bool retain, const uint8_t *props, uint32_t props_len)
{
	assert(qos <= 2 && (props || !props_len));
	size_t body = 2u + topic_len + (size_t)payload_len;
	/* A body over the protocol limit cannot have been decoded. */
	assert(body <= MQTT_VARINT_MAX);
	struct msg *m = malloc(sizeof(*m) + MSG_HEADER_ROOM + body + props_len);
	if (!m)
		return NULL;
	atomic_init(&m->refs, 1);
	m->qos = qos;
	m->retain = retain;
	m->topic_len = topic_len;
	m->payload_len = payload_len;
	m->created_ms = 0;
	m->expiry_s = 0;
	m->origin = 0;
	m->props_len = props_len;
	atomic_init(&m->log_id, 0);
	atomic_init(&m->q2_held, false);
	m->source = NULL;
	m->topic_hash = (uint32_t)hash_bytes(topic, topic_len);
	uint8_t *p = m->buf + MSG_HEADER_ROOM;
	p[0] = (uint8_t)(topic_len >> 8);
	p[1] = (uint8_t)topic_len;
	memcpy(p + 2, topic, topic_len);
	if (payload_len)
		memcpy(p + 2 + topic_len, payload, payload_len);
	if (props_len)
		memcpy(p + 2 + topic_len + payload_len, props, props_len);

	uint8_t hdr[MSG_HEADER_ROOM];
	hdr[0] = MQTT_PUBLISH << 4;
	size_t hlen = 1 + mqtt_varint_encode(hdr + 1, (uint32_t)body);
	m->q0_off = (uint8_t)(MSG_HEADER_ROOM - hlen);
	memcpy(m->buf + m->q0_off, hdr, hlen);
	msg_live_add(1);
	return m;
}

_Thread_local struct msg_ref_bank msg_bank;

void msg_bank_open(struct msg *m, uint32_t n)
{
	assert(!msg_bank.m && atomic_load_explicit(&m->refs, memory_order_relaxed));
	atomic_fetch_add_explicit(&m->refs, n, memory_order_relaxed);
	msg_bank = (struct msg_ref_bank){m, n};
}

void msg_bank_close(void)
{
	struct msg_ref_bank b = msg_bank;
	msg_bank = (struct msg_ref_bank){0};
	/* The opener's own reference keeps it above zero. */
	if (b.n)
		msg_unref_n(b.m, b.n);
}

void msg_unref(struct msg *m)
{
	if (m)
		msg_unref_n(m, 1);
}

void msg_unref_n(struct msg *m, uint32_t n)
{
	assert(n > 0);
	uint32_t old = atomic_fetch_sub_explicit(&m->refs, n,
						 memory_order_acq_rel);
	assert(old >= n);
	if (old == n) {
		msg_live_add(-1);
		if (m->source)
			free(m->source->username);
		free(m->source);
		free(m);
	}
}

struct msg_source *msg_source_new(uint8_t listener, const char *client_id,
				  size_t id_len, const char *username,
				  size_t username_len)
{
	struct msg_source *src = malloc(sizeof(*src) + id_len + 1u);
	if (!src)
		return NULL;
	src->listener = listener;
	src->username = username ? strndup(username, username_len) : NULL;
	if (username && !src->username) {
		free(src);
		return NULL;
	}
	memcpy(src->client_id, client_id, id_len);
	src->client_id[id_len] = '\0';
	return src;
}

uint32_t msg_expiry_left(const struct msg *m, uint64_t now_ms)
{
	if (!m->expiry_s)
		return UINT32_MAX;
	uint64_t gone = (now_ms - m->created_ms) / 1000u;
	return gone >= m->expiry_s ? 0 : (uint32_t)(m->expiry_s - gone);
}

void msg_release_cb(void *m)
{
	msg_unref(m);
}

/* The properties passed through to MQTT 5 subscribers, encoded once:
 * payload format, content type, response topic, correlation data and the
 * user properties in their order. Returns a malloc'd block (no length
 * prefix) or NULL with *len 0 when there are none. */
uint8_t *msg_passthrough_props(const struct mqtt_props *in, uint32_t *len)
{
	const uint64_t keep = MQTT_PROP_BIT(MQTT_PROP_PAYLOAD_FORMAT_INDICATOR) |
			      MQTT_PROP_BIT(MQTT_PROP_CONTENT_TYPE) |
			      MQTT_PROP_BIT(MQTT_PROP_RESPONSE_TOPIC) |
			      MQTT_PROP_BIT(MQTT_PROP_CORRELATION_DATA) |
			      MQTT_PROP_BIT(MQTT_PROP_USER_PROPERTY);
	*len = 0;
	if (!in->raw.len)
		return NULL;
	uint8_t *buf = malloc(in->raw.len);
	size_t n = buf ? mqtt_props_select(in, keep, buf, in->raw.len) : 0;
	if (!n) {
		free(buf);
		return NULL;
	}
	*len = (uint32_t)n;
	return buf;
}

uint64_t msg_live_count(void)
{
	int64_t n = 0;
	for (unsigned i = 0; i < MSG_LIVE_SLOTS; i++)
		n += atomic_load_explicit(&live_slots[i].n, memory_order_relaxed);
	return n > 0 ? (uint64_t)n : 0;
}
