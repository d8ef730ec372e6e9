#include "io/msg.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "core/codec.h"
#include "core/mqtt.h"

static _Atomic uint64_t msg_live;

struct msg *msg_new(const uint8_t *topic, uint16_t topic_len,
		    const uint8_t *payload, uint32_t payload_len, uint8_t qos,
		    bool retain)
{
	assert(qos <= 2);
	size_t body = 2u + topic_len + (size_t)payload_len;
	/* A body over the protocol limit cannot have been decoded. */
	assert(body <= MQTT_VARINT_MAX);
	struct msg *m = malloc(sizeof(*m) + MSG_HEADER_ROOM + body);
	if (!m)
		return NULL;
	atomic_init(&m->refs, 1);
	m->qos = qos;
	m->retain = retain;
	m->topic_len = topic_len;
	m->payload_len = payload_len;
	m->created_ms = 0;
	uint8_t *p = m->buf + MSG_HEADER_ROOM;
	p[0] = (uint8_t)(topic_len >> 8);
	p[1] = (uint8_t)topic_len;
	memcpy(p + 2, topic, topic_len);
	if (payload_len)
		memcpy(p + 2 + topic_len, payload, payload_len);

	uint8_t hdr[MSG_HEADER_ROOM];
	hdr[0] = MQTT_PUBLISH << 4;
	size_t hlen = 1 + mqtt_varint_encode(hdr + 1, (uint32_t)body);
	m->q0_off = (uint8_t)(MSG_HEADER_ROOM - hlen);
	memcpy(m->buf + m->q0_off, hdr, hlen);
	atomic_fetch_add_explicit(&msg_live, 1, memory_order_relaxed);
	return m;
}

void msg_unref(struct msg *m)
{
	if (!m)
		return;
	uint32_t old = atomic_fetch_sub_explicit(&m->refs, 1,
						 memory_order_acq_rel);
	assert(old > 0);
	if (old == 1) {
		atomic_fetch_sub_explicit(&msg_live, 1, memory_order_relaxed);
		free(m);
	}
}

void msg_release_cb(void *m)
{
	msg_unref(m);
}

uint64_t msg_live_count(void)
{
	return atomic_load_explicit(&msg_live, memory_order_relaxed);
}
