/* PUBACK, PUBREC, PUBREL, PUBCOMP from a client (spec 3.4-3.7). */
#include "io/conn.h"
#include "io/handle.h"
#include "io/session.h"

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
	uint16_t pid;
	uint8_t reason;
	enum mqtt_rc rc = mqtt_decode_ack_id(body, len, c->version, &pid,
					     &reason);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid acknowledgement");
		return -1;
	}
	struct session *ss = c->session;
	enum ack_result r = ACK_DONE;
	switch (h->type) {
	case MQTT_PUBACK:
		r = session_on_puback(ss, pid);
		break;
	case MQTT_PUBREC:
		r = session_on_pubrec(ss, pid, reason);
		/* A bridge's remote resends PUBRECs of a session older than
		 * this broker's run: released, as Mosquitto does. */
		if (r == ACK_UNKNOWN)
			ack_send(c, MQTT_PUBREL, pid,
				 c->bridge ? MQTT_RC_SUCCESS
					   : MQTT_RC_PACKET_ID_NOT_FOUND);
		break;
	case MQTT_PUBREL: {
		struct msg *m = session_qos2_release(ss, pid);
		if (m)
			publish_route(c, m, MQTT_PUBCOMP, pid);
		else
			/* Most often a PUBREL sent again after a reconnect,
			 * whose PUBCOMP was lost: the message was released,
			 * so answer success, as Mosquitto does. */
			ack_send(c, MQTT_PUBCOMP, pid, MQTT_RC_SUCCESS);
		break;
	}
	case MQTT_PUBCOMP:
		r = session_on_pubcomp(ss, pid);
		break;
	}
	if (r == ACK_WRONG) {
		/* A PUBREC for QoS 1, a PUBACK for QoS 2...: the client's
		 * state and ours disagree. Mosquitto closes without a
		 * DISCONNECT, and its suite checks that. */
		conn_close(c, "acknowledgement of the wrong type (protocol error)", false);
		return -1;
	}
	return 0;
}
