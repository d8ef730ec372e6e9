/* PUBACK, PUBREC, PUBREL, PUBCOMP from a client (spec 3.4-3.7). */
#include "io/engine.h"

static void ack_send(struct conn *c, uint8_t type, uint16_t pid, uint8_t rc)
{
	uint8_t buf[8];
	size_t n = mqtt_encode_ack(buf, sizeof(buf), type, c->version, pid, rc,
				   NULL);
	if (n)
		conn_queue_ack(c, buf, n);
}

int handle_ack(struct conn *c, const struct mqtt_fixed_header *h,
	       const uint8_t *body, size_t len)
{
	struct mqtt_ack a;
	enum mqtt_rc rc = mqtt_decode_ack(body, len, c->version, &a);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid acknowledgement");
		return -1;
	}
	struct session *ss = c->session;
	switch (h->type) {
	case MQTT_PUBACK:
		session_on_puback(ss, a.packet_id);
		break;
	case MQTT_PUBREC:
		if (!session_on_pubrec(ss, a.packet_id))
			ack_send(c, MQTT_PUBREL, a.packet_id,
				 MQTT_RC_PACKET_ID_NOT_FOUND);
		break;
	case MQTT_PUBREL: {
		struct msg *m = session_qos2_release(ss, a.packet_id);
		if (m)
			publish_route(c, m, MQTT_PUBCOMP, a.packet_id);
		else
			ack_send(c, MQTT_PUBCOMP, a.packet_id,
				 MQTT_RC_PACKET_ID_NOT_FOUND);
		break;
	}
	case MQTT_PUBCOMP:
		session_on_pubcomp(ss, a.packet_id);
		break;
	}
	return 0;
}
