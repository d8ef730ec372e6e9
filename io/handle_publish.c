/* PUBLISH from a client (spec 3.3). */
#include "core/log.h"
#include "io/engine.h"

static void publish_ack(struct conn *c, uint8_t type, uint16_t pid,
			uint8_t reason)
{
	uint8_t buf[8];
	size_t n = mqtt_encode_ack(buf, sizeof(buf), type, c->version, pid,
				   reason, NULL);
	if (n)
		conn_queue_ctrl(c, buf, n);
}

int handle_publish(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len)
{
	struct shard *s = c->shard;
	struct mqtt_publish p;
	enum mqtt_rc rc = mqtt_decode_publish(h->flags, body, len, c->version, &p);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid PUBLISH");
		return -1;
	}
	if (p.retain && !s->cfg->retain_available) {
		conn_protocol_error(c, MQTT_RC_RETAIN_NOT_SUPPORTED,
				    "retained PUBLISH while retain_available is false");
		return -1;
	}
	uint8_t ack = p.qos == 1 ? MQTT_PUBACK : MQTT_PUBREC;
	uint32_t limit = s->cfg->message_size_limit;
	if (limit && p.payload.len > limit) {
		/* Mosquitto drops it and still acknowledges. */
		log_msg(KITE_LOG_DEBUG, "Dropped too large PUBLISH from %s",
			conn_client_id(c));
		if (p.qos)
			publish_ack(c, ack, p.packet_id, MQTT_RC_PACKET_TOO_LARGE);
		return 0;
	}
	struct session *ss = c->session;
	if (p.qos == 2 && session_qos2_seen(ss, p.packet_id)) {
		publish_ack(c, MQTT_PUBREC, p.packet_id, 0); /* a resend */
		return 0;
	}
	struct msg *m = msg_new(p.topic.ptr, (uint16_t)p.topic.len,
				p.payload.ptr, p.payload.len, p.qos, p.retain);
	if (!m || (p.qos == 2 && session_qos2_add(ss, p.packet_id, m) < 0)) {
		msg_unref(m);
		conn_close(c, "out of memory", false);
		return -1;
	}
	if (p.qos < 2)
		route_publish(s, m); /* QoS 2 is routed at PUBREL */
	if (p.qos)
		publish_ack(c, ack, p.packet_id, 0);
	return 0;
}
